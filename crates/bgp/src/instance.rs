//! The speaker's single event loop: owns the RIB and every neighbor FSM,
//! takes I/O events from `tasks` and requests from the API, runs FSM actions,
//! processes UPDATEs and sends the resulting Adj-RIB-Out changes.

use crate::api::{ApiError, BgpHandle, InstanceConfig, PeerConfig, PeerStatus, Request};
use crate::neighbor::fsm::{
    Action, CollisionWinner, Event, Fsm, FsmConfig, State, Timer, collision_notification,
    resolve_collision,
};
use crate::packet::attribute::{NextHop, Origin, PathAttributes};
use crate::packet::capability::{Capability, Family, GrFamily, PeerGracefulRestart};
use crate::packet::error::{CeaseSubcode, ErrorCode};
use crate::packet::message::{Message, NotificationMsg, RouteRefreshMsg, UpdateMsg};
use crate::packet::{DecodeCxt, EncodeCxt};
use crate::policy::{self, Direction, LocalInfo, PeerInfo, RouteSource};
use crate::rib::{BestPathChange, OutUpdate, Rib, Route};
use crate::tasks::{self, IoEvent, SocketOptions};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<tasks::Bytes>,
    reader: JoinHandle<()>,
    inbound: bool,
    local: SocketAddr,
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
    since: u64,
    info: String,
}

impl Peer {
    fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            source: self.config.source_address,
            md5_key: self.config.password.clone(),
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
        }
    }

    fn four_octet_as(&self) -> bool {
        self.fsm
            .session()
            .is_some_and(|s| s.negotiated.four_octet_as)
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
}

/// Starts a speaker: binds the listener (if configured) and spawns the
/// event loop and its tasks on the current tokio runtime.
pub async fn start(config: InstanceConfig) -> Result<BgpHandle, ApiError> {
    config.validate()?;
    let (io_tx, io_rx) = mpsc::channel(1024);
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
    a == *new
}

/// The FSM parameters of one peer: instance settings, overridden per peer
/// where the peer configures them (local AS, graceful restart time,
/// keepalive interval).
fn fsm_config(inst: &InstanceConfig, cfg: &PeerConfig) -> FsmConfig {
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
        ),
        keepalive: cfg
            .keepalive_secs
            .map(|k| std::time::Duration::from_secs(u64::from(k))),
    }
}

