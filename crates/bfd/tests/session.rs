//! The session state machine against RFC 5880 section 6.8: every arc of
//! the state diagram, the detection timer, timer negotiation, slow start,
//! Poll/Final sequences, jitter bounds, the passive role, authentication
//! with packets captured from BIRD, and two sessions talking over a
//! simulated link with a virtual clock (come up, link cut, recovery).

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tabby_bfd::auth::AuthKey;
use tabby_bfd::packet::{AuthType, ControlPacket, Diag, State};
use tabby_bfd::session::{Action, Session, SessionConfig};

const ME: u32 = 0x1111;
const PEER: u32 = 0x2222;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn cfg(tx_ms: u32, rx_ms: u32, mult: u8) -> SessionConfig {
    SessionConfig {
        desired_min_tx_us: tx_ms * 1000,
        required_min_rx_us: rx_ms * 1000,
        detect_mult: mult,
        passive: false,
        auth: None,
    }
}

fn from_peer(state: State, tx_ms: u32, rx_ms: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        multipoint: false,
        detect_mult: 3,
        my_discriminator: PEER,
        your_discriminator: if matches!(state, State::Down | State::AdminDown) {
            0
        } else {
            ME
        },
        desired_min_tx: tx_ms * 1000,
        required_min_rx: rx_ms * 1000,
        required_min_echo_rx: 0,
        auth: None,
    }
}

fn recv(s: &mut Session, now: Instant, p: &ControlPacket) -> Vec<Action> {
    s.on_packet(now, p, &p.encode()).expect("accepted")
}

fn sent(actions: &[Action]) -> Vec<&ControlPacket> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transmit(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn changes(actions: &[Action]) -> Vec<(State, State, Diag)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StateChange { old, new, diag, .. } => Some((*old, *new, *diag)),
            _ => None,
        })
        .collect()
}

/// A session brought into `state` at `t0` by the shortest route.
fn in_state(state: State, t0: Instant) -> Session {
    let mut s = Session::new(cfg(300, 300, 3), ME, 7, t0);
    match state {
        State::Down => {}
        State::Init => {
            recv(&mut s, t0, &from_peer(State::Down, 1000, 300));
        }
        State::Up => {
            recv(&mut s, t0, &from_peer(State::Init, 1000, 300));
        }
        State::AdminDown => {
            s.admin_down(t0);
        }
    }
    assert_eq!(s.state(), state);
    s
}

#[test]
fn every_arc_of_the_state_diagram() {
    use State::*;
    let n = Diag::NeighborSignaledSessionDown;
    // (local, received, new local state, new diag if it changed)
    let table = [
        (Down, AdminDown, Down, None),
        (Down, Down, Init, Some(Diag::None)),
        (Down, Init, Up, Some(Diag::None)),
        (Down, Up, Down, None),
        (Init, AdminDown, Down, Some(n)),
        (Init, Down, Init, None),
        (Init, Init, Up, Some(Diag::None)),
        (Init, Up, Up, Some(Diag::None)),
        (Up, AdminDown, Down, Some(n)),
        (Up, Down, Down, Some(n)),
        (Up, Init, Up, None),
        (Up, Up, Up, None),
        (AdminDown, AdminDown, AdminDown, None),
        (AdminDown, Down, AdminDown, None),
        (AdminDown, Init, AdminDown, None),
        (AdminDown, Up, AdminDown, None),
    ];
    for (local, received, want, diag) in table {
        let t0 = Instant::now();
        let mut s = in_state(local, t0);
        let mut p = from_peer(received, 1000, 300);
        // A peer that already knows us says so, whatever its state.
        p.your_discriminator = ME;
        let out = recv(&mut s, t0 + ms(10), &p);
        assert_eq!(s.state(), want, "{local} + {received}");
        match diag {
            Some(d) => {
                assert_eq!(changes(&out), [(local, want, d)], "{local} + {received}");
                assert_eq!(s.local_diag(), d);
                // A state change is told to the peer at once.
                assert_eq!(sent(&out).last().unwrap().state, want);
            }
            None => assert!(changes(&out).is_empty(), "{local} + {received}: {out:?}"),
        }
    }
}

