//! BFD peers from real daemons, for interop tests: BIRD's `protocol bfd`
//! and FRR's `bfdd` (with `zebra`, which `bfdd` needs to learn interfaces),
//! configured from one [`BfdConfig`] and queried for sessions in one
//! shape. Each daemon gets its own temp dir, control socket and pid file.
//!
//! ```text
//! BIRD:  protocol bfd tabby { interface "eth0" { min rx interval 200 ms; ... };
//!                              neighbor 198.18.0.1 dev "eth0" local 198.18.0.2; }
//! FRR:   bfd
//!         peer 198.18.0.1 local-address 198.18.0.2 interface eth0
//!          receive-interval 200
//!          transmit-interval 200
//!          detect-multiplier 3
//! ```

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{DaemonKind, STARTUP};
use crate::addr;
use crate::cmd;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::wait::{expect_within, wait_until};

const BFDD: &str = "/usr/lib/frr/bfdd";
const ZEBRA: &str = "/usr/lib/frr/zebra";

/// One BFD peer of a daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdPeer {
    /// The peer's address.
    pub address: IpAddr,
    /// Our address towards it.
    pub local: IpAddr,
    /// The interface it is reached on (single hop); ignored for multihop.
    pub interface: String,
}

/// Keyed SHA-1 authentication (BIRD only; FRR 8.4's bfdd has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdAuth {
    /// Meticulous keyed SHA-1 rather than keyed SHA-1.
    pub meticulous: bool,
    /// Key id.
    pub key_id: u8,
    /// The key (no quotes or newlines).
    pub key: String,
}

/// Daemon-independent BFD configuration: the same timers for every peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdConfig {
    /// Router id (BIRD wants one).
    pub router_id: std::net::Ipv4Addr,
    /// Peers.
    pub peers: Vec<BfdPeer>,
    /// Required Min RX Interval, milliseconds.
    pub min_rx_ms: u32,
    /// Desired Min TX Interval, milliseconds.
    pub min_tx_ms: u32,
    /// Detect Mult.
    pub multiplier: u8,
    /// Passive role.
    pub passive: bool,
    /// Multihop sessions (UDP 4784) instead of single hop.
    pub multihop: bool,
    /// Authentication.
    pub auth: Option<BfdAuth>,
}

impl BfdConfig {
    /// 300 ms both ways, Detect Mult 3, active, single hop, no peers.
    pub fn new(router_id: std::net::Ipv4Addr) -> BfdConfig {
        BfdConfig {
            router_id,
            peers: Vec::new(),
            min_rx_ms: 300,
            min_tx_ms: 300,
            multiplier: 3,
            passive: false,
            multihop: false,
            auth: None,
        }
    }
    /// Adds a peer.
    pub fn peer(mut self, address: IpAddr, local: IpAddr, interface: &str) -> Self {
        self.peers.push(BfdPeer {
            address,
            local,
            interface: interface.to_string(),
        });
        self
    }
    /// Sets both intervals and the multiplier.
    pub fn timers(mut self, min_rx_ms: u32, min_tx_ms: u32, multiplier: u8) -> Self {
        self.min_rx_ms = min_rx_ms;
        self.min_tx_ms = min_tx_ms;
        self.multiplier = multiplier;
        self
    }
    /// Sets authentication.
    pub fn auth(mut self, auth: BfdAuth) -> Self {
        self.auth = Some(auth);
        self
    }
    /// Makes the sessions multihop.
    pub fn multihop(mut self) -> Self {
        self.multihop = true;
        self
    }
    /// Makes the sessions passive.
    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    /// Checks addresses, names and values.
    pub fn validate(&self) -> Result<()> {
        for (i, p) in self.peers.iter().enumerate() {
            addr::check_addr(&format!("peers[{i}].address"), p.address)?;
            addr::check_addr(&format!("peers[{i}].local"), p.local)?;
            if !self.multihop {
                addr::check_ifname(&p.interface)?;
            }
        }
        if self.multiplier == 0 {
            return Err(Error::invalid("multiplier", "0 never detects anything"));
        }
        if self.min_rx_ms < 10 || self.min_tx_ms < 10 {
            return Err(Error::invalid("intervals", "at least 10 ms"));
        }
        if let Some(a) = &self.auth
            && (a.key.is_empty() || a.key.len() > 20 || a.key.contains(['"', '\n']))
        {
            return Err(Error::invalid(
                "auth.key",
                "1..=20 chars, no quote or newline",
            ));
        }
        Ok(())
    }
}

