//! Fuzzes the size limit along every export path (issue 16, item 1). The
//! input is an UPDATE body as a peer could send it (at most 4096 bytes in
//! all). Whatever decodes is imported from an eBGP peer, an iBGP peer and a
//! reflector client, and exported to an eBGP peer (transit on), an iBGP
//! peer, a reflector client and a peer with next-hop-self, on the session's
//! AS number size. Every UPDATE the speaker would send must be at most
//! 4096 bytes, decode cleanly and carry the exported attributes; every
//! prefix the RIB refused as too large must really not fit.
#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use tabby_bgp::packet::attribute::{NextHop, PathAttributes, flags};
use tabby_bgp::packet::capability::Family;
use tabby_bgp::packet::message::{MAX_MESSAGE_LEN, Message, UpdateMsg, nlri_room};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt, prefix_wire_len};
use tabby_bgp::policy::{self, LocalInfo, PeerInfo, RouteSource};
use tabby_bgp::rib::{Rib, Route};

fn local() -> LocalInfo {
    LocalInfo {
        asn: 64512,
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        cluster_id: Ipv4Addr::new(198, 18, 0, 1),
    }
}

fn peer(last: u8, asn: u32, client: bool, four: bool) -> PeerInfo {
    PeerInfo {
        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
        remote_as: asn,
        local_as: 64512,
        router_id: Ipv4Addr::new(198, 18, 0, last),
        rr_client: client,
        next_hop_self: false,
        next_hop_keep: false,
        allow_local_as: 0,
        local_v4: Some(Ipv4Addr::new(198, 18, 0, 1)),
        local_v6: Some("2001:db8::1".parse().unwrap()),
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        filters: Arc::from(Vec::new()),
        encode: EncodeCxt {
            four_octet_as: four,
            extended_message: false,
        },
        transit: true,
        enforce_first_as: false,
    }
}

fn source(p: &PeerInfo) -> RouteSource {
    RouteSource::Peer {
        addr: p.addr,
        ebgp: p.is_ebgp(),
        rr_client: p.rr_client,
        router_id: p.router_id,
    }
}

/// Attributes as a peer sees them: unknown ones passed on partial, in type
/// code order, their extended-length bit following their size.
fn wire_view(a: &PathAttributes) -> PathAttributes {
    let mut a = a.clone();
    for u in &mut a.unknown {
        u.flags = (u.flags & !flags::EXTENDED_LENGTH) | flags::PARTIAL;
    }
    a.unknown.sort_by_key(|u| u.type_code);
    a
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let body = &data[..data.len().min(MAX_MESSAGE_LEN - 19)];
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(body);
    for four in [false, true] {
        let dcxt = DecodeCxt {
            four_octet_as: four,
            extended_message: false,
        };
        let Ok(Message::Update(u)) = Message::decode(&msg, &dcxt) else {
            continue;
        };
        let r = u.routes(four);
        if r.announced.is_empty() {
            continue;
        }
        let sources = [
            peer(2, 65001, false, four),
            peer(3, 64512, false, four),
            peer(4, 64512, true, four),
        ];
        let mut nhs = peer(8, 64512, false, four);
        nhs.next_hop_self = true;
        let targets = [
            peer(5, 65002, false, four),
            peer(6, 64512, false, four),
            peer(7, 64512, true, four),
            nhs,
        ];
        for from in &sources {
            let Ok(imported) = policy::import(&local(), from, r.attrs.clone()) else {
                continue;
            };
            let imported = Arc::new(imported);
            let mut rib = Rib::new();
            let mut routes: Vec<(ipnet::IpNet, NextHop)> = Vec::new();
            for (p, nh) in &r.announced {
                rib.insert(*p, Route::new(source(from), (*imported).clone(), *nh));
                routes.retain(|(q, _)| q != p);
                routes.push((*p, *nh));
            }
            for to in &targets {
                let out = rib.sync_peer(&local(), to, None);
                let mut got = BTreeSet::new();
                for a in &out.announce {
                    let msgs = UpdateMsg::announce(&a.attrs, a.next_hop, &a.prefixes, &to.encode)
                        .expect("the RIB only hands over what fits");
                    for m in msgs {
                        let b = Message::Update(m).encode(&to.encode);
                        assert!(b.len() <= MAX_MESSAGE_LEN, "{} bytes", b.len());
                        let Ok(Message::Update(back)) = Message::decode(&b, &dcxt) else {
                            panic!("our UPDATE does not decode");
                        };
                        assert!(back.errors.is_empty(), "{:?}", back.errors);
                        let rr = back.routes(four);
                        assert_eq!(wire_view(&rr.attrs), wire_view(&a.attrs));
                        got.extend(rr.announced.into_iter().map(|(p, _)| p));
                    }
                }
                let mut want = BTreeSet::new();
                for (p, nh) in &routes {
                    let Some((exported, enh)) =
                        policy::export(&local(), to, p, &source(from), &imported, *nh)
                    else {
                        continue;
                    };
                    let room = nlri_room(&exported, enh, &to.encode).unwrap_or(0);
                    let fits = prefix_wire_len(p.prefix_len()) <= room;
                    assert_eq!(!fits, out.too_large.contains(p), "{p}");
                    if fits {
                        want.insert(*p);
                    }
                }
                assert_eq!(got, want);
            }
        }
    }
});
