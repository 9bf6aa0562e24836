//! One BFD session's state machine (RFC 5880 section 6.8, asynchronous
//! mode), free of I/O and clocks: the caller passes the current time as a
//! value with every input (a received packet, a timer expiry, an operator
//! command, a configuration change) and gets back the packets to send and
//! the state changes to report. [`Session::next_timeout`] says when to call
//! [`Session::on_timeout`] next. Jitter comes from a generator seeded by the
//! caller, so a test with a fixed seed is exactly reproducible.
//!
//! Timer changes follow section 6.8.3: the advertised intervals change at
//! once inside a Poll Sequence, while the intervals in use change only
//! when that is safe (a slower transmit rate, or a shorter detection time,
//! waits for the Final). While not Up the session transmits at most once a
//! second ("slow start"); reaching Up is itself a change and starts a Poll.

use crate::auth::{AuthError, AuthKey, AuthState};
use crate::packet::{AuthType, ControlPacket, Diag, State};
use std::time::{Duration, Instant};

/// The slowest rate a session that is not Up advertises (section 6.8.3).
pub const SLOW_TX_US: u32 = 1_000_000;

/// What a session is configured with; intervals in microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// bfd.DesiredMinTxInterval while Up.
    pub desired_min_tx_us: u32,
    /// bfd.RequiredMinRxInterval.
    pub required_min_rx_us: u32,
    /// bfd.DetectMult.
    pub detect_mult: u8,
    /// Passive role (section 6.1): stay silent until the peer speaks.
    pub passive: bool,
    /// Authentication, if any.
    pub auth: Option<AuthKey>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            desired_min_tx_us: 300_000,
            required_min_rx_us: 300_000,
            detect_mult: 3,
            passive: false,
            auth: None,
        }
    }
}

/// Outputs, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this packet to the peer now.
    Transmit(ControlPacket),
    /// The session changed state; `diag` is the local diagnostic after it.
    StateChange {
        /// Before.
        old: State,
        /// After.
        new: State,
        /// bfd.LocalDiag after the change.
        diag: Diag,
        /// The peer's state as last heard (AdminDown means the peer was
        /// shut down on purpose, which RFC 5882 says is not a path failure).
        remote_state: State,
    },
}

/// Why a received packet was discarded by the session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Packet counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets accepted.
    pub rx: u64,
    /// Packets sent.
    pub tx: u64,
    /// Packets refused by authentication.
    pub rx_auth_errors: u64,
    /// Times the session reached Up.
    pub ups: u64,
    /// Times it left Up.
    pub downs: u64,
}

/// What the session last heard from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// bfd.RemoteDiscr (0 = unknown).
    pub discriminator: u32,
    /// bfd.RemoteSessionState.
    pub state: State,
    /// The peer's diagnostic.
    pub diag: Diag,
    /// bfd.RemoteMinRxInterval, microseconds.
    pub min_rx_us: u32,
    /// The peer's Desired Min TX Interval, microseconds.
    pub desired_tx_us: u32,
    /// The peer's Detect Mult (0 = nothing heard).
    pub detect_mult: u8,
    /// bfd.RemoteDemandMode.
    pub demand: bool,
}

impl Remote {
    fn initial() -> Remote {
        Remote {
            discriminator: 0,
            state: State::Down,
            diag: Diag::None,
            // Section 6.8.1: initialised to 1 (microsecond).
            min_rx_us: 1,
            desired_tx_us: 0,
            detect_mult: 0,
            demand: false,
        }
    }
}

/// A small, fast, seedable generator for jitter (splitmix64): jitter needs
/// spread, not secrecy.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 32) as u32
    }
}

fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// One session.
#[derive(Clone, Debug)]
pub struct Session {
    cfg: SessionConfig,
    local_discr: u32,
    state: State,
    local_diag: Diag,
    remote: Remote,
    /// bfd.DesiredMinTxInterval / bfd.RequiredMinRxInterval as advertised.
    adv_tx: u32,
    adv_rx: u32,
    /// The values in use for our transmit rate and the detection time; they
    /// lag the advertised ones while a Poll Sequence is in flight.
    oper_tx: u32,
    oper_rx: u32,
    polling: bool,
    /// Parameters changed again during a Poll: start another after the Final.
    repoll: bool,
    next_tx: Option<Instant>,
    last_tx: Option<Instant>,
    detect_at: Option<Instant>,
    last_rx: Option<Instant>,
    /// In AdminDown, when to stop sending.
    quiet_at: Option<Instant>,
    auth: Option<AuthState>,
    rng: Rng,
    counters: Counters,
}

