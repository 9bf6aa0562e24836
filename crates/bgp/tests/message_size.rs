//! Message size limits (issue 16, item 1): no UPDATE over 4096 bytes
//! (RFC 4271), or over 65535 only when both sides negotiated extended
//! messages (RFC 8654), counted after export added its attributes
//! (LOCAL_PREF, AS_PATH prepend, ORIGINATOR_ID, CLUSTER_LIST, next hop).
//! Prefixes that do not fit go in further messages; a route whose
//! attributes alone do not fit is not sent to that peer (and a version sent
//! before is withdrawn). The property test walks every export path the way
//! the `bgp_export_size` fuzz target does.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use tabby_bgp::packet::attribute::{AsPath, NextHop, PathAttributes, UnknownAttr};
use tabby_bgp::packet::capability::Family;
use tabby_bgp::packet::error::{EncodeError, ErrorCode};
use tabby_bgp::packet::message::{
    MAX_MESSAGE_LEN, Message, UpdateMsg, announce_overhead, nlri_room,
};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt, prefix_wire_len};
use tabby_bgp::policy::{self, LocalInfo, PeerInfo, RouteSource};
use tabby_bgp::rib::{Rib, Route};

fn ecxt(four: bool, ext: bool) -> EncodeCxt {
    EncodeCxt {
        four_octet_as: four,
        extended_message: ext,
    }
}

fn dcxt(e: &EncodeCxt) -> DecodeCxt {
    DecodeCxt {
        four_octet_as: e.four_octet_as,
        extended_message: e.extended_message,
    }
}

fn v24(i: u32) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + (i << 8)), 24).unwrap())
}

const NH4: NextHop = NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, 9));

fn communities(n: u32) -> PathAttributes {
    PathAttributes {
        as_path: AsPath::from_sequence(&[65001]),
        communities: (0..n).map(|i| (65001 << 16) | i).collect(),
        ..Default::default()
    }
}

/// Encodes, checks the limit and decodes back every message of an
/// announcement; returns the prefixes announced.
fn sent(msgs: Vec<UpdateMsg>, e: &EncodeCxt, attrs: &PathAttributes, nh: NextHop) -> Vec<IpNet> {
    let mut out = Vec::new();
    for m in msgs {
        let b = Message::Update(m).encode(e);
        assert!(
            b.len() <= e.max_message_len(),
            "{} bytes over {}",
            b.len(),
            e.max_message_len()
        );
        let Message::Update(u) = Message::decode(&b, &dcxt(e)).expect("decodes") else {
            panic!("not an UPDATE")
        };
        assert!(u.errors.is_empty(), "{:?}", u.errors);
        let r = u.routes(e.four_octet_as);
        // The extended-length bit of unknown attributes follows their size,
        // and they go out in type code order.
        let plain = |a: &PathAttributes| {
            let mut a = a.clone();
            for u in &mut a.unknown {
                u.flags &= !0x10;
            }
            a.unknown.sort_by_key(|u| u.type_code);
            a
        };
        assert_eq!(plain(&r.attrs), plain(attrs));
        for (p, n) in r.announced {
            assert_eq!(n, nh);
            out.push(p);
        }
    }
    out
}

