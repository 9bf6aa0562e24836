//! BIRD 2 runner: `bird -f -c <dir>/bird.conf -s <dir>/bird.ctl` in a
//! namespace, queried with `birdc -s <dir>/bird.ctl`. Neighbor `i` becomes
//! protocol `n<i>`, so states and routes map back to configured neighbors.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;

use super::{
    Afi, BgpConfig, BgpDaemon, CONNECT_RETRY, DaemonKind, Origin, Route, STARTUP, SessionState,
};
use crate::cmd;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::wait::wait_until;

/// A running BIRD.
pub struct Bird {
    ns: Netns,
    cfg: BgpConfig,
    dir: tempfile::TempDir,
    proc: Option<Process>,
}

impl Bird {
    /// Writes the config and starts BIRD in `ns`; returns once its control socket answers.
    pub fn start(ns: &Netns, cfg: &BgpConfig) -> Result<Bird> {
        cfg.validate()?;
        let dir = super::daemon_dir(DaemonKind::Bird, ns)?;
        let text = render_config(cfg, dir.path())?;
        super::write_file(&dir.path().join("bird.conf"), &text)?;
        let mut b = Bird {
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
        self.proc = Some(launch(&self.ns, self.dir.path())?);
        Ok(())
    }

    /// Runs a `birdc` command (e.g. `["disable", "n0"]`) and returns its output.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.sock(), args)
    }

    /// BIRD's protocol name for neighbor `peer` (`n<index>`).
    pub fn protocol_of(&self, peer: IpAddr) -> Option<String> {
        self.cfg
            .neighbors
            .iter()
            .position(|n| n.address == peer)
            .map(|i| format!("n{i}"))
    }
}

impl BgpDaemon for Bird {
    fn kind(&self) -> DaemonKind {
        DaemonKind::Bird
    }
    fn netns(&self) -> &Netns {
        &self.ns
    }
    fn config(&self) -> &BgpConfig {
        &self.cfg
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn session_states(&self) -> Result<Vec<(IpAddr, SessionState)>> {
        Ok(parse_protocols(
            &self.birdc(&["show", "protocols"])?,
            &self.cfg,
        ))
    }
    fn routes(&self, afi: Afi) -> Result<Vec<Route>> {
        let table = match afi {
            Afi::Ipv4 => "master4",
            Afi::Ipv6 => "master6",
        };
        let out = self.birdc(&["show", "route", "all", "table", table])?;
        parse_routes(&out, &self.cfg).map_err(|reason| Error::Parse {
            cmd: "birdc show route all".into(),
            reason,
        })
    }
    fn stop(&mut self) -> Result<()> {
        match self.proc.take() {
            Some(mut p) => p.stop(Duration::from_secs(5)),
            None => Ok(()),
        }
    }
    fn kill(&mut self) -> Result<()> {
        match self.proc.take() {
            Some(mut p) => p.kill(),
            None => Ok(()),
        }
    }
    fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }
    fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Process::is_running)
    }
}

