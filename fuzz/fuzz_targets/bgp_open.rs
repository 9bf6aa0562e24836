//! Fuzzes OPEN and capability decoding (RFC 4271 4.2, RFC 5492): the first
//! byte picks a capability code for `Capability::decode` on the rest (at
//! most 255 bytes, the wire limit), which must round-trip; the whole input
//! is also decoded as an OPEN body, and a decoded OPEN is negotiated
//! against our usual capabilities in both directions.
#![no_main]

use tabby_bgp::packet::capability::{Capability, GrFamily, negotiate};
use tabby_bgp::packet::message::Message;
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

fn ours() -> Vec<Capability> {
    vec![
        Capability::MultiProtocol { afi: 1, safi: 1 },
        Capability::MultiProtocol { afi: 2, safi: 1 },
        Capability::RouteRefresh,
        Capability::FourOctetAs(4_200_000_000),
        Capability::GracefulRestart {
            flags: 0x80,
            time: 120,
            families: vec![GrFamily {
                afi: 1,
                safi: 1,
                flags: 0x80,
            }],
        },
    ]
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&code, value)) = data.split_first() {
        let value = &value[..value.len().min(255)];
        let c = Capability::decode(code, value);
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(out[0], code);
        assert_eq!(usize::from(out[1]), out.len() - 2);
        assert_eq!(Capability::decode(out[0], &out[2..]), c);
    }
    let body = &data[..data.len().min(4096 - 19)];
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(1);
    msg.extend_from_slice(body);
    for four_octet_as in [false, true] {
        let dcxt = DecodeCxt {
            four_octet_as,
            extended_message: false,
        };
        if let Ok(m @ Message::Open(_)) = Message::decode(&msg, &dcxt) {
            let Message::Open(o) = &m else { unreachable!() };
            let _ = o.peer_as();
            let theirs: Vec<Capability> = o.capabilities().cloned().collect();
            let n = negotiate(&ours(), &theirs);
            let _ = negotiate(&theirs, &ours());
            assert!(n.families.iter().all(|f| {
                let (afi, safi) = f.afi_safi();
                (afi == 1 || afi == 2) && safi == 1
            }));
            let enc = m.encode(&EncodeCxt {
                four_octet_as,
                extended_message: false,
            });
            assert_eq!(Message::decode(&enc, &dcxt).ok(), Some(m.clone()));
        }
    }
});
