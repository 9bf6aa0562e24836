//! The rtnetlink implementation against the real kernel: blackhole, onlink, ECMP
//! and replaced routes, bulk add/delete, the VXLAN device with neighbours and FDB,
//! IPIP support detection and the event monitor. Each test owns a fresh network
//! namespace `tdp-<test>-<pid>-a` (removed on drop, also on panic) and checks the
//! kernel with `ip -j` / `bridge -j`. Needs root: fails, never skips, without it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use tabby_dataplane::{
    Error, Family, FdbEntry, LinkAttrs, Neighbour, Netlink, NetlinkEvent, NextHop, Route,
    RouteKind, RtNetlink, VxlanSpec, monitor,
};
use tabby_testnet::Netns;

/// A fresh namespace for `test` and a connection into it.
async fn setup(test: &str) -> (Netns, RtNetlink) {
    tabby_testnet::require_root();
    let ns = Netns::new(&format!("tdp-{test}-{}", std::process::id()), "a").expect("netns");
    let nl = RtNetlink::in_netns(path(&ns)).expect("netlink in netns");
    (ns, nl)
}

fn path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name())
}

/// A veth `name` (peer `<name>p`, both up) with `addrs`; returns its index.
async fn veth(ns: &Netns, nl: &RtNetlink, name: &str, addrs: &[&str]) -> u32 {
    let peer = format!("{name}p");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])
        .unwrap();
    for a in addrs {
        ns.add_addr(name, a).unwrap();
    }
    ns.ip(&["link", "set", name, "up"]).unwrap();
    ns.ip(&["link", "set", &peer, "up"]).unwrap();
    nl.link_by_name(name).await.unwrap().unwrap().index
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    match ns.ip_json(args).unwrap() {
        Value::Array(v) => v,
        other => panic!("ip -j {args:?}: not an array: {other}"),
    }
}

fn bridge_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new("bridge")
        .args(["-j", "-n", ns.name()])
        .args(args)
        .output()
        .expect("run bridge");
    assert!(out.status.success(), "bridge {args:?}: {out:?}");
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(v) => v,
        other => panic!("bridge -j {args:?}: not an array: {other}"),
    }
}

/// `ip -j route show <dst>` in the family of `dst`: the kernel's entries for it.
fn kernel_routes(ns: &Netns, dst: &str) -> Vec<Value> {
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    json(
        ns,
        &[fam, "route", "show", "table", "all", "to", "exact", dst],
    )
    .into_iter()
    .filter(|r| r["type"].as_str() != Some("local"))
    .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn find(nl: &RtNetlink, dst: IpNet) -> Vec<Route> {
    let fam = if dst.addr().is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    nl.routes(fam)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.dst == dst)
        .collect()
}

#[tokio::test]
async fn blackhole_add_list_delete() {
    let (ns, nl) = setup("bh").await;
    for dst in ["100.64.0.0/26", "2001:db8:1::/122"] {
        let r = Route::blackhole(net(dst));
        nl.add_route(&r).await.unwrap();
        assert!(nl.add_route(&r).await.unwrap_err().is_exists());
        let k = kernel_routes(&ns, dst);
        assert_eq!(k.len(), 1, "{k:?}");
        assert_eq!(k[0]["type"], "blackhole", "{k:?}");
        assert_eq!(text(&k[0]["protocol"]), "80", "{k:?}");
        assert_eq!(find(&nl, r.dst).await, std::slice::from_ref(&r));
        nl.del_route(&r).await.unwrap();
        assert!(kernel_routes(&ns, dst).is_empty());
        assert!(nl.del_route(&r).await.unwrap_err().is_not_found());
    }
}

#[tokio::test]
async fn onlink_route_over_a_veth() {
    let (ns, nl) = setup("onlink").await;
    let eth = veth(&ns, &nl, "veth0", &["198.18.0.1/24"]).await;
    // 198.18.5.5 is outside veth0's subnet: only `onlink` makes it a valid gateway.
    let plain = Route {
        protocol: 80,
        ..Route::via(net("100.64.1.0/26"), ip("198.18.5.5"), eth)
    };
    assert!(nl.add_route(&plain).await.is_err());
    let r = Route::via_onlink(net("100.64.1.0/26"), ip("198.18.5.5"), eth);
    nl.add_route(&r).await.unwrap();
    let k = kernel_routes(&ns, "100.64.1.0/26");
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0]["gateway"], "198.18.5.5");
    assert_eq!(k[0]["dev"], "veth0");
    assert_eq!(text(&k[0]["protocol"]), "80");
    assert!(
        k[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink"),
        "{k:?}"
    );
    assert_eq!(find(&nl, r.dst).await, std::slice::from_ref(&r));
    nl.del_route(&r).await.unwrap();
    assert!(kernel_routes(&ns, "100.64.1.0/26").is_empty());
}

