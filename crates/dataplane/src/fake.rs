//! In-memory [`Netlink`] and [`Sysctl`] that keep links, addresses, routes and
//! sysctls per namespace and record every call, for tests without root.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::model::{Address, Family, Link, LinkAttrs, Route};
use crate::{Netlink, Sysctl};

#[derive(Debug, Default)]
struct NsState {
    links: Vec<(Link, Option<(String, String)>)>,
    addrs: Vec<Address>,
    routes: Vec<Route>,
    sysctls: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct WorldState {
    namespaces: BTreeMap<String, NsState>,
    next_index: u32,
    calls: Vec<String>,
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
    state.addrs.retain(|a| a.index != link.index);
    state.routes.retain(|r| r.oif != Some(link.index));
    peer
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
        w.calls.push(format!("{}: {call}", self.ns));
        f(&mut w, &self.ns)
    }
}

fn ns_mut<'a>(w: &'a mut WorldState, ns: &str) -> &'a mut NsState {
    w.namespaces.entry(ns.to_owned()).or_default()
}

#[async_trait]
impl Netlink for FakeNetlink {
    async fn links(&self) -> Result<Vec<Link>> {
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
            let s = ns_mut(w, ns);
            if s.routes
                .iter()
                .any(|r| r.dst == route.dst && r.table == route.table)
            {
                return Err(Error::Exists {
                    what: format!("route {route}"),
                });
            }
            if let Some(oif) = route.oif
                && !s.links.iter().any(|(l, _)| l.index == oif)
            {
                return Err(Error::NotFound {
                    what: format!("link #{oif}"),
                });
            }
            s.routes.push(route.clone());
            Ok(())
        })
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        self.with(format!("delete route {route}"), |w, ns| {
            let s = ns_mut(w, ns);
            let before = s.routes.len();
            s.routes.retain(|r| !r.same_path(route));
            if s.routes.len() == before {
                return Err(Error::NotFound {
                    what: format!("route {route}"),
                });
            }
            Ok(())
        })
    }

    async fn routes(&self, family: Family) -> Result<Vec<Route>> {
        Ok(self
            .world
            .routes(&self.ns)
            .into_iter()
            .filter(|r| r.family() == family)
            .collect())
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
