//! In-memory [`Netlink`] and [`Sysctl`] that keep links, addresses, routes,
//! neighbours, FDB entries, VXLAN devices and sysctls per namespace and record
//! every call, for tests without root.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::model::{
    Address, Family, FdbEntry, Link, LinkAttrs, Neighbour, Route, VxlanSpec, format_mac,
};
use crate::{Netlink, Sysctl};

#[derive(Debug, Default)]
struct NsState {
    links: Vec<(Link, Option<(String, String)>)>,
    addrs: Vec<Address>,
    routes: Vec<Route>,
    neighbours: Vec<Neighbour>,
    fdb: Vec<FdbEntry>,
    /// VXLAN parameters by link name (MAC and MTU live on the link).
    vxlans: BTreeMap<String, VxlanSpec>,
    sysctls: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct WorldState {
    namespaces: BTreeMap<String, NsState>,
    next_index: u32,
    calls: Vec<String>,
    ipip_supported: bool,
    /// Injected failures: calls starting with the text fail, that many times.
    failures: Vec<(String, usize)>,
}

impl WorldState {
    /// Records `call` and fails it when an injected failure matches.
    fn call(&mut self, ns: &str, call: &str) -> Result<()> {
        self.calls.push(format!("{ns}: {call}"));
        if let Some(f) = self
            .failures
            .iter_mut()
            .find(|(p, n)| *n > 0 && call.starts_with(p.as_str()))
        {
            f.1 -= 1;
            return Err(Error::Netlink {
                op: call.to_string(),
                reason: "injected failure".into(),
            });
        }
        Ok(())
    }
}

/// Every fake namespace of one test, shared by the [`FakeNetlink`]s and
/// [`FakeSysctl`]s made from it.
#[derive(Clone, Debug, Default)]
pub struct FakeWorld(Arc<Mutex<WorldState>>);

impl FakeWorld {
    /// An empty world; namespaces appear when first used.
    pub fn new() -> FakeWorld {
        FakeWorld::default()
    }

    fn lock(&self) -> MutexGuard<'_, WorldState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A netlink handle for namespace `ns` (any name, e.g. `host` or a netns path).
    pub fn netlink(&self, ns: &str) -> FakeNetlink {
        self.lock().namespaces.entry(ns.to_owned()).or_default();
        FakeNetlink {
            world: self.clone(),
            ns: ns.to_owned(),
        }
    }

    /// A sysctl handle for namespace `ns`.
    pub fn sysctl(&self, ns: &str) -> FakeSysctl {
        self.lock().namespaces.entry(ns.to_owned()).or_default();
        FakeSysctl {
            world: self.clone(),
            ns: ns.to_owned(),
        }
    }

    /// Makes the next `times` calls whose operation starts with `op` (e.g. `list
    /// links`, `add route`, `list routes`) fail, as a kernel error would.
    pub fn fail(&self, op: &str, times: usize) {
        self.lock().failures.push((op.to_string(), times));
    }

