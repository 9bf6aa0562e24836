//! Calico's pod wiring, written against [`Netlink`] and [`Sysctl`]: a veth whose
//! host end (`cali…`, MAC `ee:ee:ee:ee:ee:ee`, proxy ARP, no address) routes each
//! pod address as a /32 (/128) `scope link proto 80`, and whose pod end carries the
//! addresses as /32 (/128) with a default route via 169.254.1.1 (IPv6: the host
//! end's link-local `fe80::ecee:eeff:feee:eeee`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::model::{Family, LinkAttrs, Route, RouteScope, format_mac};
use crate::{Netlink, Sysctl};

/// The host end's MAC (Calico's).
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The IPv4 gateway pods route through, answered by proxy ARP on the host end.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway: the EUI-64 link-local address of [`HOST_MAC`].
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// What one pod interface should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Host end, e.g. `cali82111e10a96`.
    pub host_ifname: String,
    /// Pod end, e.g. `eth0`.
    pub cont_ifname: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// Pod addresses (any prefix length; they are installed as host routes).
    pub addresses: Vec<IpAddr>,
    /// MTU of both ends.
    pub mtu: u32,
    /// Leave `ip_forward` on in the pod (Calico's `allow_ip_forwarding`).
    pub allow_ip_forwarding: bool,
}

/// What [`setup`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    /// The pod end's MAC.
    pub cont_mac: [u8; 6],
    /// The host end's index.
    pub host_index: u32,
}

