//! The node's nftables state as one batch: network policy (from `tabby-policy`) and
//! natOutgoing share the table `tabby` of each family, so they are rendered together
//! and applied as one `nft -j -f` transaction that replaces both tables at once.
//! Everything here is pure; [`crate::nat::Nft`] applies the result.

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_api::{Kind, Resource};
use tabby_policy::compile::Compiled;
use tabby_policy::model::Model;

use crate::nat::{ALL_SET, Family, MASQ_SET, NAT_CHAIN, NatInputs, TABLE};

/// The resource kinds the policy model is built from.
pub const POLICY_KINDS: [Kind; 8] = [
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Profile,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::HostEndpoint,
    Kind::Tier,
    // Failsafe ports and the endpoint-to-host action.
    Kind::FelixConfiguration,
];

/// Compiles the policy for this node's endpoints: selectors resolve over every
/// endpoint of the cluster (`resources` holds the workload endpoints of all nodes
/// and the policy kinds), but only the endpoints on `node` (workloads and host
/// endpoints) get chains.
pub fn compile_local(
    resources: &[Resource],
    node: &str,
) -> Result<Compiled, tabby_policy::model::PolicyError> {
    let model = Model::from_resources(resources)?;
    Ok(tabby_policy::compile::compile_for_node(&model, node))
}

/// Which kinds the policy engine reads: the policy kinds and workload endpoints.
pub fn is_policy_kind(kind: Kind) -> bool {
    kind == Kind::WorkloadEndpoint || POLICY_KINDS.contains(&kind)
}

/// The node's policy state, fed one resource change at a time: the incremental
/// engine of `tabby-policy` (selectors over every endpoint of the cluster, chains
/// for the local endpoints only), and whether the kernel holds its state. A
/// resource whose new version does not compile keeps its previous version in
/// effect and is reported; nothing else waits for it.
pub struct PolicyState {
    engine: tabby_policy::Engine,
    /// The kernel holds the engine's state as of its last mark.
    marked: bool,
}

impl PolicyState {
    /// No resources yet; nothing applied.
    pub fn new(node: &str) -> PolicyState {
        PolicyState {
            engine: tabby_policy::Engine::new(node),
            marked: false,
        }
    }

    /// A resource was created or updated (kinds policy does not read are ignored).
    pub fn put(&mut self, r: &Resource) {
        if let Err(e) = self.engine.put(r) {
            tracing::warn!(error = %e, "network policy: keeping the previous version in effect");
        }
    }

    /// Many resources at once (a snapshot): one compile instead of one per resource.
    pub fn put_all<'a>(&mut self, rs: impl IntoIterator<Item = &'a Resource>) {
        for e in self.engine.put_all(rs) {
            tracing::warn!(error = %e, "network policy: keeping the previous version in effect");
        }
    }

    /// A resource was deleted.
    pub fn delete(&mut self, kind: Kind, namespace: Option<&str>, name: &str) {
        self.engine.delete(kind, namespace, name);
    }

    /// Whether the rules differ from what the kernel holds.
    pub fn is_dirty(&mut self) -> bool {
        !self.marked || self.engine.is_dirty()
    }

    /// The whole rendered state.
    pub fn ruleset(&mut self) -> tabby_policy::nft::Ruleset {
        self.engine.ruleset()
    }

    /// The commands from the marked state to the current one; marks the current
    /// state. Only meaningful once a full state was applied and marked.
    pub fn take_update(&mut self) -> Vec<Value> {
        self.engine.take_update()
    }

    /// The current state is in the kernel (after a full replacement).
    pub fn mark(&mut self) {
        self.engine.mark();
        self.marked = true;
    }

    /// Forgets what was applied (the next apply must be a full replacement).
    pub fn unmark(&mut self) {
        self.marked = false;
    }

    /// Problems: resources whose latest version does not compile.
    pub fn errors(&self) -> Vec<String> {
        self.engine
            .errors()
            .into_iter()
            .map(|(_, e)| format!("{e}; its previous version stays in effect"))
            .collect()
    }

    /// Counts for metrics.
    pub fn stats(&self) -> tabby_policy::EngineStats {
        self.engine.stats()
    }
}

