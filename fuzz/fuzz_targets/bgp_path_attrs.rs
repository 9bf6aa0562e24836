//! Fuzzes the path attribute decoder (RFC 4271 4.3, RFC 7606): the input is
//! the path attributes field of an UPDATE, decoded under both AS widths.
//! Decoding must not panic; whatever decodes must map to the semantic
//! attribute set and back to the wire without loss: the set re-encoded in
//! the same context decodes to the same set, with no errors (up to the
//! Partial and Extended Length bits and the order of unrecognised attributes).
#![no_main]

use tabby_bgp::packet::attribute::PathAttributes;
use tabby_bgp::packet::message::{Message, UpdateMsg};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

/// An UPDATE with no withdrawn routes, `attrs` as the path attributes field
/// and no NLRI.
fn update(attrs: &[u8]) -> Vec<u8> {
    let len = 19 + 2 + 2 + attrs.len();
    let mut b = vec![0xff; 16];
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(4096 - 23)];
    let bytes = update(data);
    for four_octet_as in [false, true] {
        let dcxt = DecodeCxt {
            four_octet_as,
            extended_message: false,
        };
        let ecxt = EncodeCxt {
            four_octet_as,
            extended_message: false,
        };
        let Ok(Message::Update(u)) = Message::decode(&bytes, &dcxt) else {
            continue;
        };
        let _ = u.treat_as_withdraw();
        let pa = PathAttributes::from_wire(&u.attrs, four_octet_as);
        let wire = pa.to_wire(&ecxt);
        let again = UpdateMsg {
            attrs: wire,
            ..Default::default()
        };
        let enc = Message::Update(again).encode(&ecxt);
        if enc.len() > 4096 {
            // A long AS_PATH re-encoded with AS4_PATH alongside can outgrow
            // the message; the sender splits or refuses such paths.
            continue;
        }
        let Ok(Message::Update(back)) = Message::decode(&enc, &dcxt) else {
            panic!("re-encoded attributes do not decode: {pa:?}");
        };
        assert!(
            back.errors.is_empty(),
            "errors {:?} for {pa:?}",
            back.errors
        );
        // Unrecognised optional transitive attributes are passed on with the
        // Partial bit set (RFC 4271 5), the length form that fits, and in
        // type-code order like every attribute we send.
        let norm = |mut p: PathAttributes| {
            for u in &mut p.unknown {
                u.flags &= !(0x20 | 0x10);
            }
            p.unknown
                .sort_by(|a, b| (a.type_code, &a.data).cmp(&(b.type_code, &b.data)));
            p
        };
        assert_eq!(
            norm(PathAttributes::from_wire(&back.attrs, four_octet_as)),
            norm(pa)
        );
    }
});
