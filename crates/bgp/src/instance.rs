//! The speaker's single event loop: owns the RIB and every neighbor FSM,
//! takes I/O events from `tasks` and requests from the API, runs FSM actions,
//! processes UPDATEs and sends the resulting Adj-RIB-Out changes. What a
//! peer may cost is bounded here: a prefix limit per family, only the
//! negotiated families accepted, output held back (as a [`Backlog`]) while
//! its send queue is full, ROUTE-REFRESH coalesced, and a capped stale time
//! for a restarting peer. Peers configured with BFD are coupled to it as
//! RFC 5882 says: held Idle until their BFD session is Up, dropped when it
//! fails.

use crate::api::{
    ApiError, BfdPeerStatus, BgpHandle, InstanceConfig, PeerConfig, PeerStatus, Request,
    RestartState,
};
use crate::backlog::{Backlog, Step};
use crate::neighbor::fsm::{
    Action, CollisionWinner, Event, Fsm, FsmConfig, LARGE_HOLD, State, Timer,
    collision_notification, resolve_collision,
};
use crate::neighbor::restart;
use crate::packet::attribute::{NextHop, Origin, PathAttributes};
use crate::packet::capability::{Capability, Family, GrFamily, PeerGracefulRestart};
use crate::packet::error::{CeaseSubcode, ErrorCode};
use crate::packet::message::{
    HEADER_LEN, MAX_EXTENDED_MESSAGE_LEN, MAX_MESSAGE_LEN, Message, NotificationMsg,
    RouteRefreshMsg, UpdateMsg,
};
use crate::packet::{DecodeCxt, EncodeCxt};
use crate::policy::{self, Direction, LocalInfo, PeerInfo, RouteSource};
use crate::rib::{BestPathChange, OutUpdate, Rib, Route, family_of};
use crate::tasks::{
    self, BfdCommand, IoEvent, SEND_QUEUE_HIGH, SEND_QUEUE_LOW, SendState, SocketOptions,
};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// Prefixes synced per step of a peer's backlog: small enough that one
/// step's output stays near the send queue bound.
const BACKLOG_STEP: usize = 1024;

/// Events (mostly batches of received frames, up to 32 KiB each) queued
/// for the event loop at most.
const IO_QUEUE: usize = 64;

/// How many prefixes too large to send are named one by one per sync.
const TOO_LARGE_LOGGED: usize = 8;

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<tasks::Bytes>,
    reader: JoinHandle<()>,
    inbound: bool,
    local: SocketAddr,
    /// Shared with the writer: queued bytes, drain wake-up, send hold.
    send: Arc<SendState>,
    /// Longest frame the reader accepts (raised by extended messages).
    max_frame: Arc<AtomicUsize>,
}

impl Conn {
    /// Queues encoded bytes, counting them against the bound.
    fn queue(&self, bytes: tasks::Bytes) {
        self.send.queued.fetch_add(bytes.len(), Ordering::AcqRel);
        if self.tx.send(bytes.clone()).is_err() {
            // The writer is gone: the bytes will never be written.
            self.send.queued.fetch_sub(bytes.len(), Ordering::AcqRel);
        }
    }