/// BFD session state as a daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BfdState {
    /// Administratively down.
    AdminDown,
    /// Down.
    Down,
    /// Init.
    Init,
    /// Up.
    Up,
    /// Anything else, verbatim.
    Other(String),
}

impl BfdState {
    /// Parses BIRD's and FRR's spellings (`Up`, `up`, `AdminDown`, `shutdown`).
    pub fn parse(s: &str) -> BfdState {
        match s.trim().to_ascii_lowercase().as_str() {
            "up" => BfdState::Up,
            "down" => BfdState::Down,
            "init" => BfdState::Init,
            "admindown" | "shutdown" | "adm-down" => BfdState::AdminDown,
            _ => BfdState::Other(s.trim().to_string()),
        }
    }
}

/// One session as a daemon reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct BfdSession {
    /// The peer.
    pub peer: IpAddr,
    /// Its state.
    pub state: BfdState,
    /// Negotiated transmit interval, when shown.
    pub tx_interval: Option<Duration>,
    /// Detection time, when shown.
    pub detect_time: Option<Duration>,
}

/// Operations common to BFD daemon runners.
pub trait BfdDaemon: Send {
    /// Which daemon this is.
    fn kind(&self) -> DaemonKind;
    /// The namespace it runs in.
    fn netns(&self) -> &Netns;
    /// Every session.
    fn sessions(&self) -> Result<Vec<BfdSession>>;
    /// Changes the timers of every session (a Poll Sequence on the wire).
    fn set_timers(&mut self, min_rx_ms: u32, min_tx_ms: u32, multiplier: u8) -> Result<()>;
    /// SIGKILL: the peer sees the session time out.
    fn kill(&mut self) -> Result<()>;
    /// Starts it again after `kill`.
    fn restart(&mut self) -> Result<()>;

    /// The session with `peer`, if configured.
    fn session(&self, peer: IpAddr) -> Result<Option<BfdSession>> {
        Ok(self.sessions()?.into_iter().find(|s| s.peer == peer))
    }

    /// Waits until the session with `peer` satisfies `f`, and returns it.
    fn wait_session(
        &self,
        peer: IpAddr,
        what: &str,
        timeout: Duration,
        f: &dyn Fn(&BfdSession) -> bool,
    ) -> Result<BfdSession> {
        let what = format!(
            "{} BFD session with {peer} in {} to be {what}",
            self.kind().name(),
            self.netns().name()
        );
        expect_within(&what, timeout, || {
            self.session(peer).ok().flatten().filter(|s| f(s))
        })
    }

    /// Waits until the session with `peer` is in `state`.
    fn wait_state(&self, peer: IpAddr, state: BfdState, timeout: Duration) -> Result<BfdSession> {
        let label = format!("{state:?}");
        self.wait_session(peer, &label, timeout, &|s| s.state == state)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::File {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A running BIRD with one `protocol bfd`.
pub struct BirdBfd {
    ns: Netns,
    cfg: BfdConfig,
    dir: tempfile::TempDir,
    proc: Option<Process>,
}

impl BirdBfd {
    /// Writes the config and starts BIRD in `ns`.
    pub fn start(ns: &Netns, cfg: &BfdConfig) -> Result<BirdBfd> {
        cfg.validate()?;
        let dir = super::daemon_dir(DaemonKind::Bird, ns)?;
        super::write_file(&dir.path().join("bird.conf"), &render_bird(cfg, dir.path()))?;
        let mut b = BirdBfd {
            ns: ns.clone(),
            cfg: cfg.clone(),
            dir,
            proc: None,
        };
        b.launch()?;
        Ok(b)
    }

    fn sock(&self) -> String {
        self.dir.path().join("bird.ctl").display().to_string()
    }

    fn launch(&mut self) -> Result<()> {
        self.proc = Some(super::bird::launch(&self.ns, self.dir.path())?);
        Ok(())
    }

    /// Runs a `birdc` command.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        super::bird::birdc(&self.sock(), args)
    }

    /// BIRD's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bird.log")).unwrap_or_default()
    }
}

impl BfdDaemon for BirdBfd {
    fn kind(&self) -> DaemonKind {
        DaemonKind::Bird
    }
    fn netns(&self) -> &Netns {
        &self.ns
    }
    fn sessions(&self) -> Result<Vec<BfdSession>> {
        Ok(parse_bird_sessions(
            &self.birdc(&["show", "bfd", "sessions"])?,
        ))
    }
    fn set_timers(&mut self, min_rx_ms: u32, min_tx_ms: u32, multiplier: u8) -> Result<()> {
        self.cfg = self.cfg.clone().timers(min_rx_ms, min_tx_ms, multiplier);
        super::write_file(
            &self.dir.path().join("bird.conf"),
            &render_bird(&self.cfg, self.dir.path()),
        )?;
        let out = self.birdc(&["configure"])?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(Error::Command {
                cmd: "birdc configure".into(),
                status: "not reconfigured".into(),
                stderr: out,
            })
        }
    }
    fn kill(&mut self) -> Result<()> {
        match self.proc.take() {
            Some(mut p) => p.kill(),
            None => Ok(()),
        }
    }
    fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.launch()
    }
}

