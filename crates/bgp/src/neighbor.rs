//! A BGP neighbor: its session state machine (`fsm`, RFC 4271 section 8),
//! connection collision resolution (section 6.8) and the graceful restart
//! helper's timing (`restart`, RFC 4724), and the coupling to BFD
//! (RFC 5882): a neighbor protected by BFD stays Idle until its BFD session
//! is Up and drops at once when it fails. Everything here is deterministic
//! and free of I/O: events in, actions out.

pub mod fsm {
    //! The session FSM. [`Fsm::handle`] maps the current state and an
    //! [`Event`] to the next state and a list of [`Action`]s for the I/O
    //! layer (connect, send, start timers, report session up/down).

    use crate::packet::capability::{Capability, Family, Negotiated, negotiate};
    use crate::packet::error::{CeaseSubcode, DecodeError, ErrorCode, OpenMessageError};
    use crate::packet::message::{NotificationMsg, OpenMsg};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// Session states.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
    pub enum State {
        /// Not trying to connect.
        Idle,
        /// Waiting for an outbound TCP connection.
        Connect,
        /// Waiting for an inbound connection (or the retry timer).
        Active,
        /// OPEN sent, waiting for the peer's.
        OpenSent,
        /// OPENs exchanged, waiting for a KEEPALIVE.
        OpenConfirm,
        /// Session up; routes flow.
        Established,
    }

