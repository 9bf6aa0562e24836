//! Kernel test harness: a "node" network namespace with workloads attached the
//! way Calico attaches them (host veth `cali…` with proxy ARP and a /32 route, pod
//! `eth0` with a default route via 169.254.1.1, IPv6 via the host veth's link-local
//! address), outside namespaces behind host interfaces, `nft -j -f` in the node,
//! and real TCP, UDP and ICMP probes. Namespaces go away on drop (also on panic);
//! leftovers of a crashed run with the same prefix are deleted first.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use serde_json::Value;
use tabby_testnet::{End, Netns, TestNet};

/// A workload to attach: `namespace/name`, host interface, addresses.
#[derive(Clone, Copy, Debug)]
pub struct PodSpec {
    pub key: &'static str,
    pub iface: &'static str,
    pub v4: &'static str,
    pub v6: Option<&'static str>,
}

/// An outside network behind a host interface: node address, outside address
/// (both /24).
#[derive(Clone, Copy, Debug)]
pub struct OutSpec {
    pub name: &'static str,
    pub host_iface: &'static str,
    pub node_ip: &'static str,
    pub ip: &'static str,
}

/// The built topology.
pub struct Lab {
    pub node: Netns,
    pub pods: BTreeMap<&'static str, (Netns, PodSpec)>,
    pub outs: BTreeMap<&'static str, (Netns, OutSpec)>,
    servers: std::sync::Mutex<BTreeMap<(String, Proto, u16), Server>>,
    // Dropped last: deletes every namespace.
    pub tn: TestNet,
}

/// What a probe sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Lab {
    /// Builds the node, the workloads and the outside namespaces, named
    /// `<tag><pid>-...` so that runs in other checkouts do not collide; leftovers
    /// of dead runs with the same tag are deleted first.
    pub fn new(tag: &str, pods: &[PodSpec], outs: &[OutSpec]) -> Lab {
        tabby_testnet::require_root();
        delete_leftovers(tag);
        let prefix = format!("{tag}{}", std::process::id());
        let tn = TestNet::with_prefix(&prefix);
        let node = tn.router("node").expect("node namespace");
        let mut lab = Lab {
            node: node.clone(),
            pods: BTreeMap::new(),
            outs: BTreeMap::new(),
            servers: std::sync::Mutex::new(BTreeMap::new()),
            tn,
        };
        for o in outs {
            let ns = lab.tn.netns(o.name).expect("outside namespace");
            let node_cidr = format!("{}/24", o.node_ip);
            let cidr = format!("{}/24", o.ip);
            lab.tn
                .veth(
                    End::new(&node, o.host_iface, &[node_cidr.as_str()]),
                    End::new(&ns, "eth0", &[cidr.as_str()]),
                )
                .expect("outside veth");
            ns.add_route("100.64.0.0/10", o.node_ip)
                .expect("route to pods");
            lab.outs.insert(o.name, (ns, *o));
        }
        if let Some(o) = outs.first() {
            // Proxy ARP answers for 169.254.1.1 only if the host routes it
            // elsewhere: a default route, as every real host has.
            node.add_route("default", o.ip).expect("node default route");
        }
        for p in pods {
            let short = p.key.replace('/', "-");
            let ns = lab.tn.netns(&short).expect("pod namespace");
            let v4 = format!("{}/32", p.v4);
            let v6 = p.v6.map(|a| format!("{a}/128"));
            let mut addrs = vec![v4.as_str()];
            if let Some(v6) = &v6 {
                addrs.push(v6.as_str());
            }
            lab.tn
                .veth(End::new(&node, p.iface, &[]), End::new(&ns, "eth0", &addrs))
                .expect("pod veth");
            let i = p.iface;
            node.ip(&["link", "set", "dev", i, "address", "ee:ee:ee:ee:ee:ee"])
                .expect("host veth MAC");
            node.sysctl(&format!("net.ipv4.conf.{i}.proxy_arp"), "1")
                .expect("proxy_arp");
            node.sysctl(&format!("net.ipv4.neigh.{i}.proxy_delay"), "0")
                .expect("proxy_delay");
            node.ip(&["route", "add", &v4, "dev", i, "scope", "link"])
                .expect("host route to pod");
            ns.ip(&[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ])
            .expect("pod gateway route");
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ])
            .expect("pod default route");
            if let Some(v6) = &v6 {
                node.add_addr(i, "fe80::1/64")
                    .expect("host veth link-local");
                node.ip(&["-6", "route", "add", v6, "dev", i])
                    .expect("host route to pod (IPv6)");
                ns.ip(&[
                    "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
                ])
                .expect("pod default route (IPv6)");
            }
            lab.pods.insert(p.key, (ns, *p));
        }
        lab
    }

    /// The namespace name of a pod, an outside network or `node`.
    pub fn ns_name(&self, who: &str) -> String {
        if who == "node" {
            return self.node.name().to_string();
        }
        if let Some((ns, _)) = self.pods.get(who) {
            return ns.name().to_string();
        }
        let (ns, _) = self.outs.get(who).unwrap_or_else(|| panic!("no {who}"));
        ns.name().to_string()
    }

    /// Applies an nftables JSON batch in the node namespace.
    pub fn nft(&self, batch: &Value) -> Result<(), String> {
        nft_in(self.node.name(), batch)
    }

    /// `nft -j list table <family> tabby` in the node.
    pub fn list_table(&self, family: &str) -> Value {
        let out = self
            .node
            .output(&["nft", "-j", "list", "table", family, "tabby"])
            .expect("nft list table");
        serde_json::from_str(&out).expect("nft -j output")
    }

    /// Makes sure a listener (TCP) or echo server (UDP) runs on `port` in `who`'s
    /// namespace, on all addresses of both families.
    pub fn serve(&self, who: &str, proto: Proto, port: u16) {
        if proto == Proto::Icmp {
            return;
        }
        let ns = self.ns_name(who);
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers
            .entry((ns.clone(), proto, port))
            .or_insert_with(|| Server::start(&ns, proto, port));
    }
}

