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

/// What is in the kernel after the last successful apply.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// The natOutgoing inputs, when NAT is programmed.
    pub nat: Option<NatInputs>,
    /// The compiled policy, when policy is enforced.
    pub policy: Option<Compiled>,
}

/// How to bring the kernel from `last` (what was applied, `None` if unknown) to the
/// wanted state: `None` when nothing changed, otherwise the batch and whether it is
/// a full replacement. A change of the natOutgoing inputs, of whether policy is on,
/// or an unknown kernel state replaces both tables; a policy change alone is an
/// incremental update that rewrites only the changed sets, maps and chains (and
/// leaves the NAT chain and established flows alone).
pub fn plan_apply(
    last: Option<&Applied>,
    nat: Option<&NatInputs>,
    policy: Option<&Compiled>,
) -> Option<(Value, bool)> {
    match last {
        Some(l) if l.nat.as_ref() == nat && l.policy.is_some() == policy.is_some() => {
            match (&l.policy, policy) {
                (Some(old), Some(new)) if old != new => {
                    let cmds = tabby_policy::nft::update_commands(old, new);
                    (!cmds.is_empty()).then(|| (tabby_policy::nft::batch(cmds), false))
                }
                _ => None,
            }
        }
        _ => Some((render(nat, policy), true)),
    }
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
    fn plan_apply_is_full_first_incremental_for_policy_and_full_for_nat() {
        let yaml = |port: u16| {
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
        let compile = |port| {
            let r = tabby_api::load::parse_documents(&yaml(port), "t.yaml").unwrap();
            compile_local(&r, "n1").unwrap()
        };
        let (c1, c2) = (compile(80), compile(81));
        let nat = NatInputs {
            masq_pools: nets(&["100.64.0.0/16"]),
            all_pools: nets(&["100.64.0.0/16"]),
        };
        let (first, full) = plan_apply(None, Some(&nat), Some(&c1)).unwrap();
        assert!(full);
        assert_eq!(
            count(&first, |c| c
                .get("delete")
                .is_some_and(|d| d.get("table").is_some())),
            2
        );
        let applied = Applied {
            nat: Some(nat.clone()),
            policy: Some(c1.clone()),
        };
        assert!(
            plan_apply(Some(&applied), Some(&nat), Some(&c1)).is_none(),
            "no change, no batch"
        );
        let (update, full) = plan_apply(Some(&applied), Some(&nat), Some(&c2)).unwrap();
        assert!(!full, "a policy change is incremental");
        assert_eq!(
            count(&update, |c| c
                .get("delete")
                .is_some_and(|d| d.get("table").is_some())),
            0,
            "an update never deletes the table"
        );
        assert!(update.to_string().contains("81"), "{update}");
        let other_nat = NatInputs {
            masq_pools: vec![],
            all_pools: nets(&["100.64.0.0/16"]),
        };
        let (_, full) = plan_apply(Some(&applied), Some(&other_nat), Some(&c1)).unwrap();
        assert!(full, "a NAT change replaces the tables");
    }
}
