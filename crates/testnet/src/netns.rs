//! A named network namespace (`ip netns add`), removed with every process in
//! it when the last handle is dropped or [`Netns::delete`] is called.

use std::net::IpAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::addr;
use crate::cmd;
use crate::error::{Error, Result};

/// A network namespace. Cloning gives another handle to the same namespace.
#[derive(Clone, Debug)]
pub struct Netns(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    name: String,
    deleted: AtomicBool,
}

impl Netns {
    /// Creates namespace `<prefix>-<name>`, brings `lo` up and turns IPv6
    /// duplicate address detection off.
    pub fn new(prefix: &str, name: &str) -> Result<Netns> {
        let full = format!("{prefix}-{name}");
        check_name(&full)?;
        cmd::ip(&["netns", "add", &full])?;
        let ns = Netns(Arc::new(Inner {
            name: full,
            deleted: AtomicBool::new(false),
        }));
        // On failure the handle drops here and deletes the half-made namespace.
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        // Without DAD, link-local and global IPv6 addresses work the moment a
        // link is up; tests would otherwise race the 1-2 s detection.
        ns.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        Ok(ns)
    }

    /// The full namespace name (as listed by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A [`Command`] that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }

    /// Runs `argv` inside the namespace; fails on a non-zero exit.
    pub fn exec(&self, argv: &[&str]) -> Result<()> {
        self.output(argv).map(drop)
    }

    /// Runs `argv` inside the namespace and returns its standard output.
    pub fn output(&self, argv: &[&str]) -> Result<String> {
        let (prog, args) = split(argv)?;
        cmd::run(self.command(prog).args(args))
    }

    /// Runs `argv` inside the namespace and returns the raw output, whatever the exit status.
    pub fn try_output(&self, argv: &[&str]) -> Result<Output> {
        let (prog, args) = split(argv)?;
        cmd::output(self.command(prog).args(args))
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name()];
        full.extend_from_slice(args);
        cmd::ip(&full)
    }

    /// `ip -j -n <ns> <args>`, parsed: for assertions on links, addresses, routes.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full)?;
        serde_json::from_str(&out).map_err(|e| Error::Parse {
            cmd: format!("ip -j -n {} {}", self.name(), args.join(" ")),
            reason: e.to_string(),
        })
    }

    /// Adds an address (`198.18.0.1/24`, `2001:db8::1/64`) to `ifname`; IPv6
    /// addresses skip duplicate address detection so they are usable at once.
    pub fn add_addr(&self, ifname: &str, address: &str) -> Result<()> {
        let net = addr::parse_net(&format!("address of {ifname} in {}", self.name()), address)?;
        let net_s = net.to_string();
        let mut args = vec!["addr", "add", net_s.as_str(), "dev", ifname];
        if net.addr().is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Adds a route to `dest` (prefix, or `default`) via gateway `via`.
    pub fn add_route(&self, dest: &str, via: &str) -> Result<()> {
        let what = format!("route in {}", self.name());
        let gw = addr::parse_addr(&what, via)?;
        let family = if gw.is_ipv4() { "-4" } else { "-6" };
        let dest_s = if dest == "default" {
            dest.to_string()
        } else {
            addr::parse_net(&what, dest)?.to_string()
        };
        self.ip(&[family, "route", "add", &dest_s, "via", &gw.to_string()])
            .map(drop)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
    }

    /// Turns on IPv4 and IPv6 forwarding, for existing and future interfaces.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.sysctl("net.ipv6.conf.default.forwarding", "1")
    }

    /// Runs `f` on a new thread that has entered this namespace, and
    /// returns its result. Sockets `f` opens belong to the namespace and
    /// can then be used from any thread: how a test talks BGP from inside
    /// a namespace without a helper process.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = std::path::PathBuf::from("/run/netns").join(self.name());
        let what = format!("in namespace {}", self.name());
        let joined = std::thread::spawn(move || -> std::io::Result<T> {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            f()
        })
        .join();
        match joined {
            Ok(r) => r.map_err(|source| Error::Io { what, source }),
            Err(_) => Err(Error::Io {
                what,
                source: std::io::Error::other("the thread panicked"),
            }),
        }
    }

    /// A TCP connection from `source` (any address when `None`) in this
    /// namespace to `to`, with `timeout` for the handshake.
    pub fn connect_tcp(
        &self,
        source: Option<IpAddr>,
        to: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<std::net::TcpStream> {
        self.run_in(move || {
            let domain = if to.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            if let Some(src) = source {
                s.bind(&std::net::SocketAddr::new(src, 0).into())?;
            }
            s.connect_timeout(&to.into(), timeout)?;
            Ok(s.into())
        })
    }

    /// True if `count` pings to `to` get at least one answer (1 s per reply at most).
    pub fn ping(&self, to: &str, count: u32) -> bool {
        let Ok(target) = addr::parse_addr("ping target", to) else {
            return false;
        };
        ping(self, target, count)
    }

    /// PIDs of all processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = cmd::ip(&["netns", "pids", self.name()])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// Sends SIGKILL to every process in the namespace.
    pub fn kill_all(&self) -> Result<()> {
        for pid in self.pids()? {
            // ESRCH: it exited meanwhile, which is what we want.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }

    /// Kills all processes in it and deletes the namespace; idempotent.
    pub fn delete(&self) -> Result<()> {
        if self.0.deleted.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        delete_named(self.name())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.deleted.load(Ordering::SeqCst)
            && let Err(e) = delete_named(&self.name)
        {
            eprintln!("tabby-testnet: deleting netns {}: {e}", self.name);
        }
    }
}

fn split<'a>(argv: &'a [&'a str]) -> Result<(&'a str, &'a [&'a str])> {
    argv.split_first()
        .map(|(p, a)| (*p, a))
        .ok_or_else(|| Error::invalid("command", "empty argv"))
}

fn ping(ns: &Netns, target: IpAddr, count: u32) -> bool {
    let count = count.max(1).to_string();
    ns.try_output(&[
        "ping",
        "-n",
        "-q",
        "-c",
        &count,
        "-i",
        "0.2",
        "-W",
        "1",
        &target.to_string(),
    ])
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// Namespace names become file names under /run/netns; keep them plain.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "netns name",
            format!("{name:?}: use 1..=64 of [A-Za-z0-9._-]"),
        ))
    }
}