    /// Every call so far, as `<ns>: <operation>`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Links of `ns`.
    pub fn links(&self, ns: &str) -> Vec<Link> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.links.iter().map(|(l, _)| l.clone()).collect())
            .unwrap_or_default()
    }

    /// Routes of `ns`.
    pub fn routes(&self, ns: &str) -> Vec<Route> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.routes.clone())
            .unwrap_or_default()
    }

    /// Neighbours of `ns`.
    pub fn neighbours(&self, ns: &str) -> Vec<Neighbour> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.neighbours.clone())
            .unwrap_or_default()
    }

    /// FDB entries of `ns`.
    pub fn fdb(&self, ns: &str) -> Vec<FdbEntry> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.fdb.clone())
            .unwrap_or_default()
    }

    /// Lets [`Netlink::create_ipip`] succeed (by default the fake kernel, like
    /// this project's test machines, has no ipip module).
    pub fn set_ipip_supported(&self, supported: bool) {
        self.lock().ipip_supported = supported;
    }

    /// Addresses of `ns`.
    pub fn addresses(&self, ns: &str) -> Vec<Address> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.addrs.clone())
            .unwrap_or_default()
    }

    /// Sysctls written in `ns`.
    pub fn sysctls(&self, ns: &str) -> BTreeMap<String, String> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.sysctls.clone())
            .unwrap_or_default()
    }

    /// Adds a plain link to `ns` (test set-up), returning its index.
    pub fn add_link(&self, ns: &str, name: &str, kind: Option<&str>, mtu: u32) -> u32 {
        let mut w = self.lock();
        w.next_index += 1;
        let index = w.next_index;
        w.namespaces.entry(ns.to_owned()).or_default().links.push((
            Link {
                index,
                name: name.to_owned(),
                kind: kind.map(str::to_owned),
                mac: Some([2, 0, 0, 0, 0, index as u8]),
                mtu: Some(mtu),
                up: true,
            },
            None,
        ));
        index
    }

    /// Removes namespace `ns` with everything in it (a container going away).
    pub fn remove_namespace(&self, ns: &str) {
        let mut w = self.lock();
        if let Some(state) = w.namespaces.remove(ns) {
            for (_, peer) in state.links {
                if let Some((pns, pname)) = peer {
                    remove_link(&mut w, &pns, &pname);
                }
            }
        }
    }
}

fn remove_link(w: &mut WorldState, ns: &str, name: &str) -> Option<(String, String)> {
    let state = w.namespaces.get_mut(ns)?;
    let pos = state.links.iter().position(|(l, _)| l.name == name)?;
    let (link, peer) = state.links.remove(pos);
    let i = link.index;
    state.addrs.retain(|a| a.index != i);
    // Like the kernel, a multipath route goes with any of its devices.
    state
        .routes
        .retain(|r| r.oif != Some(i) && r.multipath.iter().all(|h| h.oif != Some(i)));
    state.neighbours.retain(|n| n.index != i);
    state.fdb.retain(|e| e.index != i);
    state.vxlans.remove(&link.name);
    peer
}

fn has_link(s: &NsState, index: u32) -> Result<()> {
    if s.links.iter().any(|(l, _)| l.index == index) {
        Ok(())
    } else {
        Err(Error::NotFound {
            what: format!("link #{index}"),
        })
    }
}

/// A new link without a peer in `ns`, failing if the name is taken.
fn new_link(
    w: &mut WorldState,
    ns: &str,
    name: &str,
    kind: &str,
    mac: Option<[u8; 6]>,
    mtu: u32,
) -> Result<u32> {
    if ns_mut(w, ns).links.iter().any(|(l, _)| l.name == name) {
        return Err(Error::Exists {
            what: format!("link {name} in {ns}"),
        });
    }
    w.next_index += 1;
    let index = w.next_index;
    ns_mut(w, ns).links.push((
        Link {
            index,
            name: name.to_owned(),
            kind: Some(kind.to_owned()),
            mac: Some(mac.unwrap_or([0x0a, 0x58, 0, 0, 0, index as u8])),
            mtu: Some(mtu),
            up: false,
        },
        None,
    ));
    Ok(index)
}

fn add_route_to(s: &mut NsState, route: &Route) -> Result<()> {
    if s.routes.iter().any(|r| {
        r.dst == route.dst
            && r.table == route.table
            && r.effective_metric() == route.effective_metric()
    }) {
        return Err(Error::Exists {
            what: format!("route {route}"),
        });
    }
    for oif in route
        .oif
        .iter()
        .chain(route.multipath.iter().filter_map(|h| h.oif.as_ref()))
    {
        has_link(s, *oif)?;
    }
    s.routes.push(route.clone());
    Ok(())
}

