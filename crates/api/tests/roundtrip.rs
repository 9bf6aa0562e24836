//! Realistic Calico manifests (tests/fixtures, in the shapes Calico's docs use) load,
//! validate, and come back out as they went in (AS numbers as the plain number, as
//! Calico stores them); the repository's examples behave as the README says.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tabby_api::load::{parse_documents, to_json, to_yaml};
use tabby_api::{Kind, Resource};

fn fixtures() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "fixtures missing: {files:?}");
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The input documents as plain JSON, lists expanded into their items.
fn input_values(text: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
    docs.into_iter()
        .flat_map(|d| {
            if d["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
                d["items"].as_array().unwrap().clone()
            } else {
                vec![d]
            }
        })
        .collect()
}

/// The input as Calico stores it: AS numbers written as strings (`"1.10"`,
/// `"4200000001"`) become plain numbers.
fn as_calico_stores(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("asNumber" | "localASNumber", Value::String(s)) => {
                            let asn: tabby_api::ASNumber = s.parse().unwrap();
                            Value::from(asn.get())
                        }
                        _ => as_calico_stores(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_calico_stores).collect()),
        other => other.clone(),
    }
}

#[test]
fn fixtures_load_and_lose_nothing() {
    let mut kinds = std::collections::BTreeSet::new();
    for (path, text) in fixtures() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let resources = parse_documents(&text, &name).unwrap_or_else(|e| panic!("{e}"));
        let inputs = input_values(&text);
        assert_eq!(resources.len(), inputs.len(), "{name}");
        for (r, input) in resources.iter().zip(&inputs) {
            kinds.insert(r.kind());
            assert_eq!(
                r.to_json_value(),
                as_calico_stores(input),
                "{name}: {} {} changed on the way through",
                r.kind(),
                r.name()
            );
        }
    }
    assert_eq!(
        kinds.len(),
        Kind::all().len(),
        "every kind has a fixture: {kinds:?}"
    );
}

#[test]
fn yaml_and_json_output_reads_back_equal() {
    for (path, text) in fixtures() {
        let name = path.display().to_string();
        let resources = parse_documents(&text, &name).unwrap();
        for r in &resources {
            let one = std::slice::from_ref(r);
            assert_eq!(
                parse_documents(&to_yaml(one), "out.yaml").unwrap(),
                one,
                "{name}"
            );
            assert_eq!(
                parse_documents(&to_json(one), "out.json").unwrap(),
                one,
                "{name}"
            );
        }
        assert_eq!(
            parse_documents(&to_yaml(&resources), "all.yaml").unwrap(),
            resources
        );
        assert_eq!(
            parse_documents(&to_json(&resources), "all.json").unwrap(),
            resources
        );
    }
}

#[test]
fn defaults_keep_fixtures_valid_and_are_stable() {
    for (path, text) in fixtures() {
        let name = path.display().to_string();
        for mut r in parse_documents(&text, &name).unwrap() {
            r.apply_defaults();
            r.validate()
                .unwrap_or_else(|e| panic!("{name}: defaults broke it: {e}"));
            let again = parse_documents(&to_yaml(std::slice::from_ref(&r)), "x").unwrap();
            let mut back = again.into_iter().next().unwrap();
            back.apply_defaults();
            assert_eq!(back, r, "{name}");
        }
    }
}

#[test]
fn asdot_and_string_as_numbers_come_out_plain() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bgp.yaml"),
    )
    .unwrap();
    let rs = parse_documents(&text, "bgp.yaml").unwrap();
    let peer = rs.iter().find(|r| r.name() == "rack1-tor").unwrap();
    let yaml = to_yaml(std::slice::from_ref(peer));
    assert!(yaml.contains("asNumber: 65546\n"), "{yaml}");
    assert!(!yaml.contains("1.10"), "{yaml}");
    assert_eq!(peer.to_json_value()["spec"]["asNumber"], 65546);
}

#[test]
fn ipamconfig_is_an_alias() {
    let text = "apiVersion: projectcalico.org/v3\nkind: IPAMConfig\nmetadata:\n  name: default\nspec:\n  strictAffinity: false\n  autoAllocateBlocks: true\n";
    let r = parse_documents(text, "ipam.yaml").unwrap().remove(0);
    assert_eq!(r.kind(), Kind::IPAMConfiguration);
    let out = to_yaml(&[r]);
    assert!(out.contains("kind: IPAMConfiguration"), "{out}");
    let e = parse_documents(&text.replace("name: default", "name: other"), "ipam.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "ipam.yaml:4: IPAMConfiguration \"other\": metadata.name: \"other\": the IPAMConfiguration must be named \"default\""
    );
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn readme_example_cluster_is_valid() {
    let mut rs = parse_documents(&example("cluster.yaml"), "cluster.yaml").unwrap();
    assert_eq!(rs.len(), 6);
    for r in &mut rs {
        r.apply_defaults();
        r.validate().unwrap();
    }
    let pool = rs[0].spec.as_ip_pool().unwrap();
    assert_eq!(
        serde_json::to_value(pool).unwrap(),
        serde_json::json!({
            "cidr": "100.64.0.0/16", "blockSize": 26, "natOutgoing": true,
            "vxlanMode": "CrossSubnet", "ipipMode": "Never", "nodeSelector": "all()",
            "allowedUses": ["Workload", "Tunnel"], "assignmentMode": "Automatic",
        })
    );
    let pools: Vec<Resource> = rs
        .iter()
        .filter(|r| r.kind() == Kind::IPPool)
        .cloned()
        .collect();
    tabby_api::validate_pool_overlaps(&pools[0], &pools[1..]).unwrap();
    let bgp = rs[1].spec.as_bgp_configuration().unwrap();
    assert_eq!(bgp.effective_as_number(), 64512);
    assert!(!bgp.effective_mesh());
}

#[test]
fn broken_example_names_every_problem() {
    let e = parse_documents(&example("broken-pool.yaml"), "examples/broken-pool.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "examples/broken-pool.yaml:15: IPPool \"bad-pool\": spec.cidr: 100.66.0.1/16 has host bits set; the network is 100.66.0.0/16\n\
         examples/broken-pool.yaml:16: IPPool \"bad-pool\": spec.blockSize: 19 is outside 20..=32 for IPv4"
    );
}

#[test]
fn overlapping_pools_are_refused() {
    let text = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 100.64.0.0/16}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 100.64.128.0/17}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: c}\nspec: {cidr: fd00::/48}\n";
    let rs = parse_documents(text, "p").unwrap();
    let e = tabby_api::validate_pool_overlaps(&rs[1], &rs[..1]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "IPPool \"b\": spec.cidr: 100.64.128.0/17 overlaps IPPool \"a\" (100.64.0.0/16)"
    );
    assert!(tabby_api::validate_pool_overlaps(&rs[2], &rs[..2]).is_ok());
    assert!(
        tabby_api::validate_pool_overlaps(&rs[0], &rs[..1]).is_ok(),
        "a pool does not overlap itself"
    );
}
