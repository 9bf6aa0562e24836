//! The ToR and spine routers' daemons: BIRD 2 or FRR configuration from a
//! [`FabricRouter`] (pure), their command lines, and reading back their sessions
//! (`birdc show protocols`, `vtysh -c 'show bgp summary json'`) and the routes they
//! installed in their namespace's kernel.
//!
//! Each router keeps its files in `<state dir>/<router>/`: BIRD's `bird.conf`,
//! control socket `bird.ctl` and `bird.pid`; FRR's `zebra.conf`, `bgpd.conf`, the
//! vty sockets, pid files and the zebra API socket `zserv.api`, so that no router
//! touches `/etc/frr` or `/run/frr`. FRR runs as root with group `frrvty` (as root
//! with its default group it refuses to start; as user `frr` it could not enter a
//! lab dir only root may read). Pitfalls handled: FRR's `bgp ebgp-requires-policy`
//! (off here) and `bgp default ipv4-unicast` (off, every neighbour activated), BIRD's
//! need for explicit import and export on every channel, next-hop-self on ToRs for
//! routes learned over eBGP only. With BFD ([`FabricRouter::bfd`]): BIRD's
//! `protocol bfd` and `bfd on` on every session; FRR's `bfdd` (between zebra and
//! bgpd) with profile `tabby` and `neighbor X bfd profile tabby`; 300 ms x 3 both.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::LabError;
use super::check::{Observed, RouteCounts};
use super::fabric::{Export, FabricRouter};
use super::layout::BGP_HOLD_TIME;
use super::spec::RouterKind;

/// Where FRR's daemons are installed (Debian's frr package).
pub const FRR_DIR: &str = "/usr/lib/frr";

/// The kernel route protocol a daemon installs its routes with.
pub fn kernel_proto(kind: RouterKind) -> &'static str {
    match kind {
        RouterKind::Bird => "bird",
        RouterKind::Frr => "bgp",
    }
}

/// BFD timers of the routers with BFD: min RX = min TX, milliseconds, and the
/// multiplier (as Tabby's `tabby.dev/bfd: "on"`).
pub const BFD_INTERVAL_MS: u32 = 300;
/// See [`BFD_INTERVAL_MS`].
pub const BFD_MULTIPLIER: u8 = 3;

fn keepalive() -> u16 {
    (BGP_HOLD_TIME / 3).max(1)
}

