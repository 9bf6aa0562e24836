//! The agent's effects, behind traits so the whole event loop runs on fakes in fast
//! tests: netlink, sysctl, nftables, tc (each with its fake in its own module) and
//! here the BGP speaker ([`BgpDriver`] starts a [`Speaker`]; [`FakeBgp`] records
//! peers and exports, injects learned routes and can die like a crashed speaker).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;
use tabby_bgp::api::{ApiError, BfdPeerStatus, OriginAttrs, PeerStatus, RestartState};
use tabby_bgp::{BestPathChange, BgpHandle, InstanceConfig, PeerConfig};
use tabby_dataplane::tc::TrafficControl;
use tabby_dataplane::{Netlink, Sysctl};
use tokio::sync::broadcast;

use crate::nat::Nft;

/// A running BGP speaker as the agent drives it.
#[async_trait]
pub trait Speaker: Send + Sync {
    /// Adds and starts a peer.
    async fn add_peer(&self, peer: PeerConfig) -> Result<(), ApiError>;
    /// Replaces a peer's configuration.
    async fn update_peer(&self, peer: PeerConfig) -> Result<(), ApiError>;
    /// Stops and removes a peer.
    async fn remove_peer(&self, address: IpAddr) -> Result<(), ApiError>;
    /// Originates prefixes with these attributes.
    async fn originate(&self, prefixes: Vec<IpNet>, attrs: OriginAttrs) -> Result<(), ApiError>;
    /// Withdraws originated prefixes.
    async fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), ApiError>;
    /// Status of every peer (fails with [`ApiError::Stopped`] once the speaker died).
    async fn peers(&self) -> Result<Vec<PeerStatus>, ApiError>;
    /// The whole learned table.
    async fn best_paths(&self) -> Result<Vec<BestPathChange>, ApiError>;
    /// Best-path changes.
    fn subscribe_routes(&self) -> broadcast::Receiver<BestPathChange>;
    /// Peer state changes.
    fn subscribe_peers(&self) -> broadcast::Receiver<PeerStatus>;
    /// Graceful-restart bits for the OPENs from now on (R: we restarted; F: our
    /// forwarding state survived).
    async fn set_restart_state(&self, state: RestartState) -> Result<(), ApiError>;
    /// Stops every session with a Cease.
    async fn shutdown(&self) -> Result<(), ApiError>;
    /// Stops without notifications (graceful restart).
    async fn shutdown_for_restart(&self) -> Result<(), ApiError>;
}

/// Starts speakers.
#[async_trait]
pub trait BgpDriver: Send + Sync {
    /// Starts a speaker with these instance settings.
    async fn start(&self, config: InstanceConfig) -> Result<Arc<dyn Speaker>, ApiError>;
}

#[async_trait]
impl Speaker for BgpHandle {
    async fn add_peer(&self, peer: PeerConfig) -> Result<(), ApiError> {
        BgpHandle::add_peer(self, peer).await
    }
    async fn update_peer(&self, peer: PeerConfig) -> Result<(), ApiError> {
        BgpHandle::update_peer(self, peer).await
    }
    async fn remove_peer(&self, address: IpAddr) -> Result<(), ApiError> {
        BgpHandle::remove_peer(self, address).await
    }
    async fn originate(&self, prefixes: Vec<IpNet>, attrs: OriginAttrs) -> Result<(), ApiError> {
        BgpHandle::originate_with(self, prefixes, attrs).await
    }
    async fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), ApiError> {
        BgpHandle::withdraw(self, prefixes).await
    }
    async fn peers(&self) -> Result<Vec<PeerStatus>, ApiError> {
        BgpHandle::peers(self).await
    }
    async fn best_paths(&self) -> Result<Vec<BestPathChange>, ApiError> {
        BgpHandle::best_paths(self).await
    }
    fn subscribe_routes(&self) -> broadcast::Receiver<BestPathChange> {
        BgpHandle::subscribe_routes(self)
    }
    fn subscribe_peers(&self) -> broadcast::Receiver<PeerStatus> {
        BgpHandle::subscribe_peers(self)
    }
    async fn set_restart_state(&self, state: RestartState) -> Result<(), ApiError> {
        BgpHandle::set_restart_state(self, state).await
    }
    async fn shutdown(&self) -> Result<(), ApiError> {
        BgpHandle::shutdown(self).await
    }
    async fn shutdown_for_restart(&self) -> Result<(), ApiError> {
        BgpHandle::shutdown_for_restart(self).await
    }
}

