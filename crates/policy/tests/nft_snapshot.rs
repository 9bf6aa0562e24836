//! Snapshot of the rendered nftables JSON for a small model, written by hand.

use serde_json::Value;
use tabby_api::load::parse_documents;
use tabby_policy::model::Model;
use tabby_policy::nft::{Family, render, render_family};

const MODEL: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: web, labels: {app: a}}
spec: {ipNetworks: [10.0.0.1/32], interfaceName: cali-a, profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: b, namespace: web, labels: {app: b}}
spec: {ipNetworks: [10.0.0.2/32], interfaceName: cali-b, profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-a, namespace: web}
spec:
  selector: app == 'b'
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: app == 'a'}, destination: {ports: [80, "8000:8080"]}}
"#;

// Hand-checked. Order: the table replaced, named sets (by name), chains (by
// name; base chains `forward`, `input`, `output` among them), verdict maps (they
// jump to chains), then every chain's rules in order. Allow: mark |= 0x10000
// (65536), return. Endpoint chains clear it first (mark &= 0xfffeffff =
// 4294901759) and return once it is set. No host endpoints: the host endpoint
// maps are empty and `input`/`output` end in their vmap (policy accept). The
// maps jump straight to each interface's program chain; program and tier chains are named by a hash of the program's first
// interface (and direction), profile chains by a hash of their rules: a and b
// share the egress program (both only have the kns.web profile, so it is named
// after cali-a), b's ingress program jumps to its tier chain first. Since the
// workload-to-host change, `input` goes to `wl-to-host` for workload interfaces
// (their egress program, then DefaultEndpointToHostAction Drop).
const EXPECTED_IPV4: &str = r#"[
{"add": {"table": {"family": "ip", "name": "tabby"}}},
{"delete": {"table": {"family": "ip", "name": "tabby"}}},
{"add": {"table": {"family": "ip", "name": "tabby"}}},
{"add": {"set": {"comment": "selector app == \"a\" in namespace web", "elem": [{"prefix": {"addr": "10.0.0.1", "len": 32}}], "family": "ip", "flags": ["interval"], "name": "s-d031f8b5b0aa07b4", "table": "tabby", "type": "ipv4_addr"}}},
{"add": {"set": {"elem": ["cali-a", "cali-b"], "family": "ip", "name": "workload-interfaces", "table": "tabby", "type": "ifname"}}},
{"add": {"chain": {"family": "ip", "name": "failsafe-in", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "name": "failsafe-out", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "hook": "forward", "name": "forward", "policy": "accept", "prio": 0, "table": "tabby", "type": "filter"}}},
{"add": {"chain": {"family": "ip", "name": "from-workload-d9c093d9150823de", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "hook": "input", "name": "input", "policy": "accept", "prio": 0, "table": "tabby", "type": "filter"}}},
{"add": {"chain": {"family": "ip", "hook": "output", "name": "output", "policy": "accept", "prio": 0, "table": "tabby", "type": "filter"}}},
{"add": {"chain": {"family": "ip", "name": "pro-kns.web-46843bb0d18d8793", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "name": "pro-kns.web-61ca5cab7b224583", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "name": "tier-default-8f2cdbaf9c94a01e", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "name": "to-workload-8f2cdaaf9c949e6b", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "name": "to-workload-8f2cdbaf9c94a01e", "table": "tabby"}}},
{"add": {"chain": {"family": "ip", "name": "wl-to-host", "table": "tabby"}}},
{"add": {"map": {"elem": [["cali-a", {"jump": {"target": "from-workload-d9c093d9150823de"}}], ["cali-b", {"jump": {"target": "from-workload-d9c093d9150823de"}}]], "family": "ip", "map": "verdict", "name": "from-endpoint", "table": "tabby", "type": "ifname"}}},
{"add": {"map": {"family": "ip", "map": "verdict", "name": "from-host-endpoint", "table": "tabby", "type": "ifname"}}},
{"add": {"map": {"elem": [["cali-a", {"jump": {"target": "to-workload-8f2cdaaf9c949e6b"}}], ["cali-b", {"jump": {"target": "to-workload-8f2cdbaf9c94a01e"}}]], "family": "ip", "map": "verdict", "name": "to-endpoint", "table": "tabby", "type": "ifname"}}},
{"add": {"map": {"family": "ip", "map": "verdict", "name": "to-host-endpoint", "table": "tabby", "type": "ifname"}}},
{"add": {"rule": {"chain": "failsafe-in", "comment": "failsafe", "expr": [{"match": {"left": {"meta": {"key": "l4proto"}}, "op": "==", "right": 6}}, {"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "==", "right": {"set": [22, 179, 2379, 2380, 5473, 6443, 6666, 6667]}}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "failsafe-in", "comment": "failsafe", "expr": [{"match": {"left": {"meta": {"key": "l4proto"}}, "op": "==", "right": 17}}, {"match": {"left": {"payload": {"field": "dport", "protocol": "udp"}}, "op": "==", "right": 68}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "failsafe-out", "comment": "failsafe", "expr": [{"match": {"left": {"meta": {"key": "l4proto"}}, "op": "==", "right": 6}}, {"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "==", "right": {"set": [179, 2379, 2380, 5473, 6443, 6666, 6667]}}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "failsafe-out", "comment": "failsafe", "expr": [{"match": {"left": {"meta": {"key": "l4proto"}}, "op": "==", "right": 17}}, {"match": {"left": {"payload": {"field": "dport", "protocol": "udp"}}, "op": "==", "right": {"set": [53, 67]}}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "forward", "comment": "Unknown workload interface", "expr": [{"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "cali*"}}, {"match": {"left": {"meta": {"key": "iifname"}}, "op": "!=", "right": "@workload-interfaces"}}, {"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "forward", "comment": "Unknown workload interface", "expr": [{"match": {"left": {"meta": {"key": "oifname"}}, "op": "==", "right": "cali*"}}, {"match": {"left": {"meta": {"key": "oifname"}}, "op": "!=", "right": "@workload-interfaces"}}, {"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "forward", "expr": [{"match": {"left": {"ct": {"key": "state"}}, "op": "in", "right": ["established", "related"]}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "forward", "expr": [{"match": {"left": {"ct": {"key": "state"}}, "op": "in", "right": "invalid"}}, {"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "forward", "expr": [{"vmap": {"data": "@from-endpoint", "key": {"meta": {"key": "iifname"}}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "forward", "expr": [{"vmap": {"data": "@to-endpoint", "key": {"meta": {"key": "oifname"}}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "from-workload-d9c093d9150823de", "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "from-workload-d9c093d9150823de", "expr": [{"jump": {"target": "pro-kns.web-61ca5cab7b224583"}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "from-workload-d9c093d9150823de", "expr": [{"match": {"left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "op": "==", "right": 65536}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "from-workload-d9c093d9150823de", "comment": "Drop if no profiles matched", "expr": [{"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "input", "comment": "Unknown workload interface", "expr": [{"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "cali*"}}, {"match": {"left": {"meta": {"key": "iifname"}}, "op": "!=", "right": "@workload-interfaces"}}, {"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "input", "expr": [{"match": {"left": {"ct": {"key": "state"}}, "op": "in", "right": ["established", "related"]}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "input", "expr": [{"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "lo"}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "input", "comment": "Workload to host: egress policy, then DefaultEndpointToHostAction", "expr": [{"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "@workload-interfaces"}}, {"goto": {"target": "wl-to-host"}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "input", "expr": [{"vmap": {"data": "@from-host-endpoint", "key": {"meta": {"key": "iifname"}}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "output", "comment": "Unknown workload interface", "expr": [{"match": {"left": {"meta": {"key": "oifname"}}, "op": "==", "right": "cali*"}}, {"match": {"left": {"meta": {"key": "oifname"}}, "op": "!=", "right": "@workload-interfaces"}}, {"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "output", "expr": [{"match": {"left": {"ct": {"key": "state"}}, "op": "in", "right": ["established", "related"]}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "output", "expr": [{"match": {"left": {"meta": {"key": "oifname"}}, "op": "==", "right": "lo"}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "output", "comment": "Host to workload: always allowed", "expr": [{"match": {"left": {"meta": {"key": "oifname"}}, "op": "==", "right": "@workload-interfaces"}}, {"accept": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "output", "expr": [{"vmap": {"data": "@to-host-endpoint", "key": {"meta": {"key": "oifname"}}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "pro-kns.web-46843bb0d18d8793", "comment": "profile kns.web ingress[0]", "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "pro-kns.web-61ca5cab7b224583", "comment": "profile kns.web egress[0]", "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "tier-default-8f2cdbaf9c94a01e", "comment": "default web/allow-a ingress[0]", "expr": [{"match": {"left": {"meta": {"key": "l4proto"}}, "op": "==", "right": 6}}, {"match": {"left": {"payload": {"field": "saddr", "protocol": "ip"}}, "op": "==", "right": "@s-d031f8b5b0aa07b4"}}, {"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "==", "right": {"set": [80, {"range": [8000, 8080]}]}}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "tier-default-8f2cdbaf9c94a01e", "comment": "End of tier default. Drop if no policies passed packet", "expr": [{"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdaaf9c949e6b", "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdaaf9c949e6b", "expr": [{"jump": {"target": "pro-kns.web-46843bb0d18d8793"}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdaaf9c949e6b", "expr": [{"match": {"left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "op": "==", "right": 65536}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdaaf9c949e6b", "comment": "Drop if no profiles matched", "expr": [{"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdbaf9c94a01e", "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdbaf9c94a01e", "expr": [{"jump": {"target": "tier-default-8f2cdbaf9c94a01e"}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdbaf9c94a01e", "expr": [{"match": {"left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "op": "==", "right": 65536}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdbaf9c94a01e", "expr": [{"jump": {"target": "pro-kns.web-46843bb0d18d8793"}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdbaf9c94a01e", "expr": [{"match": {"left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "op": "==", "right": 65536}}, {"return": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "to-workload-8f2cdbaf9c94a01e", "comment": "Drop if no profiles matched", "expr": [{"drop": null}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "wl-to-host", "expr": [{"vmap": {"data": "@from-endpoint", "key": {"meta": {"key": "iifname"}}}}], "family": "ip", "table": "tabby"}}},
{"add": {"rule": {"chain": "wl-to-host", "comment": "DefaultEndpointToHostAction Drop", "expr": [{"drop": null}], "family": "ip", "table": "tabby"}}}
]"#;

fn compiled() -> tabby_policy::Compiled {
    let m = Model::from_resources(&parse_documents(MODEL, "m.yaml").unwrap()).unwrap();
    tabby_policy::compile(&m)
}

#[test]
fn ipv4_table() {
    let got = Value::Array(render_family(&compiled(), Family::Ipv4));
    let want: Value = serde_json::from_str(EXPECTED_IPV4).unwrap();
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "command {i} differs:\n got {g}\nwant {w}");
    }
    assert_eq!(got.len(), want.len());
}

#[test]
fn ipv6_table_has_the_empty_set_and_no_selector_rule() {
    let got = render_family(&compiled(), Family::Ipv6);
    assert_eq!(
        got[3],
        serde_json::json!({"add": {"set": {"family": "ip6", "table": "tabby", "name": "s-d031f8b5b0aa07b4",
            "type": "ipv6_addr", "flags": ["interval"], "comment": "selector app == \"a\" in namespace web"}}})
    );
    // The selector matches no IPv6 address, so the allow rule is left out; the
    // end-of-tier drop stays.
    let tier_rules: Vec<&Value> = got
        .iter()
        .filter(|c| {
            c["add"]["rule"]["chain"]
                .as_str()
                .is_some_and(|n| n.starts_with("tier-default-"))
        })
        .collect();
    assert_eq!(tier_rules.len(), 1);
    assert_eq!(
        tier_rules[0]["add"]["rule"]["expr"],
        serde_json::json!([{"drop": null}])
    );
    let all = render(&compiled());
    let v4 = render_family(&compiled(), Family::Ipv4);
    assert_eq!(
        all["nftables"].as_array().unwrap().len(),
        v4.len() + got.len()
    );
    assert_eq!(
        v4.len() + 2,
        got.len(),
        "IPv4 has the allow rule in addition, IPv6 the two neighbour discovery rules \
         and the workload-to-host one"
    );
}
