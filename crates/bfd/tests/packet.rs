//! The codec, byte-exact both ways against packets captured from BIRD 2.0.12
//! and FRR 8.4.4 (see `golden/README.md`), plus properties: decoding never
//! panics, and every valid packet survives encode then decode unchanged.

use proptest::prelude::*;
use tabby_bfd::auth::sha1_digest;
use tabby_bfd::packet::{Auth, ControlPacket, DecodeError, Diag, State};

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn plain(state: State, my: u32, your: u32, tx: u32, rx: u32, echo: u32) -> ControlPacket {
    ControlPacket {
        diag: Diag::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        multipoint: false,
        detect_mult: 3,
        my_discriminator: my,
        your_discriminator: your,
        desired_min_tx: tx,
        required_min_rx: rx,
        required_min_echo_rx: echo,
        auth: None,
    }
}

/// Decodes to `want` and encodes back to the same bytes.
fn both_ways(name: &str, want: &ControlPacket) {
    let bytes = golden(name);
    let got = ControlPacket::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(&got, want, "{name}");
    assert_eq!(got.encode(), bytes, "{name} re-encoded");
    assert_eq!(want.wire_len(), bytes.len());
}

const BIRD: u32 = 0x46afca6a;
const FRR: u32 = 0xffd3844d;

#[test]
fn bird_and_frr_without_authentication() {
    // BIRD's first packet: Down, not knowing FRR, 1 s slow start, wants 200 ms.
    both_ways(
        "bird_down.bin",
        &plain(State::Down, BIRD, 0, 1_000_000, 200_000, 0),
    );
    // FRR answers Init; it advertises Echo RX 50 ms.
    both_ways(
        "frr_init.bin",
        &plain(State::Init, FRR, BIRD, 1_000_000, 1_000_000, 50_000),
    );
    // BIRD goes Up and polls for its faster timers; FRR sends the Final.
    let mut p = plain(State::Up, BIRD, FRR, 200_000, 200_000, 0);
    p.poll = true;
    both_ways("bird_up_poll.bin", &p);
    let mut f = plain(State::Up, FRR, BIRD, 300_000, 300_000, 50_000);
    f.final_ = true;
    both_ways("frr_up_final.bin", &f);
    both_ways(
        "bird_up.bin",
        &plain(State::Up, BIRD, FRR, 200_000, 200_000, 0),
    );
    both_ways(
        "frr_up.bin",
        &plain(State::Up, FRR, BIRD, 300_000, 300_000, 50_000),
    );
    // FRR after BIRD went silent: Down, diag 1, peer forgotten.
    let mut d = plain(State::Down, FRR, 0, 400_000, 500_000, 50_000);
    d.diag = Diag::ControlDetectionTimeExpired;
    both_ways("frr_down_timeout.bin", &d);
    // FRR shut down by the operator (diag stays 0 in FRR 8.4) and its Final
    // to BIRD's Poll; BIRD goes Down with diag 3 and polls for 1 s.
    let bird2 = 0x08eeddf9;
    both_ways(
        "frr_admin_down.bin",
        &plain(State::AdminDown, FRR, bird2, 400_000, 500_000, 50_000),
    );
    let mut af = plain(State::AdminDown, FRR, bird2, 400_000, 500_000, 50_000);
    af.final_ = true;
    both_ways("frr_admin_down_final.bin", &af);
    let mut bd = plain(State::Down, bird2, FRR, 1_000_000, 200_000, 0);
    bd.diag = Diag::NeighborSignaledSessionDown;
    bd.poll = true;
    both_ways("bird_down_neighbor_poll.bin", &bd);
}