fn capabilities(families: &[Family], local_as: u32, gr_time: u16) -> Vec<Capability> {
    let mut caps: Vec<Capability> = families
        .iter()
        .map(|f| {
            let (afi, safi) = f.afi_safi();
            Capability::MultiProtocol { afi, safi }
        })
        .collect();
    caps.push(Capability::RouteRefresh);
    caps.push(Capability::FourOctetAs(local_as));
    if gr_time > 0 {
        // Forwarding state is not claimed preserved (F = 0): peers keep our
        // routes while we are away and flush them once we are back.
        caps.push(Capability::GracefulRestart {
            flags: 0,
            time: gr_time,
            families: families
                .iter()
                .map(|f| {
                    let (afi, safi) = f.afi_safi();
                    GrFamily {
                        afi,
                        safi,
                        flags: 0,
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
                        if notify {
                            let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
                            for a in addrs {
                                self.fsm_event(a, Event::ManualStop);
                            }
                        }
                        // Dropping the peers closes their sockets; queued
                        // messages are still flushed by the writers.
                        self.peers.clear();
                        let _ = done.send(());
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
                let attrs = Arc::new(PathAttributes {
                    origin: Origin::Igp,
                    communities: attrs.communities,
                    large_communities: attrs.large_communities,
                    med: attrs.med,
                    local_pref: attrs.local_pref,
                    ..Default::default()
                });
                let mut changes = Vec::new();
                for p in &prefixes {
                    let next_hop = match p {
                        IpNet::V4(_) => NextHop::Ipv4(Ipv4Addr::UNSPECIFIED),
                        IpNet::V6(_) => NextHop::Ipv6 {
                            global: Ipv6Addr::UNSPECIFIED,
                            link_local: None,
                        },
                    };
                    let route = Route {
                        source: RouteSource::Local,
                        attrs: attrs.clone(),
                        next_hop,
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
            Request::Shutdown { .. } => {}
        }
    }

    fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), ApiError> {
        if self.peers.contains_key(&cfg.address) {
            return Err(ApiError::PeerExists(cfg.address));
        }
        if let (Some(key), Some(l)) = (&cfg.password, &self.listener) {
            tasks::set_listener_md5(l, cfg.address, key).map_err(|source| ApiError::Io {
                what: format!("setting the TCP MD5 key for {}", cfg.address),
                source,
            })?;
        }
        let fsm = Fsm::new(fsm_config(&self.config, &cfg));
        let addr = cfg.address;
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
                since: now(),
                info: String::new(),
            },
        );
        self.fsm_event(addr, Event::ManualStart);
        Ok(())
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
        let families = info.families.clone();
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
            for f in families {
                let (afi, safi) = f.afi_safi();
                let rr = RouteRefreshMsg {
                    afi,
                    subtype: 0,
                    safi,
                };
                self.send(addr, &Message::RouteRefresh(rr));
            }
        }
        self.full_sync(addr);
    }

    fn remove_peer(&mut self, addr: IpAddr, why: CeaseSubcode) {
        if let Some(p) = self.peers.get_mut(&addr)
            && let Some(c) = &p.conn
            && p.fsm.state() != State::Idle
        {
            let n = NotificationMsg::new(ErrorCode::Cease, why as u8);
            let _ = c.tx.send(
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
            if let (Some(_), Some(l)) = (&p.config.password, &self.listener)
                && let Err(e) = tasks::set_listener_md5(l, addr, "")
            {
                tracing::warn!(peer = %addr, error = %e, "clearing the TCP MD5 key failed");
            }
            tracing::info!(peer = %addr, "removed peer");
        }
    }

    fn handle_io(&mut self, ev: IoEvent) {
        match ev {
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
            IoEvent::Frame { peer, conn, frame } => {
                let Some(p) = self.peers.get(&peer) else {
                    return;
                };
                if p.conn.as_ref().map(|c| c.id) != Some(conn) {
                    return;
                }
                let cxt = DecodeCxt {
                    four_octet_as: p.four_octet_as(),
                };
                let msg = frame.and_then(|b| Message::decode(&b, &cxt));
                self.message(peer, msg);
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
                        let _ = c.tx.send(n.encode(&EncodeCxt::default()).into());
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
        tasks::spawn_writer(wr, rx);
        let reader = tasks::spawn_reader(addr, id, rd, io_tx);
        p.conn = Some(Conn {
            id,
            tx,
            reader,
            inbound,
            local: SocketAddr::new(local.ip().to_canonical(), local.port()),
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
                // Re-send everything we advertise (RFC 2918). Subtypes 1/2
                // (RFC 7313 BoRR/EoRR) only frame a refresh and ask nothing.
                if rr.subtype == 0
                    && let Some(p) = self.peers.get(&addr)
                    && p.session.is_some()
                {
                    self.rib.reset_adj_out(&addr);
                    self.full_sync(addr);
                }
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
            let cxt = EncodeCxt {
                four_octet_as: p.four_octet_as(),
            };
            let _ = c.tx.send(msg.encode(&cxt).into());
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
                });
                p.graceful_restart = info.negotiated.peer_graceful_restart.clone();
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
                self.full_sync(addr);
                for f in info.negotiated.families {
                    self.send(addr, &Message::Update(UpdateMsg::end_of_rib(f)));
                }
            }
            Action::SessionDown(reason) => {
                tracing::info!(peer = %addr, %reason, "session down");
                let restart_id = self.id();
                let io_tx = self.io_tx.clone();
                let helper = self.config.graceful_restart_time > 0;
                let Some(p) = self.peers.get_mut(&addr) else {
                    return;
                };
                let families = p.session.take().map(|s| s.families).unwrap_or_default();
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
                        tracing::info!(peer = %addr, restart_time = gr.restart_time, ?keep, "peer restarting: keeping its routes as stale");
                        let after = std::time::Duration::from_secs(u64::from(gr.restart_time));
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
        let r = u.routes(p.four_octet_as());
        if let Some(family) = r.end_of_rib {
            tracing::debug!(peer = %addr, ?family, "End-of-RIB received");
            self.sweep_stale(addr, Some(family));
            return;
        }
        let mut touched = Vec::new();
        let mut changes = Vec::new();
        for w in r.withdrawn {
            changes.extend(self.rib.remove(w, Some(addr)));
            touched.push(w);
        }
        if !r.announced.is_empty() {
            match policy::import(&self.local, &info, r.attrs) {
                Ok(attrs) => {
                    let shared = Arc::new(attrs);
                    let source = RouteSource::Peer {
                        addr,
                        ebgp: info.is_ebgp(),
                        rr_client: info.rr_client,
                        router_id: info.router_id,
                    };
                    for (prefix, next_hop) in r.announced {
                        touched.push(prefix);
                        if !policy::next_hop_valid(&next_hop, &info) {
                            tracing::warn!(peer = %addr, %prefix, ?next_hop, "unusable next hop: treated as withdrawn");
                            changes.extend(self.rib.remove(prefix, Some(addr)));
                            continue;
                        }
                        // BGPFilters may change or reject single prefixes;
                        // untouched ones keep sharing the UPDATE's attributes.
                        let attrs = if info.filters.is_empty() {
                            shared.clone()
                        } else {
                            let mut attrs = (*shared).clone();
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
                                continue;
                            }
                            if attrs == *shared {
                                shared.clone()
                            } else {
                                Arc::new(attrs)
                            }
                        };
                        let route = Route {
                            source: source.clone(),
                            attrs,
                            next_hop,
                        };
                        changes.extend(self.rib.insert(prefix, route));
                    }
                }
                Err(why) => {
                    tracing::debug!(peer = %addr, ?why, "routes rejected on import");
                    for (prefix, _) in r.announced {
                        changes.extend(self.rib.remove(prefix, Some(addr)));
                        touched.push(prefix);
                    }
                }
            }
        }
        self.publish(changes);
        self.propagate(&touched);
    }

    /// Removes a restarting peer's routes that were not refreshed.
    fn sweep_stale(&mut self, addr: IpAddr, family: Option<Family>) {
        let (prefixes, changes) = self.rib.sweep_stale(addr, family);
        if !prefixes.is_empty() {
            tracing::info!(peer = %addr, ?family, count = prefixes.len(), "removed stale routes");
        }
        if self.rib.stale(&addr).is_empty()
            && let Some(p) = self.peers.get_mut(&addr)
            && let Some((_, h)) = p.restart_timer.take()
        {
            h.abort();
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
        if prefixes.is_empty() {
            return;
        }
        let targets: Vec<PeerInfo> = self
            .peers
            .values()
            .filter(|p| p.fsm.state() == State::Established)
            .filter_map(|p| p.session.clone())
            .collect();
        let outs = self.rib.sync_peers(&self.local, &targets, prefixes);
        let mut cache = EncodeCache::default();
        for (info, out) in targets.iter().zip(outs) {
            self.send_out(info.addr, out, &mut cache);
        }
    }

    fn full_sync(&mut self, addr: IpAddr) {
        let Some(info) = self.peers.get(&addr).and_then(|p| p.session.clone()) else {
            return;
        };
        let out = self.rib.sync_peer(&self.local, &info, None);
        self.send_out(addr, out, &mut EncodeCache::default());
    }

    fn send_out(&self, addr: IpAddr, out: OutUpdate, cache: &mut EncodeCache) {
        if out.is_empty() {
            return;
        }
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        let Some(c) = &p.conn else {
            return;
        };
        let four_octet_as = p.four_octet_as();
        let cxt = EncodeCxt { four_octet_as };
        if !out.withdraw.is_empty() {
            for b in cache.get(None, &out.withdraw, || {
                UpdateMsg::withdraw(&out.withdraw)
                    .into_iter()
                    .map(|m| Message::Update(m).encode(&cxt).into())
                    .collect()
            }) {
                let _ = c.tx.send(b.clone());
            }
        }
        for a in &out.announce {
            let key = Some((Arc::as_ptr(&a.attrs) as usize, a.next_hop, four_octet_as));
            for b in cache.get(key, &a.prefixes, || {
                UpdateMsg::announce(&a.attrs, a.next_hop, &a.prefixes, &cxt)
                    .into_iter()
                    .map(|m| Message::Update(m).encode(&cxt).into())
                    .collect()
            }) {
                let _ = c.tx.send(b.clone());
            }
        }
    }
}

/// What one batch of UPDATEs is about: the (interned) attributes, next
/// hop and AS number size of an announcement, or `None` for withdrawals.
type GroupKey = Option<(usize, NextHop, bool)>;

/// Prefixes of one batch and their encoded UPDATEs.
type Encoded = (Vec<IpNet>, Vec<tasks::Bytes>);

/// The UPDATEs encoded during one propagation, so that peers sent the same
/// routes with the same attributes (an update group, e.g. all the clients
/// of a route reflector) share one encoding and one queued buffer.
#[derive(Default)]
struct EncodeCache {
    entries: HashMap<(GroupKey, usize, IpNet), Vec<Encoded>>,
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
        let c = fsm_config(&inst(), &p);
        assert_eq!(
            (c.local_as, gr_time(&c), c.keepalive),
            (64512, Some(120), None)
        );
        p.local_as = Some(65100);
        p.graceful_restart_time = Some(300);
        p.keepalive_secs = Some(7);
        let c = fsm_config(&inst(), &p);
        assert_eq!(c.local_as, 65100);
        assert_eq!(gr_time(&c), Some(300));
        assert_eq!(c.keepalive, Some(std::time::Duration::from_secs(7)));
        assert!(c.capabilities.contains(&Capability::FourOctetAs(65100)));
        // 0 for one peer turns graceful restart off towards it only.
        p.graceful_restart_time = Some(0);
        assert_eq!(gr_time(&fsm_config(&inst(), &p)), None);
    }
}