#[test]
fn overhead_is_exactly_what_the_encoder_writes() {
    let v6 = NextHop::Ipv6 {
        global: "2001:db8::9".parse().unwrap(),
        link_local: None,
    };
    let v6ll = NextHop::Ipv6 {
        global: "2001:db8::9".parse().unwrap(),
        link_local: Some("fe80::9".parse().unwrap()),
    };
    let big_path = PathAttributes {
        // Over 255 ASNs (two segments) with 4-octet ones: AS4_PATH on a
        // 2-octet session.
        as_path: AsPath::from_sequence(&(4_200_000_000..4_200_000_300).collect::<Vec<_>>()),
        cluster_list: vec![Ipv4Addr::new(198, 18, 0, 1); 40],
        originator_id: Some(Ipv4Addr::new(198, 18, 0, 2)),
        local_pref: Some(100),
        unknown: vec![UnknownAttr {
            flags: 0xc0,
            type_code: 99,
            data: vec![7; 300],
        }],
        ..Default::default()
    };
    for attrs in [PathAttributes::default(), communities(70), big_path] {
        for four in [false, true] {
            let e = ecxt(four, false);
            for (nh, p) in [
                (NH4, v24(1)),
                (v6, "2001:db8:1::/48".parse().unwrap()),
                (v6ll, "2001:db8:2::/64".parse().unwrap()),
            ] {
                let msgs = UpdateMsg::announce(&attrs, nh, &[p], &e).unwrap();
                assert_eq!(msgs.len(), 1);
                let len = Message::Update(msgs[0].clone()).encode(&e).len();
                assert_eq!(
                    len,
                    announce_overhead(&attrs, nh, &e) + prefix_wire_len(p.prefix_len()),
                    "{nh:?} four={four}"
                );
            }
        }
    }
}

#[test]
fn nlri_packed_up_to_4096_then_further_messages() {
    let e = ecxt(true, false);
    let attrs = communities(900);
    let room = nlri_room(&attrs, NH4, &e).unwrap();
    assert!(room < 500, "{room}");
    let prefixes: Vec<IpNet> = (0..1000).map(v24).collect();
    let msgs = UpdateMsg::announce(&attrs, NH4, &prefixes, &e).unwrap();
    assert_eq!(msgs.len(), 1000usize.div_ceil(room / 4));
    // Full messages are full: fewer than 4 bytes short of the limit.
    let first = Message::Update(msgs[0].clone()).encode(&e);
    assert!(first.len() > MAX_MESSAGE_LEN - 4, "{}", first.len());
    assert_eq!(sent(msgs, &e, &attrs, NH4), prefixes);
}

#[test]
fn attributes_that_leave_no_room_are_refused_naming_the_prefix() {
    let e = ecxt(true, false);
    // The largest community list that still leaves room for a /24.
    let fits = (0..1100)
        .rev()
        .find(|n| nlri_room(&communities(*n), NH4, &e).is_some_and(|r| r >= 4))
        .unwrap();
    let ok = communities(fits);
    let msgs = UpdateMsg::announce(&ok, NH4, &[v24(1)], &e).unwrap();
    let b = Message::Update(msgs[0].clone()).encode(&e);
    assert!(b.len() > MAX_MESSAGE_LEN - 4 && b.len() <= MAX_MESSAGE_LEN);
    // A /16 (3 bytes) may still fit where a /24 (4 bytes) does not.
    let big = communities(fits + 1);
    let err = UpdateMsg::announce(&big, NH4, &[v24(1)], &e).unwrap_err();
    let EncodeError::AttributesTooLarge { prefix, max, .. } = err;
    assert_eq!((prefix, max), (v24(1), MAX_MESSAGE_LEN));
    assert!(err_names(&big, &e).contains("100.64.1.0/24"));
}

fn err_names(attrs: &PathAttributes, e: &EncodeCxt) -> String {
    UpdateMsg::announce(attrs, NH4, &[v24(1)], e)
        .unwrap_err()
        .to_string()
}

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
        encode: ecxt(four, false),
        transit: true,
        enforce_first_as: true,
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