fn del_route_from(s: &mut NsState, route: &Route) -> Result<()> {
    let before = s.routes.len();
    // As the kernel: a metric of 0 in the request matches any metric.
    s.routes.retain(|r| {
        !(r.same_path(route)
            && (route.metric == 0 || r.effective_metric() == route.effective_metric()))
    });
    if s.routes.len() == before {
        return Err(Error::NotFound {
            what: format!("route {route}"),
        });
    }
    Ok(())
}

/// A fake [`Netlink`] for one namespace of a [`FakeWorld`].
#[derive(Clone, Debug)]
pub struct FakeNetlink {
    world: FakeWorld,
    ns: String,
}

impl FakeNetlink {
    fn with<T>(
        &self,
        call: String,
        f: impl FnOnce(&mut WorldState, &str) -> Result<T>,
    ) -> Result<T> {
        let mut w = self.world.lock();
        w.call(&self.ns, &call)?;
        f(&mut w, &self.ns)
    }
}

fn ns_mut<'a>(w: &'a mut WorldState, ns: &str) -> &'a mut NsState {
    w.namespaces.entry(ns.to_owned()).or_default()
}

#[async_trait]
impl Netlink for FakeNetlink {
    async fn links(&self) -> Result<Vec<Link>> {
        self.world.lock().call(&self.ns, "list links")?;
        Ok(self.world.links(&self.ns))
    }

    async fn create_veth(&self, name: &str, peer: &str, peer_netns: Option<&Path>) -> Result<()> {
        let peer_ns = peer_netns.map(|p| p.display().to_string());
        self.with(
            format!("create veth {name} peer {peer} in {peer_ns:?}"),
            |w, ns| {
                let peer_ns = peer_ns.clone().unwrap_or_else(|| ns.to_owned());
                if let Some(pns) = peer_netns
                    && !w.namespaces.contains_key(&peer_ns)
                {
                    return Err(Error::NotFound {
                        what: format!("network namespace {}", pns.display()),
                    });
                }
                for (n, l) in [(ns, name), (peer_ns.as_str(), peer)] {
                    if ns_mut(w, n).links.iter().any(|(x, _)| x.name == l) {
                        return Err(Error::Exists {
                            what: format!("link {l} in {n}"),
                        });
                    }
                }
                let mk = |w: &mut WorldState, n: &str, l: &str, p: (String, String)| {
                    w.next_index += 1;
                    let index = w.next_index;
                    ns_mut(w, n).links.push((
                        Link {
                            index,
                            name: l.to_owned(),
                            kind: Some("veth".into()),
                            mac: Some([0x0a, 0x58, 0, 0, 0, index as u8]),
                            mtu: Some(1500),
                            up: false,
                        },
                        Some(p),
                    ));
                };
                mk(w, ns, name, (peer_ns.clone(), peer.to_owned()));
                mk(w, &peer_ns, peer, (ns.to_owned(), name.to_owned()));
                Ok(())
            },
        )
    }

    async fn set_link(&self, index: u32, attrs: &LinkAttrs) -> Result<()> {
        self.with(format!("set link #{index} {attrs:?}"), |w, ns| {
            let (l, _) = ns_mut(w, ns)
                .links
                .iter_mut()
                .find(|(l, _)| l.index == index)
                .ok_or_else(|| Error::NotFound {
                    what: format!("link #{index}"),
                })?;
            if let Some(m) = attrs.mac {
                l.mac = Some(m);
            }
            if let Some(m) = attrs.mtu {
                l.mtu = Some(m);
            }
            if let Some(u) = attrs.up {
                l.up = u;
            }
            Ok(())
        })
    }

    async fn delete_link(&self, index: u32) -> Result<()> {
        self.with(format!("delete link #{index}"), |w, ns| {
            let name = ns_mut(w, ns)
                .links
                .iter()
                .find(|(l, _)| l.index == index)
                .map(|(l, _)| l.name.clone())
                .ok_or_else(|| Error::NotFound {
                    what: format!("link #{index}"),
                })?;
            if let Some((pns, pname)) = remove_link(w, ns, &name) {
                remove_link(w, &pns, &pname);
            }
            Ok(())
        })
    }

