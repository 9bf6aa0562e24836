//! Incremental updates for real: the full state of one model applied in a node
//! namespace, then the diff to the next model; the kernel must then hold exactly
//! what a full apply of the next model gives (normalised `nft -j list table`), an
//! established flow whose policy went away must keep flowing (conntrack), new
//! flows must see the new policy, and chains the change did not touch must keep
//! their rules (same rule handles). Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Lab, OutSpec, PodSpec, Proto};
use tabby_api::load::parse_documents;
use tabby_policy::compile::{Compiled, compile_for_node};
use tabby_policy::model::Model;
use tabby_policy::nft::{Ruleset, batch, diff, ruleset};

const PODS: &[PodSpec] = &[
    PodSpec {
        key: "web/a",
        iface: "cali-a",
        v4: "100.64.7.1",
        v6: None,
    },
    PodSpec {
        key: "web/b",
        iface: "cali-b",
        v4: "100.64.7.2",
        v6: None,
    },
    PodSpec {
        key: "web/c",
        iface: "cali-c",
        v4: "100.64.7.3",
        v6: None,
    },
];

const OUTS: &[OutSpec] = &[OutSpec {
    name: "out",
    host_iface: "eth1",
    node_ip: "198.18.2.1",
    ip: "198.18.2.2",
}];

const ENDPOINTS: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: web, labels: {app: a}}
spec: {node: n1, interfaceName: cali-a, ipNetworks: [100.64.7.1/32], profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: b, namespace: web, labels: {app: b}}
spec: {node: n1, interfaceName: cali-b, ipNetworks: [100.64.7.2/32], profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: c, namespace: web, labels: {app: c, role: client}}
spec: {node: n1, interfaceName: cali-c, ipNetworks: [100.64.7.3/32], profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: remote, namespace: web, labels: {app: a}}
spec: {node: n2, interfaceName: cali-r, ipNetworks: [100.64.8.1/32], profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth1, labels: {hep: "true"}}
spec: {node: n1, interfaceName: eth1}
"#;

/// Before: b admits a on 8080 and nobody on 9090; c admits nothing but 22.
const BEFORE: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-in, namespace: web}
spec:
  selector: app == 'b'
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: app == 'a'}, destination: {ports: [8080]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: c-in, namespace: web}
spec:
  selector: app == 'c'
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [22]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: old-host}
spec:
  selector: hep == 'true'
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [8080]}}
"#;

/// After: b admits a and role == client on 9090 only (a changed rule, a new
/// set); c-in is unchanged; the host endpoint policy is replaced by another.
const AFTER: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-in, namespace: web}
spec:
  selector: app == 'b'
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: app == 'a' || role == 'client'}, destination: {ports: [9090]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: c-in, namespace: web}
spec:
  selector: app == 'c'
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [22]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: new-host}
spec:
  selector: hep == 'true'
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [9090]}}
"#;

fn compiled(policy: &str) -> (Model, Compiled) {
    let text = format!("{ENDPOINTS}---{policy}");
    let m = Model::from_resources(&parse_documents(&text, "m.yaml").expect("load")).expect("model");
    let c = compile_for_node(&m, "n1");
    (m, c)
}

/// Rule handles per chain, from a listing.
fn handles(listing: &Value) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in listing["nftables"].as_array().expect("array") {
        if let Some(r) = o.get("rule") {
            out.entry(r["chain"].as_str().expect("chain").to_string())
                .or_default()
                .push(r["handle"].as_u64().expect("handle"));
        }
    }
    out
}

/// The ingress program chain the `to-endpoint` map sends an interface to.
fn target(rs: &Ruleset, iface: &str) -> String {
    let map = &rs.tables[0].sets["to-endpoint"];
    let elem = map
        .elems
        .iter()
        .find(|e| e[0] == iface)
        .unwrap_or_else(|| panic!("{iface} is not in the to-endpoint map"));
    elem[1]["jump"]["target"]
        .as_str()
        .expect("jump")
        .to_string()
}

fn changed_chains(old: &Ruleset, new: &Ruleset) -> (Vec<String>, Vec<String>) {
    let (o, n) = (&old.tables[0], &new.tables[0]);
    let mut same = Vec::new();
    let mut changed = Vec::new();
    for (name, c) in &n.chains {
        match o.chains.get(name) {
            Some(oc) if oc == c => same.push(name.clone()),
            Some(_) => changed.push(name.clone()),
            None => {}
        }
    }
    (same, changed)
}

