//! Renders the compiled IR as one nftables JSON batch (the `nft -j -f` input
//! format) holding a table `tabby` per family: a set per resolved IP membership, a
//! chain per endpoint and direction (and per tier and profile in it), verdict maps
//! dispatching by interface, and the conntrack fast path first. The batch deletes
//! and recreates the tables, so applying it is one atomic replacement.

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_api::policy::{Action, TierAction};

use crate::compile::{Compiled, Direction, EndpointProgram, IrEntity, IrPort, IrRule};

/// The table name in both families.
pub const TABLE: &str = "tabby";
/// Mark bit an Allow sets so the endpoint chain returns "accepted" (Calico's
/// default accept mark).
pub const ACCEPT_MARK: u32 = 0x1_0000;
/// Verdict map from input interface to the endpoint's egress chain.
pub const FROM_ENDPOINT_MAP: &str = "from-endpoint";
/// Verdict map from output interface to the endpoint's ingress chain.
pub const TO_ENDPOINT_MAP: &str = "to-endpoint";

/// An nftables address family Tabby programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `ip`
    Ipv4,
    /// `ip6`
    Ipv6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    fn version(self) -> u8 {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 6,
        }
    }

    fn addr_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }

    fn has(self, n: &IpNet) -> bool {
        match self {
            Family::Ipv4 => n.addr().is_ipv4(),
            Family::Ipv6 => n.addr().is_ipv6(),
        }
    }
}

/// The whole batch, `{"nftables": [...]}`, IPv4 table then IPv6 table.
pub fn render(c: &Compiled) -> Value {
    let mut cmds = Vec::new();
    for f in [Family::Ipv4, Family::Ipv6] {
        cmds.extend(render_family(c, f));
    }
    json!({ "nftables": cmds })
}

fn prefix(n: &IpNet) -> Value {
    json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
}

fn rule_cmd(f: Family, chain: &str, expr: Vec<Value>, comment: Option<&str>) -> Value {
    let mut r = json!({"family": f.name(), "table": TABLE, "chain": chain, "expr": expr});
    if let Some(c) = comment {
        let c: String = c.chars().take(127).collect();
        r["comment"] = json!(c);
    }
    json!({"add": {"rule": r}})
}

fn chain_cmd(f: Family, name: &str) -> Value {
    json!({"add": {"chain": {"family": f.name(), "table": TABLE, "name": name}}})
}

fn mark() -> Value {
    json!({"meta": {"key": "mark"}})
}

fn set_accept_mark() -> Value {
    json!({"mangle": {"key": mark(), "value": {"|": [mark(), ACCEPT_MARK]}}})
}

fn clear_accept_mark() -> Value {
    json!({"mangle": {"key": mark(), "value": {"&": [mark(), !ACCEPT_MARK]}}})
}

fn return_if_accepted() -> Vec<Value> {
    vec![
        json!({"match": {"op": "==", "left": {"&": [mark(), ACCEPT_MARK]}, "right": ACCEPT_MARK}}),
        json!({"return": null}),
    ]
}

