//! [`TestNet`]: the owner of one test's namespaces, links, bridges, processes
//! and temp dirs, with a unique name prefix; everything goes away on drop,
//! also when the test panics.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::addr;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::Process;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One end of a link: the namespace, the interface name there, its addresses.
#[derive(Clone, Copy, Debug)]
pub struct End<'a> {
    /// Namespace the interface lives in.
    pub ns: &'a Netns,
    /// Interface name (at most 15 bytes).
    pub ifname: &'a str,
    /// Addresses with prefix length, e.g. `198.18.0.1/24`, `2001:db8::1/64`.
    pub addrs: &'a [&'a str],
}

impl<'a> End<'a> {
    /// Shorthand constructor.
    pub fn new(ns: &'a Netns, ifname: &'a str, addrs: &'a [&'a str]) -> Self {
        End { ns, ifname, addrs }
    }
}

/// An L2 segment: a bridge in the fabric namespace with one port per member.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Bridge name inside the fabric namespace.
    pub bridge: String,
    /// The fabric namespace holding all bridges of this [`TestNet`].
    pub fabric: Netns,
    index: usize,
}

#[derive(Default)]
struct State {
    namespaces: Vec<Netns>,
    fabric: Option<Netns>,
    links: Vec<(Netns, String)>,
    bridges: Vec<(Netns, String)>,
    segment_ports: Vec<usize>,
    processes: Vec<Process>,
    temp_dirs: Vec<tempfile::TempDir>,
}

/// Owner of a test network. Namespaces are named `<prefix>-<name>`, with
/// prefix `t<pid>x<n>` unique per process and instance.
pub struct TestNet {
    prefix: String,
    state: Mutex<State>,
}

impl TestNet {
    /// A new, empty test network with a fresh prefix.
    pub fn new() -> TestNet {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        TestNet::with_prefix(&format!("t{}x{n}", std::process::id()))
    }