/// Tabby's own speaker (`tabby_bgp`), in this process.
#[derive(Debug, Default)]
pub struct TabbyBgp;

#[async_trait]
impl BgpDriver for TabbyBgp {
    async fn start(&self, config: InstanceConfig) -> Result<Arc<dyn Speaker>, ApiError> {
        Ok(Arc::new(tabby_bgp::start(config).await?))
    }
}

/// Everything the agent does to the world besides the datastore.
pub struct Drivers {
    /// Links, addresses, routes, neighbours, FDB.
    pub netlink: Arc<dyn Netlink>,
    /// Kernel settings.
    pub sysctl: Arc<dyn Sysctl>,
    /// The `tabby` nftables tables.
    pub nft: Arc<dyn Nft>,
    /// Bandwidth shaping.
    pub tc: Arc<dyn TrafficControl>,
    /// The BGP speaker.
    pub bgp: Arc<dyn BgpDriver>,
}

/// What a [`FakeBgp`] speaker holds.
#[derive(Debug, Default)]
struct FakeState {
    started: Vec<InstanceConfig>,
    peers: BTreeMap<IpAddr, PeerConfig>,
    exports: BTreeMap<IpNet, OriginAttrs>,
    learned: BTreeMap<IpNet, Vec<IpAddr>>,
    dead: bool,
    established: bool,
    calls: usize,
    restart_state: Option<RestartState>,
}

/// An in-memory speaker for tests: records instances, peers and exports; learned
/// routes are injected with [`FakeBgp::learn`]; [`FakeBgp::kill`] makes the
/// running speaker fail every call, as a crashed one would.
#[derive(Clone, Debug)]
pub struct FakeBgp {
    state: Arc<Mutex<FakeState>>,
    routes: broadcast::Sender<BestPathChange>,
    peer_events: broadcast::Sender<PeerStatus>,
}

impl Default for FakeBgp {
    fn default() -> Self {
        FakeBgp {
            state: Arc::default(),
            routes: broadcast::channel(4096).0,
            peer_events: broadcast::channel(256).0,
        }
    }
}

impl FakeBgp {
    /// A fake with no speaker started.
    pub fn new() -> FakeBgp {
        FakeBgp::default()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Instances started so far, in order.
    pub fn started(&self) -> Vec<InstanceConfig> {
        self.st().started.clone()
    }

    /// The configured peers.
    pub fn peers(&self) -> BTreeMap<IpAddr, PeerConfig> {
        self.st().peers.clone()
    }

    /// The originated prefixes.
    pub fn exports(&self) -> BTreeMap<IpNet, OriginAttrs> {
        self.st().exports.clone()
    }

    /// The graceful-restart bits last set.
    pub fn restart_state(&self) -> Option<RestartState> {
        self.st().restart_state
    }

    /// Calls made to the running speaker.
    pub fn calls(&self) -> usize {
        self.st().calls
    }

    /// Whether peers report Established (each peer's change is announced).
    pub fn set_established(&self, up: bool) {
        let peers: Vec<PeerConfig> = {
            let mut st = self.st();
            st.established = up;
            st.peers.values().cloned().collect()
        };
        for p in peers {
            let _ = self.peer_events.send(PeerStatus {
                address: p.address,
                type_label: p.type_label.clone(),
                state: if up { "Established" } else { "Active" }.to_string(),
                since: 0,
                info: String::new(),
                bfd: fake_bfd(&p, up),
            });
        }
    }

    /// A peer advertises `prefix` via `hops` (none: withdrawn).
    pub fn learn(&self, prefix: IpNet, hops: Vec<IpAddr>) {
        {
            let mut st = self.st();
            if hops.is_empty() {
                st.learned.remove(&prefix);
            } else {
                st.learned.insert(prefix, hops.clone());
            }
        }
        let _ = self.routes.send(BestPathChange {
            prefix,
            next_hops: hops,
        });
    }

    /// The running speaker dies: every call fails until a new one is started.
    pub fn kill(&self) {
        let mut st = self.st();
        st.dead = true;
        st.peers.clear();
        st.exports.clear();
    }

    fn live(&self) -> Result<std::sync::MutexGuard<'_, FakeState>, ApiError> {
        let mut st = self.st();
        if st.dead {
            return Err(ApiError::Stopped);
        }
        st.calls += 1;
        Ok(st)
    }
}

