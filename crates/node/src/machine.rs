//! The agent as a state machine: [`Agent::step`] takes one [`Input`] (store
//! snapshot or events, kernel notifications, BGP best paths, timers) and, without
//! I/O, applies it to the local view and marks what it touches dirty;
//! [`Agent::execute`] then brings the world in line through the injected
//! [`Drivers`], doing only the dirty work: the changed prefixes' routes, the
//! changed nodes' VXLAN entries, the changed exports, the policy's incremental
//! nftables update, the changed workloads' bandwidth limits. Full passes (read
//! everything back from the kernel and repair it) happen at start, on resync and
//! after lost notifications or failures, never per change.
//!
//! Nothing is torn down because the store is unreachable or a driver failed: the
//! last good state stays and the failed part is retried with back-off. A resource
//! that cannot be read or compiled is reported (log, metric, `tabbyctl node status`)
//! and skipped; the rest converges.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tabby_api::ippool::EncapMode;
use tabby_api::{Kind, Resource};
use tabby_bgp::{BestPathChange, InstanceConfig, PeerConfig};
use tabby_client::Client;
use tabby_dataplane::model::MAIN_TABLE;
use tabby_dataplane::{
    Error as DpError, FdbEntry, Neighbour, NetlinkEvent, Route, RouteKind, TABBY_ROUTE_PROTOCOL,
};
use tabby_store::{KeyValue, Revision, WatchEvent};
use tracing::{debug, info, warn};

use crate::agent::{AgentConfig, Shared};
use crate::desired::{Advertisement, KernelView, PENDING_VXLAN, Settings, VXLAN_DEVICE};
use crate::drivers::{Drivers, Speaker};
use crate::firewall::PolicyState;
use crate::nat::NatInputs;
use crate::peers::{FileEnvSecrets, PeerInputs};
use crate::reconcile::{Applied, Reconciler, route_matches};
use crate::routes::RouteState;
use crate::view::{Change, View};

/// Something that happened, for [`Agent::step`].
#[derive(Debug)]
pub enum Input {
    /// A consistent snapshot of the watched prefixes at `revision`.
    Snapshot {
        /// Every key.
        kvs: Vec<KeyValue>,
        /// The revision it was read at.
        revision: Revision,
    },
    /// Watch events, in revision order.
    Events(Vec<WatchEvent>),
    /// The store could not be read or watched.
    StoreDown(String),
    /// Kernel notifications.
    Kernel(Vec<NetlinkEvent>),
    /// BGP best-path changes.
    Learned(Vec<BestPathChange>),
    /// The whole learned table (after missed changes).
    LearnedTable(Vec<BestPathChange>),
    /// The BGP sessions' states now.
    Peers(Vec<tabby_bgp::PeerStatus>),
    /// Read everything back from the kernel and repair it.
    Resync,
    /// Time passes (retries, graceful-restart grace, speaker health).
    Tick,
}

/// What is dirty besides the routes (which [`RouteState`] tracks per prefix).
#[derive(Clone, Debug, Default)]
struct Dirty {
    /// Re-list the kernel's links.
    links: bool,
    /// Derive the BGP peers again.
    peers: bool,
    /// Re-send every export (new speaker).
    exports_all: bool,
    /// Read every route back and repair.
    kernel_full: bool,
    /// Read the VXLAN device, neighbours and FDB back and repair.
    vxlan_full: bool,
    /// Bandwidth limits of the local workloads.
    qos: bool,
    /// Read the bandwidth limits back and repair.
    qos_full: bool,
    /// Check whether the nftables tables are still there.
    nft_check: bool,
    /// Allocate the VXLAN tunnel address if a pool needs it.
    tunnel: bool,
    /// Write the pod MTU file.
    mtu: bool,
}

impl Dirty {
    fn everything() -> Dirty {
        Dirty {
            links: true,
            peers: true,
            exports_all: true,
            kernel_full: true,
            vxlan_full: true,
            qos: true,
            qos_full: true,
            nft_check: false,
            tunnel: true,
            mtu: true,
        }
    }
}

/// The running speaker and what we told it.
struct BgpState {
    speaker: Arc<dyn Speaker>,
    instance: InstanceConfig,
    peers: BTreeMap<IpAddr, PeerConfig>,
    exports: BTreeMap<IpNet, Advertisement>,
}

/// What one [`Agent::execute`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Routes added, replaced or deleted.
    pub route_ops: usize,
    /// Whether the pass read the routes back from the kernel.
    pub full: bool,
    /// nftables batches applied (and whether the last was a full replacement).
    pub nft_batches: usize,
    /// Failures, each naming what failed (retried with back-off).
    pub errors: Vec<String>,
}

/// Keys of a snapshot decoded and applied together.
const SNAPSHOT_PART: usize = 4096;

/// The agent: its view of the store, what it wants and what it applied.
pub struct Agent {
    cfg: AgentConfig,
    drivers: Drivers,
    reconciler: Reconciler,
    client: Option<Client>,
    shared: Arc<Shared>,
    settings: Settings,
    ipv4: IpNet,
    uplink: u32,
    view: View,
    routes: RouteState,
    policy: PolicyState,
    qos: crate::qos::QosState,
    learned: BTreeMap<IpNet, Vec<IpAddr>>,
    links: BTreeMap<String, u32>,
    /// The subnets of the node's own interfaces (learned routes inside are refused).
    subnets: Vec<IpNet>,
    /// Destinations and metrics of main-table routes Tabby does not own (never
    /// replaced), from full passes and the kernel's notifications.
    foreign: BTreeSet<(IpNet, u32)>,
    /// Wanted routes left out for a foreign one, with why.
    conflicts: BTreeMap<IpNet, String>,
    /// Prefixes to install again now that a foreign route left them.
    reapply: BTreeSet<IpNet>,
    bgp: Option<BgpState>,
    /// The natOutgoing inputs in the kernel's `tabby` tables; `None`: unknown (the
    /// next apply replaces the tables).
    fw_nat: Option<Option<NatInputs>>,
    dirty: Dirty,
    route_events: Vec<(bool, Route)>,
    have_snapshot: bool,
    started: Instant,
    all_up_since: Option<Instant>,
    /// BFD failures per peer as the speaker last counted them.
    bfd_downs: std::collections::HashMap<IpAddr, u64>,
    grace_was: bool,
    store_down_since: Option<Instant>,
    last_register: Option<Instant>,
    last_problems: Vec<String>,
    /// Routes installed at the last count (None: not counted yet).
    routes_counted: Option<u64>,
    peer_warnings: Vec<String>,
    /// Failures to retry, and when.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_speaker_check: Option<Instant>,
    /// Whether routes of ours were in the kernel at start (a restart that kept the
    /// forwarding state), and so whether a started speaker says so to its peers.
    forwarding_preserved: bool,
}