/// The update of the issue: valid, at most 4096 bytes as received from an
/// eBGP peer, but over the limit once LOCAL_PREF is added for iBGP.
#[test]
fn received_4096_byte_update_is_not_passed_on_over_the_limit() {
    let e = ecxt(true, false);
    let prefix = v24(1);
    let n = (0..1100)
        .rev()
        .find(|n| {
            announce_overhead(&communities(*n), NH4, &e) + prefix_wire_len(24) <= MAX_MESSAGE_LEN
        })
        .unwrap();
    let attrs = communities(n);
    let wire = UpdateMsg::announce(&attrs, NH4, &[prefix], &e).unwrap();
    let bytes = Message::Update(wire[0].clone()).encode(&e);
    assert!(bytes.len() > MAX_MESSAGE_LEN - 7, "{}", bytes.len());
    let Message::Update(u) = Message::decode(&bytes, &dcxt(&e)).unwrap() else {
        panic!()
    };
    let r = u.routes(true);
    let from = peer(2, 65001, false, true);
    let imported = policy::import(&local(), &from, r.attrs).unwrap();
    let mut rib = Rib::new();
    rib.insert(prefix, Route::new(source(&from), imported, NH4));
    // Over iBGP LOCAL_PREF (7 bytes) is added: it no longer fits.
    let ibgp = peer(3, 64512, false, true);
    let out = rib.sync_peer(&local(), &ibgp, None);
    assert!(out.announce.is_empty(), "{:?}", out.announce);
    assert_eq!(out.too_large, vec![prefix]);
    // The eBGP peer it came from gets nothing (split horizon), another
    // eBGP peer gets it with our AS prepended (4 more bytes): too large.
    let other = peer(4, 65002, false, true);
    let out = rib.sync_peer(&local(), &other, None);
    assert_eq!(out.too_large, vec![prefix]);
    // Smaller: it goes out, and a later version too large is withdrawn.
    let small = communities(10);
    rib.insert(
        prefix,
        Route::new(
            source(&from),
            policy::import(&local(), &from, small).unwrap(),
            NH4,
        ),
    );
    let out = rib.sync_peer(&local(), &ibgp, None);
    assert_eq!(out.announce[0].prefixes, vec![prefix]);
    rib.insert(
        prefix,
        Route::new(
            source(&from),
            policy::import(&local(), &from, attrs).unwrap(),
            NH4,
        ),
    );
    let out = rib.sync_peer(&local(), &ibgp, Some(&[prefix]));
    assert_eq!(out.withdraw, vec![prefix]);
    assert_eq!(out.too_large, vec![prefix]);
    assert!(rib.adj_out(&ibgp.addr).unwrap().is_empty());
}

#[test]
fn extended_messages_only_when_negotiated() {
    let attrs = communities(2000);
    let plain = ecxt(true, false);
    assert_eq!(nlri_room(&attrs, NH4, &plain), None);
    let ext = ecxt(true, true);
    let prefixes: Vec<IpNet> = (0..15_000).map(v24).collect();
    let msgs = UpdateMsg::announce(&attrs, NH4, &prefixes, &ext).unwrap();
    assert_eq!(msgs.len(), 2);
    let first = Message::Update(msgs[0].clone()).encode(&ext);
    assert!(first.len() > 60_000, "{}", first.len());
    assert_eq!(sent(msgs, &ext, &attrs, NH4), prefixes);
    // A peer that did not negotiate them gets a header error, as RFC 4271
    // demands, and the frame check agrees.
    let err = Message::decode(&first, &dcxt(&plain)).unwrap_err();
    assert_eq!((err.code, err.subcode), (ErrorCode::MessageHeader, 2));
    assert!(Message::frame_len(&first).is_err());
    assert_eq!(
        Message::frame_len_max(&first, 65535).unwrap(),
        Some(first.len())
    );
}

#[test]
fn a_notification_echoing_a_long_field_still_fits() {
    let e = tabby_bgp::packet::error::DecodeError {
        code: ErrorCode::UpdateMessage,
        subcode: 9,
        data: vec![7; 60_000],
        reason: "long".into(),
    };
    let n = tabby_bgp::packet::message::NotificationMsg::from(&e);
    let b = Message::Notification(n).encode(&ecxt(true, false));
    assert_eq!(b.len(), MAX_MESSAGE_LEN);
}

// ---- every export path ---------------------------------------------------

