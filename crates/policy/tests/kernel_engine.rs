//! The incremental engine in the kernel: its full state applied in one node
//! namespace, then its updates for a seeded random sequence of resource
//! changes; after each, that namespace's `tabby` tables (sets with their
//! elements, maps, chains with their rules) equal what a full render of the
//! full path gives in a second namespace. Needs root and `nft`.

mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::Lab;
use tabby_api::load::from_json_value;
use tabby_api::{Kind, Resource};
use tabby_policy::compile::compile_for_node;
use tabby_policy::incremental::Engine;
use tabby_policy::model::Model;
use tabby_policy::nft::{batch, render_commands};

const NODE: &str = "n1";

/// xorshift64: the same sequence in every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

fn resource(kind: &str, metadata: Value, spec: Value) -> Resource {
    from_json_value(
        json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": metadata, "spec": spec}),
        "kernel_engine",
    )
    .expect("resource")
}

fn selector(r: &mut Rng) -> &'static str {
    r.pick(&[
        "app == 'a'",
        "app == 'b'",
        "role == 'db'",
        "all()",
        "has(role)",
        "app in {'a', 'c'}",
    ])
}

fn rule(r: &mut Rng) -> Value {
    let mut source = json!({});
    match r.below(5) {
        0 => source["selector"] = json!(selector(r)),
        1 => source["nets"] = json!([r.pick(&["198.51.100.0/24", "2001:db8:9::/48"])]),
        2 => {
            source["selector"] = json!(selector(r));
            source["notSelector"] = json!("role == 'db'");
        }
        3 => source["namespaceSelector"] = json!(r.pick(&["team == 'red'", "all()"])),
        _ => {}
    }
    let mut rule = json!({"action": r.pick(&["Allow", "Allow", "Deny", "Pass"]), "source": source});
    match r.below(4) {
        0 => {
            rule["protocol"] = json!("TCP");
            let port = match r.below(3) {
                0 => json!(8080),
                1 => json!("http"),
                _ => json!("9000:9010"),
            };
            rule["destination"] = json!({"ports": [port]});
        }
        1 => {
            rule["protocol"] = json!("UDP");
            rule["source"]["ports"] = json!(["dns"]);
        }
        2 => rule["protocol"] = json!("ICMP"),
        _ => {}
    }
    rule
}

