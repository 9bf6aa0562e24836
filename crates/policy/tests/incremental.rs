//! The incremental engine against the full path: random sequences of puts and
//! deletes of every kind the engine reads (labels from a small alphabet so that
//! selectors hit, a few namespaces and nodes, bad versions mixed in); after every
//! step the engine's compiled state and ruleset equal a full compile and render
//! of the resources in effect, and its update equals `nft::diff` from the state
//! at the last mark. Plus error isolation.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};
use tabby_api::load::from_json_value;
use tabby_api::{Kind, Resource};
use tabby_policy::compile::compile_for_node;
use tabby_policy::incremental::Engine;
use tabby_policy::model::{Model, PolicyError};
use tabby_policy::nft::{Ruleset, diff, ruleset};

const NODE: &str = "n1";

fn pick<T: Clone + std::fmt::Debug + 'static>(v: &[T]) -> impl Strategy<Value = T> + use<T> {
    prop::sample::select(v.to_vec())
}

fn labels() -> impl Strategy<Value = Value> {
    (
        prop::option::of(pick(&["a", "b", "c"])),
        prop::option::of(pick(&["a", "b"])),
        prop::option::of(pick(&["x", "y"])),
    )
        .prop_map(|(app, role, tier)| {
            let mut m = serde_json::Map::new();
            if let Some(v) = app {
                m.insert("app".into(), json!(v));
            }
            if let Some(v) = role {
                m.insert("role".into(), json!(v));
            }
            if let Some(v) = tier {
                m.insert("tier".into(), json!(v));
            }
            Value::Object(m)
        })
}

/// Selectors, one in fifty that does not parse.
fn selector() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        49 => pick(&[
            "app == 'a'",
            "app == 'b'",
            "all()",
            "has(role)",
            "role != 'a'",
            "app in {'a', 'c'}",
            "app == 'a' && role == 'b'",
            "tier == 'x' || app == 'c'",
            "!has(app)",
            "team == 'red'",
            "pcns.projectcalico.org/name == 'ns1'",
        ]),
        1 => Just("app =="),
    ]
}