    async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.with(format!("add address {net} to #{index}"), |w, ns| {
            let s = ns_mut(w, ns);
            if !s.links.iter().any(|(l, _)| l.index == index) {
                return Err(Error::NotFound {
                    what: format!("link #{index}"),
                });
            }
            if s.addrs.iter().any(|a| a.index == index && a.net == net) {
                return Err(Error::Exists {
                    what: format!("address {net}"),
                });
            }
            s.addrs.push(Address { index, net });
            Ok(())
        })
    }

    async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>> {
        Ok(self
            .world
            .addresses(&self.ns)
            .into_iter()
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    async fn add_route(&self, route: &Route) -> Result<()> {
        self.with(format!("add route {route}"), |w, ns| {
            add_route_to(ns_mut(w, ns), route)
        })
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        self.with(format!("delete route {route}"), |w, ns| {
            del_route_from(ns_mut(w, ns), route)
        })
    }

    async fn routes(&self, family: Family) -> Result<Vec<Route>> {
        self.world
            .lock()
            .call(&self.ns, &format!("list routes {family:?}"))?;
        Ok(self
            .world
            .routes(&self.ns)
            .into_iter()
            .filter(|r| r.family() == family)
            .collect())
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        self.with(format!("replace route {route}"), |w, ns| {
            let s = ns_mut(w, ns);
            for oif in route
                .oif
                .iter()
                .chain(route.multipath.iter().filter_map(|h| h.oif.as_ref()))
            {
                has_link(s, *oif)?;
            }
            match s.routes.iter_mut().find(|r| {
                r.dst == route.dst
                    && r.table == route.table
                    && r.effective_metric() == route.effective_metric()
            }) {
                Some(r) => *r = route.clone(),
                None => s.routes.push(route.clone()),
            }
            Ok(())
        })
    }

    async fn add_routes(&self, routes: &[Route]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            out.push(self.add_route(r).await);
        }
        out
    }

    async fn del_routes(&self, routes: &[Route]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(routes.len());
        for r in routes {
            out.push(self.del_route(r).await);
        }
        out
    }

    async fn del_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.with(format!("delete address {net} from #{index}"), |w, ns| {
            let s = ns_mut(w, ns);
            let before = s.addrs.len();
            s.addrs.retain(|a| !(a.index == index && a.net == net));
            if s.addrs.len() == before {
                return Err(Error::NotFound {
                    what: format!("address {net} on link #{index}"),
                });
            }
            Ok(())
        })
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let call = format!(
            "create vxlan {} vni {} port {} local {:?} parent {:?} mac {} mtu {:?} learning {}",
            spec.name,
            spec.vni,
            spec.port,
            spec.local,
            spec.parent,
            spec.mac
                .map(|m| format_mac(&m))
                .unwrap_or_else(|| "-".into()),
            spec.mtu,
            spec.learning
        );
        self.with(call, |w, ns| {
            let s = ns_mut(w, ns);
            // The kernel's default: 50 bytes of VXLAN/UDP/IP overhead below the parent.
            let parent_mtu = match spec.parent {
                Some(p) => {
                    has_link(s, p)?;
                    s.links
                        .iter()
                        .find(|(l, _)| l.index == p)
                        .and_then(|(l, _)| l.mtu)
                        .unwrap_or(1500)
                }
                None => 1500,
            };
            let mtu = spec.mtu.unwrap_or(parent_mtu.saturating_sub(50));
            new_link(w, ns, &spec.name, "vxlan", spec.mac, mtu)?;
            ns_mut(w, ns).vxlans.insert(spec.name.clone(), spec.clone());
            Ok(())
        })
    }

    async fn vxlan(&self, name: &str) -> Result<Option<VxlanSpec>> {
        let w = self.world.lock();
        let Some(s) = w.namespaces.get(&self.ns) else {
            return Ok(None);
        };
        let Some((link, _)) = s.links.iter().find(|(l, _)| l.name == name) else {
            return Ok(None);
        };
        match s.vxlans.get(name) {
            Some(spec) => Ok(Some(VxlanSpec {
                mac: link.mac,
                mtu: link.mtu,
                ..spec.clone()
            })),
            None => Err(Error::Collision {
                name: name.to_owned(),
                reason: format!(
                    "exists in {} as a {} link, not vxlan",
                    self.ns,
                    link.kind.as_deref().unwrap_or("plain")
                ),
            }),
        }
    }

    async fn create_ipip(&self, name: &str) -> Result<()> {
        self.with(format!("create ipip {name}"), |w, ns| {
            if !w.ipip_supported {
                return Err(Error::Unsupported {
                    what: format!(
                        "ipip links (no ipip module): create ipip {name} in {ns}: Operation not supported"
                    ),
                });
            }
            new_link(w, ns, name, "ipip", None, 1480).map(drop)
        })
    }

    async fn neighbours(&self, index: Option<u32>) -> Result<Vec<Neighbour>> {
        Ok(self
            .world
            .neighbours(&self.ns)
            .into_iter()
            .filter(|n| index.is_none_or(|i| n.index == i))
            .collect())
    }

    async fn set_neighbour(&self, n: &Neighbour) -> Result<()> {
        let call = format!(
            "set neighbour {} lladdr {} dev #{}{}",
            n.ip,
            format_mac(&n.mac),
            n.index,
            if n.permanent { " permanent" } else { "" }
        );
        self.with(call, |w, ns| {
            let s = ns_mut(w, ns);
            has_link(s, n.index)?;
            match s
                .neighbours
                .iter_mut()
                .find(|x| x.index == n.index && x.ip == n.ip)
            {
                Some(x) => *x = n.clone(),
                None => s.neighbours.push(n.clone()),
            }
            Ok(())
        })
    }

    async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.with(format!("delete neighbour {ip} dev #{index}"), |w, ns| {
            let s = ns_mut(w, ns);
            let before = s.neighbours.len();
            s.neighbours.retain(|x| !(x.index == index && x.ip == ip));
            if s.neighbours.len() == before {
                return Err(Error::NotFound {
                    what: format!("neighbour {ip} dev #{index}"),
                });
            }
            Ok(())
        })
    }

    async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        Ok(self
            .world
            .fdb(&self.ns)
            .into_iter()
            .filter(|e| e.index == index)
            .collect())
    }

    async fn set_fdb(&self, e: &FdbEntry) -> Result<()> {
        let call = format!(
            "set fdb {} dev #{} dst {}",
            format_mac(&e.mac),
            e.index,
            e.dst
        );
        self.with(call, |w, ns| {
            let s = ns_mut(w, ns);
            has_link(s, e.index)?;
            // `replace` points the MAC at a new remote.
            match s
                .fdb
                .iter_mut()
                .find(|x| x.index == e.index && x.mac == e.mac)
            {
                Some(x) => *x = e.clone(),
                None => s.fdb.push(e.clone()),
            }
            Ok(())
        })
    }

    async fn del_fdb(&self, e: &FdbEntry) -> Result<()> {
        let call = format!(
            "delete fdb {} dev #{} dst {}",
            format_mac(&e.mac),
            e.index,
            e.dst
        );
        self.with(call, |w, ns| {
            let s = ns_mut(w, ns);
            let before = s.fdb.len();
            s.fdb.retain(|x| x != e);
            if s.fdb.len() == before {
                return Err(Error::NotFound {
                    what: format!("fdb {} dev #{} dst {}", format_mac(&e.mac), e.index, e.dst),
                });
            }
            Ok(())
        })
    }
}