    /// The queue is over the bound: hold back output. Asks the writer for a
    /// wake-up when it is not, so nothing is left waiting.
    fn full(&self) -> bool {
        if self.send.queued() <= SEND_QUEUE_HIGH {
            return false;
        }
        self.send.want_drain.store(true, Ordering::Release);
        // The writer may have drained everything before seeing the request.
        if self.send.queued() <= SEND_QUEUE_LOW {
            self.send.want_drain.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer finishes what is queued (e.g. a NOTIFICATION) and shuts
        // the socket down once `tx` is gone; the reader is not needed.
        self.reader.abort();
    }
}

struct Peer {
    config: PeerConfig,
    fsm: Fsm,
    conn: Option<Conn>,
    connect: Option<(u64, JoinHandle<()>)>,
    timers: HashMap<Timer, (u64, JoinHandle<()>)>,
    session: Option<PeerInfo>,
    /// The peer's graceful restart capability from the last session.
    graceful_restart: Option<PeerGracefulRestart>,
    /// Running while we keep a restarting peer's stale routes.
    restart_timer: Option<(u64, JoinHandle<()>)>,
    /// When the stale routes must go at the latest.
    stale_until: Option<tokio::time::Instant>,
    /// The TCP MD5 key (from `password` or `password_file`).
    md5_key: Option<String>,
    /// Output owed to the peer and not queued yet.
    backlog: Backlog,
    /// A session came up since the speaker started (no R bit any more).
    established_once: bool,
    /// Warned this session: nearing the prefix limit, per family.
    prefix_warned: [bool; 2],
    /// Warned this session: routes of families not negotiated.
    family_warned: bool,
    since: u64,
    info: String,
    /// The BFD session protecting the peer, when configured.
    bfd: Option<BfdPeerStatus>,
}

impl Peer {
    fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            source: self.config.source_address,
            md5_key: self.md5_key.clone(),
            ttl: self.config.multihop,
            ttl_security_hops: self.config.ttl_security,
        }
    }

    fn status(&self) -> PeerStatus {
        PeerStatus {
            address: self.config.address,
            type_label: self.config.type_label.clone(),
            state: self.fsm.state().as_str().to_string(),
            since: self.since,
            info: self.info.clone(),
            bfd: self.bfd.clone(),
        }
    }

    fn encode_cxt(&self) -> EncodeCxt {
        self.fsm
            .session()
            .map_or(EncodeCxt::default(), |s| EncodeCxt {
                four_octet_as: s.negotiated.four_octet_as,
                extended_message: s.negotiated.extended_message,
            })
    }

    fn decode_cxt(&self) -> DecodeCxt {
        let e = self.encode_cxt();
        DecodeCxt {
            four_octet_as: e.four_octet_as,
            extended_message: e.extended_message,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for (_, (_, h)) in self.timers.drain() {
            h.abort();
        }
        if let Some((_, h)) = self.connect.take() {
            h.abort();
        }
        if let Some((_, h)) = self.restart_timer.take() {
            h.abort();
        }
    }
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4Unicast => "ipv4-unicast",
        Family::Ipv6Unicast => "ipv6-unicast",
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Instance {
    config: InstanceConfig,
    local: LocalInfo,
    rib: Rib,
    peers: BTreeMap<IpAddr, Peer>,
    io_tx: mpsc::Sender<IoEvent>,
    listener: Option<Arc<TcpListener>>,
    routes_tx: broadcast::Sender<BestPathChange>,
    peers_tx: broadcast::Sender<PeerStatus>,
    next_id: u64,
    /// What our graceful restart capability says about us.
    restart: RestartState,
    /// Shutting down: sessions close without updating the RIB.
    stopping: bool,
    /// Peers with owed output (a ROUTE-REFRESH, prefixes held back) to
    /// produce once pending input is read.
    work_due: std::collections::BTreeSet<IpAddr>,
    /// The BFD client, started with the first peer that asks for BFD.
    bfd_tx: Option<mpsc::UnboundedSender<BfdCommand>>,
}

/// Starts a speaker: binds the listener (if configured) and spawns the
/// event loop and its tasks on the current tokio runtime.
pub async fn start(config: InstanceConfig) -> Result<BgpHandle, ApiError> {
    config.validate()?;
    // Small: input waits in the kernel's socket buffers rather than here.
    let (io_tx, io_rx) = mpsc::channel(IO_QUEUE);
    let (req_tx, req_rx) = mpsc::channel(64);
    let (routes_tx, _) = broadcast::channel(4096);
    let (peers_tx, _) = broadcast::channel(256);
    let mut local_addr = None;
    let listener = match config.listen {
        Some(addr) => {
            let l = tasks::listen(addr).map_err(|source| ApiError::Io {
                what: format!("listening on {addr}"),
                source,
            })?;
            local_addr = l.local_addr().ok();
            let l = Arc::new(l);
            tasks::spawn_listener(l.clone(), io_tx.clone());
            Some(l)
        }
        None => None,
    };
    let inst = Instance {
        local: LocalInfo {
            asn: config.asn,
            router_id: config.router_id,
            cluster_id: config.cluster_id.unwrap_or(config.router_id),
        },
        config,
        rib: Rib::new(),
        peers: BTreeMap::new(),
        io_tx,
        listener,
        routes_tx: routes_tx.clone(),
        peers_tx: peers_tx.clone(),
        next_id: 1,
        restart: RestartState::default(),
        work_due: Default::default(),
        stopping: false,
        bfd_tx: None,
    };
    tokio::spawn(inst.run(req_rx, io_rx));
    Ok(BgpHandle {
        tx: req_tx,
        routes: routes_tx,
        peers: peers_tx,
        local_addr,
    })
}

/// True when two configurations of a peer differ only in settings that
/// can change without resetting the session (policy and labels).
fn policy_only_change(old: &PeerConfig, new: &PeerConfig) -> bool {
    let mut a = old.clone();
    a.route_reflector_client = new.route_reflector_client;
    a.next_hop_self = new.next_hop_self;
    a.next_hop_keep = new.next_hop_keep;
    a.allow_local_as = new.allow_local_as;
    a.next_hop_v6 = new.next_hop_v6;
    a.type_label = new.type_label.clone();
    a.filters = new.filters.clone();
    a.transit = new.transit;
    a.enforce_first_as = new.enforce_first_as;
    a.max_prefixes = new.max_prefixes;
    a.max_stale_secs = new.max_stale_secs;
    a == *new
}

/// The FSM parameters of one peer: instance settings, overridden per peer
/// where the peer configures them (local AS, graceful restart time,
/// keepalive interval). `restart` sets the graceful restart R and F bits
/// (R only while `restarted` is still news to this peer).
fn fsm_config(inst: &InstanceConfig, cfg: &PeerConfig, restart: RestartState) -> FsmConfig {
    let local_as = cfg.local_as.unwrap_or(inst.asn);
    FsmConfig {
        local_as,
        remote_as: cfg.remote_as,
        router_id: inst.router_id,
        hold_time: inst.hold_time,
        connect_retry: inst.connect_retry(),
        idle_hold: inst.idle_hold(),
        passive: cfg.passive,
        capabilities: capabilities(
            &cfg.families(),
            local_as,
            cfg.graceful_restart_time
                .unwrap_or(inst.graceful_restart_time),
            cfg.extended_messages,
            restart,
        ),
        keepalive: cfg
            .keepalive_secs
            .map(|k| std::time::Duration::from_secs(u64::from(k))),
        prefix_limit_restart: cfg.prefix_limit_restart(),
        bfd: cfg.bfd.is_some(),
        bfd_wait: cfg.bfd_wait,
    }
}

fn capabilities(
    families: &[Family],
    local_as: u32,
    gr_time: u16,
    extended_messages: bool,
    restart: RestartState,
) -> Vec<Capability> {
    let mut caps: Vec<Capability> = families
        .iter()
        .map(|f| {
            let (afi, safi) = f.afi_safi();
            Capability::MultiProtocol { afi, safi }
        })
        .collect();
    caps.push(Capability::RouteRefresh);
    if extended_messages {
        caps.push(Capability::ExtendedMessage);
    }
    caps.push(Capability::FourOctetAs(local_as));
    if gr_time > 0 {
        // F tells the peer whether to keep our routes until our End-of-RIB
        // (forwarding survived) or flush them once we are back.
        let fwd = if restart.forwarding_preserved {
            0x80
        } else {
            0
        };
        caps.push(Capability::GracefulRestart {
            flags: if restart.restarted { 0x80 } else { 0 },
            time: gr_time,
            families: families
                .iter()
                .map(|f| {
                    let (afi, safi) = f.afi_safi();
                    GrFamily {
                        afi,
                        safi,
                        flags: fwd,
                    }
                })
                .collect(),
        });
    }
    caps
}

impl Instance {
    async fn run(
        mut self,
        mut req_rx: mpsc::Receiver<Request>,
        mut io_rx: mpsc::Receiver<IoEvent>,
    ) {
        loop {
            tokio::select! {
                req = req_rx.recv() => match req {
                    Some(Request::Shutdown { notify, done }) => {
                        // Nothing learned is passed on any more: sessions
                        // going down skip the RIB.
                        self.stopping = true;
                        if notify {
                            let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
                            for a in addrs {
                                self.fsm_event(a, Event::ManualStop);
                            }
                        }
                        // Dropping the peers closes their sockets; queued
                        // messages are still flushed by the writers.
                        self.peers.clear();
                        // BFD goes AdminDown, which peers must not take
                        // for a failure (graceful restart keeps working).
                        match self.bfd_tx.take() {
                            Some(tx) => {
                                if let Err(e) = tx.send(BfdCommand::Shutdown(done))
                                    && let BfdCommand::Shutdown(done) = e.0
                                {
                                    let _ = done.send(());
                                }
                            }
                            None => {
                                let _ = done.send(());
                            }
                        }
                        return;
                    }
                    Some(r) => {
                        self.track_changes();
                        self.handle_request(r);
                    }
                    None => return,
                },
                Some(ev) = io_rx.recv() => {
                    self.track_changes();
                    self.handle_io(ev);
                }
            }
            // Refreshes asked for in a burst are served once the burst has
            // been read: requests still queued coalesce with the first.
            if !self.work_due.is_empty() && io_rx.is_empty() {
                for addr in std::mem::take(&mut self.work_due) {
                    self.work(addr);
                }
            }
        }
    }

    /// Best-path changes only matter to subscribers: without any, the RIB
    /// need not compute them.
    fn track_changes(&mut self) {
        self.rib.track_changes(self.routes_tx.receiver_count() > 0);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn handle_request(&mut self, req: Request) {
        match req {
            Request::Originate { prefixes, attrs } => {
                let attrs = PathAttributes {
                    origin: Origin::Igp,
                    communities: attrs.communities,
                    large_communities: attrs.large_communities,
                    med: attrs.med,
                    local_pref: attrs.local_pref,
                    ..Default::default()
                };
                // One shared path per family for the whole request.
                let v4 = Route::new(
                    RouteSource::Local,
                    attrs.clone(),
                    NextHop::Ipv4(Ipv4Addr::UNSPECIFIED),
                );
                let v6 = Route::new(
                    RouteSource::Local,
                    attrs,
                    NextHop::Ipv6 {
                        global: Ipv6Addr::UNSPECIFIED,
                        link_local: None,
                    },
                );
                let mut changes = Vec::new();
                for p in &prefixes {
                    let route = match p {
                        IpNet::V4(_) => v4.clone(),
                        IpNet::V6(_) => v6.clone(),
                    };
                    changes.extend(self.rib.insert(p.trunc(), route));
                }
                let prefixes: Vec<IpNet> = prefixes.iter().map(|p| p.trunc()).collect();
                self.publish(changes);
                self.propagate(&prefixes);
            }
            Request::Withdraw(prefixes) => {
                let prefixes: Vec<IpNet> = prefixes.iter().map(|p| p.trunc()).collect();
                let changes = prefixes
                    .iter()
                    .filter_map(|p| self.rib.remove(*p, None))
                    .collect();
                self.publish(changes);
                self.propagate(&prefixes);
            }
            Request::AddPeer(cfg, reply) => {
                let _ = reply.send(self.add_peer(*cfg));
            }
            Request::UpdatePeer(cfg, reply) => {
                let r = match self.peers.get(&cfg.address) {
                    None => Err(ApiError::NoSuchPeer(cfg.address)),
                    Some(p) if p.config == *cfg => Ok(()),
                    Some(p) if policy_only_change(&p.config, &cfg) => {
                        self.soft_update(*cfg);
                        Ok(())
                    }
                    Some(_) => {
                        self.remove_peer(cfg.address, CeaseSubcode::OtherConfigurationChange);
                        self.add_peer(*cfg)
                    }
                };
                let _ = reply.send(r);
            }
            Request::RemovePeer(addr, reply) => {
                let r = if self.peers.contains_key(&addr) {
                    self.remove_peer(addr, CeaseSubcode::PeerDeconfigured);
                    self.bfd_set(addr, None, None);
                    Ok(())
                } else {
                    Err(ApiError::NoSuchPeer(addr))
                };
                let _ = reply.send(r);
            }
            Request::BestPaths(reply) => {
                let _ = reply.send(self.rib.best_paths());
            }
            Request::Peers(reply) => {
                let _ = reply.send(self.peers.values().map(Peer::status).collect());
            }
            Request::SetRestartState(state) => {
                self.restart = state;
                let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
                for a in addrs {
                    let Some(p) = self.peers.get(&a) else {
                        continue;
                    };
                    let c = fsm_config(&self.config, &p.config, self.restart_for(p));
                    if let Some(p) = self.peers.get_mut(&a) {
                        p.fsm.config = c;
                    }
                }
            }
            Request::Shutdown { .. } => {}
        }
    }

    /// The restart state as told to one peer: R only until its first
    /// session after the restart.
    fn restart_for(&self, p: &Peer) -> RestartState {
        RestartState {
            restarted: self.restart.restarted && !p.established_once,
            ..self.restart
        }
    }

    fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), ApiError> {
        if self.peers.contains_key(&cfg.address) {
            return Err(ApiError::PeerExists(cfg.address));
        }
        // Fails closed: an unreadable password file refuses the peer.
        let md5_key = cfg.md5_key()?;
        if let (Some(key), Some(l)) = (&md5_key, &self.listener) {
            tasks::set_listener_md5(l, cfg.address, key).map_err(|source| ApiError::Io {
                what: format!("setting the TCP MD5 key for {}", cfg.address),
                source,
            })?;
        }
        let fsm = Fsm::new(fsm_config(&self.config, &cfg, self.restart));
        let addr = cfg.address;
        // A peer configured again keeps its BFD session (and finds it Up);
        // one configured without BFD now loses it.
        self.bfd_set(addr, cfg.source_address, cfg.bfd.clone());
        let bfd = cfg.bfd.as_ref().map(|o| BfdPeerStatus {
            state: tabby_bfd::State::Down.as_str().to_string(),
            desired_min_tx_us: o.desired_min_tx.as_micros() as u64,
            required_min_rx_us: o.required_min_rx.as_micros() as u64,
            detect_mult: o.detect_mult,
            multihop: o.multihop.is_some(),
            downs: 0,
            error: String::new(),
        });
        tracing::info!(peer = %addr, remote_as = cfg.remote_as, "adding peer");
        self.peers.insert(
            addr,
            Peer {
                config: cfg,
                fsm,
                conn: None,
                connect: None,
                timers: HashMap::new(),
                session: None,
                graceful_restart: None,
                restart_timer: None,
                stale_until: None,
                md5_key,
                backlog: Backlog::default(),
                established_once: false,
                prefix_warned: [false; 2],
                family_warned: false,
                since: now(),
                info: String::new(),
                bfd,
            },
        );
        self.fsm_event(addr, Event::ManualStart);
        Ok(())
    }

    /// Tells the BFD client what `addr` needs (starting the client the
    /// first time a peer needs BFD).
    fn bfd_set(
        &mut self,
        peer: IpAddr,
        local: Option<IpAddr>,
        opts: Option<tabby_bfd::SessionOpts>,
    ) {
        if self.bfd_tx.is_none() {
            if opts.is_none() {
                return;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tasks::spawn_bfd_client(rx, self.io_tx.clone());
            self.bfd_tx = Some(tx);
        }
        if let Some(tx) = &self.bfd_tx {
            let _ = tx.send(BfdCommand::Set { peer, local, opts });
        }
    }

    /// A BFD session's state changed (or was reported as it is): RFC 5882
    /// coupling. Up lets the session start; a failure takes it down at
    /// once; AdminDown only stops a new session from starting.
    fn bfd_state(
        &mut self,
        addr: IpAddr,
        old: tabby_bfd::State,
        new: tabby_bfd::State,
        failure: bool,
        diag: tabby_bfd::Diag,
    ) {
        use tabby_bfd::State as Bfd;
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Some(b) = p.bfd.as_mut() else {
            return;
        };
        let changed = b.state != new.as_str() || !b.error.is_empty();
        b.state = new.as_str().to_string();
        b.error.clear();
        let ev = if new == Bfd::Up {
            Some(Event::BfdUp)
        } else if failure {
            b.downs += 1;
            tracing::warn!(peer = %addr, %diag, "BFD session down: taking the BGP session down");
            p.info = format!("BFD session down: {diag}");
            Some(Event::BfdDown)
        } else if old == Bfd::Up {
            tracing::info!(peer = %addr, from = old.as_str(), to = new.as_str(), "BFD session shut down on purpose: the BGP session stays");
            Some(Event::BfdAdminDown)
        } else {
            None
        };
        if changed {
            tracing::info!(peer = %addr, from = old.as_str(), to = new.as_str(), "BFD state change");
        }
        if let Some(ev) = ev {
            self.fsm_event(addr, ev);
        }
        if changed && let Some(p) = self.peers.get(&addr) {
            let _ = self.peers_tx.send(p.status());
        }
    }

    /// Applies a change of policy-only settings without resetting the
    /// session: exports are re-diffed against the Adj-RIB-Out, and when the
    /// import side changed the peer is asked for its routes again with
    /// ROUTE-REFRESH (or, if it cannot do that, the session restarts).
    fn soft_update(&mut self, cfg: PeerConfig) {
        let addr = cfg.address;
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let old = std::mem::replace(&mut p.config, cfg);
        let new = &p.config;
        let import_changed = old.route_reflector_client != new.route_reflector_client
            || old.allow_local_as != new.allow_local_as
            || old.enforce_first_as != new.enforce_first_as
            || old
                .filters
                .iter()
                .map(|f| (&f.import_v4, &f.import_v6))
                .ne(new.filters.iter().map(|f| (&f.import_v4, &f.import_v6)));
        let refresh = p.fsm.session().is_some_and(|s| s.negotiated.route_refresh);
        let Some(info) = p.session.as_mut() else {
            return;
        };
        info.rr_client = new.route_reflector_client;
        info.next_hop_self = new.next_hop_self;
        info.next_hop_keep = new.next_hop_keep;
        info.allow_local_as = new.allow_local_as;
        if let Some(v6) = new.next_hop_v6 {
            info.local_v6 = Some(v6);
        }
        info.filters = Arc::from(new.filters.clone());
        info.transit = new.transit;
        info.enforce_first_as = new.enforce_first_as;
        let families = info.families.clone();
        let limit = new.prefix_limit();
        tracing::info!(peer = %addr, import_changed, "peer policy updated in place");
        if import_changed {
            if !refresh {
                let cfg = new.clone();
                self.remove_peer(addr, CeaseSubcode::OtherConfigurationChange);
                if let Err(e) = self.add_peer(cfg) {
                    tracing::warn!(peer = %addr, error = %e, "re-adding peer failed");
                }
                return;
            }
            for f in &families {
                let (afi, safi) = f.afi_safi();
                let rr = RouteRefreshMsg {
                    afi,
                    subtype: 0,
                    safi,
                };
                self.send(addr, &Message::RouteRefresh(rr));
            }
        }
        // A lower limit applies at once.
        if let Some(limit) = limit
            && let Some(family) = families
                .iter()
                .copied()
                .find(|f| self.rib.adj_in_count(&addr, *f) > limit as usize)
        {
            self.prefix_limit_exceeded(addr, family, limit);
            return;
        }
        self.full_sync(addr);
    }

    fn remove_peer(&mut self, addr: IpAddr, why: CeaseSubcode) {
        if let Some(p) = self.peers.get_mut(&addr)
            && let Some(c) = &p.conn
            && p.fsm.state() != State::Idle
        {
            let n = NotificationMsg::new(ErrorCode::Cease, why as u8);
            c.queue(
                Message::Notification(n)
                    .encode(&EncodeCxt::default())
                    .into(),
            );
            // The FSM's own Cease is then a harmless duplicate on a closing
            // socket; drop the connection first so only ours is sent.
            p.conn = None;
        }
        self.fsm_event(addr, Event::ManualStop);
        // Also drops stale routes kept for a restarting peer.
        let (prefixes, changes) = self.rib.remove_peer(addr);
        self.publish(changes);
        self.propagate(&prefixes);
        if let Some(p) = self.peers.remove(&addr) {
            if let (Some(_), Some(l)) = (&p.md5_key, &self.listener)
                && let Err(e) = tasks::set_listener_md5(l, addr, "")
            {
                tracing::warn!(peer = %addr, error = %e, "clearing the TCP MD5 key failed");
            }
            tracing::info!(peer = %addr, "removed peer");
        }
    }

    fn handle_io(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::BfdState {
                peer,
                old,
                new,
                failure,
                diag,
            } => self.bfd_state(peer, old, new, failure, diag),
            IoEvent::BfdError { peer, error } => {
                tracing::warn!(%peer, %error, "BFD cannot protect this peer: no BGP session until it can");
                if let Some(p) = self.peers.get_mut(&peer)
                    && let Some(b) = p.bfd.as_mut()
                {
                    b.error.clone_from(&error);
                    p.info = format!("BFD: {error}");
                    let _ = self.peers_tx.send(p.status());
                }
            }
            IoEvent::Accepted(stream, remote) => self.accepted(stream, remote),
            IoEvent::Connected {
                peer,
                attempt,
                result,
            } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.connect.as_ref().map(|c| c.0) != Some(attempt) {
                    return;
                }
                p.connect = None;
                match result {
                    Ok(stream) if p.conn.is_none() => {
                        self.adopt(peer, stream, false);
                        self.fsm_event(peer, Event::TcpConnectionConfirmed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        p.info = format!("connect: {e}");
                        self.fsm_event(peer, Event::TcpConnectionFails);
                    }
                }
            }
            IoEvent::Frames { peer, conn, frames } => {
                let mut rest = frames.as_slice();
                while rest.len() >= HEADER_LEN {
                    let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
                    let (frame, tail) = rest.split_at(len.clamp(HEADER_LEN, rest.len()));
                    rest = tail;
                    // A message may have closed the connection: the rest
                    // of the batch belongs to nobody.
                    let Some(p) = self.peers.get(&peer) else {
                        return;
                    };
                    if p.conn.as_ref().map(|c| c.id) != Some(conn) {
                        return;
                    }
                    let msg = Message::decode(frame, &p.decode_cxt());
                    self.message(peer, msg);
                }
            }
            IoEvent::FrameError { peer, conn, error } => {
                if self.conn_is(peer, conn) {
                    self.message(peer, Err(error));
                }
            }
            IoEvent::Closed { peer, conn } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.conn.as_ref().map(|c| c.id) == Some(conn) {
                    p.conn = None;
                    if p.info.is_empty() || p.fsm.state() == State::Established {
                        p.info = "connection closed by peer".into();
                    }
                    self.fsm_event(peer, Event::TcpConnectionFails);
                }
            }
            IoEvent::Drained { peer, conn } => {
                if self.conn_is(peer, conn) {
                    self.work(peer);
                }
            }
            IoEvent::SendStalled { peer, conn } => {
                if self.conn_is(peer, conn) {
                    tracing::warn!(peer = %peer, "nothing could be written for the send hold time: dropping the session");
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.info = "send hold timer expired: the peer stopped reading".into();
                    }
                    self.fsm_event(peer, Event::SendHoldTimerExpired);
                }
            }
            IoEvent::RestartTimer { peer, generation } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.restart_timer.as_ref().map(|t| t.0) == Some(generation) {
                    p.restart_timer = None;
                    tracing::info!(peer = %peer, "graceful restart timer expired: removing stale routes");
                    self.sweep_stale(peer, None);
                }
            }
            IoEvent::Timer {
                peer,
                timer,
                generation,
            } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.timers.get(&timer).map(|t| t.0) == Some(generation) {
                    p.timers.remove(&timer);
                    self.fsm_event(peer, Event::TimerExpired(timer));
                }
            }
        }
    }

    fn conn_is(&self, peer: IpAddr, conn: u64) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.conn.as_ref())
            .is_some_and(|c| c.id == conn)
    }

    fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        let addr = remote.ip().to_canonical();
        let router_id = self.config.router_id;
        let Some(p) = self.peers.get_mut(&addr) else {
            tracing::debug!(%remote, "connection from an unknown address refused");
            return;
        };
        if let Err(e) = tasks::configure_accepted(&stream, &p.socket_options()) {
            tracing::warn!(peer = %addr, error = %e, "configuring accepted socket failed");
            return;
        }
        let reject = |stream| {
            let bytes =
                Message::Notification(collision_notification()).encode(&EncodeCxt::default());
            tasks::spawn_reject(stream, bytes);
        };
        match p.fsm.state() {
            State::Idle => {}
            State::Connect | State::Active => {
                if let Some((_, h)) = p.connect.take() {
                    h.abort();
                }
                self.adopt(addr, stream, true);
                self.fsm_event(addr, Event::TcpConnectionConfirmed);
            }
            State::Established => reject(stream),
            State::OpenSent | State::OpenConfirm => {
                // Until the peer's OPEN arrives its identifier is unknown;
                // its address stands in (they are equal in Calico).
                let remote_id = p.fsm.peer_router_id().or(match addr {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                });
                let existing_inbound = p.conn.as_ref().is_some_and(|c| c.inbound);
                let winner = remote_id.map(|id| resolve_collision(router_id, id));
                if winner == Some(CollisionWinner::RemoteInitiated) && !existing_inbound {
                    if let Some(c) = p.conn.take() {
                        let n = Message::Notification(collision_notification());
                        c.queue(n.encode(&EncodeCxt::default()).into());
                    }
                    tracing::info!(peer = %addr, "collision: keeping the peer's connection");
                    self.adopt(addr, stream, true);
                    self.fsm_event(addr, Event::ConnectionReplaced);
                } else {
                    tracing::info!(peer = %addr, "collision: keeping our connection");
                    reject(stream);
                }
            }
        }
    }

    fn adopt(&mut self, addr: IpAddr, stream: TcpStream, inbound: bool) {
        let id = self.id();
        let io_tx = self.io_tx.clone();
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let send = SendState::new(LARGE_HOLD.as_secs() as u32);
        let max_frame = Arc::new(AtomicUsize::new(MAX_MESSAGE_LEN));
        tasks::spawn_writer(addr, id, wr, rx, send.clone(), io_tx.clone());
        let reader = tasks::spawn_reader(addr, id, rd, max_frame.clone(), io_tx);
        p.conn = Some(Conn {
            id,
            tx,
            reader,
            inbound,
            local: SocketAddr::new(local.ip().to_canonical(), local.port()),
            send,
            max_frame,
        });
    }

    fn message(&mut self, addr: IpAddr, msg: Result<Message, crate::packet::error::DecodeError>) {
        let ev = match msg {
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "bad message");
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.info = format!("sent NOTIFICATION: {e}");
                }
                Event::MessageError(e)
            }
            Ok(Message::Open(o)) => Event::OpenReceived(o),
            Ok(Message::Keepalive) => Event::KeepaliveReceived,
            Ok(Message::Notification(n)) => {
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.info = format!("received NOTIFICATION {n}");
                }
                Event::NotificationReceived(n)
            }
            Ok(Message::RouteRefresh(rr)) => {
                self.fsm_event(addr, Event::RouteRefreshReceived);
                self.route_refresh(addr, rr);
                return;
            }
            Ok(Message::Update(u)) => {
                self.fsm_event(addr, Event::UpdateReceived);
                self.update(addr, u);
                return;
            }
        };
        self.fsm_event(addr, ev);
    }

    fn fsm_event(&mut self, addr: IpAddr, ev: Event) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let before = p.fsm.state();
        // A session lost without a NOTIFICATION either way is what graceful
        // restart covers (RFC 4724 4.2).
        let graceful = matches!(ev, Event::TcpConnectionFails);
        let actions = p.fsm.handle(ev);
        let after = p.fsm.state();
        // Longer frames once extended messages are agreed: set before our
        // KEEPALIVE goes out, so before the peer can send one.
        if let Some(c) = &p.conn
            && p.fsm
                .session()
                .is_some_and(|s| s.negotiated.extended_message)
        {
            c.max_frame
                .store(MAX_EXTENDED_MESSAGE_LEN, Ordering::Release);
        }
        for a in actions {
            self.action(addr, a, graceful);
        }
        if before != after
            && let Some(p) = self.peers.get_mut(&addr)
        {
            p.since = now();
            if after == State::Established {
                p.info.clear();
            }
            tracing::info!(peer = %addr, from = before.as_str(), to = after.as_str(), info = %p.info, "state change");
            let _ = self.peers_tx.send(p.status());
        }
    }

    fn send(&self, addr: IpAddr, msg: &Message) {
        if let Some(p) = self.peers.get(&addr)
            && let Some(c) = &p.conn
        {
            c.queue(msg.encode(&p.encode_cxt()).into());
        }
    }

    fn action(&mut self, addr: IpAddr, action: Action, graceful: bool) {
        match action {
            Action::Connect => {
                let attempt = self.id();
                let tx = self.io_tx.clone();
                let Some(p) = self.peers.get_mut(&addr) else {
                    return;
                };
                let remote = SocketAddr::new(addr, p.config.port);
                let h = tasks::spawn_connect(
                    addr,
                    remote,
                    p.socket_options(),
                    attempt,
                    self.config.connect_retry(),
                    tx,
                );
                if let Some((_, old)) = p.connect.replace((attempt, h)) {
                    old.abort();
                }
            }
            Action::Disconnect => {
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.conn = None;
                    if let Some((_, h)) = p.connect.take() {
                        h.abort();
                    }
                }
            }
            Action::SendOpen(o) => self.send(addr, &Message::Open(o)),
            Action::SendKeepalive => self.send(addr, &Message::Keepalive),
            Action::SendNotification(n) => self.send(addr, &Message::Notification(n)),
            Action::StartTimer(t, d) => {
                let generation = self.id();
                let tx = self.io_tx.clone();
                if let Some(p) = self.peers.get_mut(&addr) {
                    let h = tasks::spawn_timer(addr, t, generation, d, tx);
                    if let Some((_, old)) = p.timers.insert(t, (generation, h)) {
                        old.abort();
                    }
                }
            }
            Action::StopTimer(t) => {
                if let Some(p) = self.peers.get_mut(&addr)
                    && let Some((_, h)) = p.timers.remove(&t)
                {
                    h.abort();
                }
            }
            Action::SessionUp(info) => {
                let Some(p) = self.peers.get_mut(&addr) else {
                    return;
                };
                let local = p.conn.as_ref().map(|c| c.local.ip());
                p.session = Some(PeerInfo {
                    addr,
                    remote_as: p.config.remote_as,
                    local_as: p.config.local_as.unwrap_or(self.config.asn),
                    router_id: info.peer_router_id,
                    rr_client: p.config.route_reflector_client,
                    next_hop_self: p.config.next_hop_self,
                    next_hop_keep: p.config.next_hop_keep,
                    allow_local_as: p.config.allow_local_as,
                    local_v4: match local {
                        Some(IpAddr::V4(a)) => Some(a),
                        _ => None,
                    },
                    local_v6: p.config.next_hop_v6.or(match local {
                        Some(IpAddr::V6(a)) => Some(a),
                        _ => None,
                    }),
                    families: info.negotiated.families.clone(),
                    filters: Arc::from(p.config.filters.clone()),
                    encode: p.encode_cxt(),
                    transit: p.config.transit,
                    enforce_first_as: p.config.enforce_first_as,
                });
                p.graceful_restart = info.negotiated.peer_graceful_restart.clone();
                p.prefix_warned = [false; 2];
                p.family_warned = false;
                if let Some(c) = &p.conn {
                    // A peer that stops reading is dropped once nothing could
                    // be written for the hold time (RFC 9687).
                    let hold = match info.hold_time {
                        0 => tasks::SEND_HOLD_WITHOUT_HOLD_TIMER,
                        h => u32::from(h),
                    };
                    c.send.send_hold_secs.store(hold, Ordering::Relaxed);
                }
                if !p.established_once {
                    p.established_once = true;
                    if self.restart.restarted {
                        // The R bit was news once; later OPENs leave it out.
                        let r = RestartState {
                            restarted: false,
                            ..self.restart
                        };
                        p.fsm.config = fsm_config(&self.config, &p.config, r);
                    }
                }
                tracing::info!(peer = %addr, hold_time = info.hold_time, families = ?info.negotiated.families, "session established");
                // Stale routes of families whose forwarding state the peer
                // did not keep go now; the others wait for its End-of-RIB.
                let gr = p.graceful_restart.clone();
                for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
                    let kept = gr.as_ref().is_some_and(|g| g.families.contains(&(f, true)));
                    if !kept {
                        self.sweep_stale(addr, Some(f));
                    }
                }
                // The whole table, in bounded steps, then End-of-RIB.
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.backlog = Backlog::session_up(&info.negotiated.families);
                }
                self.work(addr);
            }
            Action::SessionDown(reason) => {
                tracing::info!(peer = %addr, %reason, "session down");
                if self.stopping {
                    return;
                }
                let restart_id = self.id();
                let io_tx = self.io_tx.clone();
                let helper = self.config.graceful_restart_time > 0;
                let Some(p) = self.peers.get_mut(&addr) else {
                    return;
                };
                let families = p.session.take().map(|s| s.families).unwrap_or_default();
                // Whatever was owed is moot; the next session starts over.
                p.backlog = Backlog::default();
                if p.info.is_empty() {
                    p.info = reason;
                }
                let gr = p.graceful_restart.clone().filter(|_| graceful && helper);
                let (prefixes, changes) = match gr {
                    Some(gr) => {
                        let keep: Vec<Family> = gr
                            .families
                            .iter()
                            .map(|(f, _)| *f)
                            .filter(|f| families.contains(f))
                            .collect();
                        // Stale routes still held from a previous restart keep
                        // their deadline: flapping cannot extend it.
                        let now = tokio::time::Instant::now();
                        let previous = p.stale_until.filter(|_| self.rib.has_stale(&addr));
                        let until = restart::stale_deadline(
                            now.into_std(),
                            previous.map(tokio::time::Instant::into_std),
                            gr.restart_time,
                            p.config.stale_cap_secs(),
                        );
                        let until = tokio::time::Instant::from_std(until);
                        p.stale_until = Some(until);
                        let after = until.saturating_duration_since(now);
                        tracing::info!(peer = %addr, restart_time = gr.restart_time, keep_secs = after.as_secs(), ?keep, "peer restarting: keeping its routes as stale");
                        let h = tasks::spawn_restart_timer(addr, restart_id, after, io_tx);
                        if let Some((_, old)) = p.restart_timer.replace((restart_id, h)) {
                            old.abort();
                        }
                        self.rib.peer_restarting(addr, &keep)
                    }
                    None => {
                        if let Some((_, h)) = p.restart_timer.take() {
                            h.abort();
                        }
                        p.stale_until = None;
                        self.rib.remove_peer(addr)
                    }
                };
                self.publish(changes);
                self.propagate(&prefixes);
            }
        }
    }

    fn update(&mut self, addr: IpAddr, u: UpdateMsg) {
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        let Some(info) = p.session.clone() else {
            return;
        };
        for e in &u.errors {
            tracing::warn!(peer = %addr, action = ?e.action, reason = %e.reason, "UPDATE attribute error (RFC 7606)");
        }
        let mut r = u.routes(p.encode_cxt().four_octet_as);
        if let Some(family) = r.end_of_rib {
            tracing::debug!(peer = %addr, ?family, "End-of-RIB received");
            self.sweep_stale(addr, Some(family));
            return;
        }
        // Only the families agreed on the session are accepted.
        let negotiated = |p: &IpNet| info.families.contains(&family_of(p));
        let before = r.announced.len() + r.withdrawn.len();
        r.announced.retain(|(p, _)| negotiated(p));
        r.withdrawn.retain(negotiated);
        if r.announced.len() + r.withdrawn.len() < before
            && let Some(p) = self.peers.get_mut(&addr)
            && !std::mem::replace(&mut p.family_warned, true)
        {
            tracing::warn!(peer = %addr, negotiated = ?info.families, "ignoring routes of address families not negotiated on this session");
        }
        let limit = self.peers.get(&addr).and_then(|p| p.config.prefix_limit());
        // What changed, with the slot where the RIB already knows it.
        let mut touched: Vec<(IpNet, Option<u32>)> = Vec::new();
        let mut changes = Vec::new();
        for w in r.withdrawn {
            changes.extend(self.rib.remove(w, Some(addr)));
            touched.push((w, None));
        }
        if !r.announced.is_empty() {
            match policy::import(&self.local, &info, r.attrs) {
                Ok(attrs) => {
                    let source = RouteSource::Peer {
                        addr,
                        ebgp: info.is_ebgp(),
                        rr_client: info.rr_client,
                        router_id: info.router_id,
                    };
                    // The UPDATE's path, one per next hop (IPv4 NLRI and
                    // MP_REACH_NLRI may carry different ones).
                    let mut shared: Option<Route> = None;
                    for (prefix, next_hop) in r.announced {
                        if !policy::next_hop_valid(&next_hop, &info) {
                            tracing::warn!(peer = %addr, %prefix, ?next_hop, "unusable next hop: treated as withdrawn");
                            changes.extend(self.rib.remove(prefix, Some(addr)));
                            touched.push((prefix, None));
                            continue;
                        }
                        let path = match &shared {
                            Some(r) if r.next_hop == next_hop => r.clone(),
                            _ => {
                                let r = Route::new(source.clone(), attrs.clone(), next_hop);
                                shared = Some(r.clone());
                                r
                            }
                        };
                        // BGPFilters may change or reject single prefixes;
                        // untouched ones keep sharing the UPDATE's path.
                        let route = if info.filters.is_empty() {
                            path
                        } else {
                            let mut attrs = path.attrs.clone();
                            let accepted = policy::apply_filters(
                                &info.filters,
                                Direction::Import,
                                &prefix,
                                &mut attrs,
                                true,
                                info.is_ebgp(),
                            );
                            if !accepted {
                                changes.extend(self.rib.remove(prefix, Some(addr)));
                                touched.push((prefix, None));
                                continue;
                            }
                            if attrs == path.attrs {
                                path
                            } else {
                                path.with_attrs(attrs)
                            }
                        };
                        let (slot, change) = self.rib.insert_at(prefix, route);
                        changes.extend(change);
                        touched.push((prefix, Some(slot)));
                        if let Some(limit) = limit {
                            let family = family_of(&prefix);
                            let held = self.rib.adj_in_count(&addr, family);
                            if held > limit as usize {
                                // The removal of all of them propagates
                                // what this UPDATE touched.
                                self.publish(changes);
                                self.prefix_limit_exceeded(addr, family, limit);
                                return;
                            }
                            self.near_prefix_limit(addr, family, held, limit);
                        }
                    }
                }
                Err(why @ policy::ImportReject::FirstAs) => {
                    tracing::warn!(peer = %addr, ?why, count = r.announced.len(), "AS path does not start with the peer's AS: routes treated as withdrawn");
                    for (prefix, _) in r.announced {
                        changes.extend(self.rib.remove(prefix, Some(addr)));
                        touched.push((prefix, None));
                    }
                }
                Err(why) => {
                    tracing::debug!(peer = %addr, ?why, "routes rejected on import");
                    for (prefix, _) in r.announced {
                        changes.extend(self.rib.remove(prefix, Some(addr)));
                        touched.push((prefix, None));
                    }
                }
            }
        }
        self.publish(changes);
        self.propagate_at(&touched);
    }

    /// Closes the session of a peer over its prefix limit (the FSM sends
    /// Cease / maximum number of prefixes reached and waits before trying
    /// again); its routes go with the session.
    fn prefix_limit_exceeded(&mut self, addr: IpAddr, family: Family, limit: u32) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let wait = p.config.prefix_limit_restart();
        tracing::warn!(peer = %addr, ?family, limit, retry_secs = wait.as_secs(), "maximum number of prefixes reached: closing the session");
        p.info = format!(
            "maximum number of prefixes reached ({limit} {}); retrying in {} s",
            family_name(family),
            wait.as_secs()
        );
        self.fsm_event(addr, Event::PrefixLimitExceeded { family, limit });
    }

    /// Warns once per session when a peer holds 80% of its prefix limit.
    fn near_prefix_limit(&mut self, addr: IpAddr, family: Family, held: usize, limit: u32) {
        let i = usize::from(family == Family::Ipv6Unicast);
        if held * 5 < limit as usize * 4 {
            return;
        }
        if let Some(p) = self.peers.get_mut(&addr)
            && !std::mem::replace(&mut p.prefix_warned[i], true)
        {
            tracing::warn!(peer = %addr, ?family, held, limit, "peer is at 80% of its prefix limit");
        }
    }

    /// The peer asks for our routes of one family again (RFC 2918). Only
    /// for a negotiated family on a session that negotiated route refresh;
    /// requests coalesce while one is pending.
    fn route_refresh(&mut self, addr: IpAddr, rr: RouteRefreshMsg) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Some(s) = p.fsm.session() else {
            return;
        };
        // Subtypes 1/2 (RFC 7313 BoRR/EoRR) only frame a refresh.
        if rr.subtype != 0 {
            return;
        }
        let family =
            Family::from_afi_safi(rr.afi, rr.safi).filter(|f| s.negotiated.families.contains(f));
        let (Some(family), true) = (family, s.negotiated.route_refresh) else {
            tracing::debug!(peer = %addr, afi = rr.afi, safi = rr.safi, "ROUTE-REFRESH for a family or capability not negotiated: ignored");
            return;
        };
        if p.backlog.refresh(family) {
            tracing::debug!(peer = %addr, ?family, "ROUTE-REFRESH: sending the family again");
            self.work_due.insert(addr);
        }
    }

    /// Produces what is owed to a peer, step by step, until nothing is
    /// or its send queue is over the bound (the writer then wakes us up).
    fn work(&mut self, addr: IpAddr) {
        loop {
            let Some(p) = self.peers.get_mut(&addr) else {
                return;
            };
            let (Some(info), Some(c)) = (p.session.clone(), &p.conn) else {
                return;
            };
            if c.full() {
                return;
            }
            let out = match p.backlog.next(BACKLOG_STEP) {
                None => return,
                Some(Step::Prefixes(list)) => self.rib.sync_peer(&self.local, &info, Some(&list)),
                Some(Step::Walk { walk, reset }) => {
                    if let Some(f) = reset {
                        self.rib.reset_adj_out_family(&addr, f);
                    }
                    let (out, next) =
                        self.rib
                            .sync_peer_chunk(&self.local, &info, walk, BACKLOG_STEP);
                    self.send_out(addr, out, &mut EncodeCache::default());
                    let eor = self
                        .peers
                        .get_mut(&addr)
                        .map(|p| p.backlog.walked(next))
                        .unwrap_or_default();
                    for f in eor {
                        self.send(addr, &Message::Update(UpdateMsg::end_of_rib(f)));
                    }
                    continue;
                }
            };
            self.send_out(addr, out, &mut EncodeCache::default());
        }
    }

    /// Removes a restarting peer's routes that were not refreshed.
    fn sweep_stale(&mut self, addr: IpAddr, family: Option<Family>) {
        let (prefixes, changes) = self.rib.sweep_stale(addr, family);
        if !prefixes.is_empty() {
            tracing::info!(peer = %addr, ?family, count = prefixes.len(), "removed stale routes");
        }
        if !self.rib.has_stale(&addr)
            && let Some(p) = self.peers.get_mut(&addr)
            && let Some((_, h)) = p.restart_timer.take()
        {
            h.abort();
            p.stale_until = None;
        }
        self.publish(changes);
        self.propagate(&prefixes);
    }

    fn publish(&self, changes: Vec<BestPathChange>) {
        for c in changes {
            let _ = self.routes_tx.send(c);
        }
    }

    fn propagate(&mut self, prefixes: &[IpNet]) {
        let list: Vec<(IpNet, Option<u32>)> = prefixes.iter().map(|p| (*p, None)).collect();
        self.propagate_at(&list);
    }

    /// [`Instance::propagate`] with the slots the RIB handed out for them
    /// since the last sync.
    fn propagate_at(&mut self, list: &[(IpNet, Option<u32>)]) {
        if list.is_empty() {
            return;
        }
        // Peers with output held back remember the prefixes instead: what
        // they are owed stays bounded, and the Adj-RIB-Out diff sends the
        // latest state once their queue drains.
        let mut targets: Vec<PeerInfo> = Vec::new();
        for (addr, p) in &mut self.peers {
            if p.fsm.state() != State::Established {
                continue;
            }
            let (Some(info), Some(c)) = (&p.session, &p.conn) else {
                continue;
            };
            let full = c.full();
            if full || !p.backlog.is_empty() {
                let prefixes: Vec<IpNet> = list.iter().map(|(p, _)| *p).collect();
                p.backlog.touch(&prefixes);
                // Owed while the queue has room: nobody will wake us.
                if !full {
                    self.work_due.insert(*addr);
                }
            } else {
                targets.push(info.clone());
            }
        }
        let outs = self.rib.sync_peers_at(&self.local, &targets, list);
        let mut cache = EncodeCache::default();
        for (info, out) in targets.iter().zip(outs) {
            self.send_out(info.addr, out, &mut cache);
        }
    }

    /// Compares everything with what `addr` was sent (an export policy
    /// changed), in bounded steps.
    fn full_sync(&mut self, addr: IpAddr) {
        if let Some(p) = self.peers.get_mut(&addr)
            && p.session.is_some()
        {
            p.backlog.resync();
            self.work(addr);
        }
    }

    fn send_out(&self, addr: IpAddr, out: OutUpdate, cache: &mut EncodeCache) {
        if !out.too_large.is_empty() {
            for prefix in out.too_large.iter().take(TOO_LARGE_LOGGED) {
                tracing::warn!(peer = %addr, %prefix, "route not sent: its path attributes do not fit in one message to this peer");
            }
            if out.too_large.len() > TOO_LARGE_LOGGED {
                tracing::warn!(peer = %addr, more = out.too_large.len() - TOO_LARGE_LOGGED, "more routes not sent: path attributes too large");
            }
        }
        if out.is_empty() {
            return;
        }
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        let Some(c) = &p.conn else {
            return;
        };
        let cxt = p.encode_cxt();
        let max = cxt.max_message_len();
        if !out.withdraw.is_empty() {
            for b in cache.get(None, &out.withdraw, || {
                UpdateMsg::withdraw(&out.withdraw)
                    .into_iter()
                    .map(|m| Message::Update(m).encode(&cxt).into())
                    .collect()
            }) {
                c.queue(b.clone());
            }
        }
        for a in &out.announce {
            let key = Some((Arc::as_ptr(&a.attrs) as usize, a.next_hop, cxt));
            for b in cache.get(key, &a.prefixes, || {
                match UpdateMsg::announce(&a.attrs, a.next_hop, &a.prefixes, &cxt) {
                    Ok(msgs) => msgs
                        .into_iter()
                        .map(|m| Message::Update(m).encode(&cxt).into())
                        .collect(),
                    Err(e) => {
                        // The RIB only hands over exports that fit.
                        tracing::error!(peer = %addr, error = %e, "UPDATE not sent");
                        Vec::new()
                    }
                }
            }) {
                // Never more than the session allows, whatever went before.
                if b.len() > max {
                    tracing::error!(peer = %addr, len = b.len(), max, "UPDATE over the message size limit not sent");
                    continue;
                }
                c.queue(b.clone());
            }
        }
    }
}

