//! The instance's single event loop: owns every session, the receive
//! sockets and one transmit socket per local address, demultiplexes
//! received packets (RFC 5880 section 6.8.6: by Your Discriminator, or by
//! addresses while the peer does not know ours yet), checks the TTL
//! (RFC 5881 section 5, RFC 5883 section 5), and runs each session's timers
//! from one schedule ordered by deadline, so a hundred sessions cost one
//! timer, not a hundred tasks.

use crate::api::{
    ApiError, BfdHandle, InstanceConfig, PORT_MULTIHOP, PORT_SINGLE_HOP, Request, SessionOpts,
    SessionStatus, StateChange,
};
use crate::packet::ControlPacket;
use crate::session::{Action, Session};
use crate::tasks::{self, Received};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Tokio's clock, so tests with paused time see the same time as timers.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

type TxKey = (Option<IpAddr>, bool);

struct Entry {
    peer: IpAddr,
    local: Option<IpAddr>,
    opts: SessionOpts,
    session: Session,
    tx: Arc<UdpSocket>,
    scheduled: Option<Instant>,
    since: u64,
    rx_errors: u64,
    /// Removed by the operator: dropped once the peer was told.
    removing: bool,
}

impl Entry {
    fn status(&self) -> SessionStatus {
        let s = &self.session;
        let r = s.remote();
        let c = s.counters();
        let (adv_tx, adv_rx) = s.advertised_us();
        SessionStatus {
            peer: self.peer,
            local: self.local,
            multihop: self.opts.multihop,
            state: s.state(),
            remote_state: r.state,
            diag: s.local_diag(),
            remote_diag: r.diag,
            local_discriminator: s.local_discriminator(),
            remote_discriminator: r.discriminator,
            opts: self.opts.clone(),
            desired_min_tx_us: adv_tx,
            required_min_rx_us: adv_rx,
            remote_desired_min_tx_us: r.desired_tx_us,
            remote_required_min_rx_us: r.min_rx_us,
            remote_detect_mult: r.detect_mult,
            tx_interval_us: s.tx_interval_us(),
            detection_time_us: s.detection_time_us(),
            polling: s.polling(),
            auth: s.auth_type(),
            since: self.since,
            ups: c.ups,
            downs: c.downs,
            rx_packets: c.rx,
            tx_packets: c.tx,
            rx_errors: self.rx_errors + c.rx_auth_errors,
        }
    }

    fn port(&self) -> u16 {
        if self.opts.multihop.is_some() {
            PORT_MULTIHOP
        } else {
            PORT_SINGLE_HOP
        }
    }
}

struct Instance {
    sessions: HashMap<u32, Entry>,
    by_peer: HashMap<IpAddr, u32>,
    schedule: BTreeSet<(Instant, u32)>,
    tx_sockets: HashMap<TxKey, Arc<UdpSocket>>,
    changes: broadcast::Sender<StateChange>,
    buf: Vec<u8>,
}

/// The receive sockets of an instance.
struct RxSockets {
    single4: Option<UdpSocket>,
    single6: Option<UdpSocket>,
    multi4: Option<UdpSocket>,
    multi6: Option<UdpSocket>,
}

impl RxSockets {
    fn open(cfg: &InstanceConfig) -> Result<RxSockets, ApiError> {
        let open = |want: bool, ipv6: bool, port: u16| -> Result<Option<UdpSocket>, ApiError> {
            if !want {
                return Ok(None);
            }
            tasks::rx_socket(ipv6, port)
                .map(Some)
                .map_err(|source| ApiError::Io {
                    what: format!(
                        "binding UDP port {port} for {}",
                        if ipv6 { "IPv6" } else { "IPv4" }
                    ),
                    source,
                })
        };
        Ok(RxSockets {
            single4: open(cfg.single_hop, false, PORT_SINGLE_HOP)?,
            single6: open(cfg.single_hop && cfg.ipv6, true, PORT_SINGLE_HOP)?,
            multi4: open(cfg.multihop, false, PORT_MULTIHOP)?,
            multi6: open(cfg.multihop && cfg.ipv6, true, PORT_MULTIHOP)?,
        })
    }
}

/// Starts an instance: binds the receive sockets and spawns the event loop
/// on the current tokio runtime.
pub async fn start(config: InstanceConfig) -> Result<BfdHandle, ApiError> {
    let rx = RxSockets::open(&config)?;
    let (req_tx, req_rx) = mpsc::channel(64);
    let (changes, _) = broadcast::channel(1024);
    let inst = Instance {
        sessions: HashMap::new(),
        by_peer: HashMap::new(),
        schedule: BTreeSet::new(),
        tx_sockets: HashMap::new(),
        changes: changes.clone(),
        buf: Vec::with_capacity(crate::packet::MAX_LEN),
    };
    tokio::spawn(inst.run(rx, req_rx));
    Ok(BfdHandle {
        tx: req_tx,
        changes,
    })
}