#[test]
fn admin_down_from_every_state_and_back() {
    for st in [State::Down, State::Init, State::Up] {
        let t0 = Instant::now();
        let mut s = in_state(st, t0);
        let out = s.admin_down(t0 + ms(5));
        assert_eq!(
            changes(&out),
            [(st, State::AdminDown, Diag::AdministrativelyDown)]
        );
        let p = sent(&out)[0];
        assert_eq!(
            (p.state, p.diag),
            (State::AdminDown, Diag::AdministrativelyDown)
        );
        assert_eq!(s.next_timeout().map(|t| t > t0), Some(true));
        // It keeps telling the peer for Detect Mult seconds, then goes quiet.
        let mut t = t0 + ms(5);
        let mut packets = 0;
        while let Some(next) = s.next_timeout() {
            t = next;
            packets += sent(&s.on_timeout(t)).len();
            assert!(t < t0 + ms(5000), "AdminDown never went quiet");
        }
        assert!(s.is_quiet());
        assert!((2..=4).contains(&packets), "{packets} AdminDown packets");
        let out = s.admin_up(t + ms(1));
        assert_eq!(changes(&out), [(State::AdminDown, State::Down, Diag::None)]);
        assert_eq!(sent(&out)[0].state, State::Down);
    }
}

#[test]
fn detection_time_expiry() {
    let t0 = Instant::now();
    for st in [State::Init, State::Up] {
        let mut s = in_state(st, t0);
        // The peer sends every 1 s (its slow start) with Detect Mult 3, and
        // we require 300 ms: detection time is 3 x max(300 ms, 1 s).
        assert_eq!(s.detection_time_us(), 3_000_000);
        let mut t = t0;
        let mut expired_at = None;
        while let Some(next) = s.next_timeout() {
            assert!(
                next <= t0 + ms(3000),
                "nothing due after the detection time"
            );
            t = next;
            let out = s.on_timeout(t);
            if !changes(&out).is_empty() {
                assert_eq!(
                    changes(&out),
                    [(st, State::Down, Diag::ControlDetectionTimeExpired)]
                );
                // The peer is forgotten, and told at once.
                assert_eq!(s.remote().discriminator, 0);
                let p = sent(&out)[0];
                assert_eq!((p.state, p.your_discriminator), (State::Down, 0));
                expired_at = Some(t);
                break;
            }
        }
        assert_eq!(expired_at, Some(t0 + ms(3000)), "{st}");
        let _ = t;
    }
    // In Down, expiry only forgets the peer.
    let mut s = in_state(State::Down, t0);
    recv(&mut s, t0, &from_peer(State::Up, 1000, 300));
    assert_eq!(s.remote().discriminator, PEER);
    let mut t = t0;
    while s.remote().discriminator != 0 {
        t = s.next_timeout().unwrap();
        assert!(changes(&s.on_timeout(t)).is_empty());
    }
    assert_eq!(t, t0 + ms(3000));
}