/// What one batch of UPDATEs is about: the (interned) attributes, next
/// hop and encoding of an announcement, or `None` for withdrawals.
type GroupKey = Option<(usize, NextHop, EncodeCxt)>;

/// Prefixes of one batch and their encoded UPDATEs.
type Encoded = (Vec<IpNet>, Vec<tasks::Bytes>);

/// The UPDATEs encoded during one propagation, so that peers sent the same
/// routes with the same attributes (an update group, e.g. all the clients
/// of a route reflector) share one encoding and one queued buffer.
#[derive(Default)]
struct EncodeCache {
    entries: crate::rib::FastMap<(GroupKey, usize, IpNet), Vec<Encoded>>,
}

impl EncodeCache {
    /// The encoding of `prefixes` under `key`, made by `encode` the first time.
    fn get(
        &mut self,
        key: GroupKey,
        prefixes: &[IpNet],
        encode: impl FnOnce() -> Vec<tasks::Bytes>,
    ) -> &[tasks::Bytes] {
        let Some(first) = prefixes.first() else {
            return &[];
        };
        let bucket = self
            .entries
            .entry((key, prefixes.len(), *first))
            .or_default();
        let i = match bucket.iter().position(|(p, _)| p.as_slice() == prefixes) {
            Some(i) => i,
            None => {
                bucket.push((prefixes.to_vec(), encode()));
                bucket.len() - 1
            }
        };
        &bucket[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> InstanceConfig {
        InstanceConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            asn: 64512,
            listen: None,
            cluster_id: None,
            hold_time: 90,
            connect_retry_secs: 5,
            idle_hold_secs: 5,
            graceful_restart_time: 120,
        }
    }

    fn gr_time(c: &FsmConfig) -> Option<u16> {
        c.capabilities.iter().find_map(|cap| match cap {
            Capability::GracefulRestart { time, .. } => Some(*time),
            _ => None,
        })
    }

    #[test]
    fn per_peer_timers_override_the_instance() {
        let mut p = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 65001);
        let c = fsm_config(&inst(), &p, RestartState::default());
        assert_eq!(
            (c.local_as, gr_time(&c), c.keepalive),
            (64512, Some(120), None)
        );
        p.local_as = Some(65100);
        p.graceful_restart_time = Some(300);
        p.keepalive_secs = Some(7);
        let c = fsm_config(&inst(), &p, RestartState::default());
        assert_eq!(c.local_as, 65100);
        assert_eq!(gr_time(&c), Some(300));
        assert_eq!(c.keepalive, Some(std::time::Duration::from_secs(7)));
        assert!(c.capabilities.contains(&Capability::FourOctetAs(65100)));
        // 0 for one peer turns graceful restart off towards it only.
        p.graceful_restart_time = Some(0);
        assert_eq!(
            gr_time(&fsm_config(&inst(), &p, RestartState::default())),
            None
        );
    }
}