fn entity() -> impl Strategy<Value = Value> {
    (
        prop::option::of(selector()),
        prop::option::weighted(0.2, selector()),
        prop::option::weighted(
            0.25,
            pick(&[
                "all()",
                "global()",
                "projectcalico.org/name == 'ns2'",
                "team == 'red'",
            ]),
        ),
        prop::option::weighted(0.15, pick(&["10.0.0.0/30", "10.0.1.0/24", "fd00::/124"])),
        prop::option::weighted(0.1, pick(&["10.0.0.2/32", "fd00::3/128"])),
        prop::option::weighted(0.15, pick(&["sa1", "sa2"])),
        prop::option::weighted(0.1, pick(&["role == 'a'", "all()"])),
    )
        .prop_map(|(sel, not_sel, ns_sel, nets, not_nets, sa, sa_sel)| {
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
            if sa.is_some() || sa_sel.is_some() {
                let mut s = json!({});
                if let Some(n) = sa {
                    s["names"] = json!([n]);
                }
                if let Some(x) = sa_sel {
                    s["selector"] = json!(x);
                }
                e["serviceAccounts"] = s;
            }
            e
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (
        pick(&["Allow", "Deny", "Pass", "Log"]),
        0..20u8,
        entity(),
        entity(),
        prop::option::of(pick(&[
            json!(80),
            json!("http"),
            json!("8000:8100"),
            json!("dns"),
        ])),
        prop::option::weighted(0.2, pick(&[json!("http"), json!(53)])),
        prop::option::weighted(0.1, pick(&[4, 6])),
    )
        .prop_map(|(action, proto, src, mut dst, port, src_port, ipv)| {
            let mut r = json!({"action": action});
            let mut src = src;
            match proto {
                1 | 5 | 8 | 9 | 10 => r["protocol"] = json!("TCP"),
                2 | 11 => r["protocol"] = json!("UDP"),
                3 => {
                    r["protocol"] = json!("ICMP");
                    r["icmp"] = json!({"type": 8});
                }
                4 => r["protocol"] = json!("bogus"),
                _ => {}
            }
            if let (Some(p), 1 | 2 | 5 | 8 | 9 | 11) = (port, proto) {
                dst["ports"] = json!([p]);
            }
            if let (Some(p), 1 | 2 | 10) = (src_port, proto) {
                src["ports"] = json!([p]);
            }
            if let Some(v) = ipv {
                r["ipVersion"] = json!(v);
            }
            r["source"] = src;
            r["destination"] = dst;
            r
        })
}

fn meta(name: String, ns: Option<&str>, labels: Value) -> Value {
    let mut m = json!({"name": name, "labels": labels});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

fn resource(kind: &str, metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": metadata, "spec": spec})
}

/// Labels of workloads: mostly a few presets (replicas share programs), else
/// random.
fn workload_labels() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => pick(&[json!({"app": "a"}), json!({"app": "a", "role": "b"}), json!({"app": "b", "tier": "x"})]),
        2 => labels(),
    ]
}

fn workload() -> impl Strategy<Value = Value> {
    (
        0..6u8,
        pick(&["ns1", "ns1", "ns2", "ns3"]),
        pick(&["n1", "n1", "n2", "n3"]),
        workload_labels(),
        prop_oneof![3 => Just(0u8), 1 => 1..6u8],
        prop::collection::vec(
            pick(&[
                "10.0.0.1/32",
                "10.0.0.2/32",
                "10.0.0.3/32",
                "10.0.0.4/31",
                "10.0.1.0/24",
                "fd00::1/128",
                "fd00::2/128",
            ]),
            0..3,
        ),
        pick(&["cali0", "cali1", "cali2", "cali3", "", "*"]),
        prop::option::weighted(
            0.3,
            (pick(&["http", "dns"]), pick(&["TCP", "TCP", "UDP", "UDP", "bogus"]), 8000..8003u16),
        ),
        prop::option::weighted(0.3, pick(&["sa1", "sa2"])),
    )
        .prop_map(|(i, ns, node, labels, profiles, ips, iface, port, sa)| {
            let profiles = match profiles {
                0 => json!([format!("kns.{ns}")]),
                1 => json!([format!("kns.{ns}"), "prof-a"]),
                2 => json!(["prof-a"]),
                3 => json!([]),
                4 => json!(["kns.ns1"]),
                _ => json!(["prof-b", format!("kns.{ns}")]),
            };
            let mut spec = json!({"node": node, "interfaceName": iface, "ipNetworks": ips, "profiles": profiles});
            if let Some((name, proto, p)) = port {
                spec["ports"] = json!([{"name": name, "protocol": proto, "port": p}]);
            }
            if let Some(sa) = sa {
                spec["serviceAccountName"] = json!(sa);
            }
            resource("WorkloadEndpoint", meta(format!("w{i}"), Some(ns), labels), spec)
        })
}

fn host_endpoint() -> impl Strategy<Value = Value> {
    (
        0..3u8,
        pick(&["n1", "n1", "n2"]),
        labels(),
        pick(&["eth0", "eth1", "*", ""]),
        prop::collection::vec(
            pick(&["198.18.0.1", "198.18.0.2", "2001:db8::1", "not-an-ip"]),
            0..2,
        ),
        any::<bool>(),
    )
        .prop_map(|(i, node, labels, iface, ips, profile)| {
            let mut spec = json!({"node": node, "interfaceName": iface, "expectedIPs": ips});
            if profile {
                spec["profiles"] = json!(["prof-a"]);
            }
            resource("HostEndpoint", meta(format!("h{i}"), None, labels), spec)
        })
}

fn policy() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        0..4u8,
        pick(&["ns1", "ns2", "ns3"]),
        pick(&["default", "t1", "t2"]),
        prop::option::of(0..3u8),
        selector(),
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
        prop::option::weighted(
            0.2,
            pick(&["team == 'red'", "all()", "projectcalico.org/name == 'ns1'"]),
        ),
        prop::option::weighted(0.1, pick(&["role == 'a'"])),
        prop::option::weighted(
            0.15,
            pick(&[json!(["Ingress"]), json!(["Egress"]), json!([])]),
        ),
        prop::option::weighted(0.05, Just(true)),
    )
        .prop_map(
            |(
                global,
                i,
                ns,
                tier,
                order,
                sel,
                ingress,
                egress,
                ns_sel,
                sa_sel,
                types,
                pre_dnat,
            )| {
                let mut spec =
                    json!({"tier": tier, "selector": sel, "ingress": ingress, "egress": egress});
                if let Some(o) = order {
                    spec["order"] = json!(o);
                }
                if let Some(s) = sa_sel {
                    spec["serviceAccountSelector"] = json!(s);
                }
                if let Some(t) = types {
                    spec["types"] = t;
                }
                if global {
                    if let Some(s) = ns_sel {
                        spec["namespaceSelector"] = json!(s);
                    }
                    if pre_dnat.is_some() {
                        spec["preDNAT"] = json!(true);
                        spec["applyOnForward"] = json!(true);
                    }
                    resource(
                        "GlobalNetworkPolicy",
                        meta(format!("g{i}"), None, json!({})),
                        spec,
                    )
                } else {
                    resource(
                        "NetworkPolicy",
                        meta(format!("p{i}"), Some(ns), json!({})),
                        spec,
                    )
                }
            },
        )
}

