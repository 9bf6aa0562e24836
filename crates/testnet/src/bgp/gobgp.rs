//! GoBGP runner: `gobgpd -f <dir>/gobgpd.toml` in a namespace with its gRPC
//! API on the namespace's own 127.0.0.1:50051 (so one GoBGP per namespace),
//! queried with `gobgp ... -j` run inside the namespace. Originated prefixes
//! are added through the API after start, as GoBGP's file config has no
//! static routes.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{
    Afi, BgpConfig, BgpDaemon, CONNECT_RETRY, DaemonKind, Origin, Route, STARTUP, SessionState,
};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::process::Process;
use crate::wait::wait_until;

/// gRPC endpoint inside the namespace.
const API: (&str, &str) = ("127.0.0.1", "50051");

/// A running gobgpd.
pub struct Gobgp {
    ns: Netns,
    cfg: BgpConfig,
    dir: tempfile::TempDir,
    proc: Option<Process>,
}

impl Gobgp {
    /// Writes the config, starts gobgpd in `ns` and adds the originated prefixes.
    pub fn start(ns: &Netns, cfg: &BgpConfig) -> Result<Gobgp> {
        cfg.validate()?;
        if cfg.export_to_kernel {
            return Err(Error::Unsupported {
                daemon: "gobgp runner",
                feature: "export_to_kernel".into(),
            });
        }
        let dir = super::daemon_dir(DaemonKind::Gobgp, ns)?;
        super::write_file(&dir.path().join("gobgpd.toml"), &render_config(cfg))?;
        let mut g = Gobgp {
            ns: ns.clone(),
            cfg: cfg.clone(),
            dir,
            proc: None,
        };
        g.launch()?;
        Ok(g)
    }

    fn launch(&mut self) -> Result<()> {
        let d = self.dir.path();
        let conf = d.join("gobgpd.toml").display().to_string();
        let api = format!("{}:{}", API.0, API.1);
        let mut p = Process::spawn(
            &self.ns,
            &[
                "gobgpd",
                "-f",
                &conf,
                "--api-hosts",
                &api,
                "--pprof-disable",
                "-p",
            ],
            &d.join("gobgpd.log"),
        )?;
        if !wait_until(STARTUP, || {
            !p.is_running() || self.gobgp(&["global"]).is_ok()
        }) || !p.is_running()
        {
            return Err(p.died());
        }
        self.proc = Some(p);
        for o in self.cfg.originate.clone() {
            let args = rib_add_args(&o);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.gobgp(&args)?;
        }
        Ok(())
    }

    /// Runs the `gobgp` CLI inside the namespace against this daemon.
    pub fn gobgp(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec!["gobgp", "-u", API.0, "-p", API.1];
        argv.extend_from_slice(args);
        self.ns.output(&argv)
    }

    fn json(&self, args: &[&str]) -> Result<Value> {
        let out = self.gobgp(args)?;
        serde_json::from_str(&out).map_err(|e| Error::Parse {
            cmd: format!("gobgp {}", args.join(" ")),
            reason: e.to_string(),
        })
    }
}