#[tokio::test]
async fn ecmp_round_trip() {
    let (ns, nl) = setup("ecmp").await;
    let a = veth(&ns, &nl, "veth0", &["198.18.0.1/24", "2001:db8::1/64"]).await;
    let b = veth(&ns, &nl, "veth2", &["198.18.1.1/24", "2001:db8:1::1/64"]).await;
    let hop = |gw: &str, oif| NextHop {
        gateway: ip(gw),
        oif: Some(oif),
        onlink: false,
    };
    for (dst, gws) in [
        ("100.64.2.0/26", ["198.18.0.2", "198.18.1.2"]),
        ("2001:db8:2::/122", ["2001:db8::2", "2001:db8:1::2"]),
    ] {
        let r = Route::ecmp(net(dst), vec![hop(gws[0], a), hop(gws[1], b)]);
        nl.add_route(&r).await.unwrap();
        let k = kernel_routes(&ns, dst);
        assert_eq!(k.len(), 1, "{k:?}");
        let hops = k[0]["nexthops"].as_array().expect("nexthops");
        let mut got: Vec<(String, String)> = hops
            .iter()
            .map(|h| (text(&h["gateway"]), text(&h["dev"])))
            .collect();
        got.sort();
        let mut want = vec![
            (gws[0].to_string(), "veth0".to_string()),
            (gws[1].to_string(), "veth2".to_string()),
        ];
        want.sort();
        assert_eq!(got, want);
        let back = find(&nl, r.dst).await;
        assert_eq!(back.len(), 1, "{back:?}");
        assert!(back[0].same_path(&r), "{} vs {}", back[0], r);
        assert_eq!(
            (back[0].gateway, back[0].oif, back[0].protocol),
            (None, None, 80)
        );
        // The same route with its hops listed the other way round deletes it.
        let reversed = Route::ecmp(net(dst), vec![hop(gws[1], b), hop(gws[0], a)]);
        assert!(back[0].same_path(&reversed));
        nl.del_route(&back[0]).await.unwrap();
        assert!(kernel_routes(&ns, dst).is_empty());
    }
    // One hop: a plain gatewayed route, read back as such.
    let one = Route::ecmp(net("100.64.3.0/26"), vec![hop("198.18.0.2", a)]);
    nl.add_route(&one).await.unwrap();
    assert_eq!(find(&nl, one.dst).await, [one]);
}

#[tokio::test]
async fn replace_route_changes_the_gateway() {
    let (ns, nl) = setup("replace").await;
    let eth = veth(&ns, &nl, "veth0", &["198.18.0.1/24"]).await;
    let dst = net("100.64.4.0/26");
    nl.replace_route(&Route::via_onlink(dst, ip("198.18.0.2"), eth))
        .await
        .unwrap();
    let moved = Route::via_onlink(dst, ip("198.18.0.3"), eth);
    nl.replace_route(&moved).await.unwrap();
    let k = kernel_routes(&ns, "100.64.4.0/26");
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0]["gateway"], "198.18.0.3");
    assert_eq!(find(&nl, dst).await, [moved]);
    // A blackhole can replace a unicast route too.
    nl.replace_route(&Route::blackhole(dst)).await.unwrap();
    assert_eq!(find(&nl, dst).await[0].kind, RouteKind::Blackhole);
}

fn pod_route(i: u32, eth: u32) -> Route {
    let dst = IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)), 32).unwrap();
    Route::via_onlink(dst, ip("198.18.0.2"), eth)
}