/// The full state as one batch: for each family the table `tabby` added, deleted
/// and re-added holding the policy (when given) and the natOutgoing chain (when
/// given).
pub fn full_batch(nat: Option<&NatInputs>, policy: Option<&tabby_policy::nft::Ruleset>) -> Value {
    let mut cmds = Vec::new();
    for f in Family::ALL {
        cmds.extend(table_ops(f));
        if let Some(rs) = policy
            && let Some(t) = rs.tables.iter().find(|t| t.family == nft_family(f))
        {
            cmds.extend(t.commands().into_iter().filter(|c| !is_table_op(c)));
        }
        if let Some(n) = nat {
            cmds.extend(nat_commands(n, f));
        }
    }
    json!({ "nftables": cmds })
}

fn nft_family(f: Family) -> tabby_policy::nft::Family {
    match f {
        Family::Ip => tabby_policy::nft::Family::Ipv4,
        Family::Ip6 => tabby_policy::nft::Family::Ipv6,
    }
}

fn table_ops(f: Family) -> Vec<Value> {
    let t = json!({"table": {"family": f.as_str(), "name": TABLE}});
    vec![
        json!({"add": t.clone()}),
        json!({"delete": t.clone()}),
        json!({"add": t}),
    ]
}

fn is_table_op(cmd: &Value) -> bool {
    ["add", "delete"]
        .iter()
        .any(|op| cmd.get(op).is_some_and(|v| v.get("table").is_some()))
}