fn profile() -> impl Strategy<Value = Value> {
    (
        pick(&["kns.ns1", "kns.ns2", "kns.ns3", "prof-a", "prof-b"]),
        prop::option::of(pick(&["red", "blue"])),
        prop::option::of(pick(&["a", "c"])),
        prop::collection::vec(rule(), 0..2),
        prop::collection::vec(rule(), 0..2),
    )
        .prop_map(|(name, team, app, ingress, egress)| {
            let mut l = serde_json::Map::new();
            if let Some(t) = team {
                l.insert("pcns.team".into(), json!(t));
                l.insert("team".into(), json!(t));
            }
            if let Some(a) = app {
                l.insert("app".into(), json!(a));
            }
            resource(
                "Profile",
                meta(name.to_string(), None, json!({})),
                json!({"labelsToApply": l, "ingress": ingress, "egress": egress}),
            )
        })
}

fn network_set() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        0..2u8,
        pick(&["ns1", "ns2"]),
        labels(),
        prop::collection::vec(
            pick(&["10.0.0.0/29", "10.0.0.5/32", "10.9.0.0/16", "fd00::8/125"]),
            0..3,
        ),
    )
        .prop_map(|(global, i, ns, labels, nets)| {
            if global {
                resource(
                    "GlobalNetworkSet",
                    meta(format!("gs{i}"), None, labels),
                    json!({"nets": nets}),
                )
            } else {
                resource(
                    "NetworkSet",
                    meta(format!("s{i}"), Some(ns), labels),
                    json!({"nets": nets}),
                )
            }
        })
}

fn tier() -> impl Strategy<Value = Value> {
    (
        pick(&["t1", "t2", "default"]),
        prop::option::of(0..200u32),
        pick(&["Deny", "Pass"]),
    )
        .prop_map(|(name, order, action)| {
            let mut spec = json!({"defaultAction": action});
            if let Some(o) = order {
                spec["order"] = json!(o);
            }
            resource("Tier", meta(name.to_string(), None, json!({})), spec)
        })
}

fn felix() -> impl Strategy<Value = Value> {
    (
        pick(&["default", "default", "node.n1"]),
        pick(&["Drop", "Accept", "Return"]),
        pick(&["tcp", "udp", "bogus"]),
        prop::option::of(pick(&["198.18.0.0/24", "2001:db8::/64"])),
    )
        .prop_map(|(name, e2h, proto, net)| {
            let mut port = json!({"protocol": proto, "port": 22});
            if let Some(n) = net {
                port["net"] = json!(n);
            }
            resource(
                "FelixConfiguration",
                meta(name.to_string(), None, json!({})),
                json!({"defaultEndpointToHostAction": e2h, "failsafeInboundHostPorts": [port],
                    "failsafeOutboundHostPorts": [{"protocol": "udp", "port": 53}]}),
            )
        })
}