/// One random change: a put (most often an endpoint or a policy) or a delete.
fn change(r: &mut Rng) -> (Resource, bool) {
    let ns = r.pick(&["web", "web", "data"]);
    let res = match r.below(10) {
        0..=3 => {
            let i = r.below(8);
            let mut labels = json!({"app": r.pick(&["a", "b", "c"])});
            if r.below(2) == 0 {
                labels["role"] = json!(r.pick(&["db", "cache"]));
            }
            let v4 = format!("100.64.{}.{}/32", r.below(3), r.below(6) + 1);
            let mut ips = vec![json!(v4)];
            if r.below(3) == 0 {
                ips.push(json!(format!("2001:db8:64::{:x}/128", r.below(6) + 1)));
            }
            resource(
                "WorkloadEndpoint",
                json!({"name": format!("w{i}"), "namespace": ns, "labels": labels}),
                json!({"node": r.pick(&["n1", "n1", "n2"]), "interfaceName": format!("cali{}", r.below(5)),
                    "ipNetworks": ips, "profiles": [format!("kns.{ns}")],
                    "ports": [{"name": r.pick(&["http", "dns"]), "protocol": r.pick(&["TCP", "UDP"]), "port": 8000 + r.below(3)}]}),
            )
        }
        4..=6 => {
            let global = r.below(3) == 0;
            let ingress: Vec<Value> = (0..r.below(3)).map(|_| rule(r)).collect();
            let egress: Vec<Value> = (0..r.below(2)).map(|_| rule(r)).collect();
            let mut spec = json!({"selector": selector(r), "ingress": ingress, "egress": egress,
                "tier": r.pick(&["default", "default", "security"]), "order": r.below(3)});
            if global {
                resource(
                    "GlobalNetworkPolicy",
                    json!({"name": format!("g{}", r.below(3))}),
                    spec,
                )
            } else {
                spec["order"] = json!(r.below(3));
                resource(
                    "NetworkPolicy",
                    json!({"name": format!("p{}", r.below(4)), "namespace": ns}),
                    spec,
                )
            }
        }
        7 => {
            let mut labels = json!({"pcns.projectcalico.org/name": ns});
            if r.below(2) == 0 {
                labels["pcns.team"] = json!("red");
            }
            resource(
                "Profile",
                json!({"name": format!("kns.{ns}")}),
                json!({"labelsToApply": labels, "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}),
            )
        }
        8 => resource(
            "GlobalNetworkSet",
            json!({"name": format!("gs{}", r.below(2)), "labels": {"app": r.pick(&["a", "b"])}}),
            json!({"nets": [r.pick(&["203.0.113.0/25", "203.0.113.128/25", "2001:db8:77::/64"])]}),
        ),
        _ => {
            if r.below(2) == 0 {
                resource(
                    "Tier",
                    json!({"name": "security"}),
                    json!({"order": r.below(200), "defaultAction": r.pick(&["Deny", "Pass"])}),
                )
            } else {
                resource(
                    "FelixConfiguration",
                    json!({"name": "default"}),
                    json!({"defaultEndpointToHostAction": r.pick(&["Drop", "Accept", "Return"]),
                        "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22 + r.below(2)}]}),
                )
            }
        }
    };
    (res, r.below(6) == 0)
}

type Id = (Kind, Option<String>, String);

fn id(r: &Resource) -> Id {
    (
        r.spec.kind(),
        r.metadata.namespace.clone(),
        r.metadata.name.clone(),
    )
}

#[test]
fn engine_updates_in_the_kernel_equal_full_renders() {
    let engine_lab = Lab::new("tpe", &[], &[]);
    let full_lab = Lab::new("tpf", &[], &[]);
    let mut engine = Engine::new(NODE);
    let mut in_effect: BTreeMap<Id, Resource> = BTreeMap::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // A first state, applied in full.
    for _ in 0..12 {
        let (r, _) = change(&mut rng);
        engine.put(&r).expect("valid resource");
        in_effect.insert(id(&r), r);
    }
    engine_lab
        .nft(&batch(engine.ruleset().commands()))
        .expect("full apply of the engine's state");
    engine.mark();
    let (mut updates, mut commands) = (0, 0);
    for step in 0..40 {
        let (r, delete) = change(&mut rng);
        if delete {
            let (kind, ns, name) = id(&r);
            engine.delete(kind, ns.as_deref(), &name);
            in_effect.remove(&id(&r));
        } else {
            engine.put(&r).expect("valid resource");
            in_effect.insert(id(&r), r);
        }
        let update = engine.take_update();
        if !update.is_empty() {
            updates += 1;
            commands += update.len();
            engine_lab
                .nft(&batch(update.clone()))
                .unwrap_or_else(|e| panic!("step {step}: update refused: {e}\n{update:#?}"));
        }
        let resources: Vec<Resource> = in_effect.values().cloned().collect();
        let model = Model::from_resources(&resources).expect("model");
        full_lab
            .nft(&batch(render_commands(&compile_for_node(&model, NODE))))
            .expect("full apply");
        for family in ["ip", "ip6"] {
            assert_eq!(
                support::normalise(&engine_lab.list_table(family)),
                support::normalise(&full_lab.list_table(family)),
                "step {step}: table {family} tabby differs"
            );
        }
    }
    assert!(updates >= 20, "only {updates} steps changed anything");
    eprintln!(
        "{updates} incremental updates ({commands} commands) applied, each equal to a full render"
    );
}
