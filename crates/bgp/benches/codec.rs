//! Codec throughput: decode and encode an UPDATE carrying 500 IPv4 /24
//! prefixes with a typical Calico attribute set, and the IPv6 equivalent.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use tabby_bgp::packet::attribute::{AsPath, LargeCommunity, NextHop, PathAttributes};
use tabby_bgp::packet::message::{Message, UpdateMsg};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

fn attrs() -> PathAttributes {
    PathAttributes {
        as_path: AsPath::from_sequence(&[64512, 65001]),
        med: Some(50),
        local_pref: Some(200),
        communities: vec![(64512 << 16) | 100],
        large_communities: vec![LargeCommunity {
            global: 64512,
            local1: 1,
            local2: 2,
        }],
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let cxt = EncodeCxt {
        four_octet_as: true,
        extended_message: false,
    };
    let dcxt = DecodeCxt {
        four_octet_as: true,
        extended_message: false,
    };
    let v4: Vec<IpNet> = (0..500u32)
        .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x6440_0000 + (i << 8)), 24).unwrap()))
        .collect();
    let v6: Vec<IpNet> = (0..500u32)
        .map(|i| {
            let a = Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 80));
            IpNet::V6(Ipv6Net::new(a, 48).unwrap())
        })
        .collect();
    for (name, prefixes, nh) in [
        ("ipv4", &v4, NextHop::Ipv4(Ipv4Addr::new(198, 18, 0, 1))),
        (
            "ipv6",
            &v6,
            NextHop::Ipv6 {
                global: "2001:db8::1".parse().unwrap(),
                link_local: None,
            },
        ),
    ] {
        let msgs = UpdateMsg::announce(&attrs(), nh, prefixes, &cxt).unwrap();
        assert_eq!(msgs.len(), 1, "500 prefixes fit one UPDATE");
        let msg = Message::Update(msgs[0].clone());
        let bytes = msg.encode(&cxt);
        let mut g = c.benchmark_group(format!("update_500_{name}"));
        g.throughput(Throughput::Elements(500));
        g.bench_function("decode", |b| {
            b.iter(|| Message::decode(black_box(&bytes), &dcxt).unwrap())
        });
        g.bench_function("decode_routes", |b| {
            b.iter(
                || match Message::decode(black_box(&bytes), &dcxt).unwrap() {
                    Message::Update(u) => u.routes(true),
                    _ => unreachable!("an UPDATE was encoded"),
                },
            )
        });
        g.bench_function("encode", |b| b.iter(|| black_box(&msg).encode(&cxt)));
        g.bench_function("build_and_encode", |b| {
            b.iter(|| {
                UpdateMsg::announce(&attrs(), nh, black_box(prefixes), &cxt)
                    .unwrap()
                    .into_iter()
                    .map(|m| Message::Update(m).encode(&cxt))
                    .collect::<Vec<_>>()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