impl BgpDaemon for Gobgp {
    fn kind(&self) -> DaemonKind {
        DaemonKind::Gobgp
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
        Ok(parse_neighbors(&self.json(&["neighbor", "-j"])?))
    }
    fn routes(&self, afi: Afi) -> Result<Vec<Route>> {
        let family = match afi {
            Afi::Ipv4 => "ipv4",
            Afi::Ipv6 => "ipv6",
        };
        let args = ["global", "rib", "-a", family, "-j"];
        parse_routes(&self.json(&args)?).map_err(|reason| Error::Parse {
            cmd: "gobgp global rib -j".into(),
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

/// `gobgp` arguments adding an originated prefix with its attributes.
pub fn rib_add_args(o: &super::Originate) -> Vec<String> {
    let family = if o.prefix.addr().is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    let mut a: Vec<String> = ["global", "rib", "add", "-a", family]
        .map(String::from)
        .to_vec();
    a.extend([o.prefix.to_string(), "origin".into(), "igp".into()]);
    if !o.communities.is_empty() {
        let list: Vec<String> = o
            .communities
            .iter()
            .map(|(x, y)| format!("{x}:{y}"))
            .collect();
        a.extend(["community".into(), list.join(",")]);
    }
    if !o.large_communities.is_empty() {
        let list: Vec<String> = o
            .large_communities
            .iter()
            .map(|(x, y, z)| format!("{x}:{y}:{z}"))
            .collect();
        a.extend(["large-community".into(), list.join(",")]);
    }
    if let Some(m) = o.med {
        a.extend(["med".into(), m.to_string()]);
    }
    if let Some(l) = o.local_pref {
        a.extend(["local-pref".into(), l.to_string()]);
    }
    a
}

/// gobgpd's TOML config for `cfg`.
pub fn render_config(cfg: &BgpConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[global.config]\n  as = {}\n  router-id = \"{}\"",
        cfg.local_as, cfg.router_id
    );
    let _ = writeln!(s, "  port = {}", cfg.listen_port);
    let nhs: Vec<String> = cfg
        .neighbors
        .iter()
        .filter(|n| n.next_hop_self)
        .map(|n| format!("\"{}\"", n.address))
        .collect();
    if !nhs.is_empty() {
        // GoBGP applies export policy globally; match the neighbors by set.
        s.push_str("\n[global.apply-policy.config]\n  export-policy-list = [\"tabby-nhs\"]\n");
        s.push_str("  default-export-policy = \"accept-route\"\n");
        let _ = writeln!(
            s,
            "\n[[defined-sets.neighbor-sets]]\n  neighbor-set-name = \"tabby-nhs\"\n  neighbor-info-list = [{}]",
            nhs.join(", ")
        );
        s.push_str(
            "\n[[policy-definitions]]\n  name = \"tabby-nhs\"\n  [[policy-definitions.statements]]\n    name = \"nhs\"\n\
             \x20   [policy-definitions.statements.conditions.match-neighbor-set]\n      neighbor-set = \"tabby-nhs\"\n\
             \x20   [policy-definitions.statements.actions.bgp-actions]\n      set-next-hop = \"self\"\n",
        );
    }
    for n in &cfg.neighbors {
        let _ = writeln!(
            s,
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"",
            n.address
        );
        let _ = writeln!(s, "    peer-as = {}", n.remote_as);
        if let Some(p) = &n.password {
            let _ = writeln!(s, "    auth-password = \"{p}\"");
        }
        let _ = writeln!(
            s,
            "  [neighbors.timers.config]\n    connect-retry = {CONNECT_RETRY}"
        );
        if let Some((k, h)) = cfg.timers() {
            let _ = writeln!(
                s,
                "    hold-time = {h}\n    keepalive-interval = {}",
                k.max(1)
            );
        }
        if n.passive || n.port.is_some() || n.local_address.is_some() {
            s.push_str("  [neighbors.transport.config]\n");
            if n.passive {
                s.push_str("    passive-mode = true\n");
            }
            if let Some(p) = n.port {
                let _ = writeln!(s, "    remote-port = {p}");
            }
            if let Some(l) = n.local_address {
                let _ = writeln!(s, "    local-address = \"{l}\"");
            }
        }
        if let Some(ttl) = n.multihop {
            let _ = writeln!(
                s,
                "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {ttl}"
            );
        }
        if n.rr_client {
            let _ = writeln!(
                s,
                "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{}\"",
                cfg.effective_cluster_id()
            );
        }
        if cfg.graceful_restart {
            s.push_str("  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120\n");
        }
        for afi in n.effective_families() {
            let name = match afi {
                Afi::Ipv4 => "ipv4-unicast",
                Afi::Ipv6 => "ipv6-unicast",
            };
            let _ = writeln!(
                s,
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{name}\""
            );
            if cfg.graceful_restart {
                s.push_str(
                    "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
                );
            }
        }
    }
    s
}

/// States from `gobgp neighbor -j`.
pub fn parse_neighbors(v: &Value) -> Vec<(IpAddr, SessionState)> {
    let mut out = Vec::new();
    for peer in v.as_array().into_iter().flatten() {
        let addr = peer
            .pointer("/state/neighbor_address")
            .or_else(|| peer.pointer("/conf/neighbor_address"))
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok());
        let Some(addr) = addr else { continue };
        let state = match peer.pointer("/state/session_state") {
            // apipb.PeerState.SessionState numbering.
            Some(Value::Number(n)) => match n.as_u64() {
                Some(1) => SessionState::Idle,
                Some(2) => SessionState::Connect,
                Some(3) => SessionState::Active,
                Some(4) => SessionState::OpenSent,
                Some(5) => SessionState::OpenConfirm,
                Some(6) => SessionState::Established,
                _ => SessionState::Other(n.to_string()),
            },
            Some(Value::String(s)) => SessionState::parse(s),
            // Omitted zero value: UNKNOWN, i.e. not started yet.
            _ => SessionState::Idle,
        };
        out.push((addr, state));
    }
    out
}

/// Paths from `gobgp global rib -a <family> -j`.
pub fn parse_routes(v: &Value) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    let Some(map) = v.as_object() else {
        return Ok(out);
    };
    for (prefix, paths) in map {
        let prefix: ipnet::IpNet = prefix
            .parse()
            .map_err(|e| format!("prefix {prefix:?}: {e}"))?;
        for p in paths.as_array().into_iter().flatten() {
            let mut r = Route::new(prefix);
            r.best = p.get("best").and_then(Value::as_bool).unwrap_or(false);
            r.peer = p
                .get("neighbor-ip")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok())
                .filter(|a| !a.is_unspecified());
            for a in p
                .get("attrs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                attribute(&mut r, a)?;
            }
            out.push(r);
        }
    }
    Ok(out)
}