/// The commands for one family's table.
pub fn render_family(c: &Compiled, f: Family) -> Vec<Value> {
    let fam = f.name();
    let table = json!({"table": {"family": fam, "name": TABLE}});
    let mut cmds = vec![
        json!({ "add": table.clone() }),
        json!({ "delete": table.clone() }),
        json!({ "add": table }),
    ];
    for s in c.ip_sets.iter().filter(|s| !s.literal) {
        let mut set = json!({"family": fam, "table": TABLE, "name": s.name,
            "type": f.addr_type(), "flags": ["interval"], "comment": s.description.chars().take(127).collect::<String>()});
        let elems: Vec<Value> = s.members.iter().filter(|n| f.has(n)).map(prefix).collect();
        if !elems.is_empty() {
            set["elem"] = json!(elems);
        }
        cmds.push(json!({"add": {"set": set}}));
    }
    for s in &c.port_sets {
        let mut set = json!({"family": fam, "table": TABLE, "name": s.name,
            "type": [f.addr_type(), "inet_service"], "comment": s.description.chars().take(127).collect::<String>()});
        let elems: Vec<Value> = s
            .members
            .iter()
            .filter(|(n, _)| f.has(n))
            .map(|(n, p)| json!({"concat": [n.addr().to_string(), p]}))
            .collect();
        if !elems.is_empty() {
            set["elem"] = json!(elems);
        }
        cmds.push(json!({"add": {"set": set}}));
    }
    let dispatched: Vec<&EndpointProgram> = c
        .endpoints
        .iter()
        .filter(|e| {
            !e.host
                && e.interface
                    .as_deref()
                    .is_some_and(|i| !i.is_empty() && i != "*")
        })
        .collect();
    // Chains before the maps that jump to them.
    let mut chains = Vec::new();
    let mut rules = Vec::new();
    for e in &dispatched {
        let iface = e.interface.as_deref().unwrap_or_default();
        for d in [Direction::Egress, Direction::Ingress] {
            endpoint_chain(c, f, e, iface, d, &mut chains, &mut rules);
        }
    }
    cmds.extend(chains);
    for (name, d) in [
        (FROM_ENDPOINT_MAP, Direction::Egress),
        (TO_ENDPOINT_MAP, Direction::Ingress),
    ] {
        let mut map = json!({"family": fam, "table": TABLE, "name": name, "type": "ifname", "map": "verdict"});
        let elems: Vec<Value> = dispatched
            .iter()
            .map(|e| {
                let iface = e.interface.as_deref().unwrap_or_default();
                json!([iface, {"jump": {"target": chain_name(iface, d)}}])
            })
            .collect();
        if !elems.is_empty() {
            map["elem"] = json!(elems);
        }
        cmds.push(json!({"add": {"map": map}}));
    }
    cmds.push(
        json!({"add": {"chain": {"family": fam, "table": TABLE, "name": "forward",
        "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
    );
    cmds.push(rule_cmd(
        f,
        "forward",
        vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}),
            json!({"accept": null}),
        ],
        None,
    ));
    cmds.push(rule_cmd(
        f,
        "forward",
        vec![
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}),
            json!({"drop": null}),
        ],
        None,
    ));
    cmds.push(rule_cmd(
        f,
        "forward",
        vec![json!({"vmap": {"key": {"meta": {"key": "iifname"}}, "data": format!("@{FROM_ENDPOINT_MAP}")}})],
        None,
    ));
    cmds.push(rule_cmd(
        f,
        "forward",
        vec![json!({"vmap": {"key": {"meta": {"key": "oifname"}}, "data": format!("@{TO_ENDPOINT_MAP}")}})],
        None,
    ));
    cmds.extend(rules);
    cmds
}

/// `fw-<iface>` (from the endpoint: egress) or `tw-<iface>` (to it: ingress).
pub fn chain_name(iface: &str, d: Direction) -> String {
    match d {
        Direction::Egress => format!("fw-{iface}"),
        Direction::Ingress => format!("tw-{iface}"),
    }
}

