//! FRR runner: `bgpd` (and `zebra` when routes go to the kernel) in a
//! namespace with config, pid files and vty sockets in a temp dir, queried
//! with `vtysh --vty_socket <dir> -d bgpd -c '... json'`.
//!
//! bgpd runs as root with `-S` (skip user switch); zebra has no `-S`, so it
//! runs as user `frr`, which is in the `frrvty` group FRR insists on. With
//! BFD on some neighbor, `bfdd` runs too (bgpd reaches it through zebra),
//! its timers in profile `tabby`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{
    Afi, BgpConfig, BgpDaemon, CONNECT_RETRY, DaemonKind, Origin, Route, STARTUP, SessionState,
};
use crate::cmd;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::wait::wait_until;

const BGPD: &str = "/usr/lib/frr/bgpd";
const ZEBRA: &str = "/usr/lib/frr/zebra";
const BFDD: &str = "/usr/lib/frr/bfdd";

/// A running FRR bgpd (with zebra if `export_to_kernel`).
pub struct Frr {
    ns: Netns,
    cfg: BgpConfig,
    dir: tempfile::TempDir,
    bgpd: Option<Process>,
    zebra: Option<Process>,
    bfdd: Option<Process>,
}

impl Frr {
    /// Writes the config and starts the daemons in `ns`; returns once bgpd's vty answers.
    pub fn start(ns: &Netns, cfg: &BgpConfig) -> Result<Frr> {
        cfg.validate()?;
        let dir = super::daemon_dir(DaemonKind::Frr, ns)?;
        let d = dir.path();
        // zebra runs as user frr and writes its pid file and sockets here.
        set_mode(d, 0o777)?;
        super::write_file(&d.join("bgpd.conf"), &render_config(cfg, d, ns.name()))?;
        super::write_file(&d.join("zebra.conf"), &format!("hostname {}\n", ns.name()))?;
        set_mode(&d.join("zebra.conf"), 0o644)?;
        super::write_file(&d.join("bfdd.conf"), &render_bfdd(cfg, d, ns.name()))?;
        set_mode(&d.join("bfdd.conf"), 0o644)?;
        let mut f = Frr {
            ns: ns.clone(),
            cfg: cfg.clone(),
            dir,
            bgpd: None,
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
        if self.cfg.export_to_kernel || self.cfg.uses_bfd() {
            let _ = std::fs::remove_file(d.join("zebra.vty"));
            let (conf, pid) = (self.path("zebra.conf"), self.path("zebra.pid"));
            let mut z = Process::spawn(
                &self.ns,
                &[
                    ZEBRA,
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
                ],
                &d.join("zebra.out"),
            )?;
            if !wait_until(STARTUP, || {
                !z.is_running() || self.vtysh_daemon("zebra", &["show version"]).is_ok()
            }) || !z.is_running()
            {
                return Err(z.died());
            }
            self.zebra = Some(z);
        }
        if self.cfg.uses_bfd() {
            let _ = std::fs::remove_file(d.join("bfdd.vty"));
            let (conf, pid, ctl) = (
                self.path("bfdd.conf"),
                self.path("bfdd.pid"),
                self.path("bfdd.sock"),
            );
            let mut p = Process::spawn(
                &self.ns,
                &[
                    BFDD,
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
                    "--bfdctl",
                    &ctl,
                ],
                &d.join("bfdd.out"),
            )?;
            if !wait_until(STARTUP, || {
                !p.is_running() || self.vtysh_daemon("bfdd", &["show version"]).is_ok()
            }) || !p.is_running()
            {
                return Err(p.died());
            }
            self.bfdd = Some(p);
        }
        let _ = std::fs::remove_file(d.join("bgpd.vty"));
        let (conf, pid, port) = (
            self.path("bgpd.conf"),
            self.path("bgpd.pid"),
            self.cfg.listen_port.to_string(),
        );
        let mut argv = vec![
            BGPD,
            "-f",
            &conf,
            "-i",
            &pid,
            "-z",
            &zsock,
            "--vty_socket",
            &vty,
            "-S",
            "-P",
            "0",
            "-p",
            &port,
        ];
        if !self.cfg.export_to_kernel {
            argv.push("-n");
            if !self.cfg.uses_bfd() {
                argv.push("-Z");
            }
        }
        let mut b = Process::spawn(&self.ns, &argv, &d.join("bgpd.out"))?;
        if !wait_until(STARTUP, || {
            !b.is_running() || self.vtysh(&["show version"]).is_ok()
        }) || !b.is_running()
        {
            return Err(b.died());
        }
        self.bgpd = Some(b);
        Ok(())
    }

    /// BFD sessions as bfdd shows them (`show bfd peers json`).
    pub fn bfd_peers(&self) -> Result<Value> {
        let out = self.vtysh_daemon("bfdd", &["show bfd peers json"])?;
        serde_json::from_str(&out).map_err(|e| Error::Parse {
            cmd: "show bfd peers json".into(),
            reason: e.to_string(),
        })
    }

    /// Runs vtysh commands against bgpd (each string is one `-c`).
    pub fn vtysh(&self, commands: &[&str]) -> Result<String> {
        self.vtysh_daemon("bgpd", commands)
    }

    fn vtysh_daemon(&self, daemon: &str, commands: &[&str]) -> Result<String> {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket")
            .arg(self.dir.path())
            .args(["-d", daemon]);
        for x in commands {
            c.args(["-c", x]);
        }
        cmd::run(&mut c)
    }

    /// Runs configuration commands under `router bgp <as>`.
    pub fn configure(&self, lines: &[&str]) -> Result<String> {
        let head = format!("router bgp {}", self.cfg.local_as);
        let mut all = vec!["configure terminal", head.as_str()];
        all.extend_from_slice(lines);
        self.vtysh(&all)
    }

    fn json(&self, command: &str) -> Result<Value> {
        let out = self.vtysh(&[command])?;
        serde_json::from_str(&out).map_err(|e| Error::Parse {
            cmd: command.into(),
            reason: e.to_string(),
        })
    }

    fn stop_all(&mut self, graceful: bool) -> Result<()> {
        let mut errors = Vec::new();
        for p in [self.bgpd.take(), self.bfdd.take(), self.zebra.take()]
            .into_iter()
            .flatten()
        {
            let mut p = p;
            let r = if graceful {
                p.stop(Duration::from_secs(5))
            } else {
                p.kill()
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Cleanup(errors))
        }
    }
}

impl BgpDaemon for Frr {
    fn kind(&self) -> DaemonKind {
        DaemonKind::Frr
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
        let v = self.json("show bgp neighbors json")?;
        Ok(parse_neighbors(&v, &self.cfg))
    }
    fn routes(&self, afi: Afi) -> Result<Vec<Route>> {
        let command = match afi {
            Afi::Ipv4 => "show bgp ipv4 unicast json detail",
            Afi::Ipv6 => "show bgp ipv6 unicast json detail",
        };
        parse_routes(&self.json(command)?).map_err(|reason| Error::Parse {
            cmd: command.into(),
            reason,
        })
    }
    fn stop(&mut self) -> Result<()> {
        self.stop_all(true)
    }
    fn kill(&mut self) -> Result<()> {
        self.stop_all(false)
    }
    fn restart(&mut self) -> Result<()> {
        self.stop_all(true)?;
        self.launch()
    }
    fn is_running(&mut self) -> bool {
        self.bgpd.as_mut().is_some_and(Process::is_running)
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

/// bgpd's config text for `cfg`.
pub fn render_config(cfg: &BgpConfig, dir: &Path, hostname: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frr defaults traditional\nhostname {hostname}\nlog file {}/bgpd.log\n!",
        dir.display()
    );
    // Route-maps come first: a `network ... route-map` naming a map that
    // does not exist yet only takes effect after FRR's 5 s route-map timer.
    for p in cfg.originate.iter().filter(|p| p.has_attributes()) {
        let _ = writeln!(s, "route-map {} permit 10", route_map_name(p));
        if !p.communities.is_empty() {
            let list: Vec<String> = p
                .communities
                .iter()
                .map(|(a, b)| format!("{a}:{b}"))
                .collect();
            let _ = writeln!(s, " set community {}", list.join(" "));
        }
        if !p.large_communities.is_empty() {
            let list: Vec<String> = p
                .large_communities
                .iter()
                .map(|(a, b, c)| format!("{a}:{b}:{c}"))
                .collect();
            let _ = writeln!(s, " set large-community {}", list.join(" "));
        }
        if let Some(m) = p.med {
            let _ = writeln!(s, " set metric {m}");
        }
        if let Some(l) = p.local_pref {
            let _ = writeln!(s, " set local-preference {l}");
        }
        s.push_str("!\n");
    }
    let _ = writeln!(s, "router bgp {}", cfg.local_as);
    let _ = writeln!(s, " bgp router-id {}", cfg.router_id);
    s.push_str(" no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n");
    s.push_str(if cfg.graceful_restart {
        " bgp graceful-restart\n"
    } else {
        " bgp graceful-restart-disable\n"
    });
    if let Some((k, h)) = cfg.timers() {
        let _ = writeln!(s, " timers bgp {} {h}", k.max(1));
    }
    if let Some(id) = cfg.cluster_id {
        let _ = writeln!(s, " bgp cluster-id {id}");
    }
    for n in &cfg.neighbors {
        let a = n.address;
        let _ = writeln!(s, " neighbor {a} remote-as {}", n.remote_as);
        if let Some(p) = n.port {
            let _ = writeln!(s, " neighbor {a} port {p}");
        }
        if n.passive {
            let _ = writeln!(s, " neighbor {a} passive");
        }
        if let Some(p) = &n.password {
            let _ = writeln!(s, " neighbor {a} password {p}");
        }
        if let Some(ttl) = n.multihop {
            let _ = writeln!(s, " neighbor {a} ebgp-multihop {ttl}");
        }
        if let Some(l) = n.local_address {
            let _ = writeln!(s, " neighbor {a} update-source {l}");
        }
        let _ = writeln!(s, " neighbor {a} timers connect {CONNECT_RETRY}");
        if n.bfd {
            let _ = writeln!(s, " neighbor {a} bfd profile tabby");
        }
        // The traditional profile delays eBGP updates by 30 s; tests want them now.
        let _ = writeln!(s, " neighbor {a} advertisement-interval 0");
    }
    for (afi, name) in [(Afi::Ipv4, "ipv4"), (Afi::Ipv6, "ipv6")] {
        let _ = writeln!(s, " address-family {name} unicast");
        for p in cfg.originated(afi) {
            if p.has_attributes() {
                let _ = writeln!(s, "  network {} route-map {}", p.prefix, route_map_name(p));
            } else {
                let _ = writeln!(s, "  network {}", p.prefix);
            }
        }
        for n in cfg
            .neighbors
            .iter()
            .filter(|n| n.effective_families().contains(&afi))
        {
            let a = n.address;
            let _ = writeln!(s, "  neighbor {a} activate");
            if n.rr_client {
                let _ = writeln!(s, "  neighbor {a} route-reflector-client");
            }
            if n.next_hop_self {
                // `force` also rewrites reflected iBGP routes, like BIRD's `next hop self`.
                let _ = writeln!(s, "  neighbor {a} next-hop-self force");
            }
        }
        s.push_str(" exit-address-family\n");
    }
    s.push_str("!\n");
    s
}

/// bfdd's config text: profile `tabby` with [`BgpConfig::bfd_timers`].
pub fn render_bfdd(cfg: &BgpConfig, dir: &Path, hostname: &str) -> String {
    let (rx, tx, m) = cfg.bfd_timers;
    format!(
        "hostname {hostname}\nlog file {}/bfdd.log\n!\nbfd\n profile tabby\n  receive-interval {rx}\n  transmit-interval {tx}\n  detect-multiplier {m}\n !\n!\n",
        dir.display()
    )
}

/// Route-map giving an originated prefix its attributes.
fn route_map_name(p: &super::Originate) -> String {
    format!(
        "tabby-orig-{}",
        p.prefix.to_string().replace(['/', ':', '.'], "-")
    )
}

/// States from `show bgp neighbors json` for the configured neighbors.
pub fn parse_neighbors(v: &Value, cfg: &BgpConfig) -> Vec<(IpAddr, SessionState)> {
    cfg.neighbors
        .iter()
        .filter_map(|n| {
            let peer = v.get(n.address.to_string())?;
            let state = peer.get("bgpState")?.as_str()?;
            Some((n.address, SessionState::parse(state)))
        })
        .collect()
}

/// Paths from `show bgp <afi> unicast json detail`.
pub fn parse_routes(v: &Value) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    let Some(routes) = v.get("routes").and_then(Value::as_object) else {
        // An empty RIB prints `{}` without "routes".
        return Ok(out);
    };
    for (prefix, paths) in routes {
        let prefix = prefix
            .parse()
            .map_err(|e| format!("prefix {prefix:?}: {e}"))?;
        let paths = paths
            .as_array()
            .ok_or_else(|| format!("{prefix}: paths are not an array"))?;
        // The first element describes the prefix; paths carry "aspath".
        for p in paths.iter().filter(|p| p.get("aspath").is_some()) {
            out.push(path(prefix, p)?);
        }
    }
    Ok(out)
}

fn path(prefix: ipnet::IpNet, p: &Value) -> Result<Route, String> {
    let mut r = Route::new(prefix);
    let u32_of = |key: &str| p.get(key).and_then(Value::as_u64).map(|x| x as u32);
    r.med = u32_of("metric");
    r.originator_id = p
        .get("originatorId")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    for c in p
        .pointer("/clusterList/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let c = c.as_str().unwrap_or_default();
        r.cluster_list.push(
            c.parse()
                .map_err(|e| format!("{prefix}: cluster id {c:?}: {e}"))?,
        );
    }
    r.local_pref = u32_of("locPrf");
    r.origin = p
        .get("origin")
        .and_then(Value::as_str)
        .and_then(Origin::parse);
    r.best = p
        .pointer("/bestpath/overall")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for seg in p
        .pointer("/aspath/segments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for asn in seg
            .get("list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.as_path
                .push(asn.as_u64().ok_or_else(|| format!("{prefix}: AS {asn}"))? as u32);
        }
    }
    for c in p
        .pointer("/community/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let c = c.as_str().unwrap_or_default();
        // Well-known names (no-export, ...) are not (asn, value) pairs.
        if let Some((a, b)) = c.split_once(':')
            && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
        {
            r.communities.push((a, b));
        }
    }
    for c in p
        .pointer("/largeCommunity/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let parts: Vec<u32> = c
            .as_str()
            .unwrap_or_default()
            .split(':')
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [a, b, c] = parts[..] {
            r.large_communities.push((a, b, c));
        } else {
            return Err(format!("{prefix}: large community {c}"));
        }
    }
    for nh in p
        .get("nexthops")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(ip) = nh.get("ip").and_then(Value::as_str)
            && let Ok(ip) = ip.parse::<IpAddr>()
            && !ip.is_unspecified()
        {
            r.next_hops.push(ip);
        }
    }
    let local = p.get("sourced").and_then(Value::as_bool).unwrap_or(false);
    if !local {
        r.peer = p
            .pointer("/peer/peerId")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpAddr>().ok());
        r.peer = r.peer.filter(|a| !a.is_unspecified());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::super::Neighbor;
    use super::*;