#[test]
fn slow_start_then_negotiated_timers_through_a_poll() {
    let t0 = Instant::now();
    let mut s = Session::new(cfg(300, 300, 3), ME, 1, t0);
    let first = s.on_timeout(t0);
    let p = sent(&first)[0];
    // Not Up: at most one packet a second is advertised and used.
    assert_eq!(
        (p.state, p.desired_min_tx, p.required_min_rx),
        (State::Down, 1_000_000, 300_000)
    );
    assert_eq!(p.your_discriminator, 0);
    assert_eq!(s.tx_interval_us(), 1_000_000);
    let next = s.next_timeout().unwrap();
    assert!(
        next >= t0 + ms(750) && next <= t0 + ms(1000),
        "{:?}",
        next - t0
    );

    // The peer (Init, wants 200 ms both ways) brings us Up; reaching Up
    // changes our Desired Min TX, so a Poll starts in the same packet.
    let out = recv(&mut s, t0 + ms(100), &from_peer(State::Init, 200, 200));
    assert_eq!(changes(&out), [(State::Down, State::Up, Diag::None)]);
    let p = sent(&out)[0];
    assert!(p.poll && !p.final_);
    assert_eq!(
        (p.state, p.desired_min_tx, p.required_min_rx),
        (State::Up, 300_000, 300_000)
    );
    assert!(s.polling());
    // Sending faster is safe at once: 300 ms (ours, the larger of 300/200).
    assert_eq!(s.tx_interval_us(), 300_000);
    // Detection: the peer's Detect Mult x max(our 300 ms, its 200 ms).
    assert_eq!(s.detection_time_us(), 900_000);
    // Periodic packets carry the Poll until the Final comes.
    let t = s.next_timeout().unwrap();
    assert!(t <= t0 + ms(400));
    assert!(sent(&s.on_timeout(t)).iter().all(|p| p.poll));
    let mut fin = from_peer(State::Up, 200, 200);
    fin.final_ = true;
    let out = recv(&mut s, t + ms(1), &fin);
    assert!(sent(&out).is_empty());
    assert!(!s.polling());
    let t = s.next_timeout().unwrap();
    assert!(sent(&s.on_timeout(t)).iter().all(|p| !p.poll));

    // The peer now wants to receive no faster than 500 ms: we follow.
    recv(&mut s, t + ms(2), &from_peer(State::Up, 200, 500));
    assert_eq!(s.tx_interval_us(), 500_000);
}

#[test]
fn slower_tx_waits_for_the_final_and_shorter_detection_too() {
    let t0 = Instant::now();
    let mut s = in_state(State::Up, t0);
    let mut fin = from_peer(State::Up, 300, 300);
    fin.final_ = true;
    recv(&mut s, t0 + ms(1), &fin);
    assert!(!s.polling());
    assert_eq!(
        (s.tx_interval_us(), s.detection_time_us()),
        (300_000, 900_000)
    );

    // Slower transmission: advertised at once, used only after the Final.
    let out = s.set_config(t0 + ms(10), cfg(1000, 300, 3));
    let p = sent(&out)[0];
    assert!(p.poll);
    assert_eq!(p.desired_min_tx, 1_000_000);
    assert_eq!(s.tx_interval_us(), 300_000);
    recv(&mut s, t0 + ms(20), &fin);
    assert_eq!(s.tx_interval_us(), 1_000_000);

    // Faster reception (shorter detection): old value until the Final.
    let out = s.set_config(t0 + ms(30), cfg(1000, 100, 3));
    assert_eq!(sent(&out)[0].required_min_rx, 100_000);
    let mut p = from_peer(State::Up, 100, 300);
    recv(&mut s, t0 + ms(40), &p);
    assert_eq!(s.detection_time_us(), 900_000, "before the Final");
    p.final_ = true;
    recv(&mut s, t0 + ms(50), &p);
    assert_eq!(s.detection_time_us(), 300_000, "after the Final");

    // A change during a Poll waits for it, then polls again.
    s.set_config(t0 + ms(60), cfg(200, 100, 3));
    assert!(s.polling());
    s.set_config(t0 + ms(61), cfg(200, 400, 3));
    assert_eq!(
        s.advertised_us(),
        (200_000, 100_000),
        "no second Poll in flight"
    );
    let out = recv(&mut s, t0 + ms(70), &p);
    assert!(s.polling(), "the queued change starts a new Poll");
    assert_eq!(s.advertised_us(), (200_000, 400_000));
    assert!(
        sent(&out)
            .iter()
            .any(|p| p.poll && p.required_min_rx == 400_000)
    );
}

#[test]
fn a_poll_is_answered_with_a_final_at_once() {
    let t0 = Instant::now();
    let mut s = in_state(State::Up, t0);
    let mut p = from_peer(State::Up, 300, 300);
    p.poll = true;
    let out = recv(&mut s, t0 + ms(3), &p);
    let f = sent(&out);
    assert_eq!(f.len(), 1);
    assert!(f[0].final_ && !f[0].poll);
    // Also in Down and Init, but not in AdminDown (the packet is discarded).
    for st in [State::Down, State::Init] {
        let mut s = in_state(st, t0);
        let mut p = from_peer(State::Up, 1000, 300);
        p.your_discriminator = ME;
        p.poll = true;
        assert!(sent(&recv(&mut s, t0, &p)).iter().any(|p| p.final_));
    }
    let mut s = in_state(State::AdminDown, t0);
    assert!(sent(&recv(&mut s, t0, &p)).is_empty());
}