fn full(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn has(spec: &WorkloadSpec, f: Family) -> bool {
    spec.addresses.iter().any(|a| Family::of(a) == f)
}

/// The sysctls Calico sets on the host end (`cni-plugin/pkg/dataplane/linux`).
pub fn host_sysctls(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let i = &spec.host_ifname;
    let mut v = Vec::new();
    if has(spec, Family::V4) {
        for (k, val) in [
            (format!("net/ipv4/conf/{i}/route_localnet"), "1"),
            (format!("net/ipv4/neigh/{i}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{i}/proxy_arp"), "1"),
            (format!("net/ipv4/conf/{i}/forwarding"), "1"),
        ] {
            v.push((k, val.to_owned()));
        }
    }
    if has(spec, Family::V6) {
        for (k, val) in [
            (format!("net/ipv6/conf/{i}/disable_ipv6"), "0"),
            (format!("net/ipv6/conf/{i}/accept_dad"), "0"),
            (format!("net/ipv6/conf/{i}/accept_ra"), "0"),
            (format!("net/ipv6/conf/{i}/proxy_ndp"), "1"),
            (format!("net/ipv6/conf/{i}/forwarding"), "1"),
        ] {
            v.push((k, val.to_owned()));
        }
    }
    v
}

/// The sysctls set inside the pod before its addresses are added.
pub fn cont_sysctls(spec: &WorkloadSpec) -> Vec<(String, String)> {
    let i = &spec.cont_ifname;
    let mut v = Vec::new();
    if has(spec, Family::V6) {
        v.push((format!("net/ipv6/conf/{i}/disable_ipv6"), "0".to_owned()));
        v.push((format!("net/ipv6/conf/{i}/accept_dad"), "0".to_owned()));
    }
    if spec.allow_ip_forwarding {
        v.push(("net/ipv4/ip_forward".to_owned(), "1".to_owned()));
    }
    v
}

/// The routes the pod needs on its interface `index`.
pub fn cont_routes(spec: &WorkloadSpec, index: u32) -> Vec<Route> {
    let mut v = Vec::new();
    if has(spec, Family::V4) {
        v.push(Route {
            protocol: 0,
            ..Route::device(full(IpAddr::V4(GATEWAY_V4)), index)
        });
        v.push(Route::via(
            "0.0.0.0/0".parse().expect("static"),
            IpAddr::V4(GATEWAY_V4),
            index,
        ));
    }
    if has(spec, Family::V6) {
        v.push(Route::via(
            "::/0".parse().expect("static"),
            IpAddr::V6(GATEWAY_V6),
            index,
        ));
    }
    v
}

/// The host routes to the pod through the host end `index`.
pub fn host_routes(spec: &WorkloadSpec, index: u32) -> Vec<Route> {
    spec.addresses
        .iter()
        .map(|a| Route::device(full(*a), index))
        .collect()
}

/// Wires a pod. On failure everything this call created is removed again (the
/// veth, with it its addresses and routes) and the first error is returned.
pub async fn setup(
    host: &dyn Netlink,
    host_sysctl: &dyn Sysctl,
    cont: &dyn Netlink,
    cont_sysctl: &dyn Sysctl,
    spec: &WorkloadSpec,
) -> Result<Wired> {
    let ns = spec.netns.display().to_string();
    if cont.link_by_name(&spec.cont_ifname).await?.is_some() {
        return Err(Error::Collision {
            name: spec.cont_ifname.clone(),
            reason: format!(
                "already exists in network namespace {ns}; use another CNI_IFNAME or remove it"
            ),
        });
    }
    if let Some(old) = host.link_by_name(&spec.host_ifname).await? {
        if old.kind.as_deref() != Some("veth") {
            return Err(Error::Collision {
                name: spec.host_ifname.clone(),
                reason: format!(
                    "already exists on the host and is a {} link, not a Tabby veth; remove or rename it",
                    old.kind.as_deref().unwrap_or("unknown")
                ),
            });
        }
        // A veth of an earlier, failed attempt for the same pod (Calico does the same).
        tracing::warn!(link = %spec.host_ifname, "removing a stale host veth");
        host.delete_link(old.index).await?;
    }
    host.create_veth(&spec.host_ifname, &spec.cont_ifname, Some(&spec.netns))
        .await?;
    match wire(host, host_sysctl, cont, cont_sysctl, spec, false).await {
        Ok(w) => Ok(w),
        Err(e) => {
            if let Ok(Some(l)) = host.link_by_name(&spec.host_ifname).await {
                let _ = host.delete_link(l.index).await;
            }
            if let Ok(Some(l)) = cont.link_by_name(&spec.cont_ifname).await {
                let _ = cont.delete_link(l.index).await;
            }
            Err(e)
        }
    }
}

/// Brings a pod's wiring to `spec` when an earlier call for the same attachment
/// got part of the way: if the pod end and the host end both exist as veths, what
/// is missing (link settings, addresses, routes) is added and what is there is
/// kept, and nothing is removed on failure (it may serve a running pod). Otherwise
/// this is [`setup`]. The second value is true when existing links were reused.
pub async fn ensure(
    host: &dyn Netlink,
    host_sysctl: &dyn Sysctl,
    cont: &dyn Netlink,
    cont_sysctl: &dyn Sysctl,
    spec: &WorkloadSpec,
) -> Result<(Wired, bool)> {
    let is_veth = |l: &Option<crate::model::Link>| {
        l.as_ref()
            .is_some_and(|l| l.kind.as_deref() == Some("veth"))
    };
    let c = cont.link_by_name(&spec.cont_ifname).await?;
    let h = host.link_by_name(&spec.host_ifname).await?;
    if is_veth(&c) && is_veth(&h) {
        let w = wire(host, host_sysctl, cont, cont_sysctl, spec, true).await?;
        return Ok((w, true));
    }
    setup(host, host_sysctl, cont, cont_sysctl, spec)
        .await
        .map(|w| (w, false))
}

/// Configures the links [`setup`] created; with `resume`, addresses and routes
/// that are already there are not errors.
async fn wire(
    host: &dyn Netlink,
    host_sysctl: &dyn Sysctl,
    cont: &dyn Netlink,
    cont_sysctl: &dyn Sysctl,
    spec: &WorkloadSpec,
    resume: bool,
) -> Result<Wired> {
    let tolerate = |r: Result<()>| match r {
        Err(e) if resume && e.is_exists() => Ok(()),
        other => other,
    };
    let missing = |n: &str, w: &str| Error::NotFound {
        what: format!("link {n} just created in {w}"),
    };
    let h = host
        .link_by_name(&spec.host_ifname)
        .await?
        .ok_or_else(|| missing(&spec.host_ifname, "the host"))?;
    host_sysctl.set_all(&host_sysctls(spec))?;
    host.set_link(
        h.index,
        &LinkAttrs {
            mac: Some(HOST_MAC),
            mtu: Some(spec.mtu),
            up: Some(true),
        },
    )
    .await?;

    let c = cont
        .link_by_name(&spec.cont_ifname)
        .await?
        .ok_or_else(|| missing(&spec.cont_ifname, "the pod"))?;
    cont_sysctl.set_all(&cont_sysctls(spec))?;
    cont.set_link(
        c.index,
        &LinkAttrs {
            mac: None,
            mtu: Some(spec.mtu),
            up: Some(true),
        },
    )
    .await?;
    for a in &spec.addresses {
        tolerate(cont.add_address(c.index, full(*a)).await)?;
    }
    for r in cont_routes(spec, c.index) {
        tolerate(cont.add_route(&r).await)?;
    }
    for r in host_routes(spec, h.index) {
        match host.add_route(&r).await {
            // The node agent may have added it already.
            Err(e) if e.is_exists() => {}
            other => other?,
        }
    }
    let cont_mac = cont
        .link_by_name(&spec.cont_ifname)
        .await?
        .and_then(|l| l.mac)
        .unwrap_or_default();
    Ok(Wired {
        cont_mac,
        host_index: h.index,
    })
}

/// Removes a pod's wiring: the host end by name when `host_ifname` is given (it
/// takes the pod end and the host routes with it) and, if the pod namespace is
/// still reachable, the pod end (which takes the host end). Without `host_ifname`
/// only the namespace's own interface goes: the host name may already belong to a
/// newer container of the same pod. Missing pieces are fine; every failure is
/// collected.
pub async fn teardown(
    host: &dyn Netlink,
    cont: Option<&dyn Netlink>,
    host_ifname: Option<&str>,
    cont_ifname: &str,
) -> Result<()> {
    let mut errors = Vec::new();
    if let Some(host_ifname) = host_ifname {
        match host.link_by_name(host_ifname).await {
            Ok(Some(l)) => {
                if let Err(e) = host.delete_link(l.index).await
                    && !e.is_not_found()
                {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Some(cont) = cont {
        match cont.link_by_name(cont_ifname).await {
            Ok(Some(l)) if l.kind.as_deref() == Some("veth") => {
                if let Err(e) = cont.delete_link(l.index).await
                    && !e.is_not_found()
                {
                    errors.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Many(errors)),
    }
}

/// Compares the kernel with `spec`; returns one line per difference (empty when
/// everything is in place).
pub async fn check(
    host: &dyn Netlink,
    cont: &dyn Netlink,
    spec: &WorkloadSpec,
) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    let ns = spec.netns.display();
    let Some(c) = cont.link_by_name(&spec.cont_ifname).await? else {
        diffs.push(format!("interface {} is missing in {ns}", spec.cont_ifname));
        return Ok(diffs);
    };
    if c.kind.as_deref() != Some("veth") {
        diffs.push(format!(
            "interface {} in {ns} is {:?}, not a veth",
            spec.cont_ifname, c.kind
        ));
    }
    if !c.up {
        diffs.push(format!("interface {} in {ns} is down", spec.cont_ifname));
    }
    let have: Vec<IpNet> = cont
        .addresses(Some(c.index))
        .await?
        .into_iter()
        .map(|a| a.net)
        .collect();
    for a in &spec.addresses {
        if !have.contains(&full(*a)) {
            diffs.push(format!(
                "address {} is missing on {} in {ns}",
                full(*a),
                spec.cont_ifname
            ));
        }
    }
    for r in cont_routes(spec, c.index) {
        let routes = cont.routes(r.family()).await?;
        if !routes.iter().any(|x| x.same_path(&r)) {
            diffs.push(format!(
                "route {} is missing in {ns}",
                describe(&r, &spec.cont_ifname)
            ));
        }
    }
    match host.link_by_name(&spec.host_ifname).await? {
        None => diffs.push(format!("host interface {} is missing", spec.host_ifname)),
        Some(h) => {
            if h.mac != Some(HOST_MAC) {
                diffs.push(format!(
                    "host interface {} has MAC {}, expected {}",
                    spec.host_ifname,
                    h.mac.map(|m| format_mac(&m)).unwrap_or_default(),
                    format_mac(&HOST_MAC)
                ));
            }
            for r in host_routes(spec, h.index) {
                // The kernel keeps IPv6 routes at global scope whatever was asked.
                let routes = host.routes(r.family()).await?;
                if !routes.iter().any(|x| {
                    x.same_path(&r) && (x.scope == RouteScope::Link || x.family() == Family::V6)
                }) {
                    diffs.push(format!(
                        "host route {} is missing",
                        describe(&r, &spec.host_ifname)
                    ));
                }
            }
        }
    }
    Ok(diffs)
}

fn describe(r: &Route, ifname: &str) -> String {
    let mut s = r.dst.to_string();
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {ifname}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeWorld;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            host_ifname: "cali82111e10a96".into(),
            cont_ifname: "eth0".into(),
            netns: "/run/netns/pod".into(),
            addresses: vec![
                "100.64.0.5".parse().unwrap(),
                "2001:db8::5".parse().unwrap(),
            ],
            mtu: 1440,
            allow_ip_forwarding: false,
        }
    }

    #[tokio::test]
    async fn setup_check_teardown_on_fake() {
        let w = FakeWorld::new();
        let (h, hs) = (w.netlink("host"), w.sysctl("host"));
        let (c, cs) = (w.netlink("/run/netns/pod"), w.sysctl("/run/netns/pod"));
        let s = spec();
        let wired = setup(&h, &hs, &c, &cs, &s).await.unwrap();
        assert_ne!(wired.cont_mac, [0; 6]);
        let host_links = w.links("host");
        assert_eq!(host_links[0].name, "cali82111e10a96");
        assert_eq!(host_links[0].mac, Some(HOST_MAC));
        assert_eq!(host_links[0].mtu, Some(1440));
        let hr = w.routes("host");
        assert_eq!(hr.len(), 2);
        assert!(
            hr.iter()
                .all(|r| r.scope == RouteScope::Link && r.protocol == 80)
        );
        assert_eq!(
            w.sysctls("host")
                .get("net/ipv4/conf/cali82111e10a96/proxy_arp")
                .map(String::as_str),
            Some("1")
        );
        let cr = w.routes("/run/netns/pod");
        assert_eq!(cr.len(), 3, "{cr:?}");
        assert!(check(&h, &c, &s).await.unwrap().is_empty());

        // Drop a host route: CHECK names it.
        h.del_route(&host_routes(&s, wired.host_index)[0])
            .await
            .unwrap();
        let d = check(&h, &c, &s).await.unwrap();
        assert_eq!(
            d,
            ["host route 100.64.0.5/32 dev cali82111e10a96 is missing"]
        );

        teardown(&h, Some(&c), Some(&s.host_ifname), &s.cont_ifname)
            .await
            .unwrap();
        assert!(w.links("host").is_empty() && w.links("/run/netns/pod").is_empty());
        assert!(w.routes("host").is_empty());
        // Idempotent, also without the pod namespace.
        teardown(&h, None, Some(&s.host_ifname), &s.cont_ifname)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ensure_completes_existing_wiring_and_sets_up_missing() {
        let w = FakeWorld::new();
        let (h, hs) = (w.netlink("host"), w.sysctl("host"));
        let (c, cs) = (w.netlink("/run/netns/pod"), w.sysctl("/run/netns/pod"));
        let s = spec();
        // Nothing there: a plain setup.
        let (first, resumed) = ensure(&h, &hs, &c, &cs, &s).await.unwrap();
        assert!(!resumed);
        // Everything there: nothing changes, the same links are reported.
        let (again, resumed) = ensure(&h, &hs, &c, &cs, &s).await.unwrap();
        assert!(resumed);
        assert_eq!(again, first);
        assert!(check(&h, &c, &s).await.unwrap().is_empty());
        // A host route gone: put back, the veth kept.
        h.del_route(&host_routes(&s, first.host_index)[0])
            .await
            .unwrap();
        let (again, resumed) = ensure(&h, &hs, &c, &cs, &s).await.unwrap();
        assert!(resumed);
        assert_eq!(again, first);
        assert!(check(&h, &c, &s).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn collisions() {
        let w = FakeWorld::new();
        let (h, hs) = (w.netlink("host"), w.sysctl("host"));
        let (c, cs) = (w.netlink("/run/netns/pod"), w.sysctl("/run/netns/pod"));
        w.add_link("/run/netns/pod", "eth0", Some("veth"), 1500);
        let e = setup(&h, &hs, &c, &cs, &spec()).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("\"eth0\" already exists in network namespace"),
            "{e}"
        );
        assert!(w.links("host").is_empty());

        let w = FakeWorld::new();
        let (h, hs) = (w.netlink("host"), w.sysctl("host"));
        let (c, cs) = (w.netlink("/run/netns/pod"), w.sysctl("/run/netns/pod"));
        w.add_link("host", "cali82111e10a96", Some("bridge"), 1500);
        let e = setup(&h, &hs, &c, &cs, &spec()).await.unwrap_err();
        assert!(e.to_string().contains("is a bridge link"), "{e}");
    }

    #[tokio::test]
    async fn failure_midway_leaves_nothing() {
        let w = FakeWorld::new();
        let (h, hs) = (w.netlink("host"), w.sysctl("host"));
        let (c, cs) = (w.netlink("/run/netns/pod"), w.sysctl("/run/netns/pod"));
        // The host route is taken by something that is not a veth route: still fine
        // (EEXIST tolerated), so make the pod route fail instead: a duplicate address.
        let mut s = spec();
        s.addresses.push("100.64.0.5".parse().unwrap());
        assert!(setup(&h, &hs, &c, &cs, &s).await.is_err());
        assert!(w.links("host").is_empty());
        assert!(w.links("/run/netns/pod").is_empty());
        assert!(w.routes("host").is_empty());
    }
}
