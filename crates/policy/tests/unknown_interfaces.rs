//! Fail closed (issue 17): every family's `forward`, `input` and `output` chains
//! start by dropping traffic from or to an interface with a workload prefix
//! (FelixConfiguration `interfacePrefix`, default `cali`) that is not in
//! `workload-interfaces`; the incremental engine renders the same, also when the
//! prefixes change.

use serde_json::{Value, json};
use tabby_api::load::parse_documents;
use tabby_policy::compile::compile_for_node;
use tabby_policy::incremental::Engine;
use tabby_policy::model::Model;
use tabby_policy::nft::{Family, Ruleset, ruleset};

const WEP: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: web}
spec: {node: n1, ipNetworks: [100.64.0.1/32, "2001:db8::1/128"], interfaceName: cali-a, profiles: [kns.web]}
"#;

const FELIX: &str = r#"
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {interfacePrefix: "cali,tap"}
"#;

fn drop_rule(key: &str, prefix: &str) -> Value {
    json!([
        {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": format!("{prefix}*")}},
        {"match": {"op": "!=", "left": {"meta": {"key": key}}, "right": "@workload-interfaces"}},
        {"drop": null}
    ])
}

/// The first `n` rules' expressions of `chain` in `family`'s table.
fn head(rs: &Ruleset, family: Family, chain: &str, n: usize) -> Vec<Value> {
    let t = rs.tables.iter().find(|t| t.family == family).unwrap();
    t.chains[chain]
        .rules
        .iter()
        .take(n)
        .map(|r| r["expr"].clone())
        .collect()
}

fn check(rs: &Ruleset, prefixes: &[&str]) {
    for family in [Family::Ipv4, Family::Ipv6] {
        let mut fwd: Vec<Value> = prefixes.iter().map(|p| drop_rule("iifname", p)).collect();
        fwd.extend(prefixes.iter().map(|p| drop_rule("oifname", p)));
        assert_eq!(head(rs, family, "forward", fwd.len()), fwd, "{family:?}");
        let inp: Vec<Value> = prefixes.iter().map(|p| drop_rule("iifname", p)).collect();
        assert_eq!(head(rs, family, "input", inp.len()), inp, "{family:?}");
        let out: Vec<Value> = prefixes.iter().map(|p| drop_rule("oifname", p)).collect();
        assert_eq!(head(rs, family, "output", out.len()), out, "{family:?}");
    }
}

#[test]
fn base_chains_drop_unknown_workload_interfaces_first() {
    let wep = parse_documents(WEP, "wep.yaml").unwrap();
    let felix = parse_documents(FELIX, "felix.yaml").unwrap();

    let full = |rs: &[tabby_api::Resource]| {
        ruleset(&compile_for_node(&Model::from_resources(rs).unwrap(), "n1"))
    };
    check(&full(&wep), &["cali"]);
    let both: Vec<_> = wep.iter().chain(&felix).cloned().collect();
    check(&full(&both), &["cali", "tap"]);

    let mut e = Engine::new("n1");
    for r in &wep {
        e.put(r).unwrap();
    }
    e.take_update();
    assert_eq!(e.ruleset(), full(&wep));
    for r in &felix {
        e.put(r).unwrap();
    }
    e.take_update();
    assert_eq!(e.ruleset(), full(&both));
    check(&e.ruleset(), &["cali", "tap"]);
}