/// A TCP echo server on `port` in namespace `ns` that keeps every connection
/// open until the peer closes it (for flows that must survive an update).
pub fn tcp_echo_server(ns: &str, port: u16) {
    let addr: SocketAddr = format!("[::]:{port}").parse().expect("address");
    let l = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("listen tcp {port} in {ns}: {e}"));
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Opens a TCP connection from namespace `ns`.
pub fn connect(ns: &str, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&dst, timeout))
}

/// Sends a line on an open connection and reads the echo back within `timeout`.
pub fn echo(s: &mut TcpStream, timeout: Duration) -> bool {
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    std::io::Read::read_exact(s, &mut buf).is_ok() && &buf == b"ping\n"
}

/// Deletes namespaces `<tag><pid>-...` whose process is gone.
fn delete_leftovers(tag: &str) {
    let names = tabby_testnet::netns::list_netns().expect("ip netns list");
    let mut dead = std::collections::BTreeSet::new();
    for n in names {
        let Some(rest) = n.strip_prefix(tag) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            dead.insert(format!("{tag}{pid}-"));
        }
    }
    for prefix in dead {
        tabby_testnet::netns::cleanup_stale(&prefix).expect("delete leftovers");
    }
}

/// `nft -j -f -` inside a namespace.
pub fn nft_in(ns: &str, batch: &Value) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.to_string().as_bytes())
        .map_err(|e| format!("nft stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `f` on a fresh thread inside network namespace `ns`. Sockets made there
/// stay in that namespace wherever they are used afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("namespace thread")
}

struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, proto: Proto, port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // `[::]` without IPV6_V6ONLY serves IPv4 too.
        let addr: SocketAddr = format!("[::]:{port}").parse().expect("address");
        let thread = match proto {
            Proto::Tcp => {
                let l = in_netns(ns, move || TcpListener::bind(addr))
                    .unwrap_or_else(|e| panic!("listen tcp {port} in {ns}: {e}"));
                l.set_nonblocking(true).expect("nonblocking");
                std::thread::spawn(move || {
                    while !flag.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            Err(_) => {}
                        }
                    }
                })
            }
            Proto::Udp => {
                let s = in_netns(ns, move || UdpSocket::bind(addr))
                    .unwrap_or_else(|e| panic!("bind udp {port} in {ns}: {e}"));
                s.set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("timeout");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !flag.load(Ordering::Relaxed) {
                        if let Ok((n, peer)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(&buf[..n], peer);
                        }
                    }
                })
            }
            Proto::Icmp => unreachable!("no server for ICMP"),
        };
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a TCP connection, a UDP echo or a ping from namespace `ns` to `dst`
/// succeeds within `timeout` (a dropped packet shows as a timeout).
pub fn probe(ns: &str, dst: IpAddr, proto: Proto, port: u16, timeout: Duration) -> bool {
    match proto {
        Proto::Tcp => in_netns(ns, move || {
            TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout).is_ok()
        }),
        Proto::Udp => in_netns(ns, move || {
            let local: SocketAddr = if dst.is_ipv4() {
                "0.0.0.0:0".parse().expect("address")
            } else {
                "[::]:0".parse().expect("address")
            };
            let Ok(s) = UdpSocket::bind(local) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            if s.send_to(b"probe", SocketAddr::new(dst, port)).is_err() {
                return false;
            }
            let mut buf = [0u8; 16];
            matches!(s.recv_from(&mut buf), Ok((5, _)))
        }),
        Proto::Icmp => {
            let secs = timeout.as_secs().max(1).to_string();
            Command::new("ip")
                .args([
                    "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", &secs,
                ])
                .arg(dst.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }
    }
}

/// Strips what differs between two listings of the same state (handles, the
/// metainfo) and sorts objects, so listings compare equal exactly when the
/// kernel holds the same sets, maps, chains and rules.
pub fn normalise(listing: &Value) -> Vec<String> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("handle");
                for (_, x) in o.iter_mut() {
                    strip(x);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut out: Vec<String> = listing["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            strip(&mut o);
            let key = if o.get("set").is_some() { "set" } else { "map" };
            if let Some(elems) = o
                .get_mut(key)
                .and_then(|s| s.get_mut("elem"))
                .and_then(Value::as_array_mut)
            {
                elems.sort_by_key(|e| e.to_string());
            }
            o.to_string()
        })
        .collect();
    // Rules keep their order within a chain (the listing gives them in order);
    // sort everything else.
    let mut rules: Vec<(String, usize, String)> = Vec::new();
    let mut others = Vec::new();
    for (i, o) in out.drain(..).enumerate() {
        let v: Value = serde_json::from_str(&o).expect("json");
        match v.get("rule") {
            Some(r) => rules.push((r["chain"].to_string(), i, o)),
            None => others.push(o),
        }
    }
    others.sort();
    rules.sort();
    others.extend(rules.into_iter().map(|(_, _, o)| o));
    others
}