fn endpoint_chain(
    c: &Compiled,
    f: Family,
    e: &EndpointProgram,
    iface: &str,
    d: Direction,
    chains: &mut Vec<Value>,
    rules: &mut Vec<Value>,
) {
    let prog = e.program(d);
    let main = chain_name(iface, d);
    chains.push(chain_cmd(f, &main));
    rules.push(rule_cmd(f, &main, vec![clear_accept_mark()], None));
    for t in &prog.tiers {
        let tc = format!("{main}-tier-{}", t.tier);
        chains.push(chain_cmd(f, &tc));
        rules.push(rule_cmd(
            f,
            &main,
            vec![json!({"jump": {"target": tc}})],
            None,
        ));
        rules.push(rule_cmd(f, &main, return_if_accepted(), None));
        for p in &t.policies {
            for r in &p.rules {
                let comment = format!("{} {} {}[{}]", t.tier, p.policy, d.as_str(), r.index);
                for expr in rule_exprs(c, f, r) {
                    rules.push(rule_cmd(f, &tc, expr, Some(&comment)));
                }
            }
        }
        if t.default_action == TierAction::Deny {
            rules.push(rule_cmd(
                f,
                &tc,
                vec![json!({"drop": null})],
                Some(&format!(
                    "End of tier {}. Drop if no policies passed packet",
                    t.tier
                )),
            ));
        }
    }
    for pr in &prog.profiles {
        let pc = format!("{main}-pro-{}", pr.profile);
        chains.push(chain_cmd(f, &pc));
        rules.push(rule_cmd(
            f,
            &main,
            vec![json!({"jump": {"target": pc}})],
            None,
        ));
        rules.push(rule_cmd(f, &main, return_if_accepted(), None));
        for r in &pr.rules {
            let comment = format!("profile {} {}[{}]", pr.profile, d.as_str(), r.index);
            for expr in rule_exprs(c, f, r) {
                rules.push(rule_cmd(f, &pc, expr, Some(&comment)));
            }
        }
    }
    rules.push(rule_cmd(
        f,
        &main,
        vec![json!({"drop": null})],
        Some("Drop if no profiles matched"),
    ));
}

fn proto_name(p: Option<u8>) -> &'static str {
    match p {
        Some(17) => "udp",
        Some(132) => "sctp",
        Some(6) => "tcp",
        _ => "th",
    }
}

fn port_value(ranges: &[(u16, u16)]) -> Value {
    let items: Vec<Value> = ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                json!(a)
            } else {
                json!({"range": [a, b]})
            }
        })
        .collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        json!({"set": items})
    }
}

/// One side's port alternatives: each is a list of match expressions; the rule is
/// emitted once per combination of alternatives (nftables has no OR across
/// different keys).
fn port_alternatives(
    c: &Compiled,
    f: Family,
    ports: &[IrPort],
    addr: &Value,
    port: &Value,
) -> Option<Vec<Vec<Value>>> {
    if ports.is_empty() {
        return Some(vec![vec![]]);
    }
    let mut alts = Vec::new();
    let ranges: Vec<(u16, u16)> = ports
        .iter()
        .filter_map(|p| match p {
            IrPort::Range(a, b) => Some((*a, *b)),
            IrPort::Set(_) => None,
        })
        .collect();
    if !ranges.is_empty() {
        alts.push(vec![
            json!({"match": {"op": "==", "left": port, "right": port_value(&ranges)}}),
        ]);
    }
    for p in ports {
        if let IrPort::Set(i) = p {
            let s = &c.port_sets[*i];
            if s.members.iter().any(|(n, _)| f.has(n)) {
                alts.push(vec![json!({"match": {"op": "==", "left": {"concat": [addr, port]}, "right": format!("@{}", s.name)}})]);
            }
        }
    }
    (!alts.is_empty()).then_some(alts)
}

fn entity_exprs(
    c: &Compiled,
    f: Family,
    e: &IrEntity,
    field: &str,
    proto: Option<u8>,
) -> Option<Vec<Vec<Value>>> {
    let addr = json!({"payload": {"protocol": f.name(), "field": format!("{field}addr")}});
    let port = json!({"payload": {"protocol": proto_name(proto), "field": format!("{field}port")}});
    let mut base = Vec::new();
    for (sets, op) in [(&e.in_sets, "=="), (&e.not_in_sets, "!=")] {
        for i in sets {
            let s = &c.ip_sets[*i];
            let members: Vec<&IpNet> = s.members.iter().filter(|n| f.has(n)).collect();
            if members.is_empty() {
                if op == "==" {
                    return None;
                }
                continue;
            }
            let right = if s.literal {
                json!({"set": members.into_iter().map(prefix).collect::<Vec<_>>()})
            } else {
                json!(format!("@{}", s.name))
            };
            base.push(json!({"match": {"op": op, "left": addr, "right": right}}));
        }
    }
    let ranges: Vec<(u16, u16)> = e
        .not_ports
        .iter()
        .filter_map(|p| match p {
            IrPort::Range(a, b) => Some((*a, *b)),
            IrPort::Set(_) => None,
        })
        .collect();
    if !ranges.is_empty() {
        base.push(json!({"match": {"op": "!=", "left": port, "right": port_value(&ranges)}}));
    }
    for p in &e.not_ports {
        if let IrPort::Set(i) = p {
            let s = &c.port_sets[*i];
            if s.members.iter().any(|(n, _)| f.has(n)) {
                base.push(json!({"match": {"op": "!=", "left": {"concat": [addr, port]}, "right": format!("@{}", s.name)}}));
            }
        }
    }
    let alts = port_alternatives(c, f, &e.ports, &addr, &port)?;
    Some(
        alts.into_iter()
            .map(|a| base.iter().cloned().chain(a).collect())
            .collect(),
    )
}