    #[test]
    fn config_text() {
        let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 64512)
            .neighbor(
                Neighbor::new("198.18.0.1".parse().unwrap(), 64512)
                    .rr_client()
                    .password("pw"),
            )
            .neighbor(
                Neighbor::new("2001:db8::1".parse().unwrap(), 65001)
                    .next_hop_self()
                    .multihop(3)
                    .port(1790),
            )
            .originate_with(
                super::super::Originate::new("100.64.2.0/24".parse().unwrap())
                    .community(64512, 7)
                    .community(64512, 8)
                    .large_community(64512, 1, 2)
                    .med(5)
                    .local_pref(200),
            )
            .originate("2001:db8:2::/48".parse().unwrap())
            .hold_time(9);
        let t = render_config(&cfg, Path::new("/d"), "ns1");
        for want in [
            "router bgp 64512\n bgp router-id 198.18.0.2\n",
            " bgp graceful-restart-disable\n timers bgp 3 9\n",
            " neighbor 198.18.0.1 remote-as 64512\n neighbor 198.18.0.1 password pw\n",
            " neighbor 2001:db8::1 port 1790\n neighbor 2001:db8::1 ebgp-multihop 3\n",
            "route-map tabby-orig-100-64-2-0-24 permit 10\n set community 64512:7 64512:8\n set large-community 64512:1:2\n set metric 5\n set local-preference 200\n",
            " address-family ipv4 unicast\n  network 100.64.2.0/24 route-map tabby-orig-100-64-2-0-24\n  neighbor 198.18.0.1 activate\n  neighbor 198.18.0.1 route-reflector-client\n exit-address-family",
            " address-family ipv6 unicast\n  network 2001:db8:2::/48\n  neighbor 2001:db8::1 activate\n  neighbor 2001:db8::1 next-hop-self force\n",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn neighbors() {
        let cfg = BgpConfig::new("198.18.0.2".parse().unwrap(), 1)
            .neighbor(Neighbor::new("198.18.0.1".parse().unwrap(), 1))
            .neighbor(Neighbor::new("198.18.0.3".parse().unwrap(), 2));
        let v: Value = serde_json::from_str(
            r#"{"198.18.0.1":{"bgpState":"Established"},"198.18.0.3":{"bgpState":"Active"}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_neighbors(&v, &cfg),
            [
                ("198.18.0.1".parse().unwrap(), SessionState::Established),
                ("198.18.0.3".parse().unwrap(), SessionState::Active)
            ]
        );
    }

    // Trimmed output of FRR 8.4.4 `show bgp ipv4 unicast json detail`.
    const DETAIL: &str = r#"{"vrfId": 0, "routerId": "198.18.0.2", "localAS": 64512,
 "routes": { "100.64.2.0/24": [{"prefix":"100.64.2.0/24","version":3},{"aspath":{"string":"Local","segments":[],"length":0},"origin":"IGP","metric":0,"weight":32768,"valid":true,"sourced":true,"local":true,"bestpath":{"overall":true},"community":{"string":"64512:200","list":["64512:200"]},"nexthops":[{"ip":"0.0.0.0","afi":"ipv4","used":true}],"peer":{"peerId":"0.0.0.0","routerId":"198.18.0.2"}}],
 "100.64.3.0/24": [{"prefix":"100.64.3.0/24"},{"aspath":{"string":"64513","segments":[{"type":"as-sequence","list":[64513]}],"length":1},"origin":"incomplete","metric":7,"locPrf":100,"valid":true,"community":{"list":["64513:300","no-export"]},"largeCommunity":{"string":"64513:3:4","list":["64513:3:4"]},"nexthops":[{"ip":"198.18.0.3","afi":"ipv4","used":true}],"peer":{"peerId":"198.18.0.1","type":"internal"}},{"aspath":{"string":"64513","segments":[{"type":"as-sequence","list":[64513]}],"length":1},"origin":"incomplete","metric":7,"valid":true,"bestpath":{"overall":true,"selectionReason":"Peer Type"},"nexthops":[{"ip":"198.18.0.3","afi":"ipv4"}],"peer":{"peerId":"198.18.0.3","type":"external"}}]
 } }"#;