impl Agent {
    /// An agent for node `cfg.node_name` whose address is `ipv4` on link `uplink`.
    /// `client` is `None` only in tests that never write to the store.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: AgentConfig,
        drivers: Drivers,
        client: Option<Client>,
        shared: Arc<Shared>,
        ipv4: IpNet,
        uplink: u32,
        ipip_supported: bool,
        host_mtu: u32,
    ) -> Agent {
        let settings = Settings {
            node: cfg.node_name.clone(),
            ipip_supported,
            host_mtu,
            mtu_override: cfg.mtu,
            bgp_enabled: cfg.bgp,
        };
        Agent {
            reconciler: Reconciler::new(drivers.netlink.clone(), &cfg.interface_prefix),
            view: View::new(&cfg.node_name),
            policy: PolicyState::new(&cfg.node_name),
            routes: RouteState::new(),
            qos: Default::default(),
            learned: BTreeMap::new(),
            links: BTreeMap::new(),
            subnets: Vec::new(),
            foreign: BTreeSet::new(),
            conflicts: BTreeMap::new(),
            reapply: BTreeSet::new(),
            bgp: None,
            fw_nat: None,
            dirty: Dirty::everything(),
            route_events: Vec::new(),
            have_snapshot: false,
            started: Instant::now(),
            all_up_since: None,
            bfd_downs: Default::default(),
            grace_was: cfg.bgp,
            store_down_since: None,
            last_register: None,
            last_problems: Vec::new(),
            routes_counted: None,
            peer_warnings: Vec::new(),
            retry_at: None,
            backoff: Duration::from_secs(1),
            last_speaker_check: None,
            forwarding_preserved: false,
            cfg,
            drivers,
            client,
            shared,
            settings,
            ipv4,
            uplink,
        }
    }

    /// Tells the agent its routes were in the kernel at start, so the BGP speaker
    /// advertises a restart with its forwarding state kept (RFC 4724 R and F bits).
    pub fn set_forwarding_preserved(&mut self, kept: bool) {
        self.forwarding_preserved = kept;
    }

    /// The local view of the store.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The routes the agent wants in the kernel.
    pub fn desired_routes(&self) -> &BTreeMap<IpNet, Route> {
        self.routes.routes()
    }

    /// The BGP exports the agent wants.
    pub fn desired_exports(&self) -> &BTreeMap<IpNet, Advertisement> {
        self.routes.exports()
    }

    /// Whether the first snapshot has been applied.
    pub fn has_snapshot(&self) -> bool {
        self.have_snapshot
    }

    /// Everything the operator must know now.
    pub fn problems(&self) -> Vec<String> {
        let mut v = self.routes.problems();
        v.extend(self.conflicts.values().cloned());
        v.extend(self.view.problems());
        v.extend(self.policy.errors());
        v.extend(self.peer_warnings.iter().cloned());
        v
    }

    // ---- step: pure -------------------------------------------------------------

    /// Changes from a part of a snapshot: the policy side goes in with one compile.
    fn on_snapshot_changes(&mut self, changes: Vec<Change>) {
        let mut puts = Vec::new();
        for c in changes {
            match c {
                Change::PolicyPut(r) if self.cfg.policy => puts.push(r),
                other => self.on_change(other),
            }
        }
        if !puts.is_empty() {
            self.policy.put_all(puts.iter().map(|r| &**r));
        }
    }

    /// Applies one input to the view and marks what it touches. No I/O.
    pub fn step(&mut self, input: Input) {
        match input {
            Input::Snapshot { kvs, revision } => {
                // The snapshot is decoded a part at a time and each part dropped
                // once applied: at cluster scale the whole of it decoded at once
                // (hundreds of MB) would set the agent's RSS.
                let gone = self.view.snapshot_gone(&kvs);
                let mut events = gone.len();
                self.on_snapshot_changes(gone);
                let mut kvs = kvs.into_iter();
                loop {
                    let part: Vec<_> = kvs.by_ref().take(SNAPSHOT_PART).collect();
                    if part.is_empty() {
                        break;
                    }
                    let changes: Vec<_> = part
                        .iter()
                        .flat_map(|kv| self.view.snapshot_put(kv))
                        .collect();
                    drop(part);
                    events += changes.len();
                    self.on_snapshot_changes(changes);
                }
                self.view.snapshot_done(revision);
                self.shared.metrics.add_store_events(events as u64);
                self.have_snapshot = true;
                self.store_up();
            }
            Input::Events(evs) => {
                self.shared.metrics.add_store_events(evs.len() as u64);
                for ev in &evs {
                    for c in self.view.apply(ev) {
                        self.on_change(c);
                    }
                }
                self.store_up();
            }
            Input::StoreDown(why) => {
                if self.store_down_since.is_none() {
                    warn!(error = %why, "datastore unreachable; keeping the current data plane");
                    self.store_down_since = Some(Instant::now());
                }
                self.shared.metrics.inc_store_errors();
                self.shared.metrics.set_store_connected(false);
            }
            Input::Kernel(evs) => {
                for ev in evs {
                    self.on_kernel(ev);
                }
            }
            Input::Learned(changes) => {
                for c in changes {
                    self.routes.mark(c.prefix);
                    if c.next_hops.is_empty() {
                        self.learned.remove(&c.prefix);
                    } else {
                        self.learned.insert(c.prefix, c.next_hops);
                    }
                }
            }
            Input::LearnedTable(all) => {
                for p in self.learned.keys() {
                    self.routes.mark(*p);
                }
                self.learned = all
                    .into_iter()
                    .filter(|c| !c.next_hops.is_empty())
                    .map(|c| (c.prefix, c.next_hops))
                    .collect();
                for p in self.learned.keys() {
                    self.routes.mark(*p);
                }
            }
            Input::Peers(peers) => self.record_peers(&peers),
            Input::Resync => {
                self.dirty.links = true;
                self.dirty.kernel_full = true;
                self.dirty.vxlan_full = true;
                self.dirty.qos_full = true;
                self.dirty.nft_check = true;
                self.dirty.mtu = true;
            }
            Input::Tick => {}
        }
    }

    fn store_up(&mut self) {
        if self.store_down_since.take().is_some() {
            info!("datastore reachable again");
        }
        self.shared.metrics.set_store_connected(true);
    }

    fn on_change(&mut self, c: Change) {
        self.routes.on_change(&c, &self.view, &self.cfg.node_name);
        match c {
            Change::Node { name, routing } => {
                // Mesh peers and peer selectors read every Node's labels and addresses.
                self.dirty.peers = true;
                if name == self.cfg.node_name && routing {
                    self.dirty.tunnel = true;
                    self.dirty.vxlan_full = true;
                }
            }
            Change::Pool => {
                self.dirty.tunnel = true;
                self.dirty.mtu = true;
            }
            Change::BgpConfig | Change::BgpPeers => self.dirty.peers = true,
            Change::Workload { local, .. } => {
                if local {
                    self.dirty.qos = true;
                }
            }
            Change::PolicyPut(r) => {
                if self.cfg.policy {
                    self.policy.put(&r);
                }
            }
            Change::PolicyDelete {
                kind,
                namespace,
                name,
            } => {
                if self.cfg.policy {
                    self.policy.delete(kind, namespace.as_deref(), &name);
                }
            }
            Change::Block { .. } => {}
        }
    }

    fn on_kernel(&mut self, ev: NetlinkEvent) {
        match ev {
            NetlinkEvent::Route { deleted, route } => {
                if route.table != MAIN_TABLE {
                    return;
                }
                if route.protocol == TABBY_ROUTE_PROTOCOL {
                    self.route_events.push((deleted, route));
                } else {
                    let key = (route.dst, route.effective_metric());
                    if deleted {
                        if self.foreign.remove(&key) {
                            self.reapply.insert(route.dst);
                        }
                    } else {
                        self.foreign.insert(key);
                    }
                }
            }
            NetlinkEvent::Link {
                deleted,
                index,
                name,
            } => {
                let ours = name == VXLAN_DEVICE || name.starts_with(&self.cfg.interface_prefix);
                if !ours {
                    return;
                }
                let before = self.links.get(&name).copied();
                if deleted {
                    if before == Some(index) {
                        self.links.remove(&name);
                    }
                } else {
                    self.links.insert(name.clone(), index);
                }
                if name == VXLAN_DEVICE {
                    // Any change to our device (down, MTU, gone) is checked in full.
                    self.dirty.vxlan_full = true;
                    if before != self.links.get(&name).copied() {
                        self.routes.mark_all();
                    }
                } else if before != self.links.get(&name).copied() {
                    self.mark_interface(&name);
                }
            }
            NetlinkEvent::Neighbour { deleted, index } => {
                if deleted && self.links.get(VXLAN_DEVICE) == Some(&index) {
                    self.dirty.vxlan_full = true;
                }
            }
            NetlinkEvent::Lost => {
                self.dirty.links = true;
                self.dirty.kernel_full = true;
                self.dirty.vxlan_full = true;
            }
            NetlinkEvent::Other => {}
        }
    }

    fn mark_interface(&mut self, iface: &str) {
        if let Some(r) = self.view.local_workload_on(iface) {
            let ips: Vec<IpNet> = r
                .spec
                .as_workload_endpoint()
                .map(|w| w.ip_networks.iter().map(crate::view::host_net).collect())
                .unwrap_or_default();
            for ip in ips {
                self.routes.mark(ip);
            }
        }
        self.dirty.qos = true;
    }

    // ---- execute: the drivers -----------------------------------------------------

    /// Whether a restarted agent is still within its graceful-restart grace:
    /// learned routes already in the kernel stay until every peer is back.
    fn grace(&self) -> bool {
        self.cfg.bgp
            && self.started.elapsed() < self.cfg.restart_grace
            && self
                .all_up_since
                .is_none_or(|t| t.elapsed() < Duration::from_secs(2))
    }

    /// Applies what is dirty. Returns what it did; failures are retried later.
    pub async fn execute(&mut self) -> Pass {
        let start = Instant::now();
        self.shared.health.turned();
        let mut pass = Pass::default();
        if !self.have_snapshot {
            return pass;
        }
        // After a failure, the full passes that redo it wait for their back-off;
        // incremental changes still flow meanwhile.
        let retry_ok = self.retry_at.is_none_or(|t| Instant::now() >= t);
        if retry_ok {
            self.retry_at = None;
        }
        if self.view.node_info(&self.cfg.node_name).is_none() {
            // Our Node was deleted under us. Programming from a view without it
            // would remove every route; keep the data plane and register again.
            self.reregister().await;
            return pass;
        }
        let mut applied = Applied::default();

        if self.dirty.tunnel && retry_ok {
            self.dirty.tunnel = false;
            if let Err(e) = self.ensure_tunnel().await {
                self.dirty.tunnel = true;
                pass.errors.push(format!("VXLAN tunnel address: {e:#}"));
            }
        }
        if self.dirty.links {
            match self.reconciler.links().await {
                Ok(l) => {
                    self.dirty.links = false;
                    let old = std::mem::replace(&mut self.links, l);
                    let changed: BTreeSet<String> = old
                        .iter()
                        .filter(|(n, i)| self.links.get(*n) != Some(*i))
                        .map(|(n, _)| n.clone())
                        .chain(
                            self.links
                                .iter()
                                .filter(|(n, i)| old.get(*n) != Some(*i))
                                .map(|(n, _)| n.clone()),
                        )
                        .collect();
                    for n in changed {
                        if n == VXLAN_DEVICE {
                            self.routes.mark_all();
                        } else if n.starts_with(&self.cfg.interface_prefix) {
                            self.mark_interface(&n);
                        }
                    }
                    match self.own_subnets().await {
                        Ok(s) if s != self.subnets => {
                            self.subnets = s;
                            for p in self.learned.keys() {
                                self.routes.mark(*p);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => pass.errors.push(format!("list addresses: {e}")),
                    }
                }
                Err(e) => {
                    // A failed dump is not "no links": nothing is changed this pass.
                    pass.errors.push(format!("list links: {e}"));
                    self.finish(&mut pass, start);
                    return pass;
                }
            }
        }

        if self.cfg.bgp {
            self.sync_bgp(&mut pass).await;
        }

        // Routes, the VXLAN device and its entries.
        let kernel = KernelView {
            links: self.links.clone(),
            uplink: Some(self.uplink),
            subnets: self.subnets.clone(),
        };
        let mut ch = self
            .routes
            .update(&self.view, &self.settings, &kernel, &self.learned);
        if ch.globals {
            self.dirty.vxlan_full = true;
            self.dirty.mtu = true;
        }
        if self.dirty.vxlan_full && retry_ok {
            self.dirty.vxlan_full = false;
            let want = self.routes.vxlan();
            let errors_before = applied.errors.len();
            self.reconciler
                .apply_vxlan(want.as_ref(), &mut applied)
                .await;
            if applied.errors.len() > errors_before {
                self.dirty.vxlan_full = true;
            }
            if want.is_some() && !self.links.contains_key(VXLAN_DEVICE) {
                // The device is new: routes over it can be resolved now.
                if let Ok(Some(l)) = self.drivers.netlink.link_by_name(VXLAN_DEVICE).await {
                    self.links.insert(VXLAN_DEVICE.to_string(), l.index);
                    self.routes.mark_all();
                    let kernel = KernelView {
                        links: self.links.clone(),
                        uplink: Some(self.uplink),
                        subnets: self.subnets.clone(),
                    };
                    let more =
                        self.routes
                            .update(&self.view, &self.settings, &kernel, &self.learned);
                    ch.routes.extend(more.routes);
                    ch.exports.extend(more.exports);
                }
            }
            ch.vxlan_peers.clear();
        } else if !ch.vxlan_peers.is_empty() {
            self.apply_vxlan_peers(&ch.vxlan_peers, &mut applied).await;
        }
        // A full pass below applies everything anyway, knowing which places are
        // taken by routes we do not own; until then no change is applied blindly.
        let full_now = self.dirty.kernel_full && retry_ok;
        if !full_now {
            pass.route_ops += self.apply_route_changes(&ch.routes, &mut applied).await;
        }
        pass.route_ops += self.repair_route_events(&mut applied).await;
        let grace = self.grace();
        if self.grace_was && !grace {
            // Peers are back: stale learned routes kept over the restart can go.
            self.dirty.kernel_full = true;
        }
        self.grace_was = grace;
        if self.dirty.kernel_full && retry_ok {
            self.dirty.kernel_full = false;
            pass.full = true;
            let ifaces = self.local_workload_ifaces();
            let before = applied.errors.len();
            self.reconciler
                .apply_routes(
                    self.routes.routes(),
                    &self.links,
                    &ifaces,
                    grace,
                    &mut applied,
                )
                .await;
            if applied.errors.is_empty() {
                self.foreign = applied.foreign.drain(..).collect();
                self.conflicts = applied
                    .conflicts
                    .drain(..)
                    .filter_map(|c| {
                        let dst = c.strip_prefix("route ")?.split(':').next()?.parse().ok()?;
                        Some((dst, c))
                    })
                    .collect();
            }
            pass.route_ops += applied.routes_changed + applied.routes_deleted;
            if applied.errors.len() > before {
                self.dirty.kernel_full = true;
            }
        }
        pass.errors.append(&mut applied.errors);

        // BGP exports.
        if self.bgp.is_some() {
            let prefixes: Vec<IpNet> = if self.dirty.exports_all {
                self.dirty.exports_all = false;
                let b = self.bgp.as_ref().expect("checked");
                b.exports
                    .keys()
                    .chain(self.routes.exports().keys())
                    .copied()
                    .collect()
            } else {
                ch.exports.iter().map(|(p, _)| *p).collect()
            };
            if let Err(e) = self.sync_exports(&prefixes).await {
                self.dirty.exports_all = true;
                pass.errors.push(format!("BGP exports: {e}"));
            }
        }

        if self.cfg.nat || self.cfg.policy {
            self.sync_firewall(&mut pass);
        }

        if self.dirty.qos || self.dirty.qos_full {
            let full = self.dirty.qos_full;
            self.dirty.qos = false;
            self.dirty.qos_full = false;
            let local: Vec<Resource> = self.view.local_workloads().cloned().collect();
            let plan = crate::qos::desired(&local, &self.cfg.node_name);
            let out = crate::qos::sync(
                self.drivers.tc.as_ref(),
                &mut self.qos,
                &plan,
                &self.links,
                &self.cfg.interface_prefix,
                full,
            );
            self.shared
                .metrics
                .set_bandwidth(self.qos.limited() as u64, out.changed.len() as u64);
            if !out.errors.is_empty() {
                self.dirty.qos = true;
            }
            pass.errors.extend(out.errors);
        }

        if self.dirty.mtu
            && let Some(g) = self.routes.globals()
        {
            let mtu = g.mtu;
            match crate::agent::write_if_changed(&self.cfg.state_dir.join("mtu"), &mtu.to_string())
            {
                Ok(()) => self.dirty.mtu = false,
                Err(e) => pass.errors.push(format!("{e:#}")),
            }
        }

        self.finish(&mut pass, start);
        pass
    }

    /// Health, metrics, problems and the retry schedule after a pass.
    fn finish(&mut self, pass: &mut Pass, start: Instant) {
        let secs = start.elapsed().as_secs_f64();
        self.shared.metrics.observe_reconcile(secs);
        // Counting walks every route: only when routes changed.
        if pass.route_ops > 0 || pass.full || self.routes_counted.is_none() {
            let installed = self
                .routes
                .routes()
                .values()
                .filter(|r| r.oif != Some(PENDING_VXLAN))
                .count() as u64;
            if self.routes_counted != Some(installed) {
                self.routes_counted = Some(installed);
                self.shared.metrics.set_routes_installed(installed);
                *self
                    .shared
                    .routes_installed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = installed;
            }
        }
        let problems = self.problems();
        if problems != self.last_problems {
            for p in problems.iter().filter(|p| !self.last_problems.contains(p)) {
                warn!("{p}");
            }
            self.shared
                .metrics
                .set_resource_problems(problems.len() as u64);
            *self
                .shared
                .problems
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = problems.clone();
            self.last_problems = problems;
        }
        if pass.errors.is_empty() {
            self.backoff = Duration::from_secs(1);
            *self
                .shared
                .last_reconcile
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(crate::agent::unix_now());
            self.shared.health.record_reconcile();
        } else {
            self.shared.metrics.inc_reconcile_errors();
            for e in &pass.errors {
                warn!("{e}");
            }
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        }
        let store_ok = self
            .store_down_since
            .is_none_or(|t| t.elapsed() < self.cfg.store_grace);
        let bgp_ok = !self.cfg.bgp || self.bgp.is_some();
        let reconciled = self.shared.health.last_reconcile_unix().is_some();
        self.shared
            .health
            .set_ready(store_ok && bgp_ok && reconciled);
        if pass.route_ops > 0 || pass.full {
            debug!(ops = pass.route_ops, full = pass.full, secs, "reconciled");
        }
    }

    /// Whether a timer tick has work: a retry that is due, the graceful-restart
    /// grace running out, the speaker's health check. An idle agent's ticks do
    /// nothing else.
    pub fn wants_tick(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() >= t)
            || self.grace_was
            || (self.cfg.bgp
                && self
                    .last_speaker_check
                    .is_none_or(|t| t.elapsed() >= self.cfg.speaker_check))
    }

    /// The subnets of the node's own interfaces: every address's network, but for
    /// workload interfaces and the VXLAN device.
    async fn own_subnets(&self) -> tabby_dataplane::Result<Vec<IpNet>> {
        let ours: BTreeSet<u32> = self
            .links
            .iter()
            .filter(|(n, _)| n.starts_with(&self.cfg.interface_prefix) || *n == VXLAN_DEVICE)
            .map(|(_, i)| *i)
            .collect();
        let mut v: Vec<IpNet> = self
            .drivers
            .netlink
            .addresses(None)
            .await?
            .into_iter()
            .filter(|a| !ours.contains(&a.index))
            .map(|a| a.net.trunc())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    fn local_workload_ifaces(&self) -> BTreeSet<u32> {
        self.view
            .local_workloads()
            .filter_map(|r| r.spec.as_workload_endpoint()?.interface_name.clone())
            .filter_map(|i| self.links.get(&i).copied())
            .collect()
    }

    async fn reregister(&mut self) {
        if self
            .last_register
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        self.last_register = Some(Instant::now());
        warn!("this node's Node resource is gone; keeping the data plane and registering again");
        if let Some(c) = &self.client
            && let Err(e) = crate::agent::register_node(c, &self.cfg, self.ipv4).await
        {
            warn!(error = %format!("{e:#}"), "registering the Node");
        }
    }

    async fn ensure_tunnel(&mut self) -> anyhow::Result<()> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let pools = self.view.pool_infos();
        let vxlan_pools: Vec<String> = pools
            .iter()
            .filter(|p| !p.disabled && p.cidr.addr().is_ipv4() && p.vxlan != EncapMode::Never)
            .map(|p| p.name.clone())
            .collect();
        let has = self
            .view
            .node_info(&self.cfg.node_name)
            .is_some_and(|n| n.vxlan_tunnel_ip.is_some());
        if vxlan_pools.is_empty() || has {
            return Ok(());
        }
        crate::agent::allocate_vxlan_tunnel(client, &self.cfg.node_name, &vxlan_pools).await
    }

    async fn apply_vxlan_peers(
        &self,
        changes: &[(
            String,
            Option<crate::routes::VxlanPeer>,
            Option<crate::routes::VxlanPeer>,
        )],
        out: &mut Applied,
    ) {
        let Some(&index) = self.links.get(VXLAN_DEVICE) else {
            return;
        };
        let nl = &self.drivers.netlink;
        for (node, before, after) in changes {
            if let Some((t, mac, ip)) = before {
                if after.is_none_or(|(t2, _, _)| t2 != *t) {
                    match nl.del_neighbour(index, *t).await {
                        Ok(()) | Err(DpError::NotFound { .. }) => out.vxlan_changes += 1,
                        Err(e) => out
                            .errors
                            .push(format!("remove neighbour {t} of {node}: {e}")),
                    }
                }
                if after.is_none_or(|(_, m2, ip2)| m2 != *mac || ip2 != *ip) {
                    let e = FdbEntry {
                        index,
                        mac: *mac,
                        dst: *ip,
                    };
                    match nl.del_fdb(&e).await {
                        Ok(()) | Err(DpError::NotFound { .. }) => out.vxlan_changes += 1,
                        Err(err) => out.errors.push(format!("remove fdb {ip} of {node}: {err}")),
                    }
                }
            }
            if let Some((t, mac, ip)) = after {
                let n = Neighbour {
                    index,
                    ip: *t,
                    mac: *mac,
                    permanent: true,
                };
                if let Err(e) = nl.set_neighbour(&n).await {
                    out.errors.push(format!("neighbour {t} of {node}: {e}"));
                }
                let e = FdbEntry {
                    index,
                    mac: *mac,
                    dst: *ip,
                };
                if let Err(err) = nl.set_fdb(&e).await {
                    out.errors.push(format!("fdb {ip} of {node}: {err}"));
                }
                out.vxlan_changes += 1;
            }
        }
        if !out.errors.is_empty() {
            // The kernel's tables are unknown now: the retry reads them back.
            out.errors
                .push("VXLAN entries will be read back and repaired".into());
        }
    }

    /// Applies per-prefix route changes: adds, replaces and deletes, batched.
    async fn apply_route_changes(
        &mut self,
        changes: &[(IpNet, Option<Route>, Option<Route>)],
        out: &mut Applied,
    ) -> usize {
        let pending = |r: &&Route| r.oif == Some(PENDING_VXLAN);
        let mut add = Vec::new();
        let mut replace = Vec::new();
        let mut delete = Vec::new();
        let mut stale = Vec::new();
        for (p, before, after) in changes {
            let before = before.as_ref().filter(|r| !pending(r));
            match after.as_ref().filter(|r| !pending(r)) {
                Some(r) => {
                    // Never over a route Tabby does not own.
                    if self.foreign.contains(&(*p, r.effective_metric())) {
                        self.conflicts.insert(
                            *p,
                            format!(
                                "route {p}: not installed: a route Tabby does not own holds its place"
                            ),
                        );
                        if let Some(b) = before {
                            delete.push(b.clone());
                        }
                        continue;
                    }
                    self.conflicts.remove(p);
                    match before {
                        // Another metric is another route: add the new, then drop the old.
                        Some(b) if b.effective_metric() != r.effective_metric() => {
                            add.push(r.clone());
                            stale.push(b.clone());
                        }
                        Some(_) => replace.push(r.clone()),
                        None => add.push(r.clone()),
                    }
                }
                None => {
                    self.conflicts.remove(p);
                    if let Some(b) = before {
                        delete.push(b.clone());
                    }
                }
            }
        }
        let nl = self.drivers.netlink.clone();
        let mut ops = 0;
        let mut failed = false;
        if !delete.is_empty() {
            for (r, e) in delete.iter().zip(nl.del_routes(&delete).await) {
                match e {
                    Ok(()) | Err(DpError::NotFound { .. }) => ops += 1,
                    Err(e) => {
                        failed = true;
                        out.errors.push(format!("delete route {r}: {e}"));
                    }
                }
            }
        }
        if !add.is_empty() {
            for (r, e) in add.iter().zip(nl.add_routes(&add).await) {
                match e {
                    Ok(()) => ops += 1,
                    Err(DpError::Exists { .. }) => replace.push(r.clone()),
                    Err(e) => {
                        failed = true;
                        out.errors.push(format!("add route {r}: {e}"));
                    }
                }
            }
        }
        for r in &replace {
            match nl.replace_route(r).await {
                Ok(()) => ops += 1,
                Err(e) => {
                    failed = true;
                    out.errors.push(format!("replace route {r}: {e}"));
                }
            }
        }
        if !stale.is_empty() {
            for (r, e) in stale.iter().zip(nl.del_routes(&stale).await) {
                match e {
                    Ok(()) | Err(DpError::NotFound { .. }) => ops += 1,
                    Err(e) => {
                        failed = true;
                        out.errors.push(format!("delete route {r}: {e}"));
                    }
                }
            }
        }
        if failed {
            // Read the kernel back on the retry rather than guessing what is there.
            self.dirty.kernel_full = true;
        }
        ops
    }

    /// Repairs drift the kernel reported: one of our routes deleted or changed by
    /// someone else. A route of ours nobody wants is left to a full pass (it may be
    /// the CNI plugin's, for an endpoint not stored yet).
    async fn repair_route_events(&mut self, out: &mut Applied) -> usize {
        let events = std::mem::take(&mut self.route_events);
        let mut repair: BTreeMap<IpNet, Route> = BTreeMap::new();
        for p in std::mem::take(&mut self.reapply) {
            if let Some(w) = self.routes.routes().get(&p)
                && w.oif != Some(PENDING_VXLAN)
                && !self.foreign.contains(&(p, w.effective_metric()))
            {
                self.conflicts.remove(&p);
                repair.insert(p, w.clone());
            }
        }
        let workload_dev: BTreeSet<u32> = self
            .links
            .iter()
            .filter(|(n, _)| n.starts_with(&self.cfg.interface_prefix))
            .map(|(_, i)| *i)
            .collect();
        for (deleted, r) in events {
            let want = self
                .routes
                .routes()
                .get(&r.dst)
                .filter(|w| w.oif != Some(PENDING_VXLAN));
            match (deleted, want) {
                (true, Some(w)) if route_matches(w, &r) => {
                    repair.insert(r.dst, w.clone());
                }
                (false, Some(w)) if !route_matches(w, &r) => {
                    repair.insert(r.dst, w.clone());
                }
                (false, None) => {
                    let cni_route = r.kind == RouteKind::Unicast
                        && r.gateway.is_none()
                        && r.multipath.is_empty()
                        && r.oif.is_some_and(|o| workload_dev.contains(&o));
                    if !cni_route && !self.grace() {
                        self.dirty.kernel_full = true;
                    }
                }
                _ => {}
            }
        }
        let mut ops = 0;
        for r in repair.values() {
            match self.drivers.netlink.replace_route(r).await {
                Ok(()) => ops += 1,
                Err(e) => {
                    self.dirty.kernel_full = true;
                    out.errors.push(format!("repair route {r}: {e}"));
                }
            }
        }
        if ops > 0 {
            info!(routes = ops, "repaired routes changed outside Tabby");
        }
        ops
    }

    // ---- BGP ----------------------------------------------------------------------

    async fn sync_bgp(&mut self, pass: &mut Pass) {
        // A dead speaker is noticed here (every call fails) and started again.
        let check_due = self
            .last_speaker_check
            .is_none_or(|t| t.elapsed() >= self.cfg.speaker_check);
        if let Some(b) = &self.bgp
            && check_due
        {
            self.last_speaker_check = Some(Instant::now());
            match tokio::time::timeout(Duration::from_secs(5), b.speaker.peers()).await {
                Ok(Ok(peers)) => self.record_peers(&peers),
                Ok(Err(e)) => {
                    warn!(error = %e, "the BGP speaker died; starting it again");
                    self.speaker_died();
                }
                Err(_) => {
                    warn!("the BGP speaker does not answer; starting it again");
                    if let Some(b) = self.bgp.take() {
                        let _ = b.speaker.shutdown_for_restart().await;
                    }
                    self.speaker_died();
                }
            }
        }
        if !self.dirty.peers && self.bgp.is_some() {
            return;
        }
        let secrets = FileEnvSecrets {
            dir: self.cfg.secrets_dir.clone(),
        };
        let nodes: Vec<&Resource> = self.view.nodes().collect();
        let peers: Vec<&Resource> = self.view.bgp_peers().collect();
        let filters: Vec<&Resource> = self.view.bgp_filters().collect();
        let node_cfg = format!("node.{}", self.cfg.node_name);
        let inputs = PeerInputs {
            node_name: &self.cfg.node_name,
            nodes: &nodes,
            bgp_config: self.view.bgp_config(),
            bgp_config_annotations: self.view.bgp_config_annotations(),
            node_bgp_config: self.view.bgp_config_named(&node_cfg),
            peers: &peers,
            filters: &filters,
            secrets: &secrets,
        };
        let derived = match crate::peers::derive(&inputs) {
            Ok(d) => d,
            Err(e) => {
                pass.errors.push(format!("BGP: {e}"));
                return;
            }
        };
        self.dirty.peers = false;
        self.peer_warnings = derived.warnings.clone();
        let instance = InstanceConfig {
            router_id: self.cfg.router_id.unwrap_or(derived.router_id),
            asn: derived.asn,
            listen: Some(derived.listen),
            cluster_id: derived.cluster_id,
            hold_time: self.cfg.bgp_hold_time,
            connect_retry_secs: self.cfg.bgp_connect_retry,
            idle_hold_secs: self.cfg.bgp_connect_retry.min(5),
            graceful_restart_time: 120,
        };
        if self.bgp.as_ref().is_some_and(|s| s.instance != instance) {
            info!("BGP instance settings changed; restarting the speaker");
            if let Some(old) = self.bgp.take() {
                let _ = old.speaker.shutdown().await;
            }
            self.speaker_died();
            self.dirty.peers = false;
        }
        if self.bgp.is_none() {
            match self.drivers.bgp.start(instance.clone()).await {
                Ok(speaker) => {
                    // Our routes survived in the kernel (a restart of the agent or of
                    // a dead speaker): peers keep ours until our End-of-RIB.
                    if self.forwarding_preserved
                        && let Err(e) = speaker
                            .set_restart_state(tabby_bgp::api::RestartState {
                                restarted: true,
                                forwarding_preserved: true,
                            })
                            .await
                    {
                        pass.errors.push(format!("BGP graceful-restart state: {e}"));
                    }
                    *self.shared.bgp.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(speaker.clone());
                    self.bgp = Some(BgpState {
                        speaker,
                        instance,
                        peers: BTreeMap::new(),
                        exports: BTreeMap::new(),
                    });
                    self.dirty.exports_all = true;
                    self.last_speaker_check = Some(Instant::now());
                }
                Err(e) => {
                    self.dirty.peers = true;
                    pass.errors.push(format!("start the BGP speaker: {e}"));
                    return;
                }
            }
        }
        let b = self.bgp.as_mut().expect("started above");
        let want: BTreeMap<IpAddr, PeerConfig> =
            derived.peers.into_iter().map(|p| (p.address, p)).collect();
        let gone: Vec<IpAddr> = b
            .peers
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            if let Err(e) = b.speaker.remove_peer(a).await {
                warn!(peer = %a, error = %e, "remove BGP peer");
            }
            b.peers.remove(&a);
        }
        for (a, p) in want {
            let r = match b.peers.get(&a) {
                Some(old) if *old == p => continue,
                Some(_) => b.speaker.update_peer(p.clone()).await,
                None => b.speaker.add_peer(p.clone()).await,
            };
            match r {
                Ok(()) => {
                    if !b.peers.contains_key(&a) {
                        info!(peer = %a, kind = %p.type_label, "BGP peer added");
                    }
                    b.peers.insert(a, p);
                }
                Err(e) => {
                    self.dirty.peers = true;
                    pass.errors.push(format!("BGP peer {a}: {e}"));
                }
            }
        }
    }

    /// Session metrics, and when every peer was first seen Established (the end of
    /// the graceful-restart grace).
    fn record_peers(&mut self, peers: &[tabby_bgp::PeerStatus]) {
        let up = peers.iter().filter(|p| p.state == "Established").count();
        self.shared
            .metrics
            .set_bgp_sessions(up as u64, peers.len() as u64);
        if self.all_up_since.is_none() && up == peers.len() {
            self.all_up_since = Some(Instant::now());
        }
        // BFD: Up or not per peer, and failures since the last report (the
        // speaker counts per peer; a peer configured again starts over).
        let m = &self.shared.metrics;
        m.set_bfd_sessions(
            peers
                .iter()
                .filter_map(|p| p.bfd.as_ref().map(|b| (p.address, b.state == "Up"))),
        );
        let mut downs = std::collections::HashMap::new();
        let mut new = 0;
        for p in peers {
            if let Some(b) = &p.bfd {
                let last = self.bfd_downs.get(&p.address).copied().unwrap_or(0);
                new += if b.downs >= last {
                    b.downs - last
                } else {
                    b.downs
                };
                downs.insert(p.address, b.downs);
            }
        }
        m.add_bfd_downs(new);
        self.bfd_downs = downs;
    }

    /// Forgets the dead speaker: the next pass starts a new one with every peer
    /// and export, and the learned table is rebuilt from its best paths.
    fn speaker_died(&mut self) {
        self.bgp = None;
        // The kernel keeps our routes while the speaker is away.
        self.forwarding_preserved = true;
        *self.shared.bgp.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.metrics.inc_bgp_restarts();
        self.dirty.peers = true;
        self.dirty.exports_all = true;
    }

    /// The running speaker, for the loop to subscribe to its best paths.
    pub fn speaker(&self) -> Option<Arc<dyn Speaker>> {
        self.bgp.as_ref().map(|b| b.speaker.clone())
    }

    async fn sync_exports(&mut self, prefixes: &[IpNet]) -> Result<(), tabby_bgp::api::ApiError> {
        let Some(b) = self.bgp.as_mut() else {
            return Ok(());
        };
        let want = self.routes.exports();
        let mut gone = Vec::new();
        let mut groups: BTreeMap<Advertisement, Vec<IpNet>> = BTreeMap::new();
        for p in prefixes {
            match (want.get(p), b.exports.get(p)) {
                (None, Some(_)) => gone.push(*p),
                (Some(w), have) if have != Some(w) => groups.entry(w.clone()).or_default().push(*p),
                _ => {}
            }
        }
        if !gone.is_empty() {
            b.speaker.withdraw(gone.clone()).await?;
            for g in gone {
                b.exports.remove(&g);
            }
        }
        for (adv, nets) in groups {
            let attrs = tabby_bgp::api::OriginAttrs {
                communities: adv.communities.clone(),
                large_communities: adv
                    .large_communities
                    .iter()
                    .map(|(a, b, c)| tabby_bgp::packet::attribute::LargeCommunity {
                        global: *a,
                        local1: *b,
                        local2: *c,
                    })
                    .collect(),
                ..Default::default()
            };
            b.speaker.originate(nets.clone(), attrs).await?;
            for n in nets {
                b.exports.insert(n, adv.clone());
            }
        }
        Ok(())
    }

    // ---- nftables -----------------------------------------------------------------

    fn sync_firewall(&mut self, pass: &mut Pass) {
        let nft = self.drivers.nft.as_ref();
        if self.dirty.nft_check {
            // Someone may have deleted the table: look on resync passes only (a
            // look lists the table names).
            self.dirty.nft_check = false;
            if matches!(nft.has_table("ip"), Ok(false)) && self.fw_nat.is_some() {
                warn!("the tabby nftables table is gone; putting it back");
                self.fw_nat = None;
            }
        }
        let Some(g) = self.routes.globals() else {
            return;
        };
        let nat = self.cfg.nat.then(|| g.nat.clone());
        let full = self.fw_nat.as_ref() != Some(&nat);
        let batch = if full {
            let ruleset = self.cfg.policy.then(|| self.policy.ruleset());
            Some(crate::firewall::full_batch(nat.as_ref(), ruleset.as_ref()))
        } else if self.cfg.policy && self.policy.is_dirty() {
            let cmds = self.policy.take_update();
            (!cmds.is_empty()).then(|| tabby_policy::nft::batch(cmds))
        } else {
            None
        };
        let Some(batch) = batch else {
            return;
        };
        let t = Instant::now();
        match nft.apply_json(&batch) {
            Ok(()) => {
                pass.nft_batches += 1;
                debug!(secs = t.elapsed().as_secs_f64(), full, "nftables applied");
                if full {
                    self.policy.mark();
                    self.fw_nat = Some(nat);
                }
            }
            Err(e) => {
                // The kernel state is unknown now: the retry replaces it.
                self.fw_nat = None;
                self.policy.unmark();
                pass.errors.push(format!("nftables: {e}"));
            }
        }
    }

    /// Stops: routes stay in place; BGP closes without a NOTIFICATION (graceful
    /// restart) so peers keep our routes.
    pub async fn shutdown(self) {
        if let Some(b) = self.bgp {
            let _ = b.speaker.shutdown_for_restart().await;
        }
    }
}

/// Whether the kinds a key is of reach the policy engine (for tests and the feed).
pub fn policy_relevant(kind: Kind) -> bool {
    crate::firewall::is_policy_kind(kind)
}