#[test]
fn jitter_stays_within_section_6_8_7() {
    for (mult, lo, hi) in [(3u8, 750u64, 1000u64), (1, 750, 900)] {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(1000, 1000, mult), ME, 42, t0);
        let mut twin = Session::new(cfg(1000, 1000, mult), ME, 42, t0);
        let mut t = t0;
        let mut seen = (u64::MAX, 0u64);
        for _ in 0..500 {
            s.on_timeout(t);
            twin.on_timeout(t);
            let next = s.next_timeout().unwrap();
            assert_eq!(Some(next), twin.next_timeout(), "same seed, same jitter");
            let d = (next - t).as_millis() as u64;
            seen = (seen.0.min(d), seen.1.max(d));
            t = next;
        }
        assert!(seen.0 >= lo && seen.1 <= hi, "mult {mult}: {seen:?}");
        assert!(
            seen.0 < lo + 20 && seen.1 > hi - 20,
            "mult {mult}: spread {seen:?}"
        );
    }
}

#[test]
fn passive_role_and_zero_required_rx() {
    let t0 = Instant::now();
    let mut c = cfg(300, 300, 3);
    c.passive = true;
    let mut s = Session::new(c, ME, 3, t0);
    assert_eq!(s.next_timeout(), None, "silent until the peer speaks");
    let out = recv(&mut s, t0 + ms(5), &from_peer(State::Down, 1000, 300));
    assert_eq!(sent(&out)[0].state, State::Init);
    assert!(s.next_timeout().is_some());

    // A peer that requires 0 µs gets no periodic packets.
    let mut s = in_state(State::Init, t0);
    let mut p = from_peer(State::Init, 1000, 0);
    p.required_min_rx = 0;
    let out = recv(&mut s, t0 + ms(1), &p);
    assert_eq!(s.state(), State::Up);
    assert!(sent(&out).is_empty(), "{out:?}");
    let t = s.next_timeout().unwrap();
    let mut any = false;
    let mut now = t;
    while now < t0 + ms(2000) {
        any |= !sent(&s.on_timeout(now)).is_empty();
        now = s.next_timeout().unwrap();
    }
    assert!(!any);
}

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn keyed_sha1_from_bird_is_accepted_with_the_right_key_only() {
    let key = |k: &[u8], t: AuthType| SessionConfig {
        auth: Some(AuthKey {
            auth_type: t,
            key_id: 7,
            key: k.to_vec(),
        }),
        ..cfg(300, 300, 3)
    };
    let t0 = Instant::now();
    for (file, t) in [
        ("bird_sha1_down_timeout.bin", AuthType::KeyedSha1),
        ("bird_msha1_down.bin", AuthType::MeticulousKeyedSha1),
    ] {
        let raw = golden(file);
        let p = ControlPacket::decode(&raw).unwrap();
        let mut s = Session::new(key(b"tabby-secret", t), ME, 1, t0);
        let out = s.on_packet(t0, &p, &raw).expect(file);
        assert_eq!(changes(&out)[0].1, State::Init);
        // What we send back is signed the same way.
        let reply = sent(&out)[0];
        assert_eq!(reply.auth.as_ref().unwrap().auth_type(), t);
        let mut wrong = Session::new(key(b"not-the-secret", t), ME, 1, t0);
        assert!(wrong.on_packet(t0, &p, &raw).is_err());
        assert_eq!(wrong.counters().rx_auth_errors, 1);
        let mut plain = Session::new(cfg(300, 300, 3), ME, 1, t0);
        assert!(plain.on_packet(t0, &p, &raw).is_err());
    }
}

/// Two sessions joined by a simulated link with 1 ms of latency, run on a
/// virtual clock through the real codec.
struct Sim {
    a: Session,
    b: Session,
    t: Instant,
    /// (delivery time, to_b, bytes)
    wire: VecDeque<(Instant, bool, Vec<u8>)>,
    cut: bool,
    log: Vec<(Instant, bool, State, State)>,
}

