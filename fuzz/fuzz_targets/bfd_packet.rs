//! BFD Control packets: decoding must never panic, and whatever decodes
//! must encode back to the bytes its Length field covers; a decoded packet
//! fed to a session must never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use tabby_bfd::packet::ControlPacket;
use tabby_bfd::session::{Session, SessionConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ControlPacket::decode(data) {
        let len = usize::from(data[3]);
        assert_eq!(p.encode(), &data[..len]);
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::default(), 1, 1, t0);
        let _ = s.on_packet(t0, &p, &data[..len]);
        let _ = s.on_timeout(t0 + Duration::from_secs(5));
    }
});
