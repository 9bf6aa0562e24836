//! Shared by the interop tests: `Tabby` runs the `tabby-bgpd` binary in a
//! namespace and reads its `--events` JSON lines; `daemon` starts a real
//! speaker of a given kind.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tabby_testnet::Netns;
use tabby_testnet::bgp::{self, BgpConfig, BgpDaemon, DaemonKind};

pub const BIN: &str = env!("CARGO_BIN_EXE_tabby-bgpd");

/// The daemon under test: this build's, or `$TABBY_BGPD` (to run a test
/// against another build, e.g. to see it fail on the code before a fix).
pub fn bin() -> String {
    std::env::var("TABBY_BGPD").unwrap_or_else(|_| BIN.to_string())
}
/// Generous: the machine running these is shared and often loaded.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Tabby {
    pub child: Child,
    pub events: mpsc::Receiver<Value>,
    /// Every event received so far: waits look here first, so they do not
    /// depend on the order events were printed in.
    pub seen: std::cell::RefCell<Vec<Value>>,
    _dir: tempfile::TempDir,
}

impl Drop for Tabby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tabby {
    pub fn start(ns: &Netns, config: &str) -> Tabby {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgpd.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("bgpd.log")).unwrap();
        let mut child = ns
            .command(&bin())
            .arg("--config")
            .arg(&path)
            .arg("--events")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tabby-bgpd in the namespace");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Tabby {
            child,
            events: rx,
            seen: Default::default(),
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("bgpd.log")).unwrap_or_default()
    }

    pub fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT;
        if self.seen.borrow().iter().any(&f) {
            return;
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    let hit = f(&v);
                    self.seen.borrow_mut().push(v);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "timed out waiting for {what}; tabby-bgpd log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Next hops of the last route event seen for `prefix`.
    pub fn latest(&self, prefix: &str) -> Option<Value> {
        self.seen.borrow_mut().extend(self.events.try_iter());
        self.seen
            .borrow()
            .iter()
            .rev()
            .find(|v| v["event"] == "route" && v["prefix"] == prefix)
            .map(|v| v["nextHops"].clone())
    }

    pub fn wait_route(&self, prefix: &str, next_hops: Value) {
        self.wait(&format!("route {prefix} via {next_hops}"), |v| {
            v["event"] == "route" && v["prefix"] == prefix && v["nextHops"] == next_hops
        });
    }
}

/// Starts a daemon of `kind` in `ns`.
pub fn daemon(kind: DaemonKind, ns: &Netns, cfg: &BgpConfig) -> Box<dyn BgpDaemon> {
    bgp::start(kind, ns, cfg).unwrap_or_else(|e| panic!("starting {}: {e}", kind.name()))
}

/// A `tabby-bgpd` YAML config: short timers, `peers` as (address, remote AS,
/// route-reflector client), `originate` as prefixes.
pub fn tabby_config(
    router_id: &str,
    asn: u32,
    cluster_id: Option<&str>,
    peers: &[(&str, u32, bool)],
    originate: &[&str],
) -> String {
    let mut s = format!(
        "routerId: {router_id}\nasn: {asn}\nlisten: \"[::]:179\"\nholdTime: 9\n\
         connectRetrySecs: 1\nidleHoldSecs: 1\n"
    );
    if let Some(c) = cluster_id {
        s.push_str(&format!("clusterId: {c}\n"));
    }
    s.push_str("peers:\n");
    for (address, remote_as, rr_client) in peers {
        s.push_str(&format!(
            "  - address: {address}\n    remoteAs: {remote_as}\n    routeReflectorClient: {rr_client}\n"
        ));
    }
    if !originate.is_empty() {
        s.push_str("originate:\n");
        for p in originate {
            s.push_str(&format!("  - prefix: {p}\n"));
        }
    }
    s
}

/// A BGP peer made of a bare TCP socket and the tabby-bgp codec: sends
/// exactly the bytes a test asks for (oversized, too many, never reading).
pub struct RawPeer {
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
    pub cxt: tabby_bgp::packet::EncodeCxt,
}