impl Sim {
    fn new(ca: SessionConfig, cb: SessionConfig) -> Sim {
        let t = Instant::now();
        Sim {
            a: Session::new(ca, 0xa, 11, t),
            b: Session::new(cb, 0xb, 22, t + ms(137)),
            t,
            wire: VecDeque::new(),
            cut: false,
            log: Vec::new(),
        }
    }

    fn handle(&mut self, from_a: bool, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Transmit(p) => {
                    if !self.cut {
                        self.wire.push_back((self.t + ms(1), from_a, p.encode()));
                    }
                }
                Action::StateChange { old, new, .. } => self.log.push((self.t, from_a, old, new)),
            }
        }
    }

    /// Runs until `until`.
    fn run(&mut self, until: Instant) {
        loop {
            let next = [
                self.a.next_timeout(),
                self.b.next_timeout(),
                self.wire.front().map(|w| w.0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|n| *n <= until) else {
                self.t = until;
                return;
            };
            self.t = next;
            if let Some(&(at, to_b, _)) = self.wire.front()
                && at <= next
            {
                let (_, _, bytes) = self.wire.pop_front().unwrap();
                let p = ControlPacket::decode(&bytes).expect("our own packets decode");
                let s = if to_b { &mut self.b } else { &mut self.a };
                let out = s.on_packet(next, &p, &bytes).expect("accepted");
                self.handle(!to_b, out);
                continue;
            }
            if self.a.next_timeout().is_some_and(|t| t <= next) {
                let out = self.a.on_timeout(next);
                self.handle(true, out);
            }
            if self.b.next_timeout().is_some_and(|t| t <= next) {
                let out = self.b.on_timeout(next);
                self.handle(false, out);
            }
        }
    }
}

#[test]
fn two_sessions_come_up_detect_a_cut_and_recover() {
    for auth in [
        None,
        Some(AuthType::KeyedSha1),
        Some(AuthType::MeticulousKeyedSha1),
    ] {
        let with = |mut c: SessionConfig| {
            c.auth = auth.map(|t| AuthKey {
                auth_type: t,
                key_id: 1,
                key: b"k".to_vec(),
            });
            c
        };
        let mut sim = Sim::new(with(cfg(300, 300, 3)), with(cfg(200, 200, 3)));
        let t0 = sim.t;
        sim.run(t0 + ms(3000));
        assert_eq!(
            (sim.a.state(), sim.b.state()),
            (State::Up, State::Up),
            "{auth:?}"
        );
        assert!(!sim.a.polling() && !sim.b.polling(), "polls completed");
        // Negotiated: both send every 300 ms (the larger of 300 and 200).
        assert_eq!(
            (sim.a.tx_interval_us(), sim.b.tx_interval_us()),
            (300_000, 300_000)
        );
        assert_eq!(
            (sim.a.detection_time_us(), sim.b.detection_time_us()),
            (900_000, 900_000)
        );
        let up_by = sim
            .log
            .iter()
            .filter(|l| l.3 == State::Up)
            .map(|l| l.0)
            .max()
            .unwrap();
        assert!(up_by - t0 < ms(1500), "up after {:?}", up_by - t0);

        // Cut the link: both detect it within the detection time.
        let cut = t0 + ms(5000);
        sim.run(cut);
        sim.cut = true;
        sim.wire.clear();
        sim.run(cut + ms(2000));
        for side in [true, false] {
            let down = sim
                .log
                .iter()
                .find(|l| l.1 == side && l.0 > cut && l.3 == State::Down)
                .map(|l| l.0 - cut)
                .expect("detected");
            // The last packet came at most one interval before the cut.
            assert!(down > ms(900 - 300) && down <= ms(900), "{side}: {down:?}");
        }
        assert_eq!(sim.a.local_diag(), Diag::ControlDetectionTimeExpired);

        // Repair: back Up, at the negotiated rate again.
        sim.cut = false;
        sim.run(cut + ms(6000));
        assert_eq!((sim.a.state(), sim.b.state()), (State::Up, State::Up));
        assert_eq!(sim.a.tx_interval_us(), 300_000);
        assert_eq!(sim.a.counters().downs, 1);
    }
}
