//! Properties over generated models (the fuzz-style check of the compiler's
//! input): compiling, rendering and explaining never fail on valid resources, and
//! the result does not depend on the order the resources come in.

use proptest::prelude::*;
use serde_json::{Value, json};
use tabby_api::load::from_json_value;
use tabby_policy::explain::{Flow, explain_flow};
use tabby_policy::model::Model;
use tabby_policy::nft::render;

fn endpoints() -> Vec<Value> {
    [
        ("a", "ns1", "web", "10.0.0.1/32", "cali-a"),
        ("b", "ns1", "db", "10.0.0.2/32", "cali-b"),
        ("c", "ns2", "web", "fd00::3/128", "cali-c"),
        ("d", "ns2", "db", "10.0.0.4/32", "cali-d"),
    ]
    .iter()
    .map(|(name, ns, app, ip, iface)| {
        json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"ipNetworks": [ip], "interfaceName": iface, "profiles": [format!("kns.{ns}")],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}})
    })
    .collect()
}

fn selector() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec![
        "app == 'web'",
        "app == 'db'",
        "all()",
        "has(app)",
        "app != 'web'",
    ]))
}

fn entity() -> impl Strategy<Value = Value> {
    (
        selector(),
        selector(),
        prop::option::of(prop::sample::select(vec![
            "all()",
            "global()",
            "projectcalico.org/name == 'ns2'",
        ])),
        prop::option::of(prop::sample::select(vec!["10.0.0.0/30", "10.0.0.4/32"])),
        prop::option::of(prop::sample::select(vec!["10.0.0.2/32"])),
    )
        .prop_map(|(sel, not_sel, ns_sel, nets, not_nets)| {
            let mut e = json!({});
            if let Some(s) = sel {
                e["selector"] = json!(s);
            }
            if let Some(s) = not_sel {
                e["notSelector"] = json!(s);
            }
            if let Some(s) = ns_sel {
                e["namespaceSelector"] = json!(s);
            }
            if let Some(n) = nets {
                e["nets"] = json!([n]);
            }
            if let Some(n) = not_nets {
                e["notNets"] = json!([n]);
            }
            e
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Allow", "Deny", "Pass", "Log"]),
        0..5usize,
        entity(),
        entity(),
        prop::option::of(prop::sample::select(vec![
            json!(80),
            json!("http"),
            json!("8000:8100"),
        ])),
    )
        .prop_map(|(action, proto, src, mut dst, port)| {
            let mut r = json!({"action": action, "source": src});
            match proto {
                1 => r["protocol"] = json!("TCP"),
                2 => r["protocol"] = json!("UDP"),
                3 => {
                    r["protocol"] = json!("ICMP");
                    r["icmp"] = json!({"type": 8});
                }
                4 => r["protocol"] = json!(47),
                _ => {}
            }
            if let (Some(p), 1 | 2) = (port, proto) {
                dst["ports"] = json!([p]);
            }
            r["destination"] = dst;
            r
        })
}

fn policy() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        prop::sample::select(vec!["default", "t1", "t2"]),
        prop::option::of(0..3u8),
        selector(),
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(|(global, tier, order, sel, ingress, egress)| {
            let mut spec = json!({"tier": tier, "ingress": ingress, "egress": egress});
            if let Some(o) = order {
                spec["order"] = json!(o);
            }
            if let Some(s) = sel {
                spec["selector"] = json!(s);
            }
            let (kind, meta) = if global {
                ("GlobalNetworkPolicy", json!({}))
            } else {
                ("NetworkPolicy", json!({"namespace": "ns1"}))
            };
            json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec})
        })
}

fn resources(policies: Vec<Value>) -> Vec<tabby_api::Resource> {
    let mut all = endpoints();
    all.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
        "metadata": {"name": "t1"}, "spec": {"order": 10, "defaultAction": "Pass"}}));
    all.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
        "metadata": {"name": "t2"}, "spec": {"order": 20}}));
    for (i, mut p) in policies.into_iter().enumerate() {
        p["metadata"]["name"] = json!(format!("p{i}"));
        all.push(p);
    }
    all.into_iter()
        .map(|v| from_json_value(v, "generated").unwrap())
        .collect()
}

const FLOWS: [Flow; 3] = [
    Flow {
        protocol: 6,
        dst_port: Some(8080),
        src_port: None,
        icmp_type: None,
        icmp_code: None,
        ip_version: None,
    },
    Flow {
        protocol: 17,
        dst_port: Some(80),
        src_port: None,
        icmp_type: None,
        icmp_code: None,
        ip_version: None,
    },
    Flow {
        protocol: 1,
        dst_port: None,
        src_port: None,
        icmp_type: Some(8),
        icmp_code: Some(0),
        ip_version: None,
    },
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn compile_explain_render_are_total_and_order_independent(
        policies in prop::collection::vec(policy(), 0..6)
    ) {
        let res = resources(policies);
        let model = Model::from_resources(&res).unwrap();
        let mut reversed = res.clone();
        reversed.reverse();
        let model_rev = Model::from_resources(&reversed).unwrap();
        let compiled = tabby_policy::compile(&model);
        prop_assert_eq!(&compiled, &tabby_policy::compile(&model_rev));
        let batch = render(&compiled);
        prop_assert!(batch["nftables"].as_array().is_some_and(|a| !a.is_empty()));
        for from in ["ns1/a", "ns1/b", "ns2/d"] {
            for to in ["ns1/a", "ns1/b", "ns2/d"] {
                for flow in &FLOWS {
                    let v = explain_flow(&model, from, to, flow).unwrap();
                    prop_assert_eq!(&v, &explain_flow(&model_rev, from, to, flow).unwrap());
                    prop_assert!(v.decided_by.is_some());
                }
            }
        }
    }
}