/// What happens to the marked state after a step.
#[derive(Clone, Copy, Debug)]
enum After {
    /// `take_update` (compared with `diff`).
    Take,
    /// `mark` (as after a full replacement).
    Mark,
    /// Nothing: the next step's update covers both.
    Keep,
}

#[derive(Clone, Debug)]
enum Op {
    Put(Value),
    Delete(Value),
}

/// Steps: the updates are taken after most steps in some cases and rarely in
/// others (sets then go and come back between two marks).
fn ops() -> impl Strategy<Value = Vec<(Op, After)>> {
    prop_oneof![Just(3u32), Just(12u32)].prop_flat_map(|keep| {
        prop::collection::vec(
            (
                op(),
                prop_oneof![6 => Just(After::Take), 1 => Just(After::Mark), keep => Just(After::Keep)],
            ),
            1..60,
        )
    })
}

fn op() -> impl Strategy<Value = Op> {
    let put = prop_oneof![
        8 => workload(),
        2 => host_endpoint(),
        6 => policy(),
        2 => profile(),
        2 => network_set(),
        1 => tier(),
        1 => felix(),
    ];
    let target = prop_oneof![
        4 => workload(),
        1 => host_endpoint(),
        3 => policy(),
        2 => profile(),
        1 => network_set(),
        1 => tier(),
        1 => felix(),
    ];
    prop_oneof![4 => put.prop_map(Op::Put), 1 => target.prop_map(Op::Delete)]
}

type Id = (String, Option<String>, String);

fn id_of(r: &Resource) -> Id {
    (
        r.spec.kind().to_string(),
        r.metadata.namespace.clone(),
        r.metadata.name.clone(),
    )
}

fn error_key((kind, ns, name): &Id) -> String {
    match ns {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Replays `ops` and checks the engine against the full path after each.
fn replay(ops: &[(Op, After)]) -> Result<(), TestCaseError> {
    let mut engine = Engine::new(NODE);
    let mut in_effect: BTreeMap<Id, Resource> = BTreeMap::new();
    let mut errors: BTreeSet<String> = BTreeSet::new();
    let mut marked = Ruleset { tables: Vec::new() };
    for (step, (op, after)) in ops.iter().enumerate() {
        match op {
            Op::Put(v) => {
                let r = from_json_value(v.clone(), "generated").expect("generated resources load");
                let id = id_of(&r);
                let converts = Model::from_resources(std::slice::from_ref(&r));
                let got = engine.put(&r);
                prop_assert_eq!(got.is_ok(), converts.is_ok(), "step {}: put {:?}", step, v);
                if got.is_ok() {
                    in_effect.insert(id.clone(), r);
                    errors.remove(&error_key(&id));
                } else {
                    errors.insert(error_key(&id));
                }
            }
            Op::Delete(v) => {
                let r = from_json_value(v.clone(), "generated").expect("generated resources load");
                let id = id_of(&r);
                engine.delete(r.spec.kind(), id.1.as_deref(), &id.2);
                in_effect.remove(&id);
                errors.remove(&error_key(&id));
            }
        }
        let resources: Vec<Resource> = in_effect.values().cloned().collect();
        let model = Model::from_resources(&resources).expect("resources in effect convert");
        let want = compile_for_node(&model, NODE);
        let got = engine.compiled();
        prop_assert!(
            got == want,
            "step {}: {:?}\ncompiled differs:\n got {:#?}\nwant {:#?}",
            step,
            op,
            got,
            want
        );
        let want_rs = ruleset(&want);
        let got_rs = engine.ruleset();
        prop_assert!(
            got_rs == want_rs,
            "step {}: {:?}\nruleset differs:\n{}",
            step,
            op,
            ruleset_diff(&got_rs, &want_rs)
        );
        let want_update = diff(&marked, &want_rs);
        prop_assert_eq!(
            engine.is_dirty(),
            !want_update.is_empty(),
            "step {}: is_dirty",
            step
        );
        let got_errors: BTreeSet<String> = engine.errors().into_iter().map(|(k, _)| k).collect();
        prop_assert_eq!(&got_errors, &errors, "step {}: errors", step);
        match after {
            After::Take => {
                let got_update = engine.take_update();
                prop_assert!(
                    got_update == want_update,
                    "step {}: {:?}\nupdate differs:\n got {}\nwant {}",
                    step,
                    op,
                    serde_json::to_string_pretty(&got_update).unwrap_or_default(),
                    serde_json::to_string_pretty(&want_update).unwrap_or_default()
                );
                prop_assert!(!engine.is_dirty());
                marked = want_rs;
            }
            After::Mark => {
                engine.mark();
                prop_assert!(!engine.is_dirty());
                marked = want_rs;
            }
            After::Keep => {}
        }
    }
    Ok(())
}

/// The commands that would turn `got` into `want`, to show where they differ.
fn ruleset_diff(got: &Ruleset, want: &Ruleset) -> String {
    serde_json::to_string_pretty(&diff(got, want)).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn engine_equals_full_compile_render_and_diff(ops in ops()) {
        replay(&ops)?;
    }
}

fn load(yaml: &str) -> Vec<Resource> {
    tabby_api::load::parse_documents(yaml, "test.yaml").expect("load")
}

const CLUSTER: &str = r#"
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
metadata: {name: r, namespace: web, labels: {app: a}}
spec: {node: n2, interfaceName: cali-r, ipNetworks: [100.64.8.1/32], profiles: [kns.web]}
---
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
metadata: {name: a-in, namespace: web}
spec:
  selector: app == 'a'
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: app == 'b'}, destination: {ports: [9090]}}
"#;