    #[test]
    fn routes() {
        let r = parse_routes(&serde_json::from_str(DETAIL).unwrap()).unwrap();
        assert_eq!(r.len(), 3, "{r:#?}");
        assert_eq!(r[0].peer, None);
        assert!(r[0].next_hops.is_empty());
        assert_eq!(r[0].communities, [(64512, 200)]);
        assert!(r[0].best);
        assert!(!r[1].best);
        assert_eq!(r[1].communities, [(64513, 300)]);
        assert_eq!(r[1].large_communities, [(64513, 3, 4)]);
        assert_eq!(r[1].local_pref, Some(100));
        assert_eq!(r[1].origin, Some(Origin::Incomplete));
        assert_eq!(r[1].peer, Some("198.18.0.1".parse().unwrap()));
        assert!(r[2].best);
        assert_eq!(r[2].as_path, [64513]);
        assert_eq!(r[2].next_hops, ["198.18.0.3".parse::<IpAddr>().unwrap()]);
        assert!(
            parse_routes(&serde_json::from_str("{}").unwrap())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn reflected_route() {
        let v: Value = serde_json::from_str(
            r#"{"routes":{"100.64.2.0/24":[{"prefix":"100.64.2.0/24"},{"aspath":{"segments":[]},
                "originatorId":"198.18.0.2","clusterList":{"list":["198.18.0.100"]},
                "nexthops":[{"ip":"198.18.0.2"}],"peer":{"peerId":"198.18.0.1"},"bestpath":{"overall":true}}]}}"#,
        )
        .unwrap();
        let r = parse_routes(&v).unwrap();
        assert_eq!(r[0].originator_id, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(
            r[0].cluster_list,
            ["198.18.0.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        let cfg = BgpConfig::new("198.18.0.1".parse().unwrap(), 64512)
            .cluster_id("198.18.0.100".parse().unwrap());
        assert!(
            render_config(&cfg, Path::new("/tmp"), "h").contains(" bgp cluster-id 198.18.0.100\n")
        );
    }
}