/// BIRD's config text for `cfg`; logs go to `dir/bird.log`.
pub fn render_config(cfg: &BgpConfig, dir: &Path) -> Result<String> {
    let mut s = String::new();
    let _ = writeln!(s, "router id {};", cfg.router_id);
    let _ = writeln!(s, "log \"{}\" all;", dir.join("bird.log").display());
    s.push_str("protocol device { scan time 10; }\n");
    // Connected routes in master4/6 let iBGP resolve next hops recursively.
    s.push_str("protocol direct { ipv4; ipv6; }\n");
    for (afi, name) in [(Afi::Ipv4, "ipv4"), (Afi::Ipv6, "ipv6")] {
        let routes: Vec<_> = cfg.originated(afi).collect();
        if !routes.is_empty() {
            let _ = write!(s, "protocol static static_{name} {{ {name};");
            for r in &routes {
                let _ = write!(s, " route {} blackhole;", r.prefix);
            }
            s.push_str(" }\n");
        }
        if routes.iter().any(|r| r.has_attributes()) {
            let _ = writeln!(s, "function tabby_attrs_{name}() {{");
            for r in routes.iter().filter(|r| r.has_attributes()) {
                let _ = write!(s, "  if net = {} then {{", r.prefix);
                for (a, b) in &r.communities {
                    let _ = write!(s, " bgp_community.add(({a},{b}));");
                }
                for (a, b, c) in &r.large_communities {
                    let _ = write!(s, " bgp_large_community.add(({a},{b},{c}));");
                }
                if let Some(m) = r.med {
                    let _ = write!(s, " bgp_med = {m};");
                }
                if let Some(l) = r.local_pref {
                    let _ = write!(s, " bgp_local_pref = {l};");
                }
                s.push_str(" }\n");
            }
            s.push_str("}\n");
        }
        if cfg.export_to_kernel {
            let _ = writeln!(
                s,
                "protocol kernel kernel_{name} {{ {name} {{ import none; export where source = RTS_BGP; }}; }}"
            );
        }
    }
    if cfg.uses_bfd() {
        let (rx, tx, m) = cfg.bfd_timers;
        let opts = format!("min rx interval {rx} ms; min tx interval {tx} ms; multiplier {m};");
        let _ = writeln!(
            s,
            "protocol bfd {{ interface \"*\" {{ {opts} }}; multihop {{ {opts} }}; }}"
        );
    }
    for (i, n) in cfg.neighbors.iter().enumerate() {
        let _ = writeln!(s, "protocol bgp n{i} {{");
        s.push_str("  local");
        if let Some(l) = n.local_address {
            let _ = write!(s, " {l}");
        }
        if cfg.listen_port != 179 {
            let _ = write!(s, " port {}", cfg.listen_port);
        }
        let _ = writeln!(s, " as {};", cfg.local_as);
        let _ = write!(s, "  neighbor {}", n.address);
        if let Some(p) = n.port {
            let _ = write!(s, " port {p}");
        }
        let _ = writeln!(s, " as {};", n.remote_as);
        if n.passive {
            s.push_str("  passive on;\n");
        }
        if let Some(p) = &n.password {
            let _ = writeln!(s, "  password \"{p}\";");
        }
        if n.rr_client {
            s.push_str("  rr client;\n");
            if let Some(id) = cfg.cluster_id {
                let _ = writeln!(s, "  rr cluster id {id};");
            }
        }
        if let Some(ttl) = n.multihop {
            let _ = writeln!(s, "  multihop {ttl};");
        }
        if n.bfd {
            s.push_str("  bfd on;\n");
        }
        let _ = writeln!(
            s,
            "  graceful restart {};",
            if cfg.graceful_restart { "on" } else { "off" }
        );
        if let Some((k, h)) = cfg.timers() {
            let _ = writeln!(s, "  hold time {h};\n  keepalive time {};", k.max(1));
        }
        let _ = writeln!(
            s,
            "  connect retry time {CONNECT_RETRY};\n  error wait time 1, 5;"
        );
        for afi in n.effective_families() {
            let name = match afi {
                Afi::Ipv4 => "ipv4",
                Afi::Ipv6 => "ipv6",
            };
            if afi == Afi::Ipv6 && n.address.is_ipv4() {
                return Err(Error::Unsupported {
                    daemon: "bird runner",
                    feature: format!("neighbor {}: IPv6 routes over an IPv4 session", n.address),
                });
            }
            // Attributes of originated prefixes are set on export, where
            // BIRD also drops LOCAL_PREF towards eBGP peers.
            let attrs = if cfg.originated(afi).any(|r| r.has_attributes()) {
                format!(" if source = RTS_STATIC then tabby_attrs_{name}();")
            } else {
                String::new()
            };
            let _ = write!(
                s,
                "  {name} {{ import all; export filter {{{attrs} if source ~ [RTS_STATIC, RTS_BGP] then accept; reject; }};"
            );
            if n.next_hop_self {
                s.push_str(" next hop self;");
            }
            if afi == Afi::Ipv4 && n.address.is_ipv6() {
                s.push_str(" extended next hop on;");
            }
            s.push_str(" };\n");
        }
        s.push_str("}\n");
    }
    Ok(s)
}

/// Session states from `birdc show protocols`, for protocols `n<i>`.
pub fn parse_protocols(out: &str, cfg: &BgpConfig) -> Vec<(IpAddr, SessionState)> {
    let mut v = Vec::new();
    for line in out.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[1] != "BGP" {
            continue;
        }
        let Some(n) = neighbor_index(cols[0]).and_then(|i| cfg.neighbors.get(i)) else {
            continue;
        };
        let state = match (cols[3], cols.get(5)) {
            ("up", _) => SessionState::Established,
            (_, Some(info)) => SessionState::parse(info),
            // "down" with no info: disabled by the operator.
            _ => SessionState::Idle,
        };
        v.push((n.address, state));
    }
    v
}