/// BIRD's config text for `cfg`.
pub fn render_bird(cfg: &BfdConfig, dir: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "router id {};", cfg.router_id);
    let _ = writeln!(s, "log \"{}\" all;", dir.join("bird.log").display());
    s.push_str("protocol device { scan time 10; }\nprotocol bfd tabby {\n");
    let mut opts = format!(
        "min rx interval {} ms; min tx interval {} ms; idle tx interval 1000 ms; multiplier {};",
        cfg.min_rx_ms, cfg.min_tx_ms, cfg.multiplier
    );
    if cfg.passive {
        opts.push_str(" passive on;");
    }
    if let Some(a) = &cfg.auth {
        let _ = write!(
            opts,
            " authentication {}keyed sha1; password \"{}\" {{ id {}; }};",
            if a.meticulous { "meticulous " } else { "" },
            a.key,
            a.key_id
        );
    }
    if cfg.multihop {
        let _ = writeln!(s, "  multihop {{ {opts} }};");
    } else {
        let mut ifaces: Vec<&str> = cfg.peers.iter().map(|p| p.interface.as_str()).collect();
        ifaces.sort_unstable();
        ifaces.dedup();
        for i in ifaces {
            let _ = writeln!(s, "  interface \"{i}\" {{ {opts} }};");
        }
    }
    for p in &cfg.peers {
        if cfg.multihop {
            let _ = writeln!(s, "  neighbor {} local {} multihop on;", p.address, p.local);
        } else {
            let _ = writeln!(
                s,
                "  neighbor {} dev \"{}\" local {};",
                p.address, p.interface, p.local
            );
        }
    }
    s.push_str("}\n");
    s
}

fn secs(s: &str) -> Option<Duration> {
    s.parse::<f64>().ok().map(Duration::from_secs_f64)
}

/// Sessions from `birdc show bfd sessions`.
pub fn parse_bird_sessions(out: &str) -> Vec<BfdSession> {
    out.lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            let peer: IpAddr = c.first()?.parse().ok()?;
            // IP, interface, state, since, interval, timeout.
            Some(BfdSession {
                peer,
                state: BfdState::parse(c.get(2)?),
                tx_interval: c.get(4).and_then(|v| secs(v)),
                detect_time: c.get(5).and_then(|v| secs(v)),
            })
        })
        .collect()
}

/// A running FRR `bfdd` with its `zebra`.
pub struct FrrBfd {
    ns: Netns,
    cfg: BfdConfig,
    dir: tempfile::TempDir,
    zebra: Option<Process>,
    bfdd: Option<Process>,
}

