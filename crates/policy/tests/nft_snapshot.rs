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

// Allow: mark |= 0x10000 (65536), return. Endpoint chains clear it first
// (mark &= 0xfffeffff = 4294901759) and return once it is set.
const EXPECTED_IPV4: &str = r#"[
{"add": {"table": {"family": "ip", "name": "tabby"}}},
{"delete": {"table": {"family": "ip", "name": "tabby"}}},
{"add": {"table": {"family": "ip", "name": "tabby"}}},
{"add": {"set": {"family": "ip", "table": "tabby", "name": "s0", "type": "ipv4_addr", "flags": ["interval"],
  "comment": "selector app == \"a\" in namespace web",
  "elem": [{"prefix": {"addr": "10.0.0.1", "len": 32}}]}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "fw-cali-a"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "fw-cali-a-pro-kns.web"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "tw-cali-a"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "tw-cali-a-pro-kns.web"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "fw-cali-b"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "fw-cali-b-pro-kns.web"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "tw-cali-b"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "tw-cali-b-tier-default"}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "tw-cali-b-pro-kns.web"}}},
{"add": {"map": {"family": "ip", "table": "tabby", "name": "from-endpoint", "type": "ifname", "map": "verdict",
  "elem": [["cali-a", {"jump": {"target": "fw-cali-a"}}], ["cali-b", {"jump": {"target": "fw-cali-b"}}]]}}},
{"add": {"map": {"family": "ip", "table": "tabby", "name": "to-endpoint", "type": "ifname", "map": "verdict",
  "elem": [["cali-a", {"jump": {"target": "tw-cali-a"}}], ["cali-b", {"jump": {"target": "tw-cali-b"}}]]}}},
{"add": {"chain": {"family": "ip", "table": "tabby", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "forward", "expr": [
  {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "forward", "expr": [
  {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "forward", "expr": [
  {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@from-endpoint"}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "forward", "expr": [
  {"vmap": {"key": {"meta": {"key": "oifname"}}, "data": "@to-endpoint"}}]}}},

{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-a", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-a", "expr": [{"jump": {"target": "fw-cali-a-pro-kns.web"}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-a", "expr": [
  {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "right": 65536}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-a-pro-kns.web", "comment": "profile kns.web egress[0]", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-a", "comment": "Drop if no profiles matched", "expr": [{"drop": null}]}}},

{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-a", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-a", "expr": [{"jump": {"target": "tw-cali-a-pro-kns.web"}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-a", "expr": [
  {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "right": 65536}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-a-pro-kns.web", "comment": "profile kns.web ingress[0]", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-a", "comment": "Drop if no profiles matched", "expr": [{"drop": null}]}}},

{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-b", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-b", "expr": [{"jump": {"target": "fw-cali-b-pro-kns.web"}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-b", "expr": [
  {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "right": 65536}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-b-pro-kns.web", "comment": "profile kns.web egress[0]", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "fw-cali-b", "comment": "Drop if no profiles matched", "expr": [{"drop": null}]}}},

{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 4294901759]}}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b", "expr": [{"jump": {"target": "tw-cali-b-tier-default"}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b", "expr": [
  {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "right": 65536}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b-tier-default", "comment": "default web/allow-a ingress[0]", "expr": [
  {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 6}},
  {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@s0"}},
  {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, {"range": [8000, 8080]}]}}},
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b-tier-default",
  "comment": "End of tier default. Drop if no policies passed packet", "expr": [{"drop": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b", "expr": [{"jump": {"target": "tw-cali-b-pro-kns.web"}}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b", "expr": [
  {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 65536]}, "right": 65536}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b-pro-kns.web", "comment": "profile kns.web ingress[0]", "expr": [
  {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 65536]}}}, {"return": null}]}}},
{"add": {"rule": {"family": "ip", "table": "tabby", "chain": "tw-cali-b", "comment": "Drop if no profiles matched", "expr": [{"drop": null}]}}}
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
        serde_json::json!({"add": {"set": {"family": "ip6", "table": "tabby", "name": "s0",
            "type": "ipv6_addr", "flags": ["interval"], "comment": "selector app == \"a\" in namespace web"}}})
    );
    // The selector matches no IPv6 address, so the allow rule is left out; the
    // end-of-tier drop stays.
    let tier_rules: Vec<&Value> = got
        .iter()
        .filter(|c| c["add"]["rule"]["chain"] == "tw-cali-b-tier-default")
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
        v4.len(),
        got.len() + 1,
        "IPv4 has the allow rule in addition"
    );
}