/// b-in with a source selector that does not parse (built from JSON: the YAML
/// loader would refuse it before the engine sees it).
fn b_in_bad() -> Resource {
    from_json_value(
        json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": "b-in", "namespace": "web"},
            "spec": {"selector": "app == 'b'", "ingress": [{"action": "Allow", "protocol": "TCP",
                "source": {"selector": "app == "}, "destination": {"ports": [8080]}}]}}),
        "test",
    )
    .expect("decodes")
}

const A_IN_NEW: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-in, namespace: web}
spec:
  selector: app == 'a'
  ingress:
    - {action: Allow, protocol: UDP, source: {selector: app == 'b'}, destination: {ports: [53]}}
"#;

fn full(resources: &[Resource]) -> Ruleset {
    ruleset(&compile_for_node(
        &Model::from_resources(resources).expect("model"),
        "n1",
    ))
}

#[test]
fn a_bad_update_keeps_the_previous_version_and_the_rest_converges() {
    let mut cluster = load(CLUSTER);
    let mut engine = Engine::new("n1");
    assert!(engine.put_all(&cluster).is_empty());
    assert_eq!(engine.ruleset(), full(&cluster));
    let first = engine.take_update();
    assert_eq!(
        first,
        diff(&Ruleset { tables: Vec::new() }, &full(&cluster))
    );

    // A bad version of b-in: refused with the resource and field, the good
    // version stays, nothing changes.
    let bad = b_in_bad();
    let err = engine
        .put(&bad)
        .expect_err("a selector that does not parse");
    match &err {
        PolicyError::Selector {
            resource, field, ..
        } => {
            assert_eq!(resource, "NetworkPolicy/web/b-in");
            assert_eq!(field, "spec.ingress[0].source.selector");
        }
        other => panic!("not a selector error: {other:?}"),
    }
    assert_eq!(
        engine.errors(),
        vec![("NetworkPolicy/web/b-in".to_string(), err.clone())]
    );
    assert!(!engine.is_dirty(), "a refused update changes nothing");
    assert_eq!(engine.ruleset(), full(&cluster));

    // Other changes go on converging meanwhile.
    let a_in = load(A_IN_NEW).remove(0);
    engine.put(&a_in).expect("a good policy");
    cluster[4] = a_in;
    let before = full(&load(CLUSTER));
    assert_eq!(engine.ruleset(), full(&cluster));
    assert_eq!(engine.take_update(), diff(&before, &full(&cluster)));
    let moved = load(
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
         metadata: {name: r, namespace: web, labels: {app: b}}\n\
         spec: {node: n2, interfaceName: cali-r, ipNetworks: [100.64.8.1/32], profiles: [kns.web]}\n",
    )
    .remove(0);
    let before = full(&cluster);
    engine.put(&moved).expect("a good endpoint");
    cluster[2] = moved;
    assert_eq!(engine.take_update(), diff(&before, &full(&cluster)));
    assert_eq!(
        engine.errors().len(),
        1,
        "b-in's error stays until it is fixed or deleted"
    );

    // Deleting it clears the error and its rules.
    let before = full(&cluster);
    engine.delete(Kind::NetworkPolicy, Some("web"), "b-in");
    cluster.remove(3);
    assert!(engine.errors().is_empty());
    assert_eq!(engine.ruleset(), full(&cluster));
    assert_eq!(engine.take_update(), diff(&before, &full(&cluster)));
    assert_eq!(
        engine.compiled(),
        compile_for_node(&Model::from_resources(&cluster).expect("model"), "n1")
    );
    assert_eq!(engine.stats().errors, 0);
}