impl Session {
    /// A session in state Down. `local_discr` must be non-zero and unique
    /// on this system; `seed` drives jitter and the first authentication
    /// sequence number. An active session sends its first packet at `now`.
    pub fn new(cfg: SessionConfig, local_discr: u32, seed: u64, now: Instant) -> Session {
        let mut rng = Rng(seed);
        let auth = cfg.auth.clone().map(|k| AuthState::new(k, rng.next_u32()));
        let tx = cfg.desired_min_tx_us.max(SLOW_TX_US);
        let rx = cfg.required_min_rx_us;
        Session {
            next_tx: (!cfg.passive).then_some(now),
            cfg,
            local_discr,
            state: State::Down,
            local_diag: Diag::None,
            remote: Remote::initial(),
            adv_tx: tx,
            adv_rx: rx,
            oper_tx: tx,
            oper_rx: rx,
            polling: false,
            repoll: false,
            last_tx: None,
            detect_at: None,
            last_rx: None,
            quiet_at: None,
            auth,
            rng,
            counters: Counters::default(),
        }
    }

    /// bfd.SessionState.
    pub fn state(&self) -> State {
        self.state
    }

    /// bfd.LocalDiag.
    pub fn local_diag(&self) -> Diag {
        self.local_diag
    }

    /// bfd.LocalDiscr.
    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    /// What was last heard from the peer.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// True while a Poll Sequence waits for its Final.
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// The advertised (Desired Min TX, Required Min RX), microseconds.
    pub fn advertised_us(&self) -> (u32, u32) {
        (self.adv_tx, self.adv_rx)
    }

    /// The negotiated transmit interval before jitter (section 6.8.7):
    /// the larger of our desired rate in use and the peer's required one.
    pub fn tx_interval_us(&self) -> u32 {
        self.oper_tx.max(self.remote.min_rx_us)
    }

    /// The detection time (section 6.8.4): the peer's Detect Mult times the
    /// larger of our required RX in use and the peer's desired TX; 0 until
    /// the peer was heard.
    pub fn detection_time_us(&self) -> u64 {
        u64::from(self.remote.detect_mult) * u64::from(self.oper_rx.max(self.remote.desired_tx_us))
    }

    /// When [`Session::on_timeout`] must be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once an AdminDown session has told the peer long enough and
    /// went quiet: a removed session can be dropped then.
    pub fn is_quiet(&self) -> bool {
        self.state == State::AdminDown && self.next_tx.is_none()
    }

    fn target_tx(&self) -> u32 {
        if self.state == State::Up {
            self.cfg.desired_min_tx_us
        } else {
            self.cfg.desired_min_tx_us.max(SLOW_TX_US)
        }
    }

    fn jittered(&mut self, base_us: u32) -> Duration {
        // Section 6.8.7: 0-25% shorter, and at most 90% with Detect Mult 1.
        let span = if self.cfg.detect_mult == 1 { 151 } else { 251 };
        let permille = 750 + u64::from(self.rng.next_u32() % span);
        us(u64::from(base_us) * permille / 1000)
    }

    fn can_transmit(&self, now: Instant) -> bool {
        if self.remote.min_rx_us == 0 {
            return false;
        }
        if self.cfg.passive && self.remote.discriminator == 0 {
            return false;
        }
        if self.remote.demand && self.state == State::Up && self.remote.state == State::Up {
            return false;
        }
        !matches!(self.quiet_at, Some(q) if now >= q)
    }