/// The natOutgoing sets and chain of `family` as nft JSON commands (the table
/// itself is not created here).
pub fn nat_commands(inputs: &NatInputs, family: Family) -> Vec<Value> {
    let f = family.as_str();
    let set = |name: &str, nets: &[IpNet]| {
        let members: Vec<IpNet> = nets
            .iter()
            .copied()
            .filter(|n| family.contains(n))
            .collect();
        let merged = IpNet::aggregate(&members);
        let mut s = json!({"family": f, "table": TABLE, "name": name,
            "type": family.addr_type(), "flags": ["interval"]});
        if !merged.is_empty() {
            let elems: Vec<Value> = merged
                .iter()
                .map(|n| json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}}))
                .collect();
            s["elem"] = json!(elems);
        }
        json!({"add": {"set": s}})
    };
    let addr = |field: &str| json!({"payload": {"protocol": f, "field": field}});
    vec![
        set(MASQ_SET, &inputs.masq_pools),
        set(ALL_SET, &inputs.all_pools),
        json!({"add": {"chain": {"family": f, "table": TABLE, "name": NAT_CHAIN,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        json!({"add": {"rule": {"family": f, "table": TABLE, "chain": NAT_CHAIN, "expr": [
            {"match": {"op": "==", "left": addr("saddr"), "right": format!("@{MASQ_SET}")}},
            {"match": {"op": "!=", "left": addr("daddr"), "right": format!("@{ALL_SET}")}},
            {"masquerade": {"flags": ["fully-random"]}},
        ]}}}),
    ]
}

/// The whole batch, `{"nftables": [...]}`: for each family the table `tabby` is
/// created if missing, deleted and recreated holding the policy (when `policy` is
/// given) and, when `nat` is given, the natOutgoing chain.
pub fn render(nat: Option<&NatInputs>, policy: Option<&Compiled>) -> Value {
    let mut cmds = Vec::new();
    for f in Family::ALL {
        cmds.extend(table_ops(f));
        if let Some(c) = policy {
            cmds.extend(
                tabby_policy::nft::render_family(c, nft_family(f))
                    .into_iter()
                    .filter(|c| !is_table_op(c)),
            );
        }
        if let Some(n) = nat {
            cmds.extend(nat_commands(n, f));
        }
    }
    json!({ "nftables": cmds })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn count(batch: &Value, pred: impl Fn(&Value) -> bool) -> usize {
        batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| pred(c))
            .count()
    }

    #[test]
    fn nat_only_replaces_both_tables_and_masquerades_per_family() {
        let inputs = NatInputs {
            masq_pools: nets(&["100.64.0.0/16", "2001:db8:64::/48"]),
            all_pools: nets(&["100.64.0.0/16", "100.66.0.0/16", "2001:db8:64::/48"]),
        };
        let b = render(Some(&inputs), None);
        let cmds = b["nftables"].as_array().unwrap();
        // Each family: 3 table ops, 2 sets, 1 chain, 1 rule.
        assert_eq!(cmds.len(), 14);
        assert_eq!(
            cmds[1],
            json!({"delete": {"table": {"family": "ip", "name": "tabby"}}})
        );
        let all4 = &cmds[4]["add"]["set"];
        assert_eq!(all4["name"], ALL_SET);
        assert_eq!(
            all4["elem"],
            json!([{"prefix": {"addr": "100.64.0.0", "len": 16}}, {"prefix": {"addr": "100.66.0.0", "len": 16}}])
        );
        let rule6 = &cmds[13]["add"]["rule"];
        assert_eq!(rule6["family"], "ip6");
        assert_eq!(
            rule6["expr"][0]["match"]["left"]["payload"]["protocol"],
            "ip6"
        );
        assert_eq!(
            rule6["expr"][2],
            json!({"masquerade": {"flags": ["fully-random"]}})
        );
    }

    #[test]
    fn empty_and_ipv6_only_inputs_leave_sets_without_elements() {
        let b = render(Some(&NatInputs::default()), None);
        assert_eq!(count(&b, |c| c["add"]["set"].is_object()), 4);
        assert_eq!(
            count(&b, |c| c["add"]["set"].get("elem").is_some()),
            0,
            "{b}"
        );
        assert_eq!(
            count(&b, |c| c["add"]["rule"].is_object()),
            2,
            "a masquerade rule per family"
        );
        let v6 = NatInputs {
            masq_pools: nets(&["2001:db8:64::/48"]),
            all_pools: nets(&["2001:db8:66::/48", "2001:db8:64::/48"]),
        };
        let b = render(Some(&v6), None);
        let sets: Vec<&Value> = b["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["add"]["set"])
            .filter(|s| s.is_object())
            .collect();
        assert!(
            sets[..2].iter().all(|s| s.get("elem").is_none()),
            "no IPv4 members: {b}"
        );
        assert_eq!(sets[2]["type"], "ipv6_addr");
        assert_eq!(
            sets[2]["elem"],
            json!([{"prefix": {"addr": "2001:db8:64::", "len": 48}}])
        );
        assert_eq!(sets[3]["elem"].as_array().unwrap().len(), 2, "{b}");
    }

    #[test]
    fn overlapping_and_unmasked_cidrs_are_merged() {
        let inputs = NatInputs {
            masq_pools: vec![],
            all_pools: nets(&[
                "100.64.1.0/24",
                "100.64.0.0/16",
                "100.65.0.7/16",
                "100.66.0.0/24",
            ]),
        };
        let cmds = nat_commands(&inputs, Family::Ip);
        assert_eq!(
            cmds[1]["add"]["set"]["elem"],
            json!([{"prefix": {"addr": "100.64.0.0", "len": 15}}, {"prefix": {"addr": "100.66.0.0", "len": 24}}])
        );
    }

    #[test]
    fn policy_and_nat_share_one_table_per_family() {
        let yaml = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n1-k8s-a-eth0, namespace: default}
spec: {node: n1, interfaceName: calia, ipNetworks: [100.64.0.1/32], profiles: [kns.default]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: n2-k8s-b-eth0, namespace: default}
spec: {node: n2, interfaceName: calib, ipNetworks: [100.64.1.1/32], profiles: [kns.default]}
"#;
        let resources = tabby_api::load::parse_documents(yaml, "test.yaml").unwrap();
        let c = compile_local(&resources, "n1").unwrap();
        assert_eq!(c.endpoints.len(), 1, "only the local workload gets chains");
        let inputs = NatInputs {
            masq_pools: nets(&["100.64.0.0/16"]),
            all_pools: nets(&["100.64.0.0/16"]),
        };
        let b = render(Some(&inputs), Some(&c));
        let deletes = count(&b, |c| c.get("delete").is_some());
        assert_eq!(deletes, 2, "one table replacement per family");
        let adds_table = count(&b, |c| c["add"].get("table").is_some());
        assert_eq!(adds_table, 4);
        let chains: Vec<&str> = b["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["chain"]["family"] == "ip")
            .filter_map(|c| c["add"]["chain"]["name"].as_str())
            .collect();
        assert!(chains.contains(&"forward"), "{chains:?}");
        assert!(chains.contains(&NAT_CHAIN), "{chains:?}");
        let dispatched: Vec<&str> = b["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["map"]["family"] == "ip")
            .filter_map(|c| c["add"]["map"]["elem"].as_array())
            .flatten()
            .filter_map(|e| e[0].as_str())
            .collect();
        assert_eq!(
            dispatched,
            ["calia", "calia"],
            "the local endpoint, in the from- and to-endpoint maps; not the other node's"
        );
        assert!(
            chains.iter().any(|c| c.starts_with("to-workload-")),
            "the local endpoint's program chain: {chains:?}"
        );
    }

    #[test]
    fn policy_state_updates_incrementally_and_keeps_the_last_good_rules() {
        let yaml = |port: &str| {
            format!(
                r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: n1-k8s-a-eth0, namespace: default, labels: {{app: a}}}}
spec: {{node: n1, interfaceName: calia, ipNetworks: [100.64.0.1/32], profiles: [kns.default]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: p, namespace: default}}
spec:
  selector: app == 'a'
  ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [{port}]}}}}]
"#
            )
        };
        let mut st = PolicyState::new("n1");
        for r in tabby_api::load::parse_documents(&yaml("80"), "t.yaml").unwrap() {
            st.put(&r);
        }
        assert!(st.is_dirty());
        let nat = NatInputs {
            masq_pools: nets(&["100.64.0.0/16"]),
            all_pools: nets(&["100.64.0.0/16"]),
        };
        let first = full_batch(Some(&nat), Some(&st.ruleset()));
        st.mark();
        assert_eq!(
            count(&first, |c| c
                .get("delete")
                .is_some_and(|d| d.get("table").is_some())),
            2
        );
        assert!(first.to_string().contains(NAT_CHAIN));
        assert!(!st.is_dirty(), "marked");
        for r in tabby_api::load::parse_documents(&yaml("81"), "t.yaml").unwrap() {
            st.put(&r);
        }
        assert!(st.is_dirty());
        let update = tabby_policy::nft::batch(st.take_update());
        assert_eq!(
            count(&update, |c| c
                .get("delete")
                .is_some_and(|d| d.get("table").is_some())),
            0,
            "an update never deletes the table"
        );
        assert!(update.to_string().contains("81"), "{update}");
        assert!(!st.is_dirty());
        // A policy that does not compile: reported, the last good rules stay.
        let mut bad = tabby_api::load::parse_documents(&yaml("82"), "t.yaml").unwrap();
        if let tabby_api::Spec::NetworkPolicy(p) = &mut bad[1].spec {
            p.selector = Some("app ==".into());
        }
        st.put(&bad[1]);
        assert!(!st.is_dirty(), "the last good rules stay in place");
        assert_eq!(st.errors().len(), 1);
        st.delete(Kind::NetworkPolicy, Some("default"), "p");
        assert!(st.is_dirty(), "the policy's rules go with it");
        assert!(st.errors().is_empty());
    }
}