    impl State {
        /// Name as used in status output.
        pub fn as_str(self) -> &'static str {
            match self {
                State::Idle => "Idle",
                State::Connect => "Connect",
                State::Active => "Active",
                State::OpenSent => "OpenSent",
                State::OpenConfirm => "OpenConfirm",
                State::Established => "Established",
            }
        }
    }

    /// FSM timers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Timer {
        /// Retry an outbound connection.
        ConnectRetry,
        /// Peer silent for too long.
        Hold,
        /// Time to send a KEEPALIVE.
        Keepalive,
        /// Back-off before restarting after an error (automatic start).
        IdleHold,
    }

    /// Inputs to the FSM.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Event {
        /// Operator (or configuration) enables the peer.
        ManualStart,
        /// Operator disables the peer.
        ManualStop,
        /// A TCP connection to or from the peer is up and owned by this FSM.
        TcpConnectionConfirmed,
        /// The connection failed or closed.
        TcpConnectionFails,
        /// A timer fired.
        TimerExpired(Timer),
        /// OPEN received.
        OpenReceived(OpenMsg),
        /// KEEPALIVE received.
        KeepaliveReceived,
        /// UPDATE received (already decoded; the instance processes it).
        UpdateReceived,
        /// ROUTE-REFRESH received.
        RouteRefreshReceived,
        /// NOTIFICATION received.
        NotificationReceived(NotificationMsg),
        /// A received message could not be decoded.
        MessageError(DecodeError),
        /// Collision resolution closed our connection in favour of a new
        /// one (OpenSent/OpenConfirm only): start over on the new one.
        ConnectionReplaced,
        /// The peer sent more prefixes of `family` than `limit`: close with
        /// Cease / maximum number of prefixes reached (RFC 4486) and wait
        /// [`FsmConfig::prefix_limit_restart`] before trying again.
        PrefixLimitExceeded {
            /// The family over its limit.
            family: Family,
            /// The limit.
            limit: u32,
        },
        /// Nothing we queued could be written for the send hold time: the
        /// peer stopped reading (RFC 9687). Close and free what is queued.
        SendHoldTimerExpired,
        /// The neighbor's BFD session is Up: a neighbor held Idle for want
        /// of it starts now. Ignored without [`FsmConfig::bfd`].
        BfdUp,
        /// The neighbor's BFD session failed (left Up for a reason other
        /// than the peer's AdminDown): the session drops at once with
        /// Cease / BFD Down (RFC 9384) and stays Idle until [`Event::BfdUp`].
        BfdDown,
        /// The BFD session left Up because it was shut down on purpose
        /// (either side's AdminDown): RFC 5882 section 3.2 says the BGP
        /// session stays, but a new one waits for BFD to be Up again.
        BfdAdminDown,
    }

    /// Outputs of the FSM, executed in order by the I/O layer.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Action {
        /// Open an outbound TCP connection.
        Connect,
        /// Close the current connection (after sending what is queued).
        Disconnect,
        /// Send our OPEN.
        SendOpen(OpenMsg),
        /// Send a KEEPALIVE.
        SendKeepalive,
        /// Send a NOTIFICATION.
        SendNotification(NotificationMsg),
        /// (Re)start a timer.
        StartTimer(Timer, Duration),
        /// Stop a timer.
        StopTimer(Timer),
        /// The session reached Established.
        SessionUp(SessionInfo),
        /// An Established session went down.
        SessionDown(String),
    }

    /// What was agreed when the session came up.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SessionInfo {
        /// The peer's AS.
        pub peer_as: u32,
        /// The peer's BGP identifier.
        pub peer_router_id: Ipv4Addr,
        /// Negotiated hold time (0 = no keepalives).
        pub hold_time: u16,
        /// Negotiated capabilities.
        pub negotiated: Negotiated,
    }

    /// Static parameters of one neighbor's FSM.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct FsmConfig {
        /// Our AS (as sent in OPEN).
        pub local_as: u32,
        /// Expected peer AS.
        pub remote_as: u32,
        /// Our BGP identifier.
        pub router_id: Ipv4Addr,
        /// Hold time we propose (0 or >= 3).
        pub hold_time: u16,
        /// Connect retry interval.
        pub connect_retry: Duration,
        /// Back-off before automatic restart after an error.
        pub idle_hold: Duration,
        /// Never connect; wait for the peer.
        pub passive: bool,
        /// Capabilities we send.
        pub capabilities: Vec<Capability>,
        /// Configured KEEPALIVE interval; `None` = a third of the hold time.
        pub keepalive: Option<Duration>,
        /// Back-off after closing the session for too many prefixes.
        pub prefix_limit_restart: Duration,
        /// BFD protects this neighbor (RFC 5882): BFD going down takes the
        /// session down, and (with `bfd_wait`) no session while BFD is not Up.
        pub bfd: bool,
        /// With `bfd`: wait for BFD to be Up before starting the session.
        /// Off for peers that only run BFD once BGP is up (FRR picks single
        /// or multihop BFD for an iBGP peer from the established session).
        pub bfd_wait: bool,
    }

    /// Hold time used in OpenSent before the peer's OPEN arrives
    /// (RFC 4271 suggests 4 minutes).
    pub const LARGE_HOLD: Duration = Duration::from_secs(240);

    /// Negotiated hold time: the smaller of both (RFC 4271 4.2); 0 means
    /// no hold timer.
    pub fn negotiate_hold_time(ours: u16, theirs: u16) -> u16 {
        ours.min(theirs)
    }

    /// KEEPALIVE interval for a negotiated (non-zero) hold time: the
    /// configured one, but never more than a third of the hold time, so a
    /// long setting cannot make the peer's hold timer expire.
    pub fn keepalive_interval(configured: Option<Duration>, hold: u16) -> Duration {
        let third = Duration::from_secs(u64::from(hold / 3).max(1));
        configured.map_or(third, |k| k.min(third).max(Duration::from_secs(1)))
    }

    /// The session FSM of one neighbor.
    #[derive(Clone, Debug)]
    pub struct Fsm {
        /// Parameters.
        pub config: FsmConfig,
        state: State,
        enabled: bool,
        session: Option<SessionInfo>,
        /// Peer identifier learned from its OPEN on the current connection.
        peer_router_id: Option<Ipv4Addr>,
        /// The last BFD state reported: Up or not.
        bfd_up: bool,
    }

    impl Fsm {
        /// A new FSM in Idle.
        pub fn new(config: FsmConfig) -> Self {
            Fsm {
                config,
                state: State::Idle,
                enabled: false,
                session: None,
                peer_router_id: None,
                bfd_up: false,
            }
        }

        /// True while BFD keeps this neighbor Idle (configured, waited
        /// for, not Up).
        pub fn held_by_bfd(&self) -> bool {
            self.config.bfd && self.config.bfd_wait && !self.bfd_up
        }

        /// Current state.
        pub fn state(&self) -> State {
            self.state
        }

        /// Negotiated session parameters while Established.
        pub fn session(&self) -> Option<&SessionInfo> {
            self.session.as_ref()
        }

        /// The peer's identifier once its OPEN has been received.
        pub fn peer_router_id(&self) -> Option<Ipv4Addr> {
            self.peer_router_id
        }

        fn open(&self) -> OpenMsg {
            OpenMsg::new(
                self.config.local_as,
                self.config.hold_time,
                self.config.router_id,
                self.config.capabilities.clone(),
            )
        }

        fn start(&mut self, out: &mut Vec<Action>) {
            // RFC 5882 section 4.3: with BFD, wait for it before connecting
            // (and, staying Idle, refuse the peer's connections).
            if self.held_by_bfd() {
                return;
            }
            out.push(Action::StartTimer(
                Timer::ConnectRetry,
                self.config.connect_retry,
            ));
            if self.config.passive {
                self.state = State::Active;
            } else {
                out.push(Action::Connect);
                self.state = State::Connect;
            }
        }

        /// Leaves the session: notify, close, stop timers, go Idle, and
        /// schedule an automatic restart unless stopped by the operator.
        fn drop_session(
            &mut self,
            notif: Option<NotificationMsg>,
            reason: String,
            out: &mut Vec<Action>,
        ) {
            let idle = self.config.idle_hold;
            self.drop_session_for(notif, reason, idle, out)
        }

        /// [`Fsm::drop_session`] with an automatic restart after `idle`.
        fn drop_session_for(
            &mut self,
            notif: Option<NotificationMsg>,
            reason: String,
            idle: Duration,
            out: &mut Vec<Action>,
        ) {
            if let Some(n) = notif {
                out.push(Action::SendNotification(n));
            }
            out.push(Action::Disconnect);
            for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
                out.push(Action::StopTimer(t));
            }
            if self.state == State::Established {
                out.push(Action::SessionDown(reason));
            }
            self.session = None;
            self.peer_router_id = None;
            self.state = State::Idle;
            if self.enabled {
                out.push(Action::StartTimer(Timer::IdleHold, idle));
            }
        }

        fn fsm_error(&mut self, subcode: u8, out: &mut Vec<Action>) {
            let reason = format!("unexpected message in {}", self.state.as_str());
            self.drop_session(
                Some(NotificationMsg::new(ErrorCode::FiniteStateMachine, subcode)),
                reason,
                out,
            );
        }

        /// Checks the peer's OPEN against configuration.
        fn check_open(&self, open: &OpenMsg) -> Result<(), NotificationMsg> {
            if open.peer_as() != self.config.remote_as {
                let mut n =
                    NotificationMsg::new(ErrorCode::OpenMessage, OpenMessageError::BadPeerAs as u8);
                n.data = open.asn.to_be_bytes().to_vec();
                return Err(n);
            }
            if open.router_id == self.config.router_id {
                return Err(NotificationMsg::new(
                    ErrorCode::OpenMessage,
                    OpenMessageError::BadBgpIdentifier as u8,
                ));
            }
            Ok(())
        }

        fn restart_hold(&self, out: &mut Vec<Action>) {
            if let Some(s) = &self.session
                && s.hold_time > 0
            {
                out.push(Action::StartTimer(
                    Timer::Hold,
                    Duration::from_secs(u64::from(s.hold_time)),
                ));
            }
        }

        /// Feeds one event; returns the actions to perform, in order.
        pub fn handle(&mut self, event: Event) -> Vec<Action> {
            use State::*;
            let mut out = Vec::new();
            let cease = |sub: CeaseSubcode| NotificationMsg::new(ErrorCode::Cease, sub as u8);
            match (self.state, event) {
                (_, Event::BfdUp | Event::BfdDown | Event::BfdAdminDown) if !self.config.bfd => {}
                (_, Event::BfdUp) => {
                    self.bfd_up = true;
                    if self.state == Idle && self.enabled {
                        out.push(Action::StopTimer(Timer::IdleHold));
                        self.start(&mut out);
                    }
                }
                (_, Event::BfdAdminDown) => self.bfd_up = false,
                (Idle, Event::BfdDown) => self.bfd_up = false,
                (Connect | Active, Event::BfdDown) => {
                    self.bfd_up = false;
                    self.drop_session(None, "BFD session down".into(), &mut out);
                }
                (_, Event::BfdDown) => {
                    self.bfd_up = false;
                    self.drop_session(
                        Some(cease(CeaseSubcode::BfdDown)),
                        "BFD session down".into(),
                        &mut out,
                    );
                }
                (Idle, Event::ManualStart) => {
                    self.enabled = true;
                    out.push(Action::StopTimer(Timer::IdleHold));
                    self.start(&mut out);
                }
                (Idle, Event::TimerExpired(Timer::IdleHold)) if self.enabled => {
                    self.start(&mut out);
                }
                (Idle, Event::ManualStop) => {
                    self.enabled = false;
                    out.push(Action::StopTimer(Timer::IdleHold));
                }
                // Idle refuses connections and ignores everything else.
                (Idle, Event::TcpConnectionConfirmed) => out.push(Action::Disconnect),
                (Idle, _) => {}
                (_, Event::ManualStart) => {}
                (Connect | Active, Event::ManualStop) => {
                    self.enabled = false;
                    self.drop_session(None, "stopped".into(), &mut out);
                }
                (_, Event::ManualStop) => {
                    self.enabled = false;
                    self.drop_session(
                        Some(cease(CeaseSubcode::AdministrativeShutdown)),
                        "administrative shutdown".into(),
                        &mut out,
                    );
                }
                (Connect, Event::TimerExpired(Timer::ConnectRetry)) => {
                    out.push(Action::Disconnect);
                    out.push(Action::StartTimer(
                        Timer::ConnectRetry,
                        self.config.connect_retry,
                    ));
                    out.push(Action::Connect);
                }
                (Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                    out.push(Action::StartTimer(
                        Timer::ConnectRetry,
                        self.config.connect_retry,
                    ));
                    if !self.config.passive {
                        out.push(Action::Connect);
                        self.state = Connect;
                    }
                }
                (Connect | Active, Event::TcpConnectionConfirmed) => {
                    out.push(Action::StopTimer(Timer::ConnectRetry));
                    out.push(Action::SendOpen(self.open()));
                    out.push(Action::StartTimer(Timer::Hold, LARGE_HOLD));
                    self.state = OpenSent;
                }
                (Connect | Active, Event::TcpConnectionFails) => {
                    out.push(Action::StartTimer(
                        Timer::ConnectRetry,
                        self.config.connect_retry,
                    ));
                    self.state = Active;
                }
                (Connect | Active, Event::TimerExpired(_)) => {}
                // Only meaningful with an OPEN exchange under way.
                (Connect | Active, Event::ConnectionReplaced) => {}
                // Only meaningful on a session (a stale report of one).
                (
                    Connect | Active,
                    Event::PrefixLimitExceeded { .. } | Event::SendHoldTimerExpired,
                ) => {}
                // RFC 4271 8.2.2: any other event in Connect/Active drops the
                // connection and goes Idle, without a NOTIFICATION.
                (Connect | Active, _) => {
                    let reason = format!("unexpected event in {}", self.state.as_str());
                    self.drop_session(None, reason, &mut out)
                }
                (OpenSent, Event::TcpConnectionFails) => {
                    // RFC 4271: close, restart the retry timer, go Active.
                    out.push(Action::Disconnect);
                    out.push(Action::StopTimer(Timer::Hold));
                    out.push(Action::StartTimer(
                        Timer::ConnectRetry,
                        self.config.connect_retry,
                    ));
                    self.state = Active;
                }
                (OpenSent, Event::OpenReceived(open)) => {
                    if let Err(n) = self.check_open(&open) {
                        let reason = format!("rejected OPEN: {n}");
                        self.drop_session(Some(n), reason, &mut out);
                        return out;
                    }
                    let caps: Vec<Capability> = open.capabilities().cloned().collect();
                    let hold = negotiate_hold_time(self.config.hold_time, open.hold_time);
                    self.peer_router_id = Some(open.router_id);
                    self.session = Some(SessionInfo {
                        peer_as: open.peer_as(),
                        peer_router_id: open.router_id,
                        hold_time: hold,
                        negotiated: negotiate(&self.config.capabilities, &caps),
                    });
                    out.push(Action::StopTimer(Timer::ConnectRetry));
                    out.push(Action::SendKeepalive);
                    if hold > 0 {
                        out.push(Action::StartTimer(
                            Timer::Keepalive,
                            keepalive_interval(self.config.keepalive, hold),
                        ));
                        out.push(Action::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(u64::from(hold)),
                        ));
                    } else {
                        out.push(Action::StopTimer(Timer::Hold));
                    }
                    self.state = OpenConfirm;
                }
                (OpenSent | OpenConfirm, Event::ConnectionReplaced) => {
                    out.push(Action::StopTimer(Timer::Keepalive));
                    out.push(Action::SendOpen(self.open()));
                    out.push(Action::StartTimer(Timer::Hold, LARGE_HOLD));
                    self.session = None;
                    self.peer_router_id = None;
                    self.state = OpenSent;
                }
                (_, Event::ConnectionReplaced) => {}
                (Established, Event::PrefixLimitExceeded { family, limit }) => {
                    let (afi, safi) = family.afi_safi();
                    let mut n = cease(CeaseSubcode::MaximumPrefixes);
                    // RFC 4486 section 4: AFI, SAFI and the upper bound.
                    n.data.extend_from_slice(&afi.to_be_bytes());
                    n.data.push(safi);
                    n.data.extend_from_slice(&limit.to_be_bytes());
                    let reason = format!("maximum number of prefixes ({limit}) reached");
                    let idle = self.config.prefix_limit_restart;
                    self.drop_session_for(Some(n), reason, idle, &mut out);
                }
                (_, Event::PrefixLimitExceeded { .. }) => {}
                (OpenSent | OpenConfirm | Established, Event::SendHoldTimerExpired) => self
                    .drop_session(
                        Some(NotificationMsg::new(ErrorCode::SendHoldTimerExpired, 0)),
                        "send hold timer expired: the peer stopped reading".into(),
                        &mut out,
                    ),
                (OpenConfirm | Established, Event::TimerExpired(Timer::Keepalive)) => {
                    out.push(Action::SendKeepalive);
                    if let Some(s) = &self.session {
                        out.push(Action::StartTimer(
                            Timer::Keepalive,
                            keepalive_interval(self.config.keepalive, s.hold_time),
                        ));
                    }
                }
                (OpenConfirm, Event::KeepaliveReceived) => {
                    self.restart_hold(&mut out);
                    self.state = Established;
                    if let Some(s) = &self.session {
                        out.push(Action::SessionUp(s.clone()));
                    }
                }
                (Established, Event::KeepaliveReceived)
                | (Established, Event::UpdateReceived)
                | (Established, Event::RouteRefreshReceived) => self.restart_hold(&mut out),
                (_, Event::TimerExpired(Timer::Hold)) => self.drop_session(
                    Some(NotificationMsg::new(ErrorCode::HoldTimerExpired, 0)),
                    "hold timer expired".into(),
                    &mut out,
                ),
                (_, Event::TimerExpired(_)) => {}
                (_, Event::NotificationReceived(n)) => {
                    self.drop_session(None, format!("received NOTIFICATION {n}"), &mut out)
                }
                (_, Event::TcpConnectionFails) => {
                    self.drop_session(None, "connection closed".into(), &mut out)
                }
                (_, Event::MessageError(e)) => {
                    let n = NotificationMsg::from(&e);
                    self.drop_session(Some(n), format!("message error: {e}"), &mut out)
                }
                // Only one connection is owned by the FSM; a second one is
                // resolved by the instance through `resolve_collision`.
                (_, Event::TcpConnectionConfirmed) => {}
                // Unexpected message for the state: FSM error with the RFC
                // 6608 subcode (1 OpenSent, 2 OpenConfirm, 3 Established).
                (OpenSent, _) => self.fsm_error(1, &mut out),
                (OpenConfirm, _) => self.fsm_error(2, &mut out),
                (Established, _) => self.fsm_error(3, &mut out),
            }
            out
        }
    }

    /// Which of two colliding connections survives (RFC 4271 section 6.8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CollisionWinner {
        /// The connection we initiated.
        LocalInitiated,
        /// The connection the peer initiated.
        RemoteInitiated,
    }

    /// RFC 4271 6.8: the connection initiated by the speaker with the
    /// higher BGP identifier survives.
    pub fn resolve_collision(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> CollisionWinner {
        if u32::from(local_id) < u32::from(remote_id) {
            CollisionWinner::RemoteInitiated
        } else {
            CollisionWinner::LocalInitiated
        }
    }

    /// Convenience: the Cease NOTIFICATION closing a collision loser.
    pub fn collision_notification() -> NotificationMsg {
        NotificationMsg::new(
            ErrorCode::Cease,
            CeaseSubcode::ConnectionCollisionResolution as u8,
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::packet::capability::Family;

        fn cfg(passive: bool) -> FsmConfig {
            FsmConfig {
                local_as: 65000,
                remote_as: 65001,
                router_id: Ipv4Addr::new(198, 18, 0, 1),
                hold_time: 90,
                connect_retry: Duration::from_secs(5),
                idle_hold: Duration::from_secs(3),
                passive,
                capabilities: vec![
                    Capability::MultiProtocol { afi: 1, safi: 1 },
                    Capability::FourOctetAs(65000),
                ],
                keepalive: None,
                prefix_limit_restart: Duration::from_secs(60),
                bfd: false,
                bfd_wait: true,
            }
        }

        fn peer_open(asn: u32, hold: u16, id: [u8; 4]) -> OpenMsg {
            OpenMsg::new(
                asn,
                hold,
                Ipv4Addr::from(id),
                vec![
                    Capability::MultiProtocol { afi: 1, safi: 1 },
                    Capability::FourOctetAs(asn),
                ],
            )
        }

        fn established(passive: bool) -> Fsm {
            let mut f = Fsm::new(cfg(passive));
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            f.handle(Event::OpenReceived(peer_open(65001, 30, [198, 18, 0, 2])));
            let a = f.handle(Event::KeepaliveReceived);
            assert_eq!(f.state(), State::Established);
            assert!(matches!(a.last(), Some(Action::SessionUp(_))));
            f
        }

        fn secs(s: u64) -> Duration {
            Duration::from_secs(s)
        }

        #[test]
        fn active_start_connects() {
            let mut f = Fsm::new(cfg(false));
            let a = f.handle(Event::ManualStart);
            assert_eq!(f.state(), State::Connect);
            assert_eq!(
                a,
                vec![
                    Action::StopTimer(Timer::IdleHold),
                    Action::StartTimer(Timer::ConnectRetry, secs(5)),
                    Action::Connect
                ]
            );
        }

        #[test]
        fn passive_start_waits_and_never_connects() {
            let mut f = Fsm::new(cfg(true));
            let a = f.handle(Event::ManualStart);
            assert_eq!(f.state(), State::Active);
            assert!(!a.contains(&Action::Connect));
            let a = f.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert_eq!(f.state(), State::Active);
            assert!(!a.contains(&Action::Connect));
        }

        #[test]
        fn connect_retry_and_failures() {
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            let a = f.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert_eq!(f.state(), State::Connect);
            assert!(a.contains(&Action::Connect));
            f.handle(Event::TcpConnectionFails);
            assert_eq!(f.state(), State::Active);
            let a = f.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert_eq!(f.state(), State::Connect);
            assert!(a.contains(&Action::Connect));
        }

        #[test]
        fn open_exchange_negotiates_hold_time_and_capabilities() {
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            let a = f.handle(Event::TcpConnectionConfirmed);
            assert_eq!(f.state(), State::OpenSent);
            assert!(matches!(&a[1], Action::SendOpen(o) if o.hold_time == 90 && o.asn == 65000));
            assert!(a.contains(&Action::StartTimer(Timer::Hold, LARGE_HOLD)));
            let a = f.handle(Event::OpenReceived(peer_open(65001, 30, [198, 18, 0, 2])));
            assert_eq!(f.state(), State::OpenConfirm);
            assert!(a.contains(&Action::SendKeepalive));
            assert!(a.contains(&Action::StartTimer(Timer::Hold, secs(30))));
            assert!(a.contains(&Action::StartTimer(Timer::Keepalive, secs(10))));
            let a = f.handle(Event::KeepaliveReceived);
            let Some(Action::SessionUp(s)) = a.last() else {
                panic!("{a:?}")
            };
            assert_eq!(s.hold_time, 30);
            assert_eq!(s.peer_as, 65001);
            assert!(s.negotiated.four_octet_as);
            assert_eq!(s.negotiated.families, vec![Family::Ipv4Unicast]);
        }

        #[test]
        fn zero_hold_time_disables_timers() {
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            let a = f.handle(Event::OpenReceived(peer_open(65001, 0, [198, 18, 0, 2])));
            assert!(a.contains(&Action::StopTimer(Timer::Hold)));
            assert!(
                !a.iter()
                    .any(|x| matches!(x, Action::StartTimer(Timer::Keepalive, _)))
            );
            let a = f.handle(Event::KeepaliveReceived);
            assert!(
                !a.iter()
                    .any(|x| matches!(x, Action::StartTimer(Timer::Hold, _)))
            );
        }

        #[test]
        fn bad_peer_as_and_own_router_id_are_rejected() {
            for (open, sub) in [
                (peer_open(65002, 90, [198, 18, 0, 2]), 2),
                (peer_open(65001, 90, [198, 18, 0, 1]), 3),
            ] {
                let mut f = Fsm::new(cfg(false));
                f.handle(Event::ManualStart);
                f.handle(Event::TcpConnectionConfirmed);
                let a = f.handle(Event::OpenReceived(open));
                assert_eq!(f.state(), State::Idle);
                assert!(matches!(&a[0], Action::SendNotification(n)
                    if n.code == ErrorCode::OpenMessage && n.subcode == sub));
                assert!(a.contains(&Action::Disconnect));
                // Automatic restart after the back-off.
                assert!(a.contains(&Action::StartTimer(Timer::IdleHold, secs(3))));
                f.handle(Event::TimerExpired(Timer::IdleHold));
                assert_eq!(f.state(), State::Connect);
            }
        }

        #[test]
        fn established_keeps_hold_timer_fresh() {
            let mut f = established(false);
            for ev in [
                Event::KeepaliveReceived,
                Event::UpdateReceived,
                Event::RouteRefreshReceived,
            ] {
                assert_eq!(
                    f.handle(ev),
                    vec![Action::StartTimer(Timer::Hold, secs(30))]
                );
            }
            let a = f.handle(Event::TimerExpired(Timer::Keepalive));
            assert_eq!(
                a,
                vec![
                    Action::SendKeepalive,
                    Action::StartTimer(Timer::Keepalive, secs(10))
                ]
            );
        }

        #[test]
        fn hold_expiry_sends_notification_and_goes_down() {
            let mut f = established(false);
            let a = f.handle(Event::TimerExpired(Timer::Hold));
            assert_eq!(f.state(), State::Idle);
            assert!(
                matches!(&a[0], Action::SendNotification(n) if n.code == ErrorCode::HoldTimerExpired)
            );
            assert!(a.iter().any(|x| matches!(x, Action::SessionDown(_))));
        }

        #[test]
        fn manual_stop_sends_cease_and_stays_idle() {
            let mut f = established(false);
            let a = f.handle(Event::ManualStop);
            assert!(matches!(&a[0], Action::SendNotification(n)
                if n.code == ErrorCode::Cease && n.subcode == 2));
            assert!(
                !a.iter()
                    .any(|x| matches!(x, Action::StartTimer(Timer::IdleHold, _)))
            );
            assert_eq!(f.state(), State::Idle);
            assert!(f.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
            assert_eq!(f.state(), State::Idle);
        }

        #[test]
        fn notification_and_connection_loss_drop_session() {
            for ev in [
                Event::NotificationReceived(NotificationMsg::new(ErrorCode::Cease, 2)),
                Event::TcpConnectionFails,
            ] {
                let mut f = established(false);
                let a = f.handle(ev);
                assert_eq!(f.state(), State::Idle);
                assert!(!a.iter().any(|x| matches!(x, Action::SendNotification(_))));
                assert!(a.iter().any(|x| matches!(x, Action::SessionDown(_))));
                assert!(f.session().is_none());
            }
        }

        #[test]
        fn message_error_sends_its_notification() {
            let mut f = established(false);
            let e = DecodeError {
                code: ErrorCode::UpdateMessage,
                subcode: 1,
                data: vec![],
                reason: "test".into(),
            };
            let a = f.handle(Event::MessageError(e));
            assert!(
                matches!(&a[0], Action::SendNotification(n) if n.code == ErrorCode::UpdateMessage)
            );
            assert_eq!(f.state(), State::Idle);
        }

        #[test]
        fn unexpected_messages_are_fsm_errors_with_state_subcodes() {
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            let a = f.handle(Event::UpdateReceived);
            assert!(matches!(&a[0], Action::SendNotification(n)
                if n.code == ErrorCode::FiniteStateMachine && n.subcode == 1));
            let mut f = established(false);
            let a = f.handle(Event::OpenReceived(peer_open(65001, 90, [198, 18, 0, 2])));
            assert!(matches!(&a[0], Action::SendNotification(n) if n.subcode == 3));
            // OpenConfirm + OPEN.
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            f.handle(Event::OpenReceived(peer_open(65001, 90, [198, 18, 0, 2])));
            let a = f.handle(Event::OpenReceived(peer_open(65001, 90, [198, 18, 0, 2])));
            assert!(matches!(&a[0], Action::SendNotification(n) if n.subcode == 2));
        }

        #[test]
        fn opensent_connection_loss_returns_to_active() {
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            let a = f.handle(Event::TcpConnectionFails);
            assert_eq!(f.state(), State::Active);
            assert!(a.contains(&Action::StartTimer(Timer::ConnectRetry, secs(5))));
        }

        #[test]
        fn idle_refuses_connections() {
            let mut f = Fsm::new(cfg(false));
            assert_eq!(
                f.handle(Event::TcpConnectionConfirmed),
                vec![Action::Disconnect]
            );
            assert_eq!(f.handle(Event::KeepaliveReceived), vec![]);
            assert_eq!(f.state(), State::Idle);
        }

        #[test]
        fn collision_prefers_higher_router_id() {
            let lo = Ipv4Addr::new(198, 18, 0, 1);
            let hi = Ipv4Addr::new(198, 18, 0, 2);
            assert_eq!(resolve_collision(lo, hi), CollisionWinner::RemoteInitiated);
            assert_eq!(resolve_collision(hi, lo), CollisionWinner::LocalInitiated);
            assert_eq!(collision_notification().subcode, 7);
        }

        #[test]
        fn connection_replaced_restarts_open_exchange() {
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            f.handle(Event::OpenReceived(peer_open(65001, 90, [198, 18, 0, 2])));
            assert_eq!(f.state(), State::OpenConfirm);
            let a = f.handle(Event::ConnectionReplaced);
            assert_eq!(f.state(), State::OpenSent);
            assert!(matches!(&a[1], Action::SendOpen(_)));
            assert!(f.peer_router_id().is_none());
            let mut f = established(false);
            assert!(f.handle(Event::ConnectionReplaced).is_empty());
            assert_eq!(f.state(), State::Established);
        }

        /// Drives a fresh FSM into `state` along the normal path.
        fn in_state(state: State) -> Fsm {
            let mut f = Fsm::new(cfg(false));
            let path: &[Event] = match state {
                State::Idle => &[],
                State::Connect => &[Event::ManualStart],
                State::Active => &[Event::ManualStart, Event::TcpConnectionFails],
                State::OpenSent => &[Event::ManualStart, Event::TcpConnectionConfirmed],
                State::OpenConfirm | State::Established => &[
                    Event::ManualStart,
                    Event::TcpConnectionConfirmed,
                    Event::OpenReceived(peer_open(65001, 30, [198, 18, 0, 2])),
                ],
            };
            for e in path {
                f.handle(e.clone());
            }
            if state == State::Established {
                f.handle(Event::KeepaliveReceived);
            }
            assert_eq!(f.state(), state);
            f
        }

        #[test]
        fn every_state_event_pair() {
            use State::*;
            let events = [
                Event::ManualStart,
                Event::ManualStop,
                Event::TcpConnectionConfirmed,
                Event::TcpConnectionFails,
                Event::TimerExpired(Timer::ConnectRetry),
                Event::TimerExpired(Timer::Hold),
                Event::TimerExpired(Timer::Keepalive),
                Event::TimerExpired(Timer::IdleHold),
                Event::OpenReceived(peer_open(65001, 30, [198, 18, 0, 2])),
                Event::KeepaliveReceived,
                Event::UpdateReceived,
                Event::RouteRefreshReceived,
                Event::NotificationReceived(NotificationMsg::new(ErrorCode::Cease, 2)),
                Event::MessageError(DecodeError {
                    code: ErrorCode::MessageHeader,
                    subcode: 2,
                    data: vec![],
                    reason: "test".into(),
                }),
                Event::ConnectionReplaced,
                Event::PrefixLimitExceeded {
                    family: Family::Ipv4Unicast,
                    limit: 10,
                },
                Event::SendHoldTimerExpired,
            ];
            // Expected next state, one column per event above.
            let table: [(State, [State; 17]); 6] = [
                (
                    Idle,
                    [
                        Connect, Idle, Idle, Idle, Idle, Idle, Idle, Idle, Idle, Idle, Idle, Idle,
                        Idle, Idle, Idle, Idle, Idle,
                    ],
                ),
                (
                    Connect,
                    [
                        Connect, Idle, OpenSent, Active, Connect, Connect, Connect, Connect, Idle,
                        Idle, Idle, Idle, Idle, Idle, Connect, Connect, Connect,
                    ],
                ),
                (
                    Active,
                    [
                        Active, Idle, OpenSent, Active, Connect, Active, Active, Active, Idle,
                        Idle, Idle, Idle, Idle, Idle, Active, Active, Active,
                    ],
                ),
                (
                    OpenSent,
                    [
                        OpenSent,
                        Idle,
                        OpenSent,
                        Active,
                        OpenSent,
                        Idle,
                        OpenSent,
                        OpenSent,
                        OpenConfirm,
                        Idle,
                        Idle,
                        Idle,
                        Idle,
                        Idle,
                        OpenSent,
                        OpenSent,
                        Idle,
                    ],
                ),
                (
                    OpenConfirm,
                    [
                        OpenConfirm,
                        Idle,
                        OpenConfirm,
                        Idle,
                        OpenConfirm,
                        Idle,
                        OpenConfirm,
                        OpenConfirm,
                        Idle,
                        Established,
                        Idle,
                        Idle,
                        Idle,
                        Idle,
                        OpenSent,
                        OpenConfirm,
                        Idle,
                    ],
                ),
                (
                    Established,
                    [
                        Established,
                        Idle,
                        Established,
                        Idle,
                        Established,
                        Idle,
                        Established,
                        Established,
                        Idle,
                        Established,
                        Established,
                        Established,
                        Idle,
                        Idle,
                        Established,
                        Idle,
                        Idle,
                    ],
                ),
            ];
            for (from, row) in table {
                for (ev, to) in events.iter().zip(row) {
                    let mut f = in_state(from);
                    let a = f.handle(ev.clone());
                    assert_eq!(f.state(), to, "{from:?} + {ev:?}");
                    // Invariants of every transition.
                    let up = a.iter().any(|x| matches!(x, Action::SessionUp(_)));
                    let down = a.iter().any(|x| matches!(x, Action::SessionDown(_)));
                    assert_eq!(
                        up,
                        from == OpenConfirm && to == Established,
                        "{from:?} + {ev:?}"
                    );
                    assert_eq!(
                        down,
                        from == Established && to != Established,
                        "{from:?} + {ev:?}"
                    );
                    if from != Idle && to == Idle {
                        assert!(a.contains(&Action::Disconnect), "{from:?} + {ev:?}: {a:?}");
                    }
                    let notified = a.iter().any(|x| matches!(x, Action::SendNotification(_)));
                    if notified {
                        assert!(
                            matches!(
                                from,
                                OpenSent | OpenConfirm | Established | Connect | Active
                            ),
                            "{from:?} + {ev:?}"
                        );
                    }
                    // Peer-initiated teardown never answers with a NOTIFICATION.
                    if matches!(
                        ev,
                        Event::NotificationReceived(_) | Event::TcpConnectionFails
                    ) {
                        assert!(!notified, "{from:?} + {ev:?}");
                    }
                }
            }
        }

        #[test]
        fn prefix_limit_closes_with_cease_and_waits_longer() {
            let mut f = established(false);
            let a = f.handle(Event::PrefixLimitExceeded {
                family: Family::Ipv6Unicast,
                limit: 100_000,
            });
            assert_eq!(f.state(), State::Idle);
            let Action::SendNotification(n) = &a[0] else {
                panic!("{a:?}")
            };
            assert_eq!((n.code, n.subcode), (ErrorCode::Cease, 1));
            // AFI 2, SAFI 1, limit 100000.
            assert_eq!(n.data, vec![0, 2, 1, 0, 0x01, 0x86, 0xa0]);
            assert!(a.contains(&Action::StartTimer(Timer::IdleHold, secs(60))));
            assert!(a.iter().any(|x| matches!(x, Action::SessionDown(_))));
            // Back after the wait, not the ordinary back-off.
            f.handle(Event::TimerExpired(Timer::IdleHold));
            assert_eq!(f.state(), State::Connect);
        }

        #[test]
        fn send_hold_expiry_drops_the_session() {
            let mut f = established(false);
            let a = f.handle(Event::SendHoldTimerExpired);
            assert_eq!(f.state(), State::Idle);
            assert!(matches!(&a[0], Action::SendNotification(n)
                if n.code == ErrorCode::SendHoldTimerExpired && n.code.to_u8() == 8));
            assert!(a.contains(&Action::Disconnect));
            assert!(a.contains(&Action::StartTimer(Timer::IdleHold, secs(3))));
        }

        fn bfd_cfg() -> FsmConfig {
            FsmConfig {
                bfd: true,
                ..cfg(false)
            }
        }

        #[test]
        fn bfd_holds_the_neighbor_idle_until_up() {
            let mut f = Fsm::new(bfd_cfg());
            assert!(f.held_by_bfd());
            let a = f.handle(Event::ManualStart);
            assert_eq!(f.state(), State::Idle, "{a:?}");
            assert!(!a.contains(&Action::Connect));
            // The peer's connection is refused while held.
            assert_eq!(
                f.handle(Event::TcpConnectionConfirmed),
                vec![Action::Disconnect]
            );
            // The back-off expiring does not start it either.
            assert!(f.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
            assert_eq!(f.state(), State::Idle);
            // BFD Up: connect at once.
            let a = f.handle(Event::BfdUp);
            assert_eq!(f.state(), State::Connect);
            assert!(a.contains(&Action::Connect));
            assert!(!f.held_by_bfd());
        }

        #[test]
        fn bfd_up_before_start_lets_it_start() {
            let mut f = Fsm::new(bfd_cfg());
            assert!(f.handle(Event::BfdUp).is_empty(), "not enabled yet");
            assert_eq!(f.state(), State::Idle);
            f.handle(Event::ManualStart);
            assert_eq!(f.state(), State::Connect);
        }

        /// Drives a BFD-protected FSM to Established.
        fn established_with_bfd() -> Fsm {
            let mut f = Fsm::new(bfd_cfg());
            f.handle(Event::ManualStart);
            f.handle(Event::BfdUp);
            f.handle(Event::TcpConnectionConfirmed);
            f.handle(Event::OpenReceived(peer_open(65001, 9, [198, 18, 0, 2])));
            f.handle(Event::KeepaliveReceived);
            assert_eq!(f.state(), State::Established);
            f
        }

        #[test]
        fn bfd_down_drops_the_session_with_cease_and_waits_for_up() {
            let mut f = established_with_bfd();
            let a = f.handle(Event::BfdDown);
            assert_eq!(f.state(), State::Idle);
            let Action::SendNotification(n) = &a[0] else {
                panic!("{a:?}")
            };
            assert_eq!((n.code, n.subcode), (ErrorCode::Cease, 10));
            assert!(a.contains(&Action::Disconnect));
            assert!(
                a.iter()
                    .any(|x| matches!(x, Action::SessionDown(r) if r.contains("BFD")))
            );
            // Not back after the ordinary back-off while BFD is down...
            assert!(f.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
            assert_eq!(f.state(), State::Idle);
            // ...but as soon as it is Up again.
            let a = f.handle(Event::BfdUp);
            assert!(a.contains(&Action::Connect));
            assert_eq!(f.state(), State::Connect);
        }

        #[test]
        fn bfd_down_in_every_state() {
            use State::*;
            // Before the OPEN exchange: no NOTIFICATION, just Idle.
            for ev in [
                &[][..],
                &[Event::TcpConnectionFails][..],
                &[Event::TcpConnectionConfirmed][..],
            ] {
                let mut f = Fsm::new(bfd_cfg());
                f.handle(Event::ManualStart);
                f.handle(Event::BfdUp);
                for e in ev {
                    f.handle(e.clone());
                }
                let from = f.state();
                let a = f.handle(Event::BfdDown);
                assert_eq!(f.state(), Idle, "{from:?}");
                let notified = a.iter().any(|x| matches!(x, Action::SendNotification(_)));
                assert_eq!(notified, from == OpenSent, "{from:?}: {a:?}");
                assert!(!a.iter().any(|x| matches!(x, Action::SessionDown(_))));
            }
            // Idle: nothing to do.
            let mut f = Fsm::new(bfd_cfg());
            assert!(f.handle(Event::BfdDown).is_empty());
        }

        #[test]
        fn bfd_admin_down_keeps_the_session() {
            let mut f = established_with_bfd();
            assert!(f.handle(Event::BfdAdminDown).is_empty());
            assert_eq!(f.state(), State::Established);
            // A later loss of the session waits for BFD to be Up again.
            f.handle(Event::TcpConnectionFails);
            f.handle(Event::TimerExpired(Timer::IdleHold));
            assert_eq!(f.state(), State::Idle);
            f.handle(Event::BfdUp);
            assert_eq!(f.state(), State::Connect);
        }

        #[test]
        fn bfd_without_wait_starts_at_once_but_still_drops_on_failure() {
            let mut f = Fsm::new(FsmConfig {
                bfd_wait: false,
                ..bfd_cfg()
            });
            assert!(!f.held_by_bfd());
            assert!(f.handle(Event::ManualStart).contains(&Action::Connect));
            f.handle(Event::TcpConnectionConfirmed);
            f.handle(Event::OpenReceived(peer_open(65001, 9, [198, 18, 0, 2])));
            f.handle(Event::KeepaliveReceived);
            assert_eq!(f.state(), State::Established, "BFD never Up");
            f.handle(Event::BfdUp);
            let a = f.handle(Event::BfdDown);
            assert_eq!(f.state(), State::Idle);
            assert!(matches!(&a[0], Action::SendNotification(n) if n.subcode == 10));
            // Back after the ordinary back-off, BFD or not.
            f.handle(Event::TimerExpired(Timer::IdleHold));
            assert_eq!(f.state(), State::Connect);
        }

        #[test]
        fn bfd_events_are_ignored_without_bfd() {
            let mut f = established(false);
            for ev in [Event::BfdDown, Event::BfdAdminDown, Event::BfdUp] {
                assert!(f.handle(ev).is_empty());
                assert_eq!(f.state(), State::Established);
            }
            let mut f = Fsm::new(cfg(false));
            f.handle(Event::ManualStart);
            assert_eq!(f.state(), State::Connect, "no BFD, no wait");
        }

        #[test]
        fn hold_time_negotiation() {
            assert_eq!(negotiate_hold_time(90, 30), 30);
            assert_eq!(negotiate_hold_time(90, 0), 0);
            assert_eq!(negotiate_hold_time(3, 240), 3);
        }

        #[test]
        fn configured_keepalive_is_used_up_to_a_third_of_hold() {
            assert_eq!(keepalive_interval(None, 90), secs(30));
            assert_eq!(keepalive_interval(Some(secs(5)), 90), secs(5));
            assert_eq!(keepalive_interval(Some(secs(60)), 90), secs(30));
            assert_eq!(keepalive_interval(None, 3), secs(1));
            let mut c = cfg(false);
            c.keepalive = Some(secs(4));
            let mut f = Fsm::new(c);
            f.handle(Event::ManualStart);
            f.handle(Event::TcpConnectionConfirmed);
            let a = f.handle(Event::OpenReceived(peer_open(65001, 30, [198, 18, 0, 2])));
            assert!(a.contains(&Action::StartTimer(Timer::Keepalive, secs(4))));
            f.handle(Event::KeepaliveReceived);
            assert_eq!(f.state(), State::Established);
            let a = f.handle(Event::TimerExpired(Timer::Keepalive));
            assert_eq!(
                a,
                vec![
                    Action::SendKeepalive,
                    Action::StartTimer(Timer::Keepalive, secs(4))
                ]
            );
        }
    }
}

pub mod restart {
    //! Graceful restart helper timing (RFC 4724 section 4.2): how long a
    //! restarting peer's routes are kept as stale.

    use std::time::{Duration, Instant};

    /// Longest we keep a restarting peer's routes when nothing else is
    /// configured, whatever restart time the peer asks for (seconds; the
    /// graceful restart time BIRD and GoBGP default to).
    pub const DEFAULT_STALE_CAP_SECS: u16 = 120;

    /// When the stale routes of a peer whose session just went down (a
    /// restart) must go: after the restart time the peer asked for, capped
    /// locally at `cap_secs`. A restart before the previous one finished
    /// (stale routes still held, `previous` their deadline) never moves the
    /// deadline later, so a flapping peer cannot keep its routes forever.
    pub fn stale_deadline(
        now: Instant,
        previous: Option<Instant>,
        peer_restart_secs: u16,
        cap_secs: u16,
    ) -> Instant {
        let allowed = now + Duration::from_secs(u64::from(peer_restart_secs.min(cap_secs)));
        previous.map_or(allowed, |p| p.min(allowed))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn capped_and_never_extended_by_flaps() {
            let t0 = Instant::now();
            let s = Duration::from_secs;
            // The peer asks for 4095 s: capped.
            assert_eq!(stale_deadline(t0, None, 4095, 120), t0 + s(120));
            assert_eq!(stale_deadline(t0, None, 30, 120), t0 + s(30));
            // It flaps 100 s later, still stale: the first deadline holds.
            let d = stale_deadline(t0, None, 4095, 120);
            assert_eq!(stale_deadline(t0 + s(100), Some(d), 4095, 120), d);
            // A shorter new restart time brings it forward.
            assert_eq!(stale_deadline(t0 + s(100), Some(d), 5, 120), t0 + s(105));
        }
    }
}