    /// A test network with a chosen prefix (must not be in use).
    pub fn with_prefix(prefix: &str) -> TestNet {
        TestNet {
            prefix: prefix.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// The name prefix of all namespaces of this network.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not stop the cleanup.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates namespace `<prefix>-<name>` with `lo` up.
    pub fn netns(&self, name: &str) -> Result<Netns> {
        let ns = Netns::new(&self.prefix, name)?;
        self.state().namespaces.push(ns.clone());
        Ok(ns)
    }

    /// Creates a namespace with IPv4 and IPv6 forwarding on.
    pub fn router(&self, name: &str) -> Result<Netns> {
        let ns = self.netns(name)?;
        ns.enable_forwarding()?;
        Ok(ns)
    }

    /// The shared fabric namespace that holds the bridges (created on first use).
    pub fn fabric(&self) -> Result<Netns> {
        let mut st = self.state();
        if let Some(f) = &st.fabric {
            return Ok(f.clone());
        }
        let f = Netns::new(&self.prefix, "fab")?;
        st.fabric = Some(f.clone());
        Ok(f)
    }

    /// A veth pair between two namespaces, with addresses, both ends up.
    pub fn veth(&self, a: End<'_>, b: End<'_>) -> Result<()> {
        addr::check_ifname(a.ifname)?;
        addr::check_ifname(b.ifname)?;
        let a_addrs = parse_all(&a)?;
        let b_addrs = parse_all(&b)?;
        crate::cmd::ip(&[
            "link",
            "add",
            "name",
            a.ifname,
            "netns",
            a.ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            b.ifname,
            "netns",
            b.ns.name(),
        ])?;
        self.state()
            .links
            .push((a.ns.clone(), a.ifname.to_string()));
        configure(&a, &a_addrs)?;
        configure(&b, &b_addrs)?;
        Ok(())
    }

    /// A bridge named `br-<name>` (name at most 12 bytes) in the fabric
    /// namespace, with a veth port for each member.
    pub fn segment(&self, name: &str, members: &[End<'_>]) -> Result<Segment> {
        let bridge = format!("br-{name}");
        addr::check_ifname(&bridge)?;
        let fabric = self.fabric()?;
        fabric.ip(&["link", "add", "name", &bridge, "type", "bridge"])?;
        let index = {
            let mut st = self.state();
            st.bridges.push((fabric.clone(), bridge.clone()));
            st.segment_ports.push(0);
            st.segment_ports.len() - 1
        };
        fabric.ip(&["link", "set", "dev", &bridge, "up"])?;
        let seg = Segment {
            bridge,
            fabric,
            index,
        };
        for m in members {
            self.attach(&seg, *m)?;
        }
        Ok(seg)
    }

    /// Connects one more namespace to a segment.
    pub fn attach(&self, seg: &Segment, member: End<'_>) -> Result<()> {
        addr::check_ifname(member.ifname)?;
        let addrs = parse_all(&member)?;
        let port = {
            let mut st = self.state();
            let n = &mut st.segment_ports[seg.index];
            *n += 1;
            format!("s{}p{}", seg.index, *n)
        };
        crate::cmd::ip(&[
            "link",
            "add",
            "name",
            member.ifname,
            "netns",
            member.ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            seg.fabric.name(),
        ])?;
        self.state().links.push((seg.fabric.clone(), port.clone()));
        seg.fabric
            .ip(&["link", "set", "dev", &port, "master", &seg.bridge, "up"])?;
        configure(&member, &addrs)
    }

    /// Starts a process in `ns` that is killed at cleanup; output goes to a
    /// log file in a temp dir of this network.
    pub fn spawn(&self, ns: &Netns, argv: &[&str]) -> Result<u32> {
        let dir = self.temp_dir("proc")?;
        let p = Process::spawn(ns, argv, &dir.join("output.log"))?;
        let pid = p.pid().unwrap_or_default();
        self.state().processes.push(p);
        Ok(pid)
    }

    /// A temporary directory removed at cleanup.
    pub fn temp_dir(&self, label: &str) -> Result<PathBuf> {
        let d = tempfile::Builder::new()
            .prefix(&format!("tabby-{}-{label}-", self.prefix))
            .tempdir()
            .map_err(|source| Error::File {
                path: std::env::temp_dir(),
                source,
            })?;
        let path = d.path().to_path_buf();
        self.state().temp_dirs.push(d);
        Ok(path)
    }

    /// Removes everything this network made: processes, links, bridges,
    /// namespaces, temp dirs. Every step is attempted; errors are collected.
    pub fn cleanup(&self) -> Result<()> {
        let mut guard = self.state();
        let st = &mut *guard;
        let mut errors = Vec::new();
        for mut p in st.processes.drain(..) {
            if let Err(e) = p.kill() {
                errors.push(e);
            }
        }
        let links: Vec<_> = st.links.drain(..).chain(st.bridges.drain(..)).collect();
        for (ns, ifname) in links {
            if let Err(e) = ns.ip(&["link", "del", "dev", &ifname]) {
                // The peer end of a veth is removed with it; a gone device or
                // namespace is the state we want.
                let gone = e.to_string().contains("Cannot find device")
                    || e.to_string().contains("No such file")
                    || e.to_string().contains("does not exist");
                if !gone {
                    errors.push(e);
                }
            }
        }
        let namespaces: Vec<_> = st.namespaces.drain(..).chain(st.fabric.take()).collect();
        for ns in namespaces {
            if let Err(e) = ns.delete() {
                errors.push(e);
            }
        }
        for d in st.temp_dirs.drain(..) {
            let path = d.path().to_path_buf();
            if let Err(source) = d.close() {
                errors.push(Error::File { path, source });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Cleanup(errors))
        }
    }
}

impl Default for TestNet {
    fn default() -> Self {
        TestNet::new()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("tabby-testnet {}: {e}", self.prefix);
        }
    }
}

fn parse_all(end: &End<'_>) -> Result<Vec<String>> {
    let what = format!("address of {} in {}", end.ifname, end.ns.name());
    end.addrs
        .iter()
        .map(|a| addr::parse_net(&what, a).map(|n| n.to_string()))
        .collect()
}

fn configure(end: &End<'_>, addrs: &[String]) -> Result<()> {
    for a in addrs {
        end.ns.add_addr(end.ifname, a)?;
    }
    end.ns
        .ip(&["link", "set", "dev", end.ifname, "up"])
        .map(drop)
}
