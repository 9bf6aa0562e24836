//! natOutgoing with real nftables and real traffic (needs root): a pod, a node that
//! forwards, an outside host that can route back to the pods, and a second pod
//! network. A TCP listener reports the source address it sees.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tabby_dataplane::NetnsFile;
use tabby_node::firewall;
use tabby_node::nat::{NatInputs, Nft, NftCli};
use tabby_testnet::{End, Netns, TestNet, require_root};

/// Runs `f` on a thread inside `ns`; sockets made there stay in `ns`.
fn in_ns<T, F>(ns: &Netns, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let file = NetnsFile::open(format!("/run/netns/{}", ns.name())).expect("open netns");
    file.run(move || Ok(f())).expect("enter netns")
}

/// The source address `to` sees when `from` connects to `to_addr` over TCP.
fn seen_source(from: &Netns, to: &Netns, to_addr: IpAddr) -> IpAddr {
    let listener = in_ns(to, move || TcpListener::bind(SocketAddr::new(to_addr, 0))).unwrap();
    let target = listener.local_addr().unwrap();
    let client = in_ns(from, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5))
    })
    .unwrap_or_else(|e| panic!("connect from {} to {target}: {e}", from.name()));
    // The handshake is done, so the connection is already in the accept queue.
    let (_conn, peer) = listener.accept().unwrap();
    drop(client);
    peer.ip()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(s: &[&str]) -> Vec<ipnet::IpNet> {
    s.iter().map(|n| n.parse().unwrap()).collect()
}