impl FrrBfd {
    /// Writes the config and starts zebra and bfdd in `ns`.
    pub fn start(ns: &Netns, cfg: &BfdConfig) -> Result<FrrBfd> {
        cfg.validate()?;
        if cfg.auth.is_some() {
            return Err(Error::Unsupported {
                daemon: "frr bfdd",
                feature: "authentication".into(),
            });
        }
        let dir = super::daemon_dir(DaemonKind::Frr, ns)?;
        let d = dir.path();
        // zebra and bfdd run as user frr and write pid files and sockets here.
        set_mode(d, 0o777)?;
        for (name, text) in [
            ("zebra.conf", format!("hostname {}\n", ns.name())),
            ("bfdd.conf", render_frr(cfg, d, ns.name())),
        ] {
            super::write_file(&d.join(name), &text)?;
            set_mode(&d.join(name), 0o644)?;
        }
        let mut f = FrrBfd {
            ns: ns.clone(),
            cfg: cfg.clone(),
            dir,
            zebra: None,
            bfdd: None,
        };
        f.launch()?;
        Ok(f)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn launch(&mut self) -> Result<()> {
        let d = self.dir.path().to_path_buf();
        let vty = d.display().to_string();
        let zsock = self.path("zserv.api");
        for (daemon, bin) in [("zebra", ZEBRA), ("bfdd", BFDD)] {
            let _ = std::fs::remove_file(d.join(format!("{daemon}.vty")));
            let (conf, pid) = (
                self.path(&format!("{daemon}.conf")),
                self.path(&format!("{daemon}.pid")),
            );
            let ctl = self.path("bfdd.sock");
            let mut argv = vec![
                bin,
                "-f",
                &conf,
                "-i",
                &pid,
                "-z",
                &zsock,
                "--vty_socket",
                &vty,
                "-u",
                "frr",
                "-g",
                "frr",
                "-P",
                "0",
            ];
            if daemon == "bfdd" {
                argv.extend(["--bfdctl", &ctl]);
            }
            let mut p = Process::spawn(&self.ns, &argv, &d.join(format!("{daemon}.out")))?;
            if !wait_until(STARTUP, || {
                !p.is_running() || self.vtysh(daemon, &["show version"]).is_ok()
            }) || !p.is_running()
            {
                return Err(p.died());
            }
            if daemon == "zebra" {
                self.zebra = Some(p);
            } else {
                self.bfdd = Some(p);
            }
        }
        Ok(())
    }

    /// Runs vtysh commands against `daemon` (each string is one `-c`).
    pub fn vtysh(&self, daemon: &str, commands: &[&str]) -> Result<String> {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket")
            .arg(self.dir.path())
            .args(["-d", daemon]);
        for x in commands {
            c.args(["-c", x]);
        }
        cmd::run(&mut c)
    }

    /// bfdd's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bfdd.log")).unwrap_or_default()
    }
}

impl BfdDaemon for FrrBfd {
    fn kind(&self) -> DaemonKind {
        DaemonKind::Frr
    }
    fn netns(&self) -> &Netns {
        &self.ns
    }
    fn sessions(&self) -> Result<Vec<BfdSession>> {
        let out = self.vtysh("bfdd", &["show bfd peers json"])?;
        let v: Value = serde_json::from_str(&out).map_err(|e| Error::Parse {
            cmd: "show bfd peers json".into(),
            reason: e.to_string(),
        })?;
        Ok(parse_frr_peers(&v))
    }
    fn set_timers(&mut self, min_rx_ms: u32, min_tx_ms: u32, multiplier: u8) -> Result<()> {
        self.cfg = self.cfg.clone().timers(min_rx_ms, min_tx_ms, multiplier);
        let (rx, tx, m) = (
            format!("receive-interval {min_rx_ms}"),
            format!("transmit-interval {min_tx_ms}"),
            format!("detect-multiplier {multiplier}"),
        );
        for p in self.cfg.peers.clone() {
            let head = peer_line(&self.cfg, &p);
            self.vtysh(
                "bfdd",
                &["configure terminal", "bfd", head.trim(), &rx, &tx, &m],
            )?;
        }
        Ok(())
    }
    fn kill(&mut self) -> Result<()> {
        for p in [self.bfdd.take(), self.zebra.take()].into_iter().flatten() {
            let mut p = p;
            p.kill()?;
        }
        Ok(())
    }
    fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.launch()
    }
}

fn peer_line(cfg: &BfdConfig, p: &BfdPeer) -> String {
    if cfg.multihop {
        format!(" peer {} multihop local-address {}", p.address, p.local)
    } else {
        format!(
            " peer {} local-address {} interface {}",
            p.address, p.local, p.interface
        )
    }
}