#[test]
fn bird_keyed_sha1() {
    let cases = [
        ("bird_sha1_up_poll.bin", false, 7, 0xa88000a1, State::Up),
        (
            "bird_sha1_down_timeout.bin",
            false,
            7,
            0xa88000a2,
            State::Down,
        ),
        ("bird_sha1_up.bin", false, 7, 0xa88000a8, State::Up),
        ("bird_msha1_down.bin", true, 7, 0x55fe9bba, State::Down),
    ];
    for (name, met, id, sequence, state) in cases {
        let bytes = golden(name);
        let p = ControlPacket::decode(&bytes).unwrap();
        assert_eq!(p.state, state, "{name}");
        let Some(Auth::Sha1 {
            meticulous,
            key_id,
            seq,
            hash,
        }) = &p.auth
        else {
            panic!("{name}: {:?}", p.auth)
        };
        assert_eq!((*meticulous, *key_id, *seq), (met, id, sequence), "{name}");
        assert_eq!(p.encode(), bytes, "{name} re-encoded");
        // BIRD's hash is SHA-1 over the packet with the key in the hash field.
        assert_eq!(&sha1_digest(&bytes, b"tabby-secret"), hash, "{name}");
        assert_ne!(&sha1_digest(&bytes, b"tabby-secreT"), hash, "{name}");
    }
}

#[test]
fn corrupt_golden_packets_are_refused_with_reasons() {
    let mut b = golden("frr_up.bin");
    b[8..12].fill(0);
    assert_eq!(
        ControlPacket::decode(&b),
        Err(DecodeError::ZeroYourDiscriminator(State::Up))
    );
    let mut b = golden("bird_sha1_up.bin");
    b[3] = 60;
    assert!(matches!(
        ControlPacket::decode(&b),
        Err(DecodeError::LengthTooLarge { length: 60, .. })
    ));
    let b = golden("bird_sha1_up.bin");
    assert!(matches!(
        ControlPacket::decode(&b[..40]),
        Err(DecodeError::LengthTooLarge { .. })
    ));
}

fn state() -> impl Strategy<Value = State> {
    prop_oneof![
        Just(State::AdminDown),
        Just(State::Down),
        Just(State::Init),
        Just(State::Up)
    ]
}

fn auth() -> impl Strategy<Value = Option<Auth>> {
    prop_oneof![
        Just(None),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 1..=16))
            .prop_map(|(key_id, password)| Some(Auth::SimplePassword { key_id, password })),
        (any::<bool>(), any::<u8>(), any::<u32>(), any::<[u8; 16]>()).prop_map(
            |(meticulous, key_id, seq, digest)| Some(Auth::Md5 {
                meticulous,
                key_id,
                seq,
                digest
            })
        ),
        (any::<bool>(), any::<u8>(), any::<u32>(), any::<[u8; 20]>()).prop_map(
            |(meticulous, key_id, seq, hash)| Some(Auth::Sha1 {
                meticulous,
                key_id,
                seq,
                hash
            })
        ),
    ]
}

prop_compose! {
    fn valid_packet()(
        diag in 0u8..32,
        state in state(),
        pf in 0u8..3,
        cpi: bool,
        demand: bool,
        detect_mult in 1u8..,
        my in 1u32..,
        your: u32,
        tx: u32, rx: u32, echo: u32,
        auth in auth(),
    ) -> ControlPacket {
        let your = if your == 0 && matches!(state, State::Init | State::Up) { 1 } else { your };
        ControlPacket {
            diag: Diag::from_u8(diag),
            state,
            poll: pf == 1,
            final_: pf == 2,
            control_plane_independent: cpi,
            demand,
            multipoint: false,
            detect_mult,
            my_discriminator: my,
            your_discriminator: your,
            desired_min_tx: tx,
            required_min_rx: rx,
            required_min_echo_rx: echo,
            auth,
        }
    }
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = ControlPacket::decode(&bytes);
    }

    #[test]
    fn decode_of_encode_is_identity(p in valid_packet()) {
        let bytes = p.encode();
        prop_assert_eq!(bytes.len(), p.wire_len());
        prop_assert_eq!(ControlPacket::decode(&bytes), Ok(p));
    }

    #[test]
    fn whatever_decodes_encodes_back_to_its_length_field(
        mut bytes in proptest::collection::vec(any::<u8>(), 24..60)
    ) {
        // Bias towards plausible headers so decoding often succeeds.
        bytes[0] = 0x20 | (bytes[0] & 0x1f);
        bytes[3] = if bytes[1] & 0x04 == 0 { 24 } else { bytes[3] % 60 };
        if let Ok(p) = ControlPacket::decode(&bytes) {
            let len = usize::from(bytes[3]);
            prop_assert_eq!(p.encode(), bytes[..len].to_vec());
        }
    }
}