/// BIRD's configuration for `r`.
pub fn bird_config(r: &FabricRouter) -> String {
    let mut c = format!(
        "# tabby lab: {} {}, AS {}
log stderr all;
router id {};

protocol device {{ scan time 10; }}

# Only what BGP learned goes to the kernel (a spine's originated default stays out).
protocol kernel {{
  ipv4 {{ import none; export where source = RTS_BGP; }};
  merge paths on;
}}

filter default_only {{ if net = 0.0.0.0/0 then accept; reject; }}
filter no_default {{ if net = 0.0.0.0/0 then reject; accept; }}
",
        r.role.label(),
        r.name,
        r.asn,
        r.router_id
    );
    if r.originate_default {
        c.push_str("\nprotocol static default_route {\n  ipv4;\n  route 0.0.0.0/0 blackhole;\n}\n");
    }
    if r.bfd {
        let _ = write!(
            c,
            "\nprotocol bfd {{\n  interface \"*\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n"
        );
    }
    for n in &r.neighbors {
        let export = match n.export {
            Export::All => "all".to_string(),
            Export::DefaultOnly => "filter default_only".to_string(),
            Export::NoDefault => "filter no_default".to_string(),
        };
        let _ = write!(
            c,
            "
protocol bgp {} {{
  local {} as {};
  neighbor {} as {};
  direct;
  hold time {}; keepalive time {}; connect retry time 1; error wait time 1, 10;
",
            n.name,
            n.local,
            r.asn,
            n.address,
            n.asn,
            BGP_HOLD_TIME,
            keepalive()
        );
        if n.rr_client {
            c.push_str("  rr client;\n");
        }
        if r.bfd {
            c.push_str("  bfd on;\n");
        }
        let _ = writeln!(
            c,
            "  ipv4 {{\n    import all;\n    export {export};{}\n  }};\n}}",
            if n.next_hop_self {
                "\n    next hop self ebgp;"
            } else {
                ""
            }
        );
    }
    c
}

/// FRR's `zebra.conf` for `r`.
pub fn zebra_config(r: &FabricRouter) -> String {
    format!("hostname {}\n", r.name)
}

/// FRR's `bfdd.conf` for `r`: profile `tabby`, which bgpd's sessions use.
pub fn bfdd_config(r: &FabricRouter) -> String {
    format!(
        "hostname {}\nbfd\n profile tabby\n  receive-interval {BFD_INTERVAL_MS}\n  transmit-interval {BFD_INTERVAL_MS}\n  detect-multiplier {BFD_MULTIPLIER}\n !\nexit\n",
        r.name
    )
}

/// FRR's `bgpd.conf` for `r`.
pub fn bgpd_config(r: &FabricRouter) -> String {
    let mut c = format!(
        "! tabby lab: {} {}, AS {}
hostname {}
ip prefix-list tabby-default seq 5 permit 0.0.0.0/0
ip prefix-list tabby-no-default seq 5 deny 0.0.0.0/0
ip prefix-list tabby-no-default seq 10 permit 0.0.0.0/0 le 32
route-map tabby-default-only permit 10
 match ip address prefix-list tabby-default
exit
route-map tabby-no-default permit 10
 match ip address prefix-list tabby-no-default
exit
!
router bgp {}
 bgp router-id {}
 no bgp ebgp-requires-policy
 no bgp default ipv4-unicast
 no bgp network import-check
 timers bgp {} {}
",
        r.role.label(),
        r.name,
        r.asn,
        r.name,
        r.asn,
        r.router_id,
        keepalive(),
        BGP_HOLD_TIME
    );
    for n in &r.neighbors {
        let _ = writeln!(
            c,
            " neighbor {a} remote-as {}\n neighbor {a} update-source {}\n neighbor {a} timers connect 1",
            n.asn,
            n.local,
            a = n.address
        );
        if r.bfd {
            let _ = writeln!(c, " neighbor {} bfd profile tabby", n.address);
        }
    }
    c.push_str(" address-family ipv4 unicast\n");
    for n in &r.neighbors {
        let a = n.address;
        let _ = writeln!(c, "  neighbor {a} activate");
        if n.rr_client {
            let _ = writeln!(c, "  neighbor {a} route-reflector-client");
        }
        if n.next_hop_self {
            // Without `force`: reflected iBGP routes keep their next hop.
            let _ = writeln!(c, "  neighbor {a} next-hop-self");
        }
        match n.export {
            Export::All => {}
            Export::DefaultOnly => {
                let _ = writeln!(c, "  neighbor {a} route-map tabby-default-only out");
            }
            Export::NoDefault => {
                let _ = writeln!(c, "  neighbor {a} route-map tabby-no-default out");
            }
        }
        if r.originate_default {
            let _ = writeln!(c, "  neighbor {a} default-originate");
        }
    }
    c.push_str(" exit-address-family\nexit\n");
    c
}

/// One process of a router: what it is, the program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    /// `bird tor1`, `zebra tor1`, `bgpd tor1`.
    pub what: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The files a router's daemons are given, each with its contents.
pub fn config_files(kind: RouterKind, r: &FabricRouter, dir: &Path) -> Vec<(PathBuf, String)> {
    match kind {
        RouterKind::Bird => vec![(dir.join("bird.conf"), bird_config(r))],
        RouterKind::Frr => {
            let mut v = vec![
                (dir.join("zebra.conf"), zebra_config(r)),
                (dir.join("bgpd.conf"), bgpd_config(r)),
            ];
            if r.bfd {
                v.push((dir.join("bfdd.conf"), bfdd_config(r)));
            }
            v
        }
    }
}

/// The daemons of router `r` with its files in `dir`, in the order they start.
pub fn daemons(kind: RouterKind, r: &FabricRouter, dir: &Path, bird: &Path) -> Vec<Daemon> {
    let p = |f: &str| dir.join(f).display().to_string();
    match kind {
        RouterKind::Bird => vec![Daemon {
            what: format!("bird {}", r.name),
            program: bird.to_path_buf(),
            args: vec![
                "-f".into(),
                "-c".into(),
                p("bird.conf"),
                "-s".into(),
                p("bird.ctl"),
                "-P".into(),
                p("bird.pid"),
            ],
        }],
        RouterKind::Frr => {
            let names: &[&str] = if r.bfd {
                &["zebra", "bfdd", "bgpd"]
            } else {
                &["zebra", "bgpd"]
            };
            names
                .iter()
                .map(|&d| {
                    let mut args = vec![
                        "-f".into(),
                        p(&format!("{d}.conf")),
                        "-i".into(),
                        p(&format!("{d}.pid")),
                        "-z".into(),
                        p("zserv.api"),
                        "--vty_socket".into(),
                        dir.display().to_string(),
                        "-u".into(),
                        "root".into(),
                        "-g".into(),
                        "frrvty".into(),
                        "-P".into(),
                        "0".into(),
                        "--log".into(),
                        "stdout".into(),
                    ];
                    if d == "bfdd" {
                        // Its control socket in the router's dir, not /var/run/frr.
                        args.extend(["--bfdctl".into(), p("bfdd.sock")]);
                    }
                    Daemon {
                        what: format!("{d} {}", r.name),
                        program: Path::new(FRR_DIR).join(d),
                        args,
                    }
                })
                .collect()
        }
    }
}

/// The log (without `.log`) of the daemon that speaks BGP for router `name`.
pub fn daemon_log(kind: RouterKind, name: &str) -> String {
    match kind {
        RouterKind::Bird => format!("bird-{name}"),
        RouterKind::Frr => format!("bgpd-{name}"),
    }
}

/// The control socket (BIRD) or vty socket dir (FRR) of a router with files in `dir`.
pub fn control(kind: RouterKind, dir: &Path) -> PathBuf {
    match kind {
        RouterKind::Bird => dir.join("bird.ctl"),
        RouterKind::Frr => dir.to_path_buf(),
    }
}

/// A session as the router reports it: the peer (a protocol name for BIRD, the
/// address for FRR) and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSession {
    /// BIRD's protocol name (the peer's lab name) or FRR's peer address.
    pub peer: String,
    /// `Established`, `Active`, `Connect`, ...
    pub state: String,
}

/// Parses `birdc show protocols`: its BGP protocols and their states (the Info
/// column's first word, `Established` when up; `down` when the protocol is).
pub fn parse_bird_protocols(text: &str) -> Vec<RouterSession> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[1] != "BGP" {
                return None;
            }
            // Name Proto Table State Since(1 or 2 words) Info...
            let state = f
                .iter()
                .skip(4)
                .find(|w| w.chars().next().is_some_and(char::is_alphabetic))
                .map(|s| s.to_string())
                .unwrap_or_else(|| f[3].to_string());
            Some(RouterSession {
                peer: f[0].to_string(),
                state,
            })
        })
        .collect()
}