#[tokio::test]
async fn bulk_add_and_delete_10000() {
    let (ns, nl) = setup("bulk").await;
    let eth = veth(&ns, &nl, "veth0", &["198.18.0.1/24"]).await;
    let routes: Vec<Route> = (0..10_000).map(|i| pod_route(i, eth)).collect();
    let res = nl.add_routes(&routes).await;
    assert_eq!(res.len(), routes.len());
    assert!(
        res.iter().all(|r| r.is_ok()),
        "{:?}",
        res.iter().find(|r| r.is_err())
    );
    let ours: Vec<Route> = nl
        .routes(Family::V4)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == 80)
        .collect();
    assert_eq!(ours.len(), 10_000);
    let pods = net("100.64.0.0/10");
    assert!(ours.iter().all(|r| pods.contains(&r.dst) && r.onlink));
    assert_eq!(
        json(&ns, &["-4", "route", "show", "proto", "80"]).len(),
        10_000
    );

    // Results line up with their routes across datagram boundaries: every third
    // route exists already, the others are new.
    let mixed: Vec<Route> = (0..600)
        .map(|i| {
            if i % 3 == 0 {
                routes[i as usize].clone()
            } else {
                pod_route(20_000 + i, eth)
            }
        })
        .collect();
    let res = nl.add_routes(&mixed).await;
    for (i, r) in res.iter().enumerate() {
        if i % 3 == 0 {
            assert!(matches!(r, Err(Error::Exists { .. })), "{i}: {r:?}");
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    let res = nl.del_routes(&mixed).await;
    assert!(
        res.iter().all(|r| r.is_ok()),
        "{:?}",
        res.iter().find(|r| r.is_err())
    );
    let res = nl.del_routes(&mixed[..6]).await;
    assert!(
        res.iter()
            .all(|r| r.as_ref().is_err_and(Error::is_not_found)),
        "{res:?}"
    );

    let res = nl.del_routes(&routes).await;
    assert_eq!(res.len(), routes.len());
    // The ones the mixed batch deleted are gone already.
    for (i, r) in res.iter().enumerate() {
        if i < 600 && i % 3 == 0 {
            assert!(r.as_ref().is_err_and(Error::is_not_found), "{i}: {r:?}");
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    assert!(json(&ns, &["-4", "route", "show", "proto", "80"]).is_empty());
    assert!(nl.add_routes(&[]).await.is_empty());
}

#[tokio::test]
async fn vxlan_device_neighbours_and_fdb() {
    let (ns, nl) = setup("vxlan").await;
    let eth = veth(&ns, &nl, "veth0", &["198.18.0.1/24"]).await;
    let spec = VxlanSpec {
        name: "vxlan.calico".into(),
        vni: 4096,
        port: 4789,
        local: Some(ip("198.18.0.1")),
        parent: Some(eth),
        mac: Some([0x66, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e]),
        mtu: Some(1450),
        learning: false,
    };
    nl.create_vxlan(&spec).await.unwrap();
    assert_eq!(nl.vxlan("vxlan.calico").await.unwrap(), Some(spec.clone()));
    assert!(nl.create_vxlan(&spec).await.unwrap_err().is_exists());
    assert_eq!(nl.vxlan("nope").await.unwrap(), None);
    assert!(matches!(
        nl.vxlan("veth0").await,
        Err(Error::Collision { .. })
    ));
    let k = json(&ns, &["-d", "link", "show", "vxlan.calico"]);
    assert_eq!(k.len(), 1);
    let (link, data) = (&k[0], &k[0]["linkinfo"]["info_data"]);
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(link["address"], "66:0a:0b:0c:0d:0e");
    assert_eq!(link["mtu"], 1450);
    assert!(
        !link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "created down: {link}"
    );
    assert_eq!(data["id"], 4096);
    assert_eq!(data["port"], 4789);
    assert_eq!(data["local"], "198.18.0.1");
    assert_eq!(data["link"], "veth0");
    assert_eq!(data["learning"], false);

    let vx = nl.link_by_name("vxlan.calico").await.unwrap().unwrap();
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    nl.set_link(
        vx.index,
        &LinkAttrs {
            up: Some(true),
            ..LinkAttrs::default()
        },
    )
    .await
    .unwrap();
    nl.add_address(vx.index, net("100.64.7.0/32"))
        .await
        .unwrap();
    nl.del_address(vx.index, net("100.64.7.0/32"))
        .await
        .unwrap();
    assert!(
        nl.del_address(vx.index, net("100.64.7.0/32"))
            .await
            .unwrap_err()
            .is_not_found()
    );

    // Neighbours: permanent, replaced in place, deleted.
    let n = Neighbour {
        index: vx.index,
        ip: ip("100.64.8.0"),
        mac: [0x66, 0, 0, 0, 0, 2],
        permanent: true,
    };
    nl.set_neighbour(&n).await.unwrap();
    let n2 = Neighbour {
        mac: [0x66, 0, 0, 0, 0, 3],
        ..n.clone()
    };
    nl.set_neighbour(&n2).await.unwrap();
    assert_eq!(
        nl.neighbours(Some(vx.index)).await.unwrap(),
        std::slice::from_ref(&n2)
    );
    assert!(nl.neighbours(None).await.unwrap().contains(&n2));
    let k = json(&ns, &["neigh", "show", "dev", "vxlan.calico"]);
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0]["dst"], "100.64.8.0");
    assert_eq!(k[0]["lladdr"], "66:00:00:00:00:03");
    assert_eq!(k[0]["state"], serde_json::json!(["PERMANENT"]));
    nl.del_neighbour(vx.index, n.ip).await.unwrap();
    assert!(json(&ns, &["neigh", "show", "dev", "vxlan.calico"]).is_empty());
    assert!(
        nl.del_neighbour(vx.index, n.ip)
            .await
            .unwrap_err()
            .is_not_found()
    );
    // Not permanent: reachable.
    let soft = Neighbour {
        permanent: false,
        ..n.clone()
    };
    nl.set_neighbour(&soft).await.unwrap();
    assert_eq!(
        nl.neighbours(Some(vx.index)).await.unwrap(),
        std::slice::from_ref(&soft)
    );
    nl.del_neighbour(vx.index, n.ip).await.unwrap();

    // FDB: what `bridge fdb replace MAC dev vxlan.calico dst IP` makes.
    let e = FdbEntry {
        index: vx.index,
        mac: [0x66, 0, 0, 0, 0, 2],
        dst: ip("198.18.0.2"),
    };
    nl.set_fdb(&e).await.unwrap();
    assert_eq!(nl.fdb(vx.index).await.unwrap(), std::slice::from_ref(&e));
    let k = bridge_json(&ns, &["fdb", "show", "dev", "vxlan.calico"]);
    let ours: Vec<&Value> = k
        .iter()
        .filter(|x| x["mac"] == "66:00:00:00:00:02")
        .collect();
    assert_eq!(ours.len(), 1, "{k:?}");
    assert_eq!(ours[0]["dst"], "198.18.0.2");
    assert_eq!(ours[0]["state"], "permanent");
    assert_eq!(ours[0]["flags"], serde_json::json!(["self"]));
    let e2 = FdbEntry {
        dst: ip("198.18.0.3"),
        ..e.clone()
    };
    nl.set_fdb(&e2).await.unwrap();
    assert_eq!(nl.fdb(vx.index).await.unwrap(), std::slice::from_ref(&e2));
    assert!(nl.fdb(eth).await.unwrap().is_empty());
    nl.del_fdb(&e2).await.unwrap();
    assert!(nl.fdb(vx.index).await.unwrap().is_empty());
    assert!(
        !bridge_json(&ns, &["fdb", "show", "dev", "vxlan.calico"])
            .iter()
            .any(|x| x["mac"] == "66:00:00:00:00:02")
    );
    assert!(nl.del_fdb(&e2).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn ipip_support_matches_the_kernel() {
    let (ns, nl) = setup("ipip").await;
    // What `ip` says decides what we expect (this project's machines have no ipip).
    let probe = ns.ip(&["link", "add", "tdpprobe", "type", "ipip"]);
    let res = nl.create_ipip("tunl9").await;
    if probe.is_ok() {
        res.unwrap();
        return;
    }
    let e = res.unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("the kernel does not support ipip links (no ipip module)"),
        "{msg}"
    );
    assert!(msg.contains("tunl9"), "{msg}");
    println!("{msg}");
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::Receiver<NetlinkEvent>,
    want: impl Fn(&NetlinkEvent) -> bool,
) -> NetlinkEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no matching event within 10 s")
            .expect("monitor closed");
        if want(&ev) {
            return ev;
        }
    }
}