/// Kills the processes in namespace `name`, then deletes it.
pub(crate) fn delete_named(name: &str) -> Result<()> {
    if let Ok(out) = cmd::ip(&["netns", "pids", name]) {
        for pid in out.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    cmd::ip(&["netns", "del", name]).map(drop)
}

/// Names of all network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    let out = cmd::ip(&["netns", "list"])?;
    Ok(parse_netns_list(&out))
}

fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Deletes every namespace whose name starts with `prefix` (leftovers of a
/// crashed run) and kills the processes inside. Returns the deleted names.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    if prefix.len() < 2 {
        return Err(Error::invalid(
            "stale prefix",
            format!("{prefix:?} is too broad (need 2+ chars)"),
        ));
    }
    delete_matching(|n| n.starts_with(prefix))
}

/// Deletes namespaces made by [`crate::TestNet`] in processes that no longer
/// run (names `t<pid>x<n>-...` whose pid is gone). Safe to call from any test.
pub fn cleanup_dead_testnets() -> Result<Vec<String>> {
    delete_matching(|n| {
        testnet_pid(n).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
}

fn delete_matching(pred: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for name in list_netns()?.into_iter().filter(|n| pred(n)) {
        match delete_named(&name) {
            Ok(()) => deleted.push(name),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(deleted)
    } else {
        Err(Error::Cleanup(errors))
    }
}

/// The pid in a TestNet namespace name `t<pid>x<n>-<rest>`.
pub(crate) fn testnet_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('t')?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_list_parsing() {
        let out = "t12x0-a (id: 3)\nt12x0-b\nother (id: 0)\n";
        assert_eq!(parse_netns_list(out), ["t12x0-a", "t12x0-b", "other"]);
    }

    #[test]
    fn testnet_names() {
        assert_eq!(testnet_pid("t4242x3-fab"), Some(4242));
        assert_eq!(testnet_pid("t4242x-fab"), None);
        assert_eq!(testnet_pid("tgc12-d"), None);
        assert_eq!(testnet_pid("x1-a"), None);
    }

    #[test]
    fn names_checked() {
        assert!(check_name("t1x0-node1").is_ok());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }
}