/// `nft -j list tables` in `ns`: the (family, name) of every table.
fn tables(ns: &Netns) -> Vec<(String, String)> {
    let out = ns.output(&["nft", "-j", "list", "tables"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("table"))
        .map(|t| {
            (
                t["family"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn count(listing: &serde_json::Value, kind: &str) -> usize {
    listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o.get(kind).is_some())
        .count()
}

struct Net {
    _tn: TestNet,
    pod: Netns,
    node: Netns,
    outside: Netns,
    peer: Netns,
}

/// pod 100.64.0.10 / 2001:db8:64::10 -- node (forwarding) -- outside 198.18.0.2 /
/// 2001:db8:18::2, and peer 100.64.1.10 on a second node link. The outside host
/// routes the pod ranges back to the node, so un-NATed traffic works too and the
/// source address it sees is what tells the cases apart.
fn topology(tag: &str) -> Net {
    require_root();
    let tn = TestNet::with_prefix(&format!("tnat-{}-{tag}", std::process::id()));
    let pod = tn.netns("pod").unwrap();
    let node = tn.router("node").unwrap();
    let outside = tn.netns("outside").unwrap();
    let peer = tn.netns("peer").unwrap();
    tn.veth(
        End::new(&pod, "eth0", &["100.64.0.10/24", "2001:db8:64::10/64"]),
        End::new(&node, "pod0", &["100.64.0.1/24", "2001:db8:64::1/64"]),
    )
    .unwrap();
    tn.veth(
        End::new(&peer, "eth0", &["100.64.1.10/24"]),
        End::new(&node, "pod1", &["100.64.1.1/24"]),
    )
    .unwrap();
    tn.veth(
        End::new(&outside, "eth0", &["198.18.0.2/24", "2001:db8:18::2/64"]),
        End::new(&node, "eth0", &["198.18.0.1/24", "2001:db8:18::1/64"]),
    )
    .unwrap();
    pod.add_route("default", "100.64.0.1").unwrap();
    pod.add_route("default", "2001:db8:64::1").unwrap();
    peer.add_route("default", "100.64.1.1").unwrap();
    outside.add_route("100.64.0.0/10", "198.18.0.1").unwrap();
    outside
        .add_route("2001:db8:64::/48", "2001:db8:18::1")
        .unwrap();
    Net {
        _tn: tn,
        pod,
        node,
        outside,
        peer,
    }
}

fn cluster_inputs() -> NatInputs {
    NatInputs {
        masq_pools: nets(&["100.64.0.0/16", "2001:db8:64::/48"]),
        all_pools: nets(&["100.64.0.0/16", "100.66.0.0/16", "2001:db8:64::/48"]),
    }
}

#[test]
fn masquerades_to_the_outside_but_not_between_pools() {
    let n = topology("m");
    let nft = NftCli::in_netns(n.node.name());

    // Without NAT the outside host sees the pod itself.
    assert_eq!(
        seen_source(&n.pod, &n.outside, ip("198.18.0.2")),
        ip("100.64.0.10")
    );

    nft.apply_json(&firewall::render(Some(&cluster_inputs()), None))
        .unwrap();
    assert_eq!(
        seen_source(&n.pod, &n.outside, ip("198.18.0.2")),
        ip("198.18.0.1"),
        "pod -> outside must leave with the node's address"
    );
    assert_eq!(
        seen_source(&n.pod, &n.outside, ip("2001:db8:18::2")),
        ip("2001:db8:18::1"),
        "IPv6 pod -> outside must leave with the node's address"
    );
    assert_eq!(
        seen_source(&n.pod, &n.peer, ip("100.64.1.10")),
        ip("100.64.0.10"),
        "pod -> another pool address must keep the pod's address"
    );

    let v4 = nft.list_table("ip").unwrap().expect("table ip tabby");
    let text = v4.to_string();
    assert!(text.contains(r#""name":"masq-ipam-pools""#), "{text}");
    assert!(
        text.contains(r#"{"prefix":{"addr":"100.66.0.0","len":16}}"#),
        "{text}"
    );
    assert!(text.contains(r#""masquerade""#), "{text}");
    assert!(nft.list_table("ip6").unwrap().is_some());
}

#[test]
fn apply_is_idempotent_and_replaces_the_whole_table() {
    let n = topology("i");
    let nft = NftCli::in_netns(n.node.name());
    let batch = firewall::render(Some(&cluster_inputs()), None);
    nft.apply_json(&batch).unwrap();
    nft.apply_json(&batch).unwrap();
    let listing = nft.list_table("ip").unwrap().unwrap();
    assert_eq!(count(&listing, "rule"), 1, "{listing}");
    assert_eq!(count(&listing, "set"), 2, "{listing}");
    assert_eq!(count(&listing, "chain"), 1, "{listing}");
    assert_eq!(
        seen_source(&n.pod, &n.outside, ip("198.18.0.2")),
        ip("198.18.0.1")
    );

    // The pod's pool loses natOutgoing: the new script swaps the sets at once.
    let no_nat = NatInputs {
        masq_pools: vec![],
        all_pools: nets(&["100.64.0.0/16"]),
    };
    nft.apply_json(&firewall::render(Some(&no_nat), None))
        .unwrap();
    let listing = nft.list_table("ip").unwrap().unwrap();
    assert_eq!(count(&listing, "rule"), 1, "{listing}");
    assert_eq!(
        seen_source(&n.pod, &n.outside, ip("198.18.0.2")),
        ip("100.64.0.10")
    );
}

#[test]
fn delete_tables_leaves_no_tabby_table() {
    let n = topology("d");
    let nft = NftCli::in_netns(n.node.name());
    // Deleting what is not there is fine.
    nft.delete_tables().unwrap();
    nft.apply_json(&firewall::render(Some(&cluster_inputs()), None))
        .unwrap();
    let before = tables(&n.node);
    assert!(
        before.contains(&("ip".into(), "tabby".into())),
        "{before:?}"
    );
    assert!(
        before.contains(&("ip6".into(), "tabby".into())),
        "{before:?}"
    );

    nft.delete_tables().unwrap();
    let after = tables(&n.node);
    assert!(after.iter().all(|(_, name)| name != "tabby"), "{after:?}");
    assert_eq!(nft.list_table("ip").unwrap(), None);
    assert_eq!(nft.list_table("ip6").unwrap(), None);
    nft.delete_tables().unwrap();
    assert_eq!(
        seen_source(&n.pod, &n.outside, ip("198.18.0.2")),
        ip("100.64.0.10")
    );
}

#[test]
fn a_bad_script_is_reported_with_nft_s_message() {
    let n = topology("e");
    let nft = NftCli::in_netns(n.node.name());
    let err = nft
        .apply("table ip tabby { chain c { bogus } }\n")
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("nft -f -"), "{msg}");
    assert!(msg.contains("Error"), "{msg}");
    assert!(tables(&n.node).is_empty());
}