impl Instance {
    async fn run(mut self, rx: RxSockets, mut req_rx: mpsc::Receiver<Request>) {
        let mut b1 = [0u8; 512];
        let mut b2 = [0u8; 512];
        let mut b3 = [0u8; 512];
        let mut b4 = [0u8; 512];
        let sleep = tokio::time::sleep(std::time::Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            let next = self.schedule.first().map(|(t, _)| *t);
            if let Some(t) = next {
                sleep.as_mut().reset(tokio::time::Instant::from_std(t));
            }
            tokio::select! {
                req = req_rx.recv() => match req {
                    Some(Request::Shutdown(done)) => {
                        self.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    Some(r) => self.handle_request(r),
                    None => {
                        self.shutdown();
                        return;
                    }
                },
                r = tasks::recv_opt(rx.single4.as_ref(), &mut b1) => self.received(r, &b1, false),
                r = tasks::recv_opt(rx.single6.as_ref(), &mut b2) => self.received(r, &b2, false),
                r = tasks::recv_opt(rx.multi4.as_ref(), &mut b3) => self.received(r, &b3, true),
                r = tasks::recv_opt(rx.multi6.as_ref(), &mut b4) => self.received(r, &b4, true),
                () = &mut sleep, if next.is_some() => self.timers(),
            }
        }
    }

    fn shutdown(&mut self) {
        let t = now();
        let discrs: Vec<u32> = self.sessions.keys().copied().collect();
        for d in discrs {
            if let Some(e) = self.sessions.get_mut(&d) {
                let actions = e.session.admin_down(t);
                self.execute(d, actions);
            }
        }
    }

    fn handle_request(&mut self, req: Request) {
        match req {
            Request::Add {
                peer,
                local,
                opts,
                reply,
            } => {
                let _ = reply.send(self.add(peer, local, *opts));
            }
            Request::Update { peer, opts, reply } => {
                let r = match self.by_peer.get(&peer).copied() {
                    None => Err(ApiError::NoSuchSession(peer)),
                    Some(d) => {
                        let e = self.sessions.get_mut(&d).expect("indexed session exists");
                        if e.opts.multihop != opts.multihop {
                            Err(ApiError::Invalid {
                                field: "multihop".into(),
                                reason: "cannot change on a running session; remove and add it"
                                    .into(),
                            })
                        } else {
                            let actions = e.session.set_config(now(), opts.session_config());
                            e.opts = *opts;
                            self.execute(d, actions);
                            Ok(())
                        }
                    }
                };
                let _ = reply.send(r);
            }
            Request::Remove { peer, reply } => {
                let r = match self.by_peer.remove(&peer) {
                    None => Err(ApiError::NoSuchSession(peer)),
                    Some(d) => {
                        let e = self.sessions.get_mut(&d).expect("indexed session exists");
                        e.removing = true;
                        let actions = e.session.admin_down(now());
                        self.execute(d, actions);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Request::AdminDown { peer, down, reply } => {
                let r = match self.by_peer.get(&peer).copied() {
                    None => Err(ApiError::NoSuchSession(peer)),
                    Some(d) => {
                        let e = self.sessions.get_mut(&d).expect("indexed session exists");
                        let actions = if down {
                            e.session.admin_down(now())
                        } else {
                            e.session.admin_up(now())
                        };
                        self.execute(d, actions);
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Request::Sessions(reply) => {
                let mut v: Vec<SessionStatus> = self
                    .sessions
                    .values()
                    .filter(|e| !e.removing)
                    .map(Entry::status)
                    .collect();
                v.sort_by_key(|s| s.peer);
                let _ = reply.send(v);
            }
            Request::Shutdown(_) => {}
        }
    }

    fn tx_socket(&mut self, local: Option<IpAddr>, ipv6: bool) -> Result<Arc<UdpSocket>, ApiError> {
        if let Some(s) = self.tx_sockets.get(&(local, ipv6)) {
            return Ok(s.clone());
        }
        let sock =
            tasks::tx_socket(local, ipv6, rand::random()).map_err(|source| ApiError::Io {
                what: match local {
                    Some(l) => format!("binding a BFD source port on {l}"),
                    None => "binding a BFD source port".to_string(),
                },
                source,
            })?;
        let sock = Arc::new(sock);
        self.tx_sockets.insert((local, ipv6), sock.clone());
        Ok(sock)
    }

    fn add(
        &mut self,
        peer: IpAddr,
        local: Option<IpAddr>,
        opts: SessionOpts,
    ) -> Result<(), ApiError> {
        if self.by_peer.contains_key(&peer) {
            return Err(ApiError::SessionExists(peer));
        }
        let tx = self.tx_socket(local, peer.is_ipv6())?;
        let discr = loop {
            let d: u32 = rand::random();
            if d != 0 && !self.sessions.contains_key(&d) {
                break d;
            }
        };
        let session = Session::new(opts.session_config(), discr, rand::random(), now());
        tracing::info!(%peer, ?local, discriminator = discr, "adding BFD session");
        self.sessions.insert(
            discr,
            Entry {
                peer,
                local,
                opts,
                session,
                tx,
                scheduled: None,
                since: unix_ms() / 1000,
                rx_errors: 0,
                removing: false,
            },
        );
        self.by_peer.insert(peer, discr);
        self.reschedule(discr);
        Ok(())
    }

    fn reschedule(&mut self, discr: u32) {
        let Some(e) = self.sessions.get_mut(&discr) else {
            return;
        };
        if e.removing && e.session.is_quiet() {
            if let Some(t) = e.scheduled {
                self.schedule.remove(&(t, discr));
            }
            self.sessions.remove(&discr);
            return;
        }
        let next = e.session.next_timeout();
        if next != e.scheduled {
            if let Some(t) = e.scheduled {
                self.schedule.remove(&(t, discr));
            }
            if let Some(t) = next {
                self.schedule.insert((t, discr));
            }
            e.scheduled = next;
        }
    }

    fn timers(&mut self) {
        let t = now();
        while let Some(&(at, discr)) = self.schedule.first() {
            if at > t {
                break;
            }
            self.schedule.pop_first();
            let Some(e) = self.sessions.get_mut(&discr) else {
                continue;
            };
            e.scheduled = None;
            let actions = e.session.on_timeout(t);
            self.execute(discr, actions);
        }
    }

    /// Sends packets, publishes changes, and reschedules the session.
    fn execute(&mut self, discr: u32, actions: Vec<Action>) {
        let Some(e) = self.sessions.get_mut(&discr) else {
            return;
        };
        for a in actions {
            match a {
                Action::Transmit(p) => {
                    self.buf.clear();
                    p.encode_into(&mut self.buf);
                    let to = SocketAddr::new(e.peer, e.port());
                    if let Err(err) = tasks::send(&e.tx, to, &self.buf) {
                        tracing::debug!(peer = %e.peer, error = %err, "BFD packet not sent");
                    }
                }
                Action::StateChange {
                    old,
                    new,
                    diag,
                    remote_state,
                } => {
                    let at_ms = unix_ms();
                    e.since = at_ms / 1000;
                    tracing::info!(peer = %e.peer, %old, %new, %diag, "BFD session state");
                    let _ = self.changes.send(StateChange {
                        peer: e.peer,
                        local: e.local,
                        old,
                        new,
                        diag,
                        remote_state,
                        at_ms,
                    });
                }
            }
        }
        self.reschedule(discr);
    }

    fn received(&mut self, r: std::io::Result<Received>, buf: &[u8], multihop: bool) {
        let meta = match r {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "BFD receive failed");
                return;
            }
        };
        let data = &buf[..meta.len.min(buf.len())];
        let pkt = match ControlPacket::decode(data) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(src = %meta.src, error = %e, "BFD packet discarded");
                return;
            }
        };
        let discr = if pkt.your_discriminator != 0 {
            Some(pkt.your_discriminator)
        } else {
            // Decoding guarantees the peer is Down or AdminDown here.
            self.by_peer.get(&meta.src.ip()).copied()
        };
        let Some(e) = discr.and_then(|d| self.sessions.get_mut(&d)) else {
            tracing::debug!(src = %meta.src, your = pkt.your_discriminator, "BFD packet for no session");
            return;
        };
        let discr = e.session.local_discriminator();
        if e.peer != meta.src.ip() || e.opts.multihop.is_some() != multihop {
            e.rx_errors += 1;
            tracing::debug!(src = %meta.src, peer = %e.peer, "BFD packet from the wrong address or port");
            return;
        }
        if let (Some(l), Some(d)) = (e.local, meta.dst)
            && l != d
        {
            e.rx_errors += 1;
            tracing::debug!(src = %meta.src, dst = %d, local = %l, "BFD packet to the wrong address");
            return;
        }
        let min_ttl = match e.opts.multihop {
            None => tasks::TTL,
            Some(hops) => (256 - u16::from(hops)) as u8,
        };
        if meta.ttl.is_none_or(|t| t < min_ttl) {
            e.rx_errors += 1;
            tracing::debug!(src = %meta.src, ttl = ?meta.ttl, min_ttl, "BFD packet with a low TTL");
            return;
        }
        let raw = &data[..pkt.wire_len()];
        match e.session.on_packet(now(), &pkt, raw) {
            Ok(actions) => self.execute(discr, actions),
            Err(err) => {
                tracing::debug!(src = %meta.src, error = %err, "BFD packet refused");
            }
        }
    }
}