/// A fake [`Sysctl`] for one namespace of a [`FakeWorld`].
#[derive(Clone, Debug)]
pub struct FakeSysctl {
    world: FakeWorld,
    ns: String,
}

impl Sysctl for FakeSysctl {
    fn set_all(&self, settings: &[(String, String)]) -> Result<()> {
        let mut w = self.world.lock();
        for (k, v) in settings {
            w.calls.push(format!("{}: sysctl {k}={v}", self.ns));
            ns_mut(&mut w, &self.ns)
                .sysctls
                .insert(k.clone(), v.clone());
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<String> {
        self.world
            .sysctls(&self.ns)
            .get(key)
            .cloned()
            .ok_or_else(|| Error::Sysctl {
                key: key.to_owned(),
                reason: "not set".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NextHop, RouteKind};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn routes_of_every_shape() {
        let w = FakeWorld::new();
        let eth = w.add_link("n", "eth0", Some("veth"), 1500);
        let eth1 = w.add_link("n", "eth1", Some("veth"), 1500);
        let nl = w.netlink("n");
        let bh = Route::blackhole(net("100.64.0.0/26"));
        let onlink = Route::via_onlink(net("100.64.1.0/26"), ip("198.18.0.2"), eth);
        let hops = vec![
            NextHop {
                gateway: ip("198.18.0.2"),
                oif: Some(eth),
                onlink: true,
            },
            NextHop {
                gateway: ip("198.18.1.2"),
                oif: Some(eth1),
                onlink: true,
            },
        ];
        let ecmp = Route::ecmp(net("100.64.2.0/26"), hops.clone());
        let res = nl
            .add_routes(&[bh.clone(), onlink.clone(), ecmp.clone(), bh.clone()])
            .await;
        assert!(res[0].is_ok() && res[1].is_ok() && res[2].is_ok());
        assert!(res[3].as_ref().unwrap_err().is_exists());
        assert_eq!(nl.routes(Family::V4).await.unwrap().len(), 3);
        assert!(nl.routes(Family::V6).await.unwrap().is_empty());

        // Replace moves the gateway, or adds when missing.
        let moved = Route::via_onlink(onlink.dst, ip("198.18.0.3"), eth);
        nl.replace_route(&moved).await.unwrap();
        let fresh = Route::blackhole(net("100.64.3.0/26"));
        nl.replace_route(&fresh).await.unwrap();
        let have = w.routes("n");
        assert!(have.contains(&moved) && !have.contains(&onlink) && have.contains(&fresh));

        // Hops in another order still name the same route.
        let reversed = Route::ecmp(ecmp.dst, hops.iter().rev().cloned().collect());
        let res = nl.del_routes(&[reversed, bh.clone(), bh.clone()]).await;
        assert!(res[0].is_ok() && res[1].is_ok());
        assert!(res[2].as_ref().unwrap_err().is_not_found());

        // Re-adding the ECMP route and deleting one of its devices takes it away.
        nl.add_route(&ecmp).await.unwrap();
        nl.delete_link(eth1).await.unwrap();
        assert!(w.routes("n").iter().all(|r| r.dst != ecmp.dst));
        assert!(
            w.calls().contains(&format!("n: add route {bh}")),
            "{:?}",
            w.calls()
        );
        assert!(w.routes("n").iter().any(|r| r.kind == RouteKind::Blackhole));
    }

    #[tokio::test]
    async fn vxlan_neighbours_fdb() {
        let w = FakeWorld::new();
        let eth = w.add_link("n", "eth0", Some("veth"), 1500);
        let nl = w.netlink("n");
        let spec = VxlanSpec {
            name: "vxlan.calico".into(),
            vni: 4096,
            port: 4789,
            local: Some(ip("198.18.0.1")),
            parent: Some(eth),
            mac: Some([0x66, 0, 0, 0, 0, 1]),
            mtu: None,
            learning: false,
        };
        nl.create_vxlan(&spec).await.unwrap();
        assert!(nl.create_vxlan(&spec).await.unwrap_err().is_exists());
        let link = nl.link_by_name("vxlan.calico").await.unwrap().unwrap();
        assert_eq!((link.kind.as_deref(), link.up), (Some("vxlan"), false));
        let back = nl.vxlan("vxlan.calico").await.unwrap().unwrap();
        assert_eq!(
            back,
            VxlanSpec {
                mtu: Some(1450),
                ..spec.clone()
            }
        );
        assert_eq!(nl.vxlan("nope").await.unwrap(), None);
        assert!(matches!(
            nl.vxlan("eth0").await,
            Err(Error::Collision { .. })
        ));
        let no_parent = VxlanSpec {
            name: "vx2".into(),
            parent: Some(999),
            ..spec.clone()
        };
        assert!(
            nl.create_vxlan(&no_parent)
                .await
                .unwrap_err()
                .is_not_found()
        );

        let n = Neighbour {
            index: link.index,
            ip: ip("100.64.0.1"),
            mac: [0x66, 0, 0, 0, 0, 2],
            permanent: true,
        };
        nl.set_neighbour(&n).await.unwrap();
        let n2 = Neighbour {
            mac: [0x66, 0, 0, 0, 0, 3],
            ..n.clone()
        };
        nl.set_neighbour(&n2).await.unwrap();
        assert_eq!(
            nl.neighbours(Some(link.index)).await.unwrap(),
            std::slice::from_ref(&n2)
        );
        assert!(nl.neighbours(Some(eth)).await.unwrap().is_empty());
        nl.del_neighbour(link.index, n.ip).await.unwrap();
        assert!(
            nl.del_neighbour(link.index, n.ip)
                .await
                .unwrap_err()
                .is_not_found()
        );

        let e = FdbEntry {
            index: link.index,
            mac: [0x66, 0, 0, 0, 0, 2],
            dst: ip("198.18.0.2"),
        };
        nl.set_fdb(&e).await.unwrap();
        let e2 = FdbEntry {
            dst: ip("198.18.0.3"),
            ..e.clone()
        };
        nl.set_fdb(&e2).await.unwrap();
        assert_eq!(nl.fdb(link.index).await.unwrap(), std::slice::from_ref(&e2));
        assert!(nl.del_fdb(&e).await.unwrap_err().is_not_found());
        nl.del_fdb(&e2).await.unwrap();
        assert!(nl.fdb(link.index).await.unwrap().is_empty());

        // Deleting the device takes its neighbours and FDB along.
        nl.set_neighbour(&n).await.unwrap();
        nl.set_fdb(&e).await.unwrap();
        nl.delete_link(link.index).await.unwrap();
        assert!(w.neighbours("n").is_empty() && w.fdb("n").is_empty());
        assert_eq!(nl.vxlan("vxlan.calico").await.unwrap(), None);
        let calls = w.calls();
        assert!(
            calls.contains(&"n: set fdb 66:00:00:00:00:02 dev #2 dst 198.18.0.2".to_string()),
            "{calls:?}"
        );
    }

    #[tokio::test]
    async fn ipip_and_addresses() {
        let w = FakeWorld::new();
        let eth = w.add_link("n", "eth0", Some("veth"), 1500);
        let nl = w.netlink("n");
        let e = nl.create_ipip("tunl0").await.unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(
            e.to_string()
                .starts_with("the kernel does not support ipip links (no ipip module)"),
            "{e}"
        );
        w.set_ipip_supported(true);
        nl.create_ipip("tunl0").await.unwrap();
        assert_eq!(
            nl.link_by_name("tunl0")
                .await
                .unwrap()
                .unwrap()
                .kind
                .as_deref(),
            Some("ipip")
        );

        nl.add_address(eth, net("198.18.0.1/24")).await.unwrap();
        nl.del_address(eth, net("198.18.0.1/24")).await.unwrap();
        assert!(
            nl.del_address(eth, net("198.18.0.1/24"))
                .await
                .unwrap_err()
                .is_not_found()
        );
    }
}