/// Parses `vtysh -c 'show bgp summary json'`: the IPv4 unicast peers and states.
pub fn parse_frr_summary(v: &Value) -> Vec<RouterSession> {
    v["ipv4Unicast"]["peers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(addr, p)| RouterSession {
            peer: addr.clone(),
            state: p["state"].as_str().unwrap_or("unknown").to_string(),
        })
        .collect()
}

/// Asks the daemon in `ns` for its sessions; `None` when it does not answer.
pub(crate) fn sessions(kind: RouterKind, ns: &str, ctl: &Path) -> Option<Vec<RouterSession>> {
    let out = match kind {
        RouterKind::Bird => std::process::Command::new("birdc")
            .args(["-s", &ctl.display().to_string(), "show", "protocols"])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?,
        RouterKind::Frr => super::host::in_netns(ns, "vtysh")
            .args([
                "--vty_socket",
                &ctl.display().to_string(),
                "-d",
                "bgpd",
                "-c",
                "show bgp summary json",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?,
    };
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match kind {
        RouterKind::Bird => Some(parse_bird_protocols(&text)),
        RouterKind::Frr => serde_json::from_str(&text)
            .ok()
            .map(|v| parse_frr_summary(&v)),
    }
}

/// The routes the daemon installed in `ns`'s kernel (`ip -j route show proto bird`
/// or `proto bgp`): its forwarding table, one per destination.
pub(crate) fn kernel_routes(kind: RouterKind, ns: &str) -> Option<u64> {
    let out = super::host::ip_in(ns, &["-j", "route", "show", "proto", kernel_proto(kind)]).ok()?;
    if out.trim().is_empty() {
        return Some(0);
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    Some(v.as_array().map_or(0, |a| a.len() as u64))
}

/// A router as the lab sees it now: the check's row and its sessions by peer name
/// (`None` when the daemon does not answer).
pub(crate) fn observe(
    kind: RouterKind,
    r: &FabricRouter,
    ctl: &Path,
) -> (Observed, Option<Vec<RouterSession>>) {
    let sessions = sessions(kind, &r.ns, ctl).map(|v| {
        v.into_iter()
            .map(|s| RouterSession {
                // FRR names peers by address: the lab's name for it.
                peer: r
                    .neighbors
                    .iter()
                    .find(|n| n.address.to_string() == s.peer)
                    .map_or(s.peer, |n| n.name.clone()),
                state: s.state,
            })
            .collect::<Vec<_>>()
    });
    let routes = kernel_routes(kind, &r.ns).unwrap_or_default();
    let observed = Observed {
        agent: sessions.is_some(),
        established: sessions
            .iter()
            .flatten()
            .filter(|s| s.state == "Established")
            .count() as u64,
        peers: sessions.as_ref().map_or(0, |s| s.len() as u64),
        routes: RouteCounts {
            routes,
            pod_routes: 0,
        },
    };
    (observed, sessions)
}

/// The daemon programs `kind` needs, checked before anything is built: BIRD's
/// `bird` (its path) or FRR's `zebra`, `bgpd` and `vtysh`.
pub(crate) fn find_daemon(kind: RouterKind) -> Result<PathBuf, LabError> {
    let in_path = |name: &str| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(["/usr/sbin".into(), "/usr/bin".into()])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    let missing = |what: &str, hint: &str| LabError::MissingBinary {
        missing: what.to_string(),
        looked: "PATH, /usr/sbin, /usr/bin, /usr/lib/frr".into(),
        hint: hint.into(),
    };
    match kind {
        RouterKind::Bird => {
            in_path("birdc")
                .ok_or_else(|| missing("birdc", "install bird2 or use --router frr"))?;
            in_path("bird").ok_or_else(|| missing("bird", "install bird2 or use --router frr"))
        }
        RouterKind::Frr => {
            in_path("vtysh").ok_or_else(|| missing("vtysh", "install frr or use --router bird"))?;
            for d in ["zebra", "bgpd"] {
                let p = Path::new(FRR_DIR).join(d);
                if !p.is_file() {
                    return Err(missing(d, "install frr or use --router bird"));
                }
            }
            Ok(Path::new(FRR_DIR).join("bgpd"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::fabric;
    use crate::lab::spec::{LabSpec, Topology};

    fn routers(t: Topology) -> Vec<FabricRouter> {
        let mut s = LabSpec::new("r1", Path::new("/run/tl"));
        s.topology = t;
        s.nodes = 4;
        fabric::layout(&s, &|x| format!("tl-r1-{x}")).routers
    }

    #[test]
    fn bird_configs() {
        let r = routers(Topology::AsPerRackL2Spine);
        let c = bird_config(&r[0]);
        assert!(c.contains("router id 198.18.1.254;"), "{c}");
        assert!(
            c.contains(
                "protocol bgp n1 {\n  local 198.18.1.254 as 65001;\n  neighbor 198.18.1.1 as 65001;"
            ),
            "{c}"
        );
        assert!(
            c.contains(
                "  rr client;\n  ipv4 {\n    import all;\n    export all;\n    next hop self ebgp;"
            ),
            "{c}"
        );
        assert!(c.contains("protocol bgp tor2 {\n  local 198.18.200.1 as 65001;\n  neighbor 198.18.200.2 as 65002;"), "{c}");
        assert!(!c.contains("protocol static"), "{c}");
        let r = routers(Topology::DownwardDefault);
        let spine = bird_config(&r[2]);
        assert!(spine.contains("route 0.0.0.0/0 blackhole;"), "{spine}");
        assert!(spine.contains("export filter default_only;"), "{spine}");
        let tor = bird_config(&r[0]);
        assert!(tor.contains("export filter no_default;"), "{tor}");
    }

    #[test]
    fn frr_configs() {
        let r = routers(Topology::DownwardDefault);
        let c = bgpd_config(&r[0]);
        assert!(
            c.contains(
                "router bgp 65100\n bgp router-id 198.18.1.254\n no bgp ebgp-requires-policy"
            ),
            "{c}"
        );
        assert!(c.contains(" neighbor 198.18.1.1 remote-as 64512\n"), "{c}");
        assert!(
            c.contains("  neighbor 198.18.1.1 route-map tabby-default-only out"),
            "{c}"
        );
        assert!(
            c.contains("  neighbor 198.19.1.3 route-map tabby-no-default out"),
            "{c}"
        );
        assert!(!c.contains("route-reflector-client"), "{c}");
        let spine = bgpd_config(&r[2]);
        assert!(
            spine.contains("  neighbor 198.19.1.2 default-originate"),
            "{spine}"
        );
        let r = routers(Topology::AsPerRackL3Spine);
        let c = bgpd_config(&r[1]);
        assert!(
            c.contains(
                "  neighbor 198.18.2.3 route-reflector-client\n  neighbor 198.18.2.3 next-hop-self"
            ),
            "{c}"
        );
        let d = daemons(
            RouterKind::Frr,
            &r[1],
            Path::new("/s/tor2"),
            Path::new("bird"),
        );
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].what, "bgpd tor2");
        assert!(
            d[1].args
                .windows(2)
                .any(|w| w == ["-z", "/s/tor2/zserv.api"])
        );
        let d = daemons(
            RouterKind::Bird,
            &r[1],
            Path::new("/s/tor2"),
            Path::new("/usr/sbin/bird"),
        );
        assert_eq!(d[0].args[..3], ["-f", "-c", "/s/tor2/bird.conf"]);
    }

    #[test]
    fn bfd_on_every_router_session() {
        let mut s = LabSpec::new("r1", Path::new("/run/tl"));
        s.topology = Topology::AsPerRackL3Spine;
        s.nodes = 4;
        s.bfd = true;
        let r = fabric::layout(&s, &|x| format!("tl-r1-{x}")).routers;
        let c = bird_config(&r[0]);
        assert!(
            c.contains("protocol bfd {\n  interface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };\n}"),
            "{c}"
        );
        let sessions = c.matches("protocol bgp ").count();
        assert_eq!(c.matches("  bfd on;\n").count(), sessions, "{c}");
        let b = bgpd_config(&r[0]);
        for n in &r[0].neighbors {
            assert!(
                b.contains(&format!(" neighbor {} bfd profile tabby\n", n.address)),
                "{b}"
            );
        }
        let files = config_files(RouterKind::Frr, &r[0], Path::new("/s/tor1"));
        let bfdd = &files
            .iter()
            .find(|(p, _)| p.ends_with("bfdd.conf"))
            .unwrap()
            .1;
        assert!(
            bfdd.contains(" profile tabby\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n"),
            "{bfdd}"
        );
        let d = daemons(
            RouterKind::Frr,
            &r[0],
            Path::new("/s/tor1"),
            Path::new("bird"),
        );
        let names: Vec<&str> = d.iter().map(|d| d.what.as_str()).collect();
        assert_eq!(names, ["zebra tor1", "bfdd tor1", "bgpd tor1"]);
        assert!(
            d[1].args
                .windows(2)
                .any(|w| w == ["--bfdctl", "/s/tor1/bfdd.sock"])
        );
        // Without --bfd: none of it.
        s.bfd = false;
        let r = fabric::layout(&s, &|x| format!("tl-r1-{x}")).routers;
        assert!(!bird_config(&r[0]).contains("bfd"));
        assert!(!bgpd_config(&r[0]).contains("bfd"));
        assert_eq!(
            daemons(RouterKind::Frr, &r[0], Path::new("/s"), Path::new("b")).len(),
            2
        );
    }

    #[test]
    fn sessions_parsed() {
        let bird = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     05:10:00.000
kernel1    Kernel     master4    up     05:10:00.000
n1         BGP        ---        up     05:10:02.000  Established
tor2       BGP        ---        start  05:10:00.000  Active        Socket: Connection refused
n2         BGP        ---        down   05:10:00.000
";
        let s = parse_bird_protocols(bird);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            RouterSession {
                peer: "n1".into(),
                state: "Established".into()
            }
        );
        assert_eq!(s[1].state, "Active");
        assert_eq!(s[2].state, "down");
        let frr: Value = serde_json::from_str(
            r#"{"ipv4Unicast":{"peers":{"198.18.1.1":{"state":"Established"},"198.19.1.3":{"state":"Active"}}}}"#,
        )
        .unwrap();
        let s = parse_frr_summary(&frr);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            RouterSession {
                peer: "198.19.1.3".into(),
                state: "Active".into()
            }
        );
        assert!(parse_frr_summary(&serde_json::json!({})).is_empty());
    }
}