/// What a fake peer reports of BFD: Up with the session, Down without.
fn fake_bfd(p: &PeerConfig, up: bool) -> Option<BfdPeerStatus> {
    p.bfd.as_ref().map(|o| BfdPeerStatus {
        state: if up { "Up" } else { "Down" }.to_string(),
        desired_min_tx_us: o.desired_min_tx.as_micros() as u64,
        required_min_rx_us: o.required_min_rx.as_micros() as u64,
        detect_mult: o.detect_mult,
        multihop: o.multihop.is_some(),
        downs: 0,
        error: String::new(),
    })
}

#[async_trait]
impl BgpDriver for FakeBgp {
    async fn start(&self, config: InstanceConfig) -> Result<Arc<dyn Speaker>, ApiError> {
        let mut st = self.st();
        st.dead = false;
        st.peers.clear();
        st.exports.clear();
        st.started.push(config);
        Ok(Arc::new(self.clone()))
    }
}

#[async_trait]
impl Speaker for FakeBgp {
    async fn add_peer(&self, peer: PeerConfig) -> Result<(), ApiError> {
        let mut st = self.live()?;
        if st.peers.contains_key(&peer.address) {
            return Err(ApiError::PeerExists(peer.address));
        }
        st.peers.insert(peer.address, peer);
        Ok(())
    }
    async fn update_peer(&self, peer: PeerConfig) -> Result<(), ApiError> {
        let mut st = self.live()?;
        if !st.peers.contains_key(&peer.address) {
            return Err(ApiError::NoSuchPeer(peer.address));
        }
        st.peers.insert(peer.address, peer);
        Ok(())
    }
    async fn remove_peer(&self, address: IpAddr) -> Result<(), ApiError> {
        let mut st = self.live()?;
        st.peers
            .remove(&address)
            .map(|_| ())
            .ok_or(ApiError::NoSuchPeer(address))
    }
    async fn originate(&self, prefixes: Vec<IpNet>, attrs: OriginAttrs) -> Result<(), ApiError> {
        let mut st = self.live()?;
        for p in prefixes {
            st.exports.insert(p, attrs.clone());
        }
        Ok(())
    }
    async fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), ApiError> {
        let mut st = self.live()?;
        for p in prefixes {
            st.exports.remove(&p);
        }
        Ok(())
    }
    async fn peers(&self) -> Result<Vec<PeerStatus>, ApiError> {
        let st = self.live()?;
        let state = if st.established {
            "Established"
        } else {
            "Active"
        };
        Ok(st
            .peers
            .values()
            .map(|p| PeerStatus {
                address: p.address,
                type_label: p.type_label.clone(),
                state: state.to_string(),
                since: 0,
                info: String::new(),
                bfd: fake_bfd(p, st.established),
            })
            .collect())
    }
    async fn best_paths(&self) -> Result<Vec<BestPathChange>, ApiError> {
        let st = self.live()?;
        Ok(st
            .learned
            .iter()
            .map(|(p, h)| BestPathChange {
                prefix: *p,
                next_hops: h.clone(),
            })
            .collect())
    }
    fn subscribe_routes(&self) -> broadcast::Receiver<BestPathChange> {
        self.routes.subscribe()
    }
    fn subscribe_peers(&self) -> broadcast::Receiver<PeerStatus> {
        self.peer_events.subscribe()
    }
    async fn set_restart_state(&self, state: RestartState) -> Result<(), ApiError> {
        self.live()?.restart_state = Some(state);
        Ok(())
    }
    async fn shutdown(&self) -> Result<(), ApiError> {
        self.st().dead = true;
        Ok(())
    }
    async fn shutdown_for_restart(&self) -> Result<(), ApiError> {
        self.st().dead = true;
        Ok(())
    }
}
