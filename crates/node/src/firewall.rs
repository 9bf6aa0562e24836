//! The node's nftables state as one batch: network policy (from `tabby-policy`) and
//! natOutgoing share the table `tabby` of each family, so they are rendered together
//! and applied as one `nft -j -f` transaction that replaces both tables at once.
//! Everything here is pure; [`crate::nat::Nft`] applies the result.

use std::collections::BTreeSet;

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_api::{Kind, Resource};
use tabby_policy::compile::Compiled;
use tabby_policy::model::Model;

use crate::nat::{ALL_SET, Family, MASQ_SET, NAT_CHAIN, NatInputs, TABLE};

/// The resource kinds the policy model is built from.
pub const POLICY_KINDS: [Kind; 7] = [
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Profile,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::HostEndpoint,
    Kind::Tier,
];

/// Compiles the policy for this node's endpoints: selectors resolve over every
/// endpoint of the cluster (`resources` holds the workload endpoints of all nodes
/// and the policy kinds), but only the workloads on `node` (by `local_ifaces`, the
/// host-side interfaces of the local workloads) get chains.
pub fn compile_local(
    resources: &[Resource],
    local_ifaces: &BTreeSet<String>,
) -> Result<Compiled, tabby_policy::model::PolicyError> {
    let model = Model::from_resources(resources)?;
    let mut c = tabby_policy::compile::compile(&model);
    c.endpoints.retain(|e| {
        e.interface
            .as_deref()
            .is_some_and(|i| local_ifaces.contains(i))
    });
    Ok(c)
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
    let (addr_type, v4) = match family {
        Family::Ip => ("ipv4_addr", true),
        Family::Ip6 => ("ipv6_addr", false),
    };
    let set = |name: &str, nets: &[IpNet]| {
        let members: Vec<IpNet> = nets
            .iter()
            .copied()
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .collect();
        let merged = IpNet::aggregate(&members);
        let mut s = json!({"family": f, "table": TABLE, "name": name,
            "type": addr_type, "flags": ["interval"]});
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
        let local = BTreeSet::from(["calia".to_string()]);
        let c = compile_local(&resources, &local).unwrap();
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
        assert!(
            chains.iter().any(|c| c.contains("calia")),
            "the local endpoint's chains: {chains:?}"
        );
        assert!(
            !chains.iter().any(|c| c.contains("calib")),
            "no chains for the other node's endpoint: {chains:?}"
        );
    }
}