impl RawPeer {
    /// Connects from `src` in `ns` to `dst:179` (retrying while refused),
    /// optionally with a small receive buffer, and completes the OPEN
    /// exchange as `asn` with `caps`.
    pub fn establish(
        ns: &Netns,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        asn: u32,
        caps: Vec<tabby_bgp::packet::capability::Capability>,
        recv_buffer: Option<usize>,
    ) -> RawPeer {
        let deadline = Instant::now() + WAIT;
        loop {
            match RawPeer::try_establish(ns, src, dst, asn, caps.clone(), recv_buffer) {
                Ok(p) => return p,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("raw peer {src}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("raw peer {src} -> {dst}: {e}"),
            }
        }
    }

    /// One attempt of [`RawPeer::establish`].
    pub fn try_establish(
        ns: &Netns,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        asn: u32,
        caps: Vec<tabby_bgp::packet::capability::Capability>,
        recv_buffer: Option<usize>,
    ) -> Result<RawPeer, String> {
        use tabby_bgp::packet::message::{Message, OpenMsg};
        let stream = ns
            .run_in(move || {
                let s = socket2::Socket::new(
                    if dst.is_ipv4() {
                        socket2::Domain::IPV4
                    } else {
                        socket2::Domain::IPV6
                    },
                    socket2::Type::STREAM,
                    None,
                )?;
                if let Some(n) = recv_buffer {
                    s.set_recv_buffer_size(n)?;
                }
                s.bind(&std::net::SocketAddr::new(src, 0).into())?;
                s.connect_timeout(
                    &std::net::SocketAddr::new(dst, 179).into(),
                    Duration::from_secs(3),
                )?;
                s.set_tcp_nodelay(true)?;
                Ok(std::net::TcpStream::from(s))
            })
            .map_err(|e| e.to_string())?;
        let four = caps
            .iter()
            .any(|c| matches!(c, tabby_bgp::packet::capability::Capability::FourOctetAs(_)));
        let mut p = RawPeer {
            stream,
            buf: Vec::new(),
            cxt: tabby_bgp::packet::EncodeCxt {
                four_octet_as: four,
                extended_message: false,
            },
        };
        let id = match src {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::new(198, 18, 255, 1),
        };
        p.send(&Message::Open(OpenMsg::new(asn, 9, id, caps)));
        p.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut got_open = false;
        loop {
            match p.next().map_err(|e| e.to_string())? {
                Message::Open(_) => {
                    got_open = true;
                    p.send(&Message::Keepalive);
                }
                Message::Keepalive if got_open => break,
                Message::Notification(n) => return Err(format!("NOTIFICATION {n}")),
                _ => {}
            }
        }
        p.stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Writes one message.
    pub fn send(&mut self, m: &tabby_bgp::packet::message::Message) {
        use std::io::Write;
        self.stream
            .write_all(&m.encode(&self.cxt))
            .expect("raw peer write");
    }

    /// Sends a KEEPALIVE every 3 s from another thread until the
    /// connection fails, so the raw peer's session outlives a short hold
    /// time while the test only writes what it wants.
    pub fn keepalives(&self) {
        use std::io::Write;
        let mut s = self
            .stream
            .try_clone()
            .expect("clone the raw peer's socket");
        let ka = tabby_bgp::packet::message::Message::Keepalive.encode(&self.cxt);
        std::thread::spawn(move || {
            while s.write_all(&ka).is_ok() {
                std::thread::sleep(Duration::from_secs(3));
            }
        });
    }

    /// Writes raw bytes; false once the connection is gone.
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        use std::io::Write;
        self.stream.write_all(bytes).is_ok()
    }

    /// The next message from the other side.
    pub fn next(&mut self) -> std::io::Result<tabby_bgp::packet::message::Message> {
        use std::io::Read;
        let dcxt = tabby_bgp::packet::DecodeCxt {
            four_octet_as: self.cxt.four_octet_as,
            extended_message: false,
        };
        loop {
            if self.buf.len() >= 19 {
                let len = usize::from(u16::from_be_bytes([self.buf[16], self.buf[17]]));
                if self.buf.len() >= len {
                    let frame: Vec<u8> = self.buf.drain(..len).collect();
                    return tabby_bgp::packet::message::Message::decode(&frame, &dcxt)
                        .map_err(std::io::Error::other);
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Peak and current resident memory of a process, in KiB.
pub fn memory_kb(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