#[tokio::test]
async fn monitor_reports_changes_made_outside() {
    let (ns, nl) = setup("monitor").await;
    let eth = veth(&ns, &nl, "veth0", &["198.18.0.1/24"]).await;
    let r = Route::via_onlink(net("100.64.9.0/26"), ip("198.18.0.2"), eth);
    nl.add_route(&r).await.unwrap();
    let mut rx = monitor(Some(std::path::Path::new(&path(&ns)))).unwrap();

    // IPv6 link-local routes of the fresh veth may still come in: match on prefix.
    let to = |dst: IpNet| move |e: &NetlinkEvent| matches!(e, NetlinkEvent::Route { route, .. } if route.dst == dst);
    ns.ip(&["route", "del", "100.64.9.0/26"]).unwrap();
    let ev = next_event(&mut rx, to(r.dst)).await;
    assert_eq!(
        ev,
        NetlinkEvent::Route {
            deleted: true,
            route: r.clone()
        }
    );

    ns.ip(&["route", "add", "blackhole", "100.64.10.0/26", "proto", "80"])
        .unwrap();
    let ev = next_event(&mut rx, to(net("100.64.10.0/26"))).await;
    assert_eq!(
        ev,
        NetlinkEvent::Route {
            deleted: false,
            route: Route::blackhole(net("100.64.10.0/26"))
        }
    );

    ns.ip(&[
        "link", "add", "veth5", "type", "veth", "peer", "name", "veth6",
    ])
    .unwrap();
    let ev = next_event(
        &mut rx,
        |e| matches!(e, NetlinkEvent::Link { name, .. } if name == "veth5"),
    )
    .await;
    assert!(matches!(ev, NetlinkEvent::Link { deleted: false, .. }));

    ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.7",
        "lladdr",
        "66:00:00:00:00:07",
        "dev",
        "veth0",
        "nud",
        "permanent",
    ])
    .unwrap();
    next_event(&mut rx, |e| {
        *e == NetlinkEvent::Neighbour {
            deleted: false,
            index: eth,
        }
    })
    .await;

    ns.ip(&["link", "del", "veth5"]).unwrap();
    next_event(
        &mut rx,
        |e| matches!(e, NetlinkEvent::Link { deleted: true, name, .. } if name == "veth5"),
    )
    .await;
}