#[test]
fn diff_applied_in_the_kernel_equals_a_full_apply_and_keeps_flows() {
    let started = Instant::now();
    let (_, before) = compiled(BEFORE);
    let (_, after) = compiled(AFTER);
    let (rs_before, rs_after) = (ruleset(&before), ruleset(&after));
    let update = diff(&rs_before, &rs_after);
    assert!(!update.is_empty());
    assert!(
        update
            .iter()
            .all(|c| c.get("delete").is_none_or(|d| d.get("table").is_none())),
        "an update never deletes the table"
    );
    assert!(
        diff(&rs_after, &rs_after).is_empty(),
        "no change, no commands"
    );

    let lab = Lab::new("tpi", PODS, OUTS);
    let b_ns = lab.ns_name("web/b");
    let a_ns = lab.ns_name("web/a");
    let c_ns = lab.ns_name("web/c");
    support::tcp_echo_server(&b_ns, 8080);
    support::tcp_echo_server(&b_ns, 9090);
    lab.nft(&batch(rs_before.commands())).expect("full apply");
    let listing_before = lab.list_table("ip");

    let t = Duration::from_millis(800);
    let b8080: SocketAddr = "100.64.7.2:8080".parse().expect("addr");
    let b9090: SocketAddr = "100.64.7.2:9090".parse().expect("addr");
    let mut flow = support::connect(&a_ns, b8080, t).expect("a reaches b:8080 before");
    assert!(support::echo(&mut flow, t), "echo before the update");
    assert!(
        support::connect(&a_ns, b9090, t).is_err(),
        "b:9090 closed before"
    );
    let out_ns = lab.ns_name("out");
    let node_ip = "198.18.2.1".parse().expect("addr");
    lab.serve("node", Proto::Tcp, 8080);
    lab.serve("node", Proto::Tcp, 9090);
    assert!(
        support::probe(&out_ns, node_ip, Proto::Tcp, 8080, t),
        "host endpoint admits 8080 before"
    );
    assert!(
        !support::probe(&out_ns, node_ip, Proto::Tcp, 9090, t),
        "host endpoint denies 9090 before"
    );

    let applied = Instant::now();
    lab.nft(&batch(update.clone())).expect("diff applies");
    let apply_time = applied.elapsed();
    let listing_diffed = lab.list_table("ip");
    let listing_diffed6 = lab.list_table("ip6");

    // The established flow survives: conntrack accepts it before any policy.
    assert!(
        support::echo(&mut flow, t),
        "established flow survives the update"
    );
    assert!(
        support::connect(&a_ns, b8080, t).is_err(),
        "new flows to b:8080 are denied after"
    );
    assert!(
        support::connect(&a_ns, b9090, t).is_ok(),
        "a reaches b:9090 after"
    );
    assert!(
        support::connect(&c_ns, b9090, t).is_ok(),
        "c (role == client, a new set) reaches b:9090 after"
    );
    assert!(
        !support::probe(&out_ns, node_ip, Proto::Tcp, 8080, t),
        "the old host endpoint policy is gone"
    );
    assert!(
        support::probe(&out_ns, node_ip, Proto::Tcp, 9090, t),
        "the new host endpoint policy is in"
    );

    // Untouched chains keep their rules (same handles); changed ones were refilled.
    // Program and tier chains are named after their first interface, not their
    // rules: b's ingress program chain keeps its name and its rules (it jumps to
    // the same tier chain name), and only its tier chain is refilled; c's chains
    // are untouched.
    let (same, changed) = changed_chains(&rs_before, &rs_after);
    let c_before = target(&rs_before, "cali-c");
    assert_eq!(c_before, target(&rs_after, "cali-c"));
    assert!(same.contains(&c_before), "{same:?}");
    let b_before = target(&rs_before, "cali-b");
    assert_eq!(b_before, target(&rs_after, "cali-b"));
    assert!(same.contains(&b_before), "{same:?}");
    assert!(
        changed.iter().any(|c| c.starts_with("tier-default-")),
        "{changed:?}"
    );
    assert!(same.len() >= 8, "{same:?}");
    let (hb, hd) = (handles(&listing_before), handles(&listing_diffed));
    for c in &same {
        assert_eq!(hb.get(c), hd.get(c), "chain {c} was not touched");
    }
    for c in &changed {
        assert_ne!(hb.get(c), hd.get(c), "chain {c} was refilled");
    }

    // The same state as a full apply of the new model.
    lab.nft(&batch(rs_after.commands()))
        .expect("full apply of after");
    let full = lab.list_table("ip");
    let full6 = lab.list_table("ip6");
    assert_eq!(
        support::normalise(&listing_diffed),
        support::normalise(&full)
    );
    assert_eq!(
        support::normalise(&listing_diffed6),
        support::normalise(&full6)
    );
    eprintln!(
        "same {same:?}\nchanged {changed:?}\ndiff: {} commands (full: {}), applied in {apply_time:?}; test {:?}",
        update.len(),
        rs_after.commands().len(),
        started.elapsed()
    );
}
