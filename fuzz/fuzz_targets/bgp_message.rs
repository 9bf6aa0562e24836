//! Fuzzes the BGP message decoder under both AS-width contexts: decoding
//! arbitrary bytes must not panic, and whatever decodes must survive
//! encode -> decode unchanged.
#![no_main]

use tabby_bgp::packet::message::Message;
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Also exercise framing on the raw input.
    let _ = Message::frame_len(data);
    for four_octet_as in [false, true] {
        let dcxt = DecodeCxt {
            four_octet_as,
            extended_message: false,
        };
        let ecxt = EncodeCxt {
            four_octet_as,
            extended_message: false,
        };
        if let Ok(m) = Message::decode(data, &dcxt) {
            let bytes = m.encode(&ecxt);
            let again = Message::decode(&bytes, &dcxt).expect("re-encoded message decodes");
            assert_eq!(again, m);
        }
    }
});