/// bfdd's config text for `cfg`.
pub fn render_frr(cfg: &BfdConfig, dir: &Path, hostname: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "hostname {hostname}\nlog file {}/bfdd.log\n!\nbfd",
        dir.display()
    );
    for p in &cfg.peers {
        let _ = writeln!(s, "{}", peer_line(cfg, p));
        let _ = writeln!(
            s,
            "  receive-interval {}\n  transmit-interval {}\n  detect-multiplier {}",
            cfg.min_rx_ms, cfg.min_tx_ms, cfg.multiplier
        );
        if cfg.passive {
            s.push_str("  passive-mode\n");
        }
        s.push_str(" !\n");
    }
    s.push_str("!\n");
    s
}

/// Sessions from `show bfd peers json`. FRR shows configured intervals;
/// the negotiated ones follow RFC 5880: TX is the larger of ours and the
/// peer's RX, detection the peer's multiplier times the larger of our RX
/// and the peer's TX.
pub fn parse_frr_peers(v: &Value) -> Vec<BfdSession> {
    let ms = |p: &Value, k: &str| p.get(k).and_then(Value::as_u64);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let peer = p.get("peer")?.as_str()?.parse().ok()?;
            let state = BfdState::parse(p.get("status")?.as_str()?);
            let tx = ms(p, "transmit-interval")
                .zip(ms(p, "remote-receive-interval"))
                .map(|(a, b)| Duration::from_millis(a.max(b)));
            let detect = ms(p, "receive-interval")
                .zip(ms(p, "remote-transmit-interval"))
                .zip(ms(p, "remote-detect-multiplier"))
                .map(|((a, b), m)| Duration::from_millis(a.max(b) * m));
            Some(BfdSession {
                peer,
                state,
                tx_interval: tx,
                detect_time: detect,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BfdConfig {
        BfdConfig::new("198.18.0.2".parse().unwrap())
            .peer(
                "198.18.0.1".parse().unwrap(),
                "198.18.0.2".parse().unwrap(),
                "eth0",
            )
            .timers(200, 250, 4)
    }

    #[test]
    fn bird_config_and_output() {
        let t = render_bird(
            &cfg().auth(BfdAuth {
                meticulous: true,
                key_id: 7,
                key: "k".into(),
            }),
            Path::new("/d"),
        );
        for want in [
            "protocol bfd tabby {\n",
            "  interface \"eth0\" { min rx interval 200 ms; min tx interval 250 ms; idle tx interval 1000 ms; multiplier 4; authentication meticulous keyed sha1; password \"k\" { id 7; }; };\n",
            "  neighbor 198.18.0.1 dev \"eth0\" local 198.18.0.2;\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let mh = render_bird(&cfg().multihop(), Path::new("/d"));
        assert!(mh.contains("  multihop { min rx"), "{mh}");
        assert!(
            mh.contains("neighbor 198.18.0.1 local 198.18.0.2 multihop on;"),
            "{mh}"
        );
        let out = "BIRD 2.0.12 ready.\ntabby:\nIP address                Interface  State      Since         Interval  Timeout\n198.18.0.1                eth0       Up         22:54:31.411    0.300    0.900\n2001:db8::1               eth0       Down       22:54:31.411    1.000    0.000\n";
        let s = parse_bird_sessions(out);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].state, BfdState::Up);
        assert_eq!(s[0].tx_interval, Some(Duration::from_millis(300)));
        assert_eq!(s[0].detect_time, Some(Duration::from_millis(900)));
        assert_eq!(s[1].state, BfdState::Down);
    }

    #[test]
    fn frr_config_and_output() {
        let t = render_frr(&cfg().passive(), Path::new("/d"), "h");
        assert!(
            t.contains("bfd\n peer 198.18.0.1 local-address 198.18.0.2 interface eth0\n  receive-interval 200\n  transmit-interval 250\n  detect-multiplier 4\n  passive-mode\n !\n!\n"),
            "{t}"
        );
        let v: Value = serde_json::from_str(
            r#"[{"multihop":false,"peer":"198.18.0.1","status":"up","receive-interval":300,"transmit-interval":300,
                "remote-receive-interval":200,"remote-transmit-interval":500,"remote-detect-multiplier":3}]"#,
        )
        .unwrap();
        let s = parse_frr_peers(&v);
        assert_eq!(s[0].state, BfdState::Up);
        assert_eq!(s[0].tx_interval, Some(Duration::from_millis(300)));
        assert_eq!(s[0].detect_time, Some(Duration::from_millis(1500)));
        assert_eq!(BfdState::parse("shutdown"), BfdState::AdminDown);
    }
}