fn icmp_match(f: Family, i: &crate::model::Icmp, op: &str) -> Value {
    let proto = match f {
        Family::Ipv4 => "icmp",
        Family::Ipv6 => "icmpv6",
    };
    let ty = json!({"payload": {"protocol": proto, "field": "type"}});
    match i.code {
        None => json!({"match": {"op": op, "left": ty, "right": i.type_}}),
        Some(code) => {
            let cd = json!({"payload": {"protocol": proto, "field": "code"}});
            // nftables compares concatenations only against sets.
            json!({"match": {"op": op, "left": {"concat": [ty, cd]},
                "right": {"set": [{"concat": [i.type_, code]}]}}})
        }
    }
}

/// The nftables rules (each a list of expressions) for one IR rule in a family;
/// none when it cannot match there.
pub fn rule_exprs(c: &Compiled, f: Family, r: &IrRule) -> Vec<Vec<Value>> {
    if r.never.is_some() || r.ip_version.is_some_and(|v| v != f.version()) {
        return Vec::new();
    }
    let wrong_icmp = match f {
        Family::Ipv4 => 58,
        Family::Ipv6 => 1,
    };
    if r.protocol == Some(wrong_icmp) {
        return Vec::new();
    }
    let mut base = Vec::new();
    if let Some(p) = r.protocol {
        base.push(json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": p}}));
    }
    if let Some(p) = r.not_protocol {
        base.push(json!({"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": p}}));
    }
    if let Some(i) = &r.icmp {
        base.push(icmp_match(f, i, "=="));
    }
    if let Some(i) = &r.not_icmp {
        base.push(icmp_match(f, i, "!="));
    }
    let Some(src) = entity_exprs(c, f, &r.src, "s", r.protocol) else {
        return Vec::new();
    };
    let Some(dst) = entity_exprs(c, f, &r.dst, "d", r.protocol) else {
        return Vec::new();
    };
    let verdict: Vec<Value> = match r.action {
        Action::Allow => vec![set_accept_mark(), json!({"return": null})],
        Action::Deny => vec![json!({"drop": null})],
        Action::Pass => vec![json!({"return": null})],
        Action::Log => vec![json!({"log": {"prefix": "calico-packet"}})],
    };
    let mut out = Vec::new();
    for s in &src {
        for d in &dst {
            let mut e = base.clone();
            e.extend(s.iter().cloned());
            e.extend(d.iter().cloned());
            e.extend(verdict.iter().cloned());
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Icmp;

    #[test]
    fn icmp_type_and_code_match_a_concatenation_set() {
        let i = Icmp {
            type_: 8,
            code: Some(0),
        };
        assert_eq!(
            icmp_match(Family::Ipv4, &i, "!="),
            json!({"match": {"op": "!=", "left": {"concat": [
                {"payload": {"protocol": "icmp", "field": "type"}},
                {"payload": {"protocol": "icmp", "field": "code"}}]},
                "right": {"set": [{"concat": [8, 0]}]}}})
        );
        let i = Icmp {
            type_: 128,
            code: None,
        };
        assert_eq!(
            icmp_match(Family::Ipv6, &i, "=="),
            json!({"match": {"op": "==",
                "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": 128}})
        );
    }
}