fn attribute(r: &mut Route, a: &Value) -> Result<(), String> {
    let num = |k: &str| a.get(k).and_then(Value::as_u64).map(|x| x as u32);
    match a.get("type").and_then(Value::as_u64) {
        Some(1) => r.origin = num("value").and_then(|o| Origin::parse(&o.to_string())),
        Some(2) => {
            for seg in a
                .get("as_paths")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for asn in seg
                    .get("asns")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    r.as_path
                        .push(asn.as_u64().ok_or_else(|| format!("AS {asn}"))? as u32);
                }
            }
        }
        Some(3) => push_next_hop(r, a.get("nexthop")),
        Some(4) => r.med = num("metric"),
        Some(5) => r.local_pref = num("value"),
        Some(9) => {
            r.originator_id = a
                .get("value")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        }
        Some(10) => {
            for c in a
                .get("value")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let c = c.as_str().unwrap_or_default();
                r.cluster_list
                    .push(c.parse().map_err(|e| format!("cluster id {c:?}: {e}"))?);
            }
        }
        Some(8) => {
            for c in a
                .get("communities")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let c = c.as_u64().ok_or_else(|| format!("community {c}"))? as u32;
                r.communities.push(((c >> 16) as u16, c as u16));
            }
        }
        Some(14) => {
            push_next_hop(r, a.get("nexthop"));
            push_next_hop(r, a.get("linklocal_nexthop"));
        }
        Some(32) => {
            for c in a
                .get("value")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = |k: &str| {
                    c.get(k)
                        .and_then(Value::as_u64)
                        .map(|x| x as u32)
                        .ok_or_else(|| format!("large community {c}"))
                };
                r.large_communities
                    .push((f("ASN")?, f("LocalData1")?, f("LocalData2")?));
            }
        }
        _ => {}
    }
    Ok(())
}

