//! Calico's own validation tables (`ippool_validation` and `ipam_config_rules` of the
//! repository's `conformance/ipam_cases.json`), read as data and run through Tabby's validation.
//! `TABBY_CONFORMANCE_DIR` points at another copy.

use std::path::Path;

use serde_json::{Value, json};
use tabby_api::load::from_json_value;

fn table() -> Value {
    let dir = std::env::var_os("TABBY_CONFORMANCE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance"));
    let path = dir.join("ipam_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "conformance data missing: cannot read {} ({e}); set TABBY_CONFORMANCE_DIR to the \
             directory holding ipam_cases.json",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn resource(kind: &str, spec: &Value) -> tabby_api::Resource {
    from_json_value(
        json!({"apiVersion": "projectcalico.org/v3", "kind": kind,
               "metadata": {"name": "default"}, "spec": spec}),
        "conformance",
    )
    .unwrap()
}

#[test]
fn ippool_validation_table() {
    let t = table();
    let cases = t["ippool_validation"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        // A spec that does not even decode (e.g. a /33) counts as rejected.
        let decoded = from_json_value(
            json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                   "metadata": {"name": "p"}, "spec": case["spec"]}),
            "conformance",
        );
        let valid = match decoded {
            Ok(mut r) => {
                r.apply_defaults();
                r.validate().is_ok()
            }
            Err(_) => false,
        };
        assert_eq!(valid, case["valid"].as_bool().unwrap(), "{name}");
    }
}

#[test]
fn ipam_config_rules_table() {
    let t = table();
    let rules = &t["ipam_config_rules"];
    let mut defaults = resource("IPAMConfiguration", &json!({}));
    defaults.apply_defaults();
    let spec = defaults.spec.as_ipam_configuration().unwrap();
    let want = &rules["defaults"];
    assert_eq!(spec.strict_affinity, want["strictAffinity"].as_bool());
    assert_eq!(
        spec.auto_allocate_blocks,
        want["autoAllocateBlocks"].as_bool()
    );
    assert_eq!(
        i64::from(spec.effective_max_blocks_per_host()),
        want["effective_max_blocks_per_host_when_0"]
            .as_i64()
            .unwrap()
    );
    for case in rules["cases"].as_array().unwrap() {
        let mut spec = case.clone();
        let m = spec.as_object_mut().unwrap();
        m.remove("valid");
        m.remove("error");
        let r = resource("IPAMConfiguration", &spec);
        assert_eq!(
            r.validate().is_ok(),
            case["valid"].as_bool().unwrap(),
            "{case}"
        );
    }
}
