//! Fuzzes UPDATE decoding under RFC 7606 error handling: the input is an
//! UPDATE body (withdrawn routes, path attributes, NLRI). Decoding must not
//! panic, and the routing content must obey RFC 7606:
//! - a treat-as-withdraw UPDATE announces nothing and withdraws every
//!   prefix it carried;
//! - every NLRI prefix ends up announced or withdrawn, never lost;
//! - an End-of-RIB marker announces nothing.
//!
//! What is announced must survive our own encoder: `UpdateMsg::announce`
//! of the same attributes, next hop and prefixes decodes cleanly back to
//! them, and `UpdateMsg::withdraw` of the withdrawn prefixes withdraws them.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use tabby_bgp::packet::attribute::{AttrValue, NextHop};
use tabby_bgp::packet::message::{Message, UpdateMsg};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let body = &data[..data.len().min(4096 - 19)];
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(body);
    for four_octet_as in [false, true] {
        let dcxt = DecodeCxt {
            four_octet_as,
            extended_message: false,
        };
        let ecxt = EncodeCxt {
            four_octet_as,
            extended_message: false,
        };
        let Ok(Message::Update(u)) = Message::decode(&msg, &dcxt) else {
            continue;
        };
        let r = u.routes(four_octet_as);
        let carried: Vec<ipnet::IpNet> = u
            .nlri
            .iter()
            .map(|p| ipnet::IpNet::V4(*p))
            .chain(u.attrs.iter().flat_map(|a| match &a.value {
                AttrValue::MpReach(m) => m.nlri.clone(),
                _ => Vec::new(),
            }))
            .collect();
        let withdrawn: BTreeSet<_> = r.withdrawn.iter().copied().collect();
        if u.treat_as_withdraw() || !u.attr_tail.is_empty() {
            assert!(r.announced.is_empty(), "treat-as-withdraw announced {r:?}");
            for p in &carried {
                assert!(withdrawn.contains(p), "{p} lost under treat-as-withdraw");
            }
        }
        let announced: BTreeSet<_> = r.announced.iter().map(|(p, _)| *p).collect();
        for p in &carried {
            assert!(
                announced.contains(p) || withdrawn.contains(p),
                "{p} neither announced nor withdrawn"
            );
        }
        if r.end_of_rib.is_some() {
            assert!(r.announced.is_empty());
        }
        // Re-announce what was announced, grouped by next hop.
        let mut by_nh: BTreeMap<String, (NextHop, Vec<ipnet::IpNet>)> = BTreeMap::new();
        for (p, nh) in &r.announced {
            by_nh
                .entry(format!("{nh:?}"))
                .or_insert_with(|| (*nh, Vec::new()))
                .1
                .push(*p);
        }
        for (nh, prefixes) in by_nh.values() {
            let mut got = BTreeSet::new();
            // Received attributes plus NEXT_HOP may not fit again only when
            // the peer's own UPDATE was full; the size test covers that.
            let Ok(msgs) = UpdateMsg::announce(&r.attrs, *nh, prefixes, &ecxt) else {
                continue;
            };
            for m in msgs {
                let enc = Message::Update(m).encode(&ecxt);
                assert!(enc.len() <= 4096, "announce built {} bytes", enc.len());
                let Ok(Message::Update(back)) = Message::decode(&enc, &dcxt) else {
                    panic!("our announcement does not decode: {r:?}");
                };
                assert!(
                    back.errors.is_empty(),
                    "{:?} in our own UPDATE",
                    back.errors
                );
                let rr = back.routes(four_octet_as);
                assert_eq!(rr.attrs, r.attrs);
                for (p, n) in rr.announced {
                    assert_eq!(n, *nh);
                    got.insert(p);
                }
            }
            let want: BTreeSet<_> = prefixes.iter().copied().collect();
            assert_eq!(got, want);
        }
        let mut gone = BTreeSet::new();
        for m in UpdateMsg::withdraw(&r.withdrawn) {
            let enc = Message::Update(m).encode(&ecxt);
            let Ok(Message::Update(back)) = Message::decode(&enc, &dcxt) else {
                panic!("our withdrawal does not decode");
            };
            gone.extend(back.routes(four_octet_as).withdrawn);
        }
        assert_eq!(gone, withdrawn);
    }
});