fn attrs_strategy() -> impl Strategy<Value = PathAttributes> {
    (
        prop::collection::vec(1u32..4_294_967_295, 0..400),
        prop::collection::vec(any::<u32>(), 0..1100),
        prop::collection::vec(any::<u32>(), 0..40),
        prop::option::of(any::<u32>()),
        prop::option::of(any::<[u8; 4]>()),
        prop::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(path, comms, clusters, med, orig, unknown)| {
            // eBGP sources must start with their AS (65001).
            let mut asns = vec![65001];
            asns.extend(path);
            PathAttributes {
                as_path: AsPath::from_sequence(&asns),
                communities: comms
                    .into_iter()
                    .filter(|c| !(0xFFFF_FF01..=0xFFFF_FF03).contains(c))
                    .collect(),
                cluster_list: clusters.into_iter().map(Ipv4Addr::from).collect(),
                med,
                originator_id: orig.map(Ipv4Addr::from),
                unknown: if unknown.is_empty() {
                    Vec::new()
                } else {
                    // Already passed on partial, as it is after export.
                    vec![UnknownAttr {
                        flags: 0xe0,
                        type_code: 200,
                        data: unknown,
                    }]
                },
                ..Default::default()
            }
        })
}

fn prefixes_strategy() -> impl Strategy<Value = (bool, Vec<IpNet>)> {
    prop_oneof![
        prop::collection::vec((any::<u32>(), 8u8..=32), 1..1500).prop_map(|v| (
            true,
            v.into_iter()
                .map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()))
                .collect()
        )),
        prop::collection::vec((any::<u128>(), 16u8..=128), 1..800).prop_map(|v| (
            false,
            v.into_iter()
                .map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc()))
                .collect()
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Routes learned over eBGP and iBGP (client or not), exported to an
    /// eBGP peer, an iBGP peer, a reflector client and with next-hop-self,
    /// on 2- and 4-octet sessions: what the RIB hands over always encodes
    /// within 4096 bytes and carries every prefix; what it refuses really
    /// does not fit.
    #[test]
    fn every_export_path_stays_within_the_limit(
        attrs in attrs_strategy(),
        (v4, prefixes) in prefixes_strategy(),
        four in any::<bool>(),
    ) {
        let nh = if v4 { NH4 } else {
            NextHop::Ipv6 { global: "2001:db8::9".parse().unwrap(), link_local: Some("fe80::9".parse().unwrap()) }
        };
        let prefixes: Vec<IpNet> = prefixes.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let sources = [peer(2, 65001, false, four), peer(3, 64512, false, four), peer(4, 64512, true, four)];
        let mut nhs = peer(8, 64512, false, four);
        nhs.next_hop_self = true;
        let targets = [peer(5, 65002, false, four), peer(6, 64512, false, four), peer(7, 64512, true, four), nhs];
        for from in &sources {
            let Ok(imported) = policy::import(&local(), from, attrs.clone()) else { continue };
            let mut rib = Rib::new();
            let path = Route::new(source(from), imported.clone(), nh);
            for p in &prefixes {
                rib.insert(*p, path.clone());
            }
            for to in &targets {
                let out = rib.sync_peer(&local(), to, None);
                let mut got = BTreeSet::new();
                for a in &out.announce {
                    let msgs = UpdateMsg::announce(&a.attrs, a.next_hop, &a.prefixes, &to.encode)
                        .expect("the RIB only hands over what fits");
                    got.extend(sent(msgs, &to.encode, &a.attrs, a.next_hop));
                }
                for p in &out.too_large {
                    let (exported, enh) = policy::export(&local(), to, p, &source(from), &imported, nh).unwrap();
                    let room = nlri_room(&exported, enh, &to.encode).unwrap_or(0);
                    prop_assert!(prefix_wire_len(p.prefix_len()) > room);
                    prop_assert!(UpdateMsg::announce(&exported, enh, &[*p], &to.encode).is_err());
                }
                let want: BTreeSet<IpNet> = prefixes.iter().copied()
                    .filter(|p| !out.too_large.contains(p))
                    .filter(|p| policy::export(&local(), to, p, &source(from), &imported, nh).is_some())
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