fn neighbor_index(proto: &str) -> Option<usize> {
    proto.strip_prefix('n')?.parse().ok()
}

/// Paths from `birdc show route all`: BGP routes (peer set) and this
/// daemon's static originations (peer None); direct and kernel routes are skipped.
pub fn parse_routes(out: &str, cfg: &BgpConfig) -> Result<Vec<Route>, String> {
    let mut routes = Vec::new();
    let mut current: Option<Route> = None;
    let mut keep = false;
    let mut last_prefix: Option<IpNet> = None;
    for line in out.lines() {
        if line.starts_with('\t') {
            if let (Some(r), true) = (current.as_mut(), keep) {
                attribute(r, line.trim())?;
            }
            continue;
        }
        if line.trim().is_empty() || line.starts_with("Table ") || line.starts_with("BIRD ") {
            continue;
        }
        // A header: "<prefix> <type> [<proto> <time> ...] * (pref) ..." or,
        // for further paths of the same prefix, the same without the prefix.
        if let Some(r) = current.take()
            && keep
        {
            routes.push(r);
        }
        let (prefix, rest) = if line.starts_with(' ') {
            (
                last_prefix.ok_or_else(|| format!("path line without prefix: {line:?}"))?,
                line.trim_start(),
            )
        } else {
            let (p, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let p: IpNet = p.parse().map_err(|e| format!("prefix {p:?}: {e}"))?;
            (p, rest.trim_start())
        };
        last_prefix = Some(prefix);
        let proto = rest
            .split_once('[')
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("");
        let mut r = Route::new(prefix);
        r.best = rest.contains("] * (") || rest.contains(" * (");
        keep = if let Some(i) = neighbor_index(proto) {
            r.peer = cfg.neighbors.get(i).map(|n| n.address);
            true
        } else {
            proto.starts_with("static_")
        };
        current = Some(r);
    }
    if let Some(r) = current
        && keep
    {
        routes.push(r);
    }
    Ok(routes)
}

fn attribute(r: &mut Route, line: &str) -> Result<(), String> {
    let Some((key, value)) = line.split_once(": ") else {
        return Ok(());
    };
    let value = value.trim();
    let num = |v: &str| v.parse::<u32>().map_err(|e| format!("{key}: {v:?}: {e}"));
    match key {
        "BGP.origin" => r.origin = Origin::parse(value),
        "BGP.as_path" => {
            r.as_path = value
                .split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == ',')
                .filter(|t| !t.is_empty())
                .map(num)
                .collect::<Result<_, _>>()?;
        }
        "BGP.next_hop" => {
            r.next_hops = value
                .split_whitespace()
                .map(|a| {
                    a.parse::<IpAddr>()
                        .map_err(|e| format!("next hop {a:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
        }
        "BGP.med" => r.med = Some(num(value)?),
        "BGP.originator_id" => {
            r.originator_id = Some(
                value
                    .parse()
                    .map_err(|e| format!("originator id {value:?}: {e}"))?,
            )
        }
        "BGP.cluster_list" => {
            r.cluster_list = value
                .split_whitespace()
                .map(|a| a.parse().map_err(|e| format!("cluster id {a:?}: {e}")))
                .collect::<Result<_, _>>()?;
        }
        "BGP.local_pref" => r.local_pref = Some(num(value)?),
        "BGP.community" => {
            for t in tuples(value) {
                match t.as_slice() {
                    [a, b] => r.communities.push((
                        a.parse().map_err(|e| format!("community {a}: {e}"))?,
                        b.parse().map_err(|e| format!("community {b}: {e}"))?,
                    )),
                    _ => return Err(format!("community {t:?}")),
                }
            }
        }
        "BGP.large_community" => {
            for t in tuples(value) {
                match t.as_slice() {
                    [a, b, c] => r.large_communities.push((num(a)?, num(b)?, num(c)?)),
                    _ => return Err(format!("large community {t:?}")),
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// "(1,2) (3, 4, 5)" -> [["1","2"], ["3","4","5"]]
fn tuples(v: &str) -> Vec<Vec<String>> {
    v.split('(')
        .filter_map(|t| t.split_once(')').map(|(inner, _)| inner))
        .map(|inner| inner.split(',').map(|x| x.trim().to_string()).collect())
        .collect()
}

/// Starts BIRD in `ns` on `dir/bird.conf` (control socket `dir/bird.ctl`); returns
/// once the socket answers.
pub(super) fn launch(ns: &Netns, dir: &Path) -> Result<Process> {
    let _ = std::fs::remove_file(dir.join("bird.ctl"));
    let conf = dir.join("bird.conf").display().to_string();
    let pid = dir.join("bird.pid").display().to_string();
    let sock = dir.join("bird.ctl").display().to_string();
    let mut p = Process::spawn(
        ns,
        &["bird", "-f", "-c", &conf, "-s", &sock, "-P", &pid],
        &dir.join("bird.out"),
    )?;
    let up = wait_until(STARTUP, || {
        !p.is_running() || birdc(&sock, &["show", "status"]).is_ok()
    });
    if !up || !p.is_running() {
        return Err(p.died());
    }
    Ok(p)
}

/// Runs a `birdc` command against the control socket `sock`.
pub(super) fn birdc(sock: &str, args: &[&str]) -> Result<String> {
    let out = cmd::run(Command::new("birdc").arg("-s").arg(sock).args(args))?;
    // birdc exits 0 even when the daemon answers with an error code (8xxx/9xxx).
    if let Some(l) = out
        .lines()
        .find(|l| l.contains("syntax error") || l.contains("Unknown command"))
    {
        return Err(Error::Command {
            cmd: format!("birdc {}", args.join(" ")),
            status: "error".into(),
            stderr: l.into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Neighbor, Originate};
    use super::*;

    fn cfg() -> BgpConfig {
        BgpConfig::new("198.18.0.1".parse().unwrap(), 64512)
            .neighbor(
                Neighbor::new("198.18.0.2".parse().unwrap(), 64512)
                    .password("s3cret")
                    .rr_client(),
            )
            .neighbor(
                Neighbor::new("198.18.0.3".parse().unwrap(), 64513)
                    .multihop(2)
                    .passive(),
            )
            .neighbor(Neighbor::new("2001:db8::2".parse().unwrap(), 64512).next_hop_self())
            .originate_with(
                Originate::new("100.64.1.0/24".parse().unwrap())
                    .community(64512, 7)
                    .large_community(64512, 1, 2)
                    .med(5)
                    .local_pref(200),
            )
            .originate("2001:db8:1::/48".parse().unwrap())
            .graceful_restart(true)
            .export_to_kernel(true)
            .hold_time(9)
    }

    #[test]
    fn config_text() {
        let t = render_config(&cfg(), Path::new("/tmp/x")).unwrap();
        for want in [
            "router id 198.18.0.1;",
            "protocol static static_ipv4 { ipv4; route 100.64.1.0/24 blackhole; }",
            "protocol static static_ipv6 { ipv6; route 2001:db8:1::/48 blackhole; }",
            "protocol kernel kernel_ipv4 { ipv4 { import none; export where source = RTS_BGP; }; }",
            "protocol bgp n0 {\n  local as 64512;\n  neighbor 198.18.0.2 as 64512;\n  password \"s3cret\";\n  rr client;",
            "  neighbor 198.18.0.3 as 64513;\n  passive on;\n  multihop 2;\n  graceful restart on;\n  hold time 9;\n  keepalive time 3;",
            "  ipv6 { import all; export filter { if source ~ [RTS_STATIC, RTS_BGP] then accept; reject; }; next hop self; };",
            "function tabby_attrs_ipv4() {\n  if net = 100.64.1.0/24 then { bgp_community.add((64512,7)); bgp_large_community.add((64512,1,2)); bgp_med = 5; bgp_local_pref = 200; }\n}",
            "  ipv4 { import all; export filter { if source = RTS_STATIC then tabby_attrs_ipv4(); if source ~ [RTS_STATIC, RTS_BGP] then accept; reject; };",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let bad = BgpConfig::new("198.18.0.1".parse().unwrap(), 1)
            .neighbor(Neighbor::new("198.18.0.2".parse().unwrap(), 2).families(&[Afi::Ipv6]));
        assert!(render_config(&bad, Path::new("/tmp")).is_err());
    }

    #[test]
    fn protocols() {
        let out = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
            device1    Device     ---        up     03:24:32.396  \n\
            n0         BGP        ---        up     03:24:33.449  Established   \n\
            n1         BGP        ---        start  03:24:33.449  Active        Socket: Connection refused\n\
            n2         BGP        ---        down   03:24:33.449  \n";
        let s = parse_protocols(out, &cfg());
        assert_eq!(
            s,
            [
                ("198.18.0.2".parse().unwrap(), SessionState::Established),
                ("198.18.0.3".parse().unwrap(), SessionState::Active),
                ("2001:db8::2".parse().unwrap(), SessionState::Idle),
            ]
        );
    }

    // Output of BIRD 2.0.12 with peers FRR (n0) and GoBGP (n1).
    const ROUTES: &str = "BIRD 2.0.12 ready.
Table master4:
198.18.0.0/24        unicast [direct1 03:24:32.398] * (240)
\tdev eth0
\tType: device univ
100.64.1.0/24        blackhole [static_ipv4 03:24:32.396] * (200)
\tType: static univ
100.64.2.0/24        unicast [n0 03:24:37.497] * (100) [i]
\tvia 198.18.0.2 on eth0
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 
\tBGP.next_hop: 198.18.0.2
\tBGP.med: 0
\tBGP.local_pref: 100
\tBGP.community: (64512,200)
\tBGP.large_community: (64512, 2, 3)
100.64.3.0/24        unicast [n1 03:24:36.804] * (100) [AS64513?]
\tvia 198.18.0.3 on eth0
\tType: BGP univ
\tBGP.origin: Incomplete
\tBGP.as_path: 64513
\tBGP.next_hop: 198.18.0.3
\tBGP.med: 7
\tBGP.local_pref: 100
\tBGP.community: (64513,300) (64513,301)
\tBGP.large_community: (64513, 3, 4)
                     unicast [n0 03:24:34.599 from 198.18.0.2] (100) [AS64513?]
\tvia 198.18.0.3 on eth0
\tType: BGP univ
\tBGP.origin: Incomplete
\tBGP.as_path: 64512 64513
\tBGP.next_hop: 198.18.0.3
\tBGP.local_pref: 100
";

    #[test]
    fn routes() {
        let r = parse_routes(ROUTES, &cfg()).unwrap();
        assert_eq!(r.len(), 4, "{r:#?}");
        assert_eq!(r[0].prefix.to_string(), "100.64.1.0/24");
        assert_eq!(r[0].peer, None);
        assert!(r[0].best);
        assert_eq!(r[1].peer, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(r[1].as_path, Vec::<u32>::new());
        assert_eq!(r[1].large_communities, [(64512, 2, 3)]);
        assert_eq!(r[2].communities, [(64513, 300), (64513, 301)]);
        assert_eq!(r[2].med, Some(7));
        assert_eq!(r[2].origin, Some(Origin::Incomplete));
        assert!(r[2].best);
        assert_eq!(r[3].prefix, r[2].prefix);
        assert!(!r[3].best);
        assert_eq!(r[3].as_path, [64512, 64513]);
        assert_eq!(r[3].next_hops, ["198.18.0.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(r[3].peer, Some("198.18.0.2".parse().unwrap()));
    }

    #[test]
    fn reflected_route() {
        let out = "Table master4:\n100.64.2.0/24        unicast [n0 03:24:37.497] * (100) [i]\n\
            \tvia 198.18.0.2 on eth0\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: \n\
            \tBGP.next_hop: 198.18.0.2\n\tBGP.local_pref: 100\n\tBGP.originator_id: 198.18.0.2\n\
            \tBGP.cluster_list: 198.18.0.100 198.18.0.101\n";
        let r = parse_routes(out, &cfg()).unwrap();
        assert_eq!(r[0].originator_id, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(
            r[0].cluster_list,
            [
                "198.18.0.100".parse::<std::net::Ipv4Addr>().unwrap(),
                "198.18.0.101".parse().unwrap()
            ]
        );
        let t = render_config(
            &cfg().cluster_id("198.18.0.100".parse().unwrap()),
            Path::new("/tmp"),
        )
        .unwrap();
        assert!(
            t.contains("  rr client;\n  rr cluster id 198.18.0.100;\n"),
            "{t}"
        );
    }
}