    fn packet(&mut self, poll: bool, final_: bool) -> ControlPacket {
        let mut p = ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll,
            final_,
            control_plane_independent: false,
            demand: false,
            multipoint: false,
            detect_mult: self.cfg.detect_mult,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote.discriminator,
            desired_min_tx: self.adv_tx,
            required_min_rx: self.adv_rx,
            required_min_echo_rx: 0,
            auth: None,
        };
        if let Some(a) = &mut self.auth {
            a.sign(&mut p);
        }
        self.counters.tx += 1;
        p
    }

    /// Sends a periodic-style packet now and restarts the transmit timer.
    fn send_now(&mut self, now: Instant, out: &mut Vec<Action>) {
        let p = self.packet(self.polling, false);
        out.push(Action::Transmit(p));
        self.last_tx = Some(now);
        let d = self.jittered(self.tx_interval_us());
        self.next_tx = Some(now + d);
    }

    /// After the transmit interval changed: the next packet follows the
    /// last one by the new interval (never earlier than now).
    fn retime_tx(&mut self, now: Instant, before_us: u32) {
        if self.tx_interval_us() == before_us {
            return;
        }
        if let (Some(_), Some(last)) = (self.next_tx, self.last_tx) {
            let d = self.jittered(self.tx_interval_us());
            self.next_tx = Some((last + d).max(now));
        }
    }

    fn retime_detect(&mut self) {
        self.detect_at = match self.last_rx {
            Some(t) if self.state != State::AdminDown && self.remote.detect_mult > 0 => {
                Some(t + us(self.detection_time_us()))
            }
            _ => None,
        };
    }

    fn set_state(&mut self, new: State, diag: Diag, out: &mut Vec<Action>) {
        let old = self.state;
        self.state = new;
        self.local_diag = diag;
        if new == State::Up {
            self.counters.ups += 1;
        } else if old == State::Up {
            self.counters.downs += 1;
        }
        out.push(Action::StateChange {
            old,
            new,
            diag,
            remote_state: self.remote.state,
        });
    }

    /// Starts a Poll Sequence if what we should advertise differs from what
    /// we do (section 6.8.3), or queues one behind the Poll in flight.
    fn params_changed(&mut self, now: Instant) -> bool {
        let (tx, rx) = (self.target_tx(), self.cfg.required_min_rx_us);
        if (tx, rx) == (self.adv_tx, self.adv_rx) || self.state == State::AdminDown {
            return false;
        }
        if self.polling {
            self.repoll = true;
            return false;
        }
        let before = self.tx_interval_us();
        if self.state == State::Up {
            // Faster sending and a longer detection time are safe at once;
            // the opposite waits for the peer's Final.
            self.oper_tx = self.oper_tx.min(tx);
            self.oper_rx = self.oper_rx.max(rx);
        } else {
            self.oper_tx = tx;
            self.oper_rx = rx;
        }
        self.adv_tx = tx;
        self.adv_rx = rx;
        self.polling = true;
        self.retime_tx(now, before);
        self.retime_detect();
        true
    }

    fn end_poll(&mut self, now: Instant) -> bool {
        let before = self.tx_interval_us();
        self.polling = false;
        self.oper_tx = self.adv_tx;
        self.oper_rx = self.adv_rx;
        self.retime_tx(now, before);
        self.retime_detect();
        if std::mem::take(&mut self.repoll) {
            return self.params_changed(now);
        }
        false
    }

    /// A decoded packet demultiplexed to this session; `raw` is its
    /// encoding (Length bytes), needed to check a digest.
    pub fn on_packet(
        &mut self,
        now: Instant,
        pkt: &ControlPacket,
        raw: &[u8],
    ) -> Result<Vec<Action>, RxError> {
        let detection = us(self.detection_time_us());
        match (&mut self.auth, &pkt.auth) {
            (None, None) => {}
            (None, Some(a)) => {
                self.counters.rx_auth_errors += 1;
                return Err(AuthError::Unexpected(a.auth_type()).into());
            }
            (Some(st), _) => {
                if matches!(self.last_rx, Some(t) if now.duration_since(t) >= 2 * detection) {
                    st.forget_peer_seq();
                }
                if let Err(e) = st.check(pkt, raw) {
                    self.counters.rx_auth_errors += 1;
                    return Err(e.into());
                }
            }
        }
        self.counters.rx += 1;
        let mut out = Vec::new();
        let before = self.tx_interval_us();
        self.remote = Remote {
            discriminator: pkt.my_discriminator,
            state: pkt.state,
            diag: pkt.diag,
            min_rx_us: pkt.required_min_rx,
            desired_tx_us: pkt.desired_min_tx,
            detect_mult: pkt.detect_mult,
            demand: pkt.demand,
        };
        if self.next_tx.is_none() && self.state != State::AdminDown {
            // A passive session starts sending once it heard the peer.
            self.next_tx = Some(now);
        }
        self.retime_tx(now, before);
        let mut poll_started = false;
        if pkt.final_ && self.polling {
            poll_started = self.end_poll(now);
        }
        if self.state == State::AdminDown {
            return Ok(out);
        }
        self.last_rx = Some(now);
        let new = match (self.state, pkt.state) {
            (s, State::AdminDown) if s != State::Down => {
                Some((State::Down, Diag::NeighborSignaledSessionDown))
            }
            (State::Down, State::Down) => Some((State::Init, self.local_diag)),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                Some((State::Up, Diag::None))
            }
            (State::Up, State::Down) => Some((State::Down, Diag::NeighborSignaledSessionDown)),
            _ => None,
        };
        let changed = new.is_some();
        if let Some((state, diag)) = new {
            self.set_state(state, diag, &mut out);
            poll_started |= self.params_changed(now);
        }
        self.retime_detect();
        if pkt.poll {
            // Section 6.8.6: answer at once, whatever the timers say.
            let p = self.packet(false, true);
            out.push(Action::Transmit(p));
        }
        if (changed || poll_started) && self.can_transmit(now) {
            self.send_now(now, &mut out);
        }
        Ok(out)
    }

    /// Runs the timers due at `now`: the detection time and the transmit
    /// interval.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.detect_at, Some(t) if now >= t) {
            self.detect_at = None;
            let before = self.tx_interval_us();
            let was = self.state;
            self.remote = Remote::initial();
            if matches!(was, State::Init | State::Up) {
                self.set_state(State::Down, Diag::ControlDetectionTimeExpired, &mut out);
                self.params_changed(now);
            }
            self.retime_tx(now, before);
            if self.cfg.passive {
                self.next_tx = None;
            } else if was != self.state && self.can_transmit(now) {
                self.send_now(now, &mut out);
            }
        }
        if matches!(self.next_tx, Some(t) if now >= t) {
            if self.can_transmit(now) {
                self.send_now(now, &mut out);
            } else if self.state == State::AdminDown {
                self.next_tx = None;
            } else {
                let d = self.jittered(self.tx_interval_us());
                self.next_tx = Some(now + d);
            }
        }
        out
    }

    /// Takes the session administratively down (section 6.8.16): the peer
    /// is told with AdminDown packets for a while, then the session goes
    /// quiet.
    pub fn admin_down(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::AdminDown {
            return out;
        }
        // Keep telling the peer for longer than it could take to notice.
        let linger = u64::from(self.cfg.detect_mult.max(1))
            * u64::from(self.tx_interval_us().max(SLOW_TX_US));
        self.set_state(State::AdminDown, Diag::AdministrativelyDown, &mut out);
        self.polling = false;
        self.repoll = false;
        let before = self.tx_interval_us();
        self.adv_tx = self.target_tx();
        self.oper_tx = self.adv_tx;
        self.retime_tx(now, before);
        self.detect_at = None;
        self.quiet_at = Some(now + us(linger));
        self.send_now(now, &mut out);
        out
    }

    /// Leaves AdminDown for Down.
    pub fn admin_up(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != State::AdminDown {
            return out;
        }
        self.set_state(State::Down, Diag::None, &mut out);
        self.quiet_at = None;
        self.last_rx = None;
        self.params_changed(now);
        if !self.cfg.passive || self.remote.discriminator != 0 {
            self.send_now(now, &mut out);
        }
        out
    }

    /// Applies a new configuration. Interval changes run a Poll Sequence;
    /// a new authentication key starts from a fresh sequence number.
    pub fn set_config(&mut self, now: Instant, cfg: SessionConfig) -> Vec<Action> {
        let mut out = Vec::new();
        if cfg.auth != self.cfg.auth {
            self.auth = cfg
                .auth
                .clone()
                .map(|k| AuthState::new(k, self.rng.next_u32()));
        }
        let was_passive = self.cfg.passive;
        self.cfg = cfg;
        if was_passive
            && !self.cfg.passive
            && self.next_tx.is_none()
            && self.state != State::AdminDown
        {
            self.next_tx = Some(now);
        }
        if self.params_changed(now) && self.can_transmit(now) {
            self.send_now(now, &mut out);
        }
        out
    }

    /// The authentication type in use.
    pub fn auth_type(&self) -> Option<AuthType> {
        self.cfg.auth.as_ref().map(|k| k.auth_type)
    }
}