fn push_next_hop(r: &mut Route, v: Option<&Value>) {
    if let Some(ip) = v
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<IpAddr>().ok())
        && !ip.is_unspecified()
    {
        r.next_hops.push(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Neighbor;
    use super::*;

    #[test]
    fn config_text() {
        let cfg = BgpConfig::new("198.18.0.3".parse().unwrap(), 64513)
            .neighbor(
                Neighbor::new("198.18.0.1".parse().unwrap(), 64512)
                    .password("pw")
                    .passive()
                    .next_hop_self(),
            )
            .neighbor(
                Neighbor::new("2001:db8::1".parse().unwrap(), 64513)
                    .rr_client()
                    .families(&[Afi::Ipv4, Afi::Ipv6]),
            )
            .graceful_restart(true)
            .hold_time(9);
        let t = render_config(&cfg);
        for want in [
            "[global.config]\n  as = 64513\n  router-id = \"198.18.0.3\"\n  port = 179\n",
            "neighbor-info-list = [\"198.18.0.1\"]",
            "set-next-hop = \"self\"",
            "    neighbor-address = \"198.18.0.1\"\n    peer-as = 64512\n    auth-password = \"pw\"\n",
            "    connect-retry = 2\n    hold-time = 9\n    keepalive-interval = 3\n  [neighbors.transport.config]\n    passive-mode = true\n",
            "route-reflector-client = true\n    route-reflector-cluster-id = \"198.18.0.3\"",
            "afi-safi-name = \"ipv4-unicast\"\n    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn rib_add() {
        let o = super::super::Originate::new("100.64.3.0/24".parse().unwrap())
            .community(1, 2)
            .community(3, 4)
            .large_community(5, 6, 7)
            .med(8)
            .local_pref(9);
        assert_eq!(
            rib_add_args(&o).join(" "),
            "global rib add -a ipv4 100.64.3.0/24 origin igp community 1:2,3:4 large-community 5:6:7 med 8 local-pref 9"
        );
    }

    #[test]
    fn neighbors() {
        let v: Value = serde_json::from_str(
            r#"[{"conf":{"neighbor_address":"198.18.0.1"},"state":{"neighbor_address":"198.18.0.1","session_state":6}},
                {"conf":{"neighbor_address":"198.18.0.2"},"state":{"session_state":3}},
                {"conf":{"neighbor_address":"2001:db8::2"},"state":{}}]"#,
        )
        .unwrap();
        assert_eq!(
            parse_neighbors(&v),
            [
                ("198.18.0.1".parse().unwrap(), SessionState::Established),
                ("198.18.0.2".parse().unwrap(), SessionState::Active),
                ("2001:db8::2".parse().unwrap(), SessionState::Idle),
            ]
        );
    }

    #[test]
    fn routes() {
        // Shape of GoBGP 3.10 output (two paths for one prefix).
        let v: Value = serde_json::from_str(
            r#"{"100.64.1.0/24":[
              {"nlri":{"prefix":"100.64.1.0/24"},"best":true,"attrs":[{"type":1,"value":0},
                {"type":2,"as_paths":[{"segment_type":2,"num":2,"asns":[64512,64514]}]},{"type":3,"nexthop":"198.18.0.2"},
                {"type":4,"metric":7},{"type":5,"value":200},{"type":8,"communities":[4227858532]},
                {"type":32,"value":[{"ASN":64512,"LocalData1":1,"LocalData2":2}]}],"neighbor-ip":"198.18.0.2"},
              {"nlri":{"prefix":"100.64.1.0/24"},"best":false,"attrs":[{"type":1,"value":2},{"type":3,"nexthop":"0.0.0.0"}]}],
             "2001:db8:1::/48":[{"best":true,"attrs":[{"type":14,"nexthop":"2001:db8::1","linklocal_nexthop":"fe80::1"}],"neighbor-ip":"2001:db8::1"}]}"#,
        )
        .unwrap();
        let r = parse_routes(&v).unwrap();
        assert_eq!(r.len(), 3);
        let a = r
            .iter()
            .find(|r| r.best && r.prefix.to_string() == "100.64.1.0/24")
            .unwrap();
        assert_eq!(a.as_path, [64512, 64514]);
        assert_eq!(a.communities, [(64512, 100)]);
        assert_eq!(a.large_communities, [(64512, 1, 2)]);
        assert_eq!(
            (a.med, a.local_pref, a.origin),
            (Some(7), Some(200), Some(Origin::Igp))
        );
        assert_eq!(a.peer, Some("198.18.0.2".parse().unwrap()));
        let b = r.iter().find(|r| !r.best).unwrap();
        assert!(b.next_hops.is_empty() && b.peer.is_none());
        assert_eq!(b.origin, Some(Origin::Incomplete));
        let c = r
            .iter()
            .find(|r| r.prefix.to_string() == "2001:db8:1::/48")
            .unwrap();
        assert_eq!(c.next_hops.len(), 2);
    }

    #[test]
    fn reflected_route() {
        let v: Value = serde_json::from_str(
            r#"{"100.64.2.0/24":[{"best":true,"attrs":[{"type":3,"nexthop":"198.18.0.2"},
                {"type":9,"value":"198.18.0.2"},{"type":10,"value":["198.18.0.100"]}],"neighbor-ip":"198.18.0.1"}]}"#,
        )
        .unwrap();
        let r = parse_routes(&v).unwrap();
        assert_eq!(r[0].originator_id, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(
            r[0].cluster_list,
            ["198.18.0.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
}