#[test]
fn a_set_that_goes_and_comes_back_before_the_mark_is_diffed_from_the_mark() {
    let cluster = load(CLUSTER);
    let mut engine = Engine::new("n1");
    assert!(engine.put_all(&cluster).is_empty());
    engine.take_update();
    let marked = full(&cluster);
    let workload = |name: &str, node: &str, ip: &str| {
        load(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
             metadata: {{name: {name}, namespace: web, labels: {{app: b}}}}\n\
             spec: {{node: {node}, interfaceName: cali-{name}, ipNetworks: [{ip}/32], profiles: [kns.web]}}\n"
        ))
        .remove(0)
    };
    // a-in's source set (app == 'b') gains a member after the mark ...
    engine
        .put(&workload("b2", "n2", "100.64.8.2"))
        .expect("endpoint");
    // ... goes with a-in ...
    engine.delete(Kind::NetworkPolicy, Some("web"), "a-in");
    // ... b moves and b2 goes meanwhile ...
    let moved = workload("b", "n1", "100.64.7.9");
    engine.put(&moved).expect("endpoint");
    engine.delete(Kind::WorkloadEndpoint, Some("web"), "b2");
    // ... and a-in comes back: its set is diffed from its elements at the mark.
    engine.put(&cluster[4]).expect("policy");
    let mut now = cluster.clone();
    now[1] = moved;
    let want = diff(&marked, &full(&now));
    let elements = |op: &str| {
        want.iter()
            .filter_map(|c| c.get(op).and_then(|d| d.get("element")))
            .map(|e| e["elem"].to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        elements("delete").iter().any(|e| e.contains("100.64.7.2")),
        "{want:?}"
    );
    assert!(
        elements("add").iter().any(|e| e.contains("100.64.7.9")),
        "{want:?}"
    );
    assert!(
        !elements("add").iter().any(|e| e.contains("100.64.8.2")),
        "{want:?}"
    );
    assert_eq!(engine.take_update(), want);
}

#[test]
fn a_bad_first_version_leaves_nothing_in_effect() {
    let mut engine = Engine::new("n1");
    let bad = b_in_bad();
    assert!(engine.put(&bad).is_err());
    assert_eq!(engine.stats().policies, 0);
    assert_eq!(engine.errors().len(), 1);
    engine.delete(Kind::NetworkPolicy, Some("web"), "b-in");
    assert!(engine.errors().is_empty());
    assert_eq!(engine.ruleset(), full(&[]));
}

#[test]
fn other_kinds_are_ignored() {
    let mut engine = Engine::new("n1");
    let pool = load(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n\
         spec: {cidr: 100.64.0.0/16}\n",
    )
    .remove(0);
    engine.take_update();
    assert!(engine.put(&pool).is_ok());
    assert!(!engine.is_dirty());
    engine.delete(Kind::IPPool, None, "p");
    assert!(!engine.is_dirty());
}