#[tokio::test]
async fn a_route_with_a_metric_lives_beside_the_hosts_own() {
    let (ns, nl) = setup("metric").await;
    let eth = veth(&ns, &nl, "veth0", &["198.18.0.1/24"]).await;
    // The host's own default route (metric 0, proto boot).
    ns.ip(&["route", "add", "default", "via", "198.18.0.254"])
        .unwrap();
    // A learned default at metric 32: added beside it, never replacing it.
    let learned = Route {
        metric: 32,
        ..Route::ecmp(
            net("0.0.0.0/0"),
            vec![NextHop {
                gateway: ip("198.18.0.9"),
                oif: None,
                onlink: false,
            }],
        )
    };
    nl.add_route(&learned).await.unwrap();
    nl.replace_route(&Route {
        gateway: Some(ip("198.18.0.8")),
        ..learned.clone()
    })
    .await
    .unwrap();
    let k = kernel_routes(&ns, "0.0.0.0/0");
    assert_eq!(k.len(), 2, "{k:?}");
    let host = k
        .iter()
        .find(|r| r["metric"].is_null())
        .expect("host's own");
    assert_eq!(host["gateway"], "198.18.0.254");
    let ours = k.iter().find(|r| r["metric"] == 32).expect("ours");
    assert_eq!(ours["gateway"], "198.18.0.8", "replace kept its metric");
    // Read back with its metric; deleted by it without touching the host's.
    let back = find(&nl, net("0.0.0.0/0")).await;
    assert!(
        back.iter().any(|r| r.metric == 32 && r.oif == Some(eth)),
        "{back:?}"
    );
    nl.del_route(&Route {
        gateway: Some(ip("198.18.0.8")),
        oif: Some(eth),
        ..learned
    })
    .await
    .unwrap();
    let k = kernel_routes(&ns, "0.0.0.0/0");
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0]["gateway"], "198.18.0.254");
}
