//! Renders the compiled IR as nftables JSON (the `nft -j -f` input format): a
//! table `tabby` per family (`ip`, `ip6`) with a set per resolved IP membership, a
//! chain per distinct endpoint program and direction (and per tier and profile in
//! it), verdict maps dispatching by interface, and the conntrack fast path first.
//!
//! The verdict maps send each interface straight to its program chain (jump for
//! workloads, goto for host endpoints); there is no chain per interface. Endpoints
//! with the same program (replicas) share its chains, so the kernel holds chains
//! and rules per distinct program rather than per pod: what every `nft` run
//! fetches into its cache and every commit validates does not grow with the pods.
//! Program and tier chains (`to-workload-<hash>`,
//! `tier-<tier>-<hash>`, ...) are named by a hash of the program's first
//! interface, so their names survive changes of their rules: one changed policy
//! flushes and refills only the tier chains it is in. Profile chains
//! (`pro-<profile>-<hash>`) are named by a hash of their rules and shared.
//!
//! The rendering is first a [`Ruleset`] (data: sets, maps and chains by name), then
//! commands:
//! - [`render_commands`] / [`Ruleset::commands`]: the full state. It adds, deletes
//!   and re-adds the `tabby` tables, so applying it is one atomic replacement of
//!   everything in them. A caller that owns more objects in the same table (the
//!   node agent's natOutgoing chain) appends its own `add` commands to this list
//!   and applies the whole list as one batch ([`batch`]).
//! - [`update_commands`] / [`diff`]: the change from one state to the next, never
//!   deleting the table: set and map elements added and removed, changed chains
//!   flushed and refilled, new objects added and gone ones deleted. Objects the
//!   renderer does not know (the caller's own chains) are left alone. The
//!   commands are built from per-object changes, so [`crate::incremental`]
//!   builds the same commands from the objects it knows changed.
//!
//! Hooks: `forward` dispatches traffic from and to workload interfaces (egress
//! program of the source, then ingress program of the destination); `input` and
//! `output` police the host's own traffic on host endpoint interfaces, after
//! loopback, IPv6 neighbour discovery and established flows are accepted and, in
//! each host endpoint chain, the failsafe ports. Host endpoints do not police
//! forwarded traffic (`applyOnForward` is not programmed).
//!
//! Between the host and its own workloads, as Felix does: traffic from a workload
//! to the host (`input`, a local workload interface) goes to `wl-to-host`: IPv6
//! router and neighbour discovery accepted, then the workload's egress program,
//! then `DefaultEndpointToHostAction` (drop by default, accept, or return to the
//! host's other input rules). Host endpoint programs and failsafe ports never
//! apply to it. Traffic from the host to a local workload (`output`) is always
//! accepted, whatever the workload's ingress policy (kubelet probes; Felix's
//! `cali-OUTPUT` returns for workload interfaces).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde_json::{Value, json};
use tabby_api::policy::{Action, TierAction};

use crate::compile::{
    Compiled, Direction, EndpointProgram, IrEntity, IrPort, IrRule, Program, stable_hash,
};
use crate::model::{EndpointToHost, Failsafe, FailsafePort, WorkloadPrefixes};

/// The table name in both families.
pub const TABLE: &str = "tabby";
/// Mark bit an Allow sets so the endpoint chain returns "accepted" (Calico's
/// default accept mark).
pub const ACCEPT_MARK: u32 = 0x1_0000;
/// Verdict map from input interface to the endpoint's egress chain.
pub const FROM_ENDPOINT_MAP: &str = "from-endpoint";
/// Verdict map from output interface to the endpoint's ingress chain.
pub const TO_ENDPOINT_MAP: &str = "to-endpoint";
/// Verdict map from input interface to the host endpoint's ingress chain.
pub const FROM_HOST_ENDPOINT_MAP: &str = "from-host-endpoint";
/// Verdict map from output interface to the host endpoint's egress chain.
pub const TO_HOST_ENDPOINT_MAP: &str = "to-host-endpoint";
/// Set of the local workload interfaces (never policed as host interfaces).
pub const WORKLOAD_INTERFACES: &str = "workload-interfaces";
/// Chain of traffic from local workloads to the host (Felix's `cali-wl-to-host`).
pub const WORKLOAD_TO_HOST: &str = "wl-to-host";
/// Chain of the inbound failsafe ports.
pub const FAILSAFE_IN: &str = "failsafe-in";
/// Chain of the outbound failsafe ports.
pub const FAILSAFE_OUT: &str = "failsafe-out";
/// The interface name of a host endpoint for all host interfaces.
pub const ALL_INTERFACES: &str = "*";

/// An nftables address family Tabby programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `ip`
    Ipv4,
    /// `ip6`
    Ipv6,
}

impl Family {
    /// `ip` or `ip6`.
    pub fn name(self) -> &'static str {
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

/// A named set or verdict map: its declaration and its elements.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedSet {
    /// `true` for a verdict map.
    pub map: bool,
    /// The `set` / `map` object without `elem`.
    pub decl: Value,
    /// Elements (for maps `[key, verdict]` pairs).
    pub elems: Vec<Value>,
}

/// A chain: its declaration and its rules in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// The `chain` object (with `type`, `hook`, `prio`, `policy` for base chains).
    pub decl: Value,
    /// The `rule` objects in order.
    pub rules: Vec<Value>,
}

/// Everything in one family's `tabby` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// The family.
    pub family: Family,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, NamedSet>,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
}

/// The rendered state of both tables, the unit full and incremental applies work on.
#[derive(Clone, Debug, PartialEq)]
pub struct Ruleset {
    /// The `ip` table, then the `ip6` table.
    pub tables: Vec<Table>,
}

/// Wraps commands as an `nft -j -f` batch: `{"nftables": [...]}`.
pub fn batch(cmds: Vec<Value>) -> Value {
    json!({ "nftables": cmds })
}

/// The whole state as one batch, `{"nftables": [...]}`, IPv4 table then IPv6 table.
pub fn render(c: &Compiled) -> Value {
    batch(render_commands(c))
}

/// The full-state commands (see the module docs): table `tabby` in `ip` and `ip6`
/// deleted and recreated with everything in it. Append your own commands for
/// objects in the same table and apply the list as one batch.
pub fn render_commands(c: &Compiled) -> Vec<Value> {
    ruleset(c).commands()
}

/// The minimal commands that turn the state rendered from `old` into the state
/// rendered from `new`, as one transaction that keeps the table (see [`diff`]).
pub fn update_commands(old: &Compiled, new: &Compiled) -> Vec<Value> {
    diff(&ruleset(old), &ruleset(new))
}

/// The commands for one family's table (the full state).
pub fn render_family(c: &Compiled, f: Family) -> Vec<Value> {
    table(c, f).commands()
}

/// The rendered state of a compilation.
pub fn ruleset(c: &Compiled) -> Ruleset {
    Ruleset {
        tables: vec![table(c, Family::Ipv4), table(c, Family::Ipv6)],
    }
}

fn table_ref(f: Family) -> Value {
    json!({"table": {"family": f.name(), "name": TABLE}})
}

fn obj_ref(f: Family, name: &str) -> Value {
    json!({"family": f.name(), "table": TABLE, "name": name})
}

impl Ruleset {
    /// The full-state commands for both tables.
    pub fn commands(&self) -> Vec<Value> {
        self.tables.iter().flat_map(Table::commands).collect()
    }
}

impl NamedSet {
    /// The `add` command of the set or map with its elements.
    pub(crate) fn with_elems(&self) -> Value {
        add_set(self.map, &self.decl, self.elems.clone())
    }
}

fn kind(map: bool) -> &'static str {
    if map { "map" } else { "set" }
}

/// The `add` command of a set or map declaration with its elements.
pub(crate) fn add_set(map: bool, decl: &Value, elems: Vec<Value>) -> Value {
    let mut d = decl.clone();
    if !elems.is_empty() {
        d["elem"] = Value::Array(elems);
    }
    json!({"add": {kind(map): d}})
}

impl Table {
    /// The full-state commands: add, delete and re-add the table, then sets,
    /// chains, maps (they jump to chains) and rules.
    pub fn commands(&self) -> Vec<Value> {
        let t = table_ref(self.family);
        let mut cmds = vec![
            json!({"add": t.clone()}),
            json!({"delete": t.clone()}),
            json!({"add": t}),
        ];
        cmds.extend(
            self.sets
                .values()
                .filter(|s| !s.map)
                .map(NamedSet::with_elems),
        );
        cmds.extend(
            self.chains
                .values()
                .map(|c| json!({"add": {"chain": c.decl}})),
        );
        cmds.extend(
            self.sets
                .values()
                .filter(|s| s.map)
                .map(NamedSet::with_elems),
        );
        for c in self.chains.values() {
            cmds.extend(c.rules.iter().map(|r| json!({"add": {"rule": r}})));
        }
        cmds
    }
}

/// The key an element is compared by: the whole element in a set, the key
/// of a map element.
pub(crate) fn elem_key(map: bool, e: &Value) -> String {
    if map { e[0].to_string() } else { e.to_string() }
}

fn element_cmd(op: &str, f: Family, name: &str, elems: Vec<Value>) -> Value {
    let mut o = obj_ref(f, name);
    o["elem"] = json!(elems);
    json!({op: {"element": o}})
}

/// The commands that turn `old` into `new` without deleting the tables: new sets,
/// maps and chains are added; set and map elements are added and deleted one by
/// one; a chain whose rules changed is flushed and refilled, an unchanged chain is
/// not touched; gone chains are flushed and deleted, gone sets deleted. Apply the
/// result as one batch (an empty list means nothing changed).
pub fn diff(old: &Ruleset, new: &Ruleset) -> Vec<Value> {
    let mut cmds = Vec::new();
    for nt in &new.tables {
        let empty = Table {
            family: nt.family,
            sets: BTreeMap::new(),
            chains: BTreeMap::new(),
        };
        let ot = old
            .tables
            .iter()
            .find(|t| t.family == nt.family)
            .unwrap_or(&empty);
        cmds.extend(diff_table(ot, nt));
    }
    cmds
}

/// How one set or map differs between two states of a table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SetChange {
    /// In both with the same declaration: the elements that went (for a map,
    /// their keys) and came, each in [`elem_key`] order.
    Elements {
        /// A verdict map.
        map: bool,
        /// Elements (map keys) to delete.
        removed: Vec<Value>,
        /// Elements to add.
        added: Vec<Value>,
    },
    /// New, or replacing an object of the same name with another declaration.
    Added {
        /// Whether the replaced object was a map (`None`: nothing replaced).
        replaced: Option<bool>,
        /// Whether the new object is a map.
        map: bool,
        /// Its `add` command with its elements.
        add: Value,
    },
    /// Gone.
    Gone {
        /// Whether it was a map.
        map: bool,
    },
}

/// How one chain differs between two states of a table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ChainChange<'a> {
    /// Same declaration, other rules.
    Refilled(&'a Chain),
    /// New, or replacing a chain with another declaration.
    Added {
        /// Whether a chain of that name was there.
        replaced: bool,
        /// The new chain.
        chain: &'a Chain,
    },
    /// Gone.
    Gone,
}

/// The element changes between two element lists of a set (or map) with the
/// same declaration.
pub(crate) fn elements_change<'a>(
    map: bool,
    before: impl IntoIterator<Item = &'a Value>,
    after: impl IntoIterator<Item = &'a Value>,
) -> SetChange {
    let before: BTreeMap<String, &Value> =
        before.into_iter().map(|e| (elem_key(map, e), e)).collect();
    let after: BTreeMap<String, &Value> =
        after.into_iter().map(|e| (elem_key(map, e), e)).collect();
    let removed: Vec<Value> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(_, v)| if map { v[0].clone() } else { (*v).clone() })
        .collect();
    let added: Vec<Value> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(_, v)| (*v).clone())
        .collect();
    SetChange::Elements {
        map,
        removed,
        added,
    }
}

/// How a set differs between two states (`None`: not at all, or absent from both).
pub(crate) fn set_change(old: Option<&NamedSet>, new: Option<&NamedSet>) -> Option<SetChange> {
    match (old, new) {
        (Some(o), Some(n)) if o.decl == n.decl => Some(elements_change(n.map, &o.elems, &n.elems)),
        (o, Some(n)) => Some(SetChange::Added {
            replaced: o.map(|o| o.map),
            map: n.map,
            add: n.with_elems(),
        }),
        (Some(o), None) => Some(SetChange::Gone { map: o.map }),
        (None, None) => None,
    }
}

/// How a chain differs between two states (`None`: not at all).
pub(crate) fn chain_change<'a>(
    old: Option<&Chain>,
    new: Option<&'a Chain>,
) -> Option<ChainChange<'a>> {
    match (old, new) {
        (Some(o), Some(n)) if o.decl == n.decl => {
            (o.rules != n.rules).then_some(ChainChange::Refilled(n))
        }
        (o, Some(n)) => Some(ChainChange::Added {
            replaced: o.is_some(),
            chain: n,
        }),
        (Some(_), None) => Some(ChainChange::Gone),
        (None, None) => None,
    }
}

fn diff_table(old: &Table, new: &Table) -> Vec<Value> {
    let mut sets = BTreeMap::new();
    for name in old.sets.keys().chain(new.sets.keys()) {
        if sets.contains_key(name) {
            continue;
        }
        if let Some(c) = set_change(old.sets.get(name), new.sets.get(name)) {
            sets.insert(name.clone(), c);
        }
    }
    let mut chains = BTreeMap::new();
    for name in old.chains.keys().chain(new.chains.keys()) {
        if chains.contains_key(name) {
            continue;
        }
        if let Some(c) = chain_change(old.chains.get(name), new.chains.get(name)) {
            chains.insert(name.clone(), c);
        }
    }
    delta_commands(new.family, sets, &chains)
}

/// The update commands for the changes of one table, in the order a transaction
/// needs them: replaced objects deleted first, then new sets and chains, set
/// elements, new maps, chain rules, map elements (maps jump to chains that must
/// have their rules), and last what is gone (maps, then chains, then sets).
pub(crate) fn delta_commands(
    f: Family,
    sets: BTreeMap<String, SetChange>,
    chains: &BTreeMap<String, ChainChange<'_>>,
) -> Vec<Value> {
    let mut deletes_first = Vec::new();
    let mut adds = Vec::new();
    let mut elems = Vec::new();
    let mut maps = Vec::new();
    let mut rules = Vec::new();
    let mut map_elems = Vec::new();
    let mut gone = Vec::new();
    let mut gone_sets = Vec::new();
    for (name, c) in sets {
        match c {
            SetChange::Elements {
                map,
                removed,
                added,
            } => {
                let out = if map { &mut map_elems } else { &mut elems };
                if !removed.is_empty() {
                    out.push(element_cmd("delete", f, &name, removed));
                }
                if !added.is_empty() {
                    out.push(element_cmd("add", f, &name, added));
                }
            }
            SetChange::Added { replaced, map, add } => {
                if let Some(old_map) = replaced {
                    deletes_first.push(json!({"delete": {kind(old_map): obj_ref(f, &name)}}));
                }
                if map {
                    maps.push(add);
                } else {
                    adds.push(add);
                }
            }
            SetChange::Gone { map } => gone_sets.push((name, map)),
        }
    }
    for (name, c) in chains {
        match c {
            ChainChange::Refilled(chain) => {
                rules.push(json!({"flush": {"chain": obj_ref(f, name)}}));
                rules.extend(chain.rules.iter().map(|r| json!({"add": {"rule": r}})));
            }
            ChainChange::Added { replaced, chain } => {
                if *replaced {
                    deletes_first.push(json!({"flush": {"chain": obj_ref(f, name)}}));
                    deletes_first.push(json!({"delete": {"chain": obj_ref(f, name)}}));
                }
                adds.push(json!({"add": {"chain": chain.decl}}));
                rules.extend(chain.rules.iter().map(|r| json!({"add": {"rule": r}})));
            }
            ChainChange::Gone => {}
        }
    }
    for (name, _) in gone_sets.iter().filter(|(_, map)| *map) {
        gone.push(json!({"delete": {"map": obj_ref(f, name)}}));
    }
    let gone_chains: Vec<&String> = chains
        .iter()
        .filter(|(_, c)| matches!(c, ChainChange::Gone))
        .map(|(n, _)| n)
        .collect();
    for name in &gone_chains {
        gone.push(json!({"flush": {"chain": obj_ref(f, name)}}));
    }
    for name in &gone_chains {
        gone.push(json!({"delete": {"chain": obj_ref(f, name)}}));
    }
    for (name, _) in gone_sets.iter().filter(|(_, map)| !*map) {
        gone.push(json!({"delete": {"set": obj_ref(f, name)}}));
    }
    let mut cmds = deletes_first;
    cmds.extend(adds);
    cmds.extend(elems);
    cmds.extend(maps);
    cmds.extend(rules);
    cmds.extend(map_elems);
    cmds.extend(gone);
    cmds
}

fn prefix(n: &IpNet) -> Value {
    json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
}

fn rule_obj(f: Family, chain: &str, expr: Vec<Value>, comment: Option<&str>) -> Value {
    let mut r = json!({"family": f.name(), "table": TABLE, "chain": chain, "expr": expr});
    if let Some(c) = comment {
        let c: String = c.chars().take(127).collect();
        r["comment"] = json!(c);
    }
    r
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

fn ct_state(states: Value, verdict: &str) -> Vec<Value> {
    vec![
        json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}}),
        json!({verdict: null}),
    ]
}

fn meta_match(key: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}})
}

/// A chain declaration (a regular chain).
fn chain_decl(f: Family, name: &str) -> Value {
    obj_ref(f, name)
}

/// A base chain declaration on `hook`, accepting by default.
fn base_chain_decl(f: Family, name: &str, hook: &str) -> Value {
    let mut decl = obj_ref(f, name);
    decl["type"] = json!("filter");
    decl["hook"] = json!(hook);
    decl["prio"] = json!(0);
    decl["policy"] = json!("accept");
    decl
}

/// A regular chain holding `rules`.
pub(crate) fn rules_chain(f: Family, name: &str, rules: &RuleList) -> Chain {
    Chain {
        decl: chain_decl(f, name),
        rules: rules
            .iter()
            .map(|(expr, comment)| rule_obj(f, name, expr.clone(), comment.as_deref()))
            .collect(),
    }
}

/// A set or map declaration: the object reference with the fields of `decl`.
fn set_decl(f: Family, name: &str, decl: Value) -> Value {
    let mut full = obj_ref(f, name);
    if let Value::Object(o) = decl {
        for (k, v) in o {
            full[k] = v;
        }
    }
    full
}

/// The declaration of the set of a label selection (or `notSelector`).
pub(crate) fn ip_set_decl(f: Family, name: &str, description: &str) -> Value {
    set_decl(
        f,
        name,
        json!({"type": f.addr_type(), "flags": ["interval"],
            "comment": description.chars().take(127).collect::<String>()}),
    )
}

/// The declaration of a named-port set.
pub(crate) fn port_set_decl(f: Family, name: &str, description: &str) -> Value {
    set_decl(
        f,
        name,
        json!({"type": [f.addr_type(), "inet_service"],
            "comment": description.chars().take(127).collect::<String>()}),
    )
}

/// The declaration of the set of local workload interfaces.
pub(crate) fn interfaces_decl(f: Family) -> Value {
    set_decl(f, WORKLOAD_INTERFACES, json!({"type": "ifname"}))
}

/// The declaration of a verdict map by interface.
pub(crate) fn map_decl(f: Family, name: &str) -> Value {
    set_decl(f, name, json!({"type": "ifname", "map": "verdict"}))
}

/// An element of an IP set.
pub(crate) fn ip_elem(n: &IpNet) -> Value {
    prefix(n)
}

/// An element of a named-port set.
pub(crate) fn port_elem(n: &IpNet, port: u16) -> Value {
    json!({"concat": [n.addr().to_string(), port]})
}

/// An element of a verdict map: workloads are jumped to, host endpoints gone to.
pub(crate) fn vmap_elem(iface: &str, target: &str, host: bool) -> Value {
    if host {
        json!([iface, {"goto": {"target": target}}])
    } else {
        json!([iface, {"jump": {"target": target}}])
    }
}

/// A table being built.
struct Builder {
    f: Family,
    sets: BTreeMap<String, NamedSet>,
    chains: BTreeMap<String, Chain>,
    /// Program chain by the program's rendered content.
    programs: BTreeMap<String, String>,
}

/// Which host interface a host endpoint program is dispatched from.
fn host_interface(e: &EndpointProgram) -> Option<&str> {
    e.interface.as_deref().filter(|i| !i.is_empty())
}

/// The table of one family.
fn table(c: &Compiled, f: Family) -> Table {
    let mut b = Builder {
        f,
        sets: BTreeMap::new(),
        chains: BTreeMap::new(),
        programs: BTreeMap::new(),
    };
    for s in c.ip_sets.iter().filter(|s| !s.literal) {
        let elems: Vec<Value> = s.members.iter().filter(|n| f.has(n)).map(ip_elem).collect();
        b.sets.insert(
            s.name.clone(),
            NamedSet {
                map: false,
                decl: ip_set_decl(f, &s.name, &s.description),
                elems,
            },
        );
    }
    for s in &c.port_sets {
        let elems: Vec<Value> = s
            .members
            .iter()
            .filter(|(n, _)| f.has(n))
            .map(|(n, p)| port_elem(n, *p))
            .collect();
        b.sets.insert(
            s.name.clone(),
            NamedSet {
                map: false,
                decl: port_set_decl(f, &s.name, &s.description),
                elems,
            },
        );
    }
    // One program per interface: the first endpoint naming it wins (compile per
    // node so that host endpoints of other nodes do not compete).
    let mut seen = BTreeSet::new();
    let mut workloads: Vec<(&str, &EndpointProgram)> = Vec::new();
    let mut hosts: Vec<(&str, &EndpointProgram)> = Vec::new();
    for e in &c.endpoints {
        let Some(iface) = host_interface(e) else {
            continue;
        };
        if e.host {
            if seen.insert(("host", iface)) {
                hosts.push((iface, e));
            }
        } else if iface != ALL_INTERFACES && seen.insert(("workload", iface)) {
            workloads.push((iface, e));
        }
    }
    // One set of chains per distinct program (endpoints of one group share it,
    // and so do groups whose programs render the same in the family). The
    // chains are named after the first interface with that program, not after
    // their rules: when a policy changes, its tier chains keep their names and
    // are refilled, and nothing that jumps to them changes.
    let mut names: BTreeMap<(usize, Direction, bool), String> = BTreeMap::new();
    for (list, host) in [(&workloads, false), (&hosts, true)] {
        for (iface, e) in list.iter() {
            for d in [Direction::Egress, Direction::Ingress] {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    names.entry((e.group, d, host))
                {
                    slot.insert(endpoint_chain(&mut b, c, e, d, host, iface));
                }
            }
        }
    }
    b.sets.insert(
        WORKLOAD_INTERFACES.to_string(),
        NamedSet {
            map: false,
            decl: interfaces_decl(f),
            elems: workloads.iter().map(|(i, _)| json!(i)).collect(),
        },
    );
    // The verdict maps send each interface straight to its (shared) program
    // chain: no chain per interface, so the kernel's chain count (which every
    // `nft` run fetches and every commit validates) grows with distinct programs,
    // not with pods. Workloads are jumped to (the forward hook runs the source's
    // egress, then the destination's ingress); host endpoints are gone to.
    let vmap = |list: &[(&str, &EndpointProgram)], d: Direction, host: bool| -> Vec<Value> {
        list.iter()
            .filter(|(i, _)| *i != ALL_INTERFACES)
            .map(|(i, e)| vmap_elem(i, &names[&(e.group, d, host)], host))
            .collect()
    };
    for (map, list, d, host) in [
        (FROM_ENDPOINT_MAP, &workloads, Direction::Egress, false),
        (TO_ENDPOINT_MAP, &workloads, Direction::Ingress, false),
        (FROM_HOST_ENDPOINT_MAP, &hosts, Direction::Ingress, true),
        (TO_HOST_ENDPOINT_MAP, &hosts, Direction::Egress, true),
    ] {
        b.sets.insert(
            map.to_string(),
            NamedSet {
                map: true,
                decl: map_decl(f, map),
                elems: vmap(list, d, host),
            },
        );
    }
    // The host endpoint for all interfaces (`interfaceName: "*"`), if any: its
    // program chains, gone to after the per-interface map.
    let all = hosts
        .iter()
        .find(|(i, _)| *i == ALL_INTERFACES)
        .map(|(_, e)| {
            [
                names[&(e.group, Direction::Ingress, true)].as_str(),
                names[&(e.group, Direction::Egress, true)].as_str(),
            ]
        });
    b.chains.extend(base_chains(
        f,
        all,
        c.endpoint_to_host,
        &c.failsafe,
        &c.workload_prefixes,
    ));
    Table {
        family: f,
        sets: b.sets,
        chains: b.chains,
    }
}

/// The chains every table has: the `forward`, `input` and `output` base chains
/// (with `all`, the input and output program chains of the host endpoint for
/// all interfaces), `wl-to-host` and the failsafe chains.
pub(crate) fn base_chains(
    f: Family,
    all: Option<[&str; 2]>,
    endpoint_to_host: EndpointToHost,
    failsafe: &Failsafe,
    prefixes: &WorkloadPrefixes,
) -> Vec<(String, Chain)> {
    let mut out: Vec<(String, Chain)> = Vec::new();
    // Felix's "unknown interface" drop, ahead of everything (established flows
    // too): a workload interface is known once its programs are in the maps.
    let unknown = |key: &str| -> RuleList {
        prefixes
            .0
            .iter()
            .map(|p| {
                (
                    vec![
                        meta_match(key, json!(format!("{p}*"))),
                        json!({"match": {"op": "!=", "left": {"meta": {"key": key}},
                            "right": format!("@{WORKLOAD_INTERFACES}")}}),
                        json!({"drop": null}),
                    ],
                    Some("Unknown workload interface".to_string()),
                )
            })
            .collect()
    };
    let mut forward = unknown("iifname");
    forward.extend(unknown("oifname"));
    let mut chain = |name: &str, decl: Value, rules: RuleList| {
        out.push((
            name.to_string(),
            Chain {
                decl,
                rules: rules
                    .into_iter()
                    .map(|(expr, comment)| rule_obj(f, name, expr, comment.as_deref()))
                    .collect(),
            },
        ));
    };
    forward.extend([
            (ct_state(json!(["established", "related"]), "accept"), None),
            (ct_state(json!("invalid"), "drop"), None),
            (
                vec![
                    json!({"vmap": {"key": {"meta": {"key": "iifname"}}, "data": format!("@{FROM_ENDPOINT_MAP}")}}),
                ],
                None,
            ),
            (
                vec![
                    json!({"vmap": {"key": {"meta": {"key": "oifname"}}, "data": format!("@{TO_ENDPOINT_MAP}")}}),
                ],
                None,
            ),
    ]);
    chain("forward", base_chain_decl(f, "forward", "forward"), forward);
    for (hook, key, map, target) in [
        (
            "input",
            "iifname",
            FROM_HOST_ENDPOINT_MAP,
            all.map(|a| a[0]),
        ),
        ("output", "oifname", TO_HOST_ENDPOINT_MAP, all.map(|a| a[1])),
    ] {
        let mut rules: RuleList = unknown(key);
        rules.extend([
            (ct_state(json!(["established", "related"]), "accept"), None),
            (
                vec![meta_match(key, json!("lo")), json!({"accept": null})],
                None,
            ),
        ]);
        if hook == "input" {
            rules.push((
                vec![
                    meta_match(key, json!(format!("@{WORKLOAD_INTERFACES}"))),
                    json!({"goto": {"target": WORKLOAD_TO_HOST}}),
                ],
                Some(
                    "Workload to host: egress policy, then DefaultEndpointToHostAction".to_string(),
                ),
            ));
        } else {
            rules.push((
                vec![
                    meta_match(key, json!(format!("@{WORKLOAD_INTERFACES}"))),
                    json!({"accept": null}),
                ],
                Some("Host to workload: always allowed".to_string()),
            ));
        }
        if f == Family::Ipv6 {
            // Neighbour discovery and MLD must work whatever the policy says.
            rules.push((
                vec![
                    json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                        "right": {"set": [130, 131, 132, 133, 134, 135, 136, 143]}}}),
                    json!({"accept": null}),
                ],
                Some("IPv6 neighbour discovery".to_string()),
            ));
        }
        rules.push((
            vec![json!({"vmap": {"key": {"meta": {"key": key}}, "data": format!("@{map}")}})],
            None,
        ));
        if let Some(target) = target {
            rules.push((
                vec![json!({"goto": {"target": target}})],
                Some("Host endpoint for all interfaces".to_string()),
            ));
        }
        chain(hook, base_chain_decl(f, hook, hook), rules);
    }
    // Felix's cali-wl-to-host: IPv6 router and neighbour discovery first (a
    // workload must reach its router whatever its policy says), the workload's
    // egress program, then the configured action. Failsafe ports and host
    // endpoint programs do not apply.
    let mut rules: RuleList = Vec::new();
    if f == Family::Ipv6 {
        rules.push((
            vec![
                json!({"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                    "right": {"set": [130, 131, 132, 133, 135, 136]}}}),
                json!({"accept": null}),
            ],
            Some("IPv6 router and neighbour discovery".to_string()),
        ));
    }
    rules.push((
        vec![json!({"vmap": {"key": {"meta": {"key": "iifname"}}, "data": format!("@{FROM_ENDPOINT_MAP}")}})],
        None,
    ));
    let action = match endpoint_to_host {
        EndpointToHost::Drop => "drop",
        EndpointToHost::Return => "return",
        EndpointToHost::Accept => "accept",
    };
    rules.push((
        vec![json!({action: null})],
        Some(format!(
            "DefaultEndpointToHostAction {}",
            endpoint_to_host.as_str()
        )),
    ));
    chain(WORKLOAD_TO_HOST, chain_decl(f, WORKLOAD_TO_HOST), rules);
    for (name, ports, peer) in [
        (FAILSAFE_IN, &failsafe.inbound, "saddr"),
        (FAILSAFE_OUT, &failsafe.outbound, "daddr"),
    ] {
        let rules = failsafe_rules(f, ports, peer)
            .into_iter()
            .map(|expr| (expr, Some("failsafe".to_string())))
            .collect();
        chain(name, chain_decl(f, name), rules);
    }
    out
}

/// Accept rules for failsafe ports: one per protocol for the ports without a
/// peer network, one per port with one.
fn failsafe_rules(f: Family, ports: &[FailsafePort], peer: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut by_proto: BTreeMap<u8, Vec<u16>> = BTreeMap::new();
    for p in ports.iter().filter(|p| p.net.is_none()) {
        by_proto.entry(p.protocol).or_default().push(p.port);
    }
    for (proto, mut list) in by_proto {
        list.sort_unstable();
        list.dedup();
        let right = if list.len() == 1 {
            json!(list[0])
        } else {
            json!({"set": list})
        };
        out.push(vec![
            meta_match("l4proto", json!(proto)),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": proto_name(Some(proto)), "field": "dport"}}, "right": right}}),
            json!({"accept": null}),
        ]);
    }
    for p in ports {
        let Some(net) = p.net.filter(|n| f.has(n)) else {
            continue;
        };
        out.push(vec![
            meta_match("l4proto", json!(p.protocol)),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": f.name(), "field": peer}}, "right": prefix(&net)}}),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": proto_name(Some(p.protocol)), "field": "dport"}}, "right": p.port}}),
            json!({"accept": null}),
        ]);
    }
    out
}

/// Rules (expressions and comment) in order.
pub(crate) type RuleList = Vec<(Vec<Value>, Option<String>)>;

/// One direction of a program rendered for one family, before its chains are
/// named: what decides whether two programs share chains ([`Self::key`]) and
/// what the chains hold.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ProgramRender {
    /// `from-workload`, `to-workload`, `from-host-endpoint` or `to-host-endpoint`.
    pub prefix: &'static str,
    /// Per tier: its name and rules (with the tier's default drop).
    pub tiers: Vec<(String, RuleList)>,
    /// Per profile: its chain's name (`pro-<profile>-<hash of the rules>`) and rules.
    pub profiles: Vec<(String, RuleList)>,
    /// The rendered content: programs with the same key share chains.
    pub key: String,
}

/// The program chain prefix of a direction of a workload or host endpoint.
pub(crate) fn program_prefix(host: bool, d: Direction) -> &'static str {
    match (host, d) {
        (false, Direction::Egress) => "from-workload",
        (false, Direction::Ingress) => "to-workload",
        (true, Direction::Ingress) => "from-host-endpoint",
        (true, Direction::Egress) => "to-host-endpoint",
    }
}

/// Renders one direction of a program for family `f`.
pub(crate) fn render_program(
    sets: &impl SetView,
    f: Family,
    prog: &Program,
    d: Direction,
    host: bool,
) -> ProgramRender {
    let prefix = program_prefix(host, d);
    let mut tiers: Vec<(String, RuleList)> = Vec::new();
    for t in &prog.tiers {
        let mut rules: RuleList = Vec::new();
        for p in &t.policies {
            for r in &p.rules {
                let comment = format!("{} {} {}[{}]", t.tier, p.policy, d.as_str(), r.index);
                for expr in rule_exprs_in(sets, f, r) {
                    rules.push((expr, Some(comment.clone())));
                }
            }
        }
        if t.default_action == TierAction::Deny {
            rules.push((
                vec![json!({"drop": null})],
                Some(format!(
                    "End of tier {}. Drop if no policies passed packet",
                    t.tier
                )),
            ));
        }
        tiers.push((t.tier.clone(), rules));
    }
    let mut profiles = Vec::new();
    for pr in &prog.profiles {
        let mut rules: RuleList = Vec::new();
        for r in &pr.rules {
            let comment = format!("profile {} {}[{}]", pr.profile, d.as_str(), r.index);
            for expr in rule_exprs_in(sets, f, r) {
                rules.push((expr, Some(comment.clone())));
            }
        }
        let body = serde_json::to_string(&rules).unwrap_or_default();
        let name = format!("pro-{}-{:016x}", pr.profile, stable_hash(&body));
        profiles.push((name, rules));
    }
    let tier_rules: Vec<(&str, &RuleList)> = tiers.iter().map(|(t, r)| (t.as_str(), r)).collect();
    let profile_names: Vec<&String> = profiles.iter().map(|(n, _)| n).collect();
    let key = serde_json::to_string(&(prefix, &tier_rules, &profile_names)).unwrap_or_default();
    ProgramRender {
        prefix,
        tiers,
        profiles,
        key,
    }
}

/// The chains a rendered program owns when `owner` (the first interface with
/// this program) names them: its tier chains and its program chain (returned
/// first, with its name). Program and tier chains (`to-workload-<hash>`,
/// `tier-<tier>-<hash>`, ...) are named by a hash of the owner, so a changed
/// policy refills its tier chains in place; the owner's direction and kind are
/// in the hash, so its tier chains of the two directions do not share a name.
pub(crate) fn program_chains(
    f: Family,
    pr: &ProgramRender,
    host: bool,
    d: Direction,
    owner: &str,
) -> (String, Vec<(String, Chain)>) {
    let owner_hash = format!("{:016x}", stable_hash(&format!("{} {owner}", pr.prefix)));
    let mut main: RuleList = Vec::new();
    if host {
        let failsafe = match d {
            Direction::Ingress => FAILSAFE_IN,
            Direction::Egress => FAILSAFE_OUT,
        };
        main.push((ct_state(json!("invalid"), "drop"), None));
        main.push((vec![json!({"jump": {"target": failsafe}})], None));
    }
    main.push((vec![clear_accept_mark()], None));
    let mut chains = Vec::new();
    for (tier, rules) in &pr.tiers {
        let tc = format!("tier-{tier}-{owner_hash}");
        main.push((vec![json!({"jump": {"target": tc}})], None));
        main.push((return_if_accepted(), None));
        chains.push((tc.clone(), rules_chain(f, &tc, rules)));
    }
    for (pc, _) in &pr.profiles {
        main.push((vec![json!({"jump": {"target": pc}})], None));
        main.push((return_if_accepted(), None));
    }
    main.push((
        vec![json!({"drop": null})],
        Some("Drop if no profiles matched".to_string()),
    ));
    let name = format!("{}-{owner_hash}", pr.prefix);
    chains.push((name.clone(), rules_chain(f, &name, &main)));
    (name, chains)
}

/// Renders one direction of an endpoint's program as chains and returns the
/// program chain's name. Programs that render the same in this family
/// (replicas' groups, or every IPv4-only program in `ip6`) share the chains of
/// the first; profile chains (`pro-<profile>-`) are named by a hash of their
/// rules and shared by every program using the same profile.
fn endpoint_chain(
    b: &mut Builder,
    c: &Compiled,
    e: &EndpointProgram,
    d: Direction,
    host: bool,
    owner: &str,
) -> String {
    let f = b.f;
    let pr = render_program(c, f, e.program(d), d, host);
    for (name, rules) in &pr.profiles {
        if !b.chains.contains_key(name) {
            b.chains.insert(name.clone(), rules_chain(f, name, rules));
        }
    }
    if let Some(name) = b.programs.get(&pr.key) {
        return name.clone();
    }
    let (name, chains) = program_chains(f, &pr, host, d, owner);
    b.chains.extend(chains);
    b.programs.insert(pr.key, name.clone());
    name
}

/// How the renderer sees the sets rules name (by index): the sets of a
/// [`Compiled`], or the incremental engine's active sets.
pub(crate) trait SetView {
    /// The members of literal IP set `i` (rendered inline), `None` for a named set.
    fn literal(&self, i: usize) -> Option<&[IpNet]>;
    /// The name of IP set `i`.
    fn ip_set_name(&self, i: usize) -> &str;
    /// Whether IP set `i` has members of family `f`.
    fn ip_set_has(&self, i: usize, f: Family) -> bool;
    /// The name of named-port set `i`.
    fn port_set_name(&self, i: usize) -> &str;
    /// Whether named-port set `i` has members of family `f`.
    fn port_set_has(&self, i: usize, f: Family) -> bool;
}

impl SetView for Compiled {
    fn literal(&self, i: usize) -> Option<&[IpNet]> {
        let s = &self.ip_sets[i];
        s.literal.then_some(s.members.as_slice())
    }

    fn ip_set_name(&self, i: usize) -> &str {
        &self.ip_sets[i].name
    }

    fn ip_set_has(&self, i: usize, f: Family) -> bool {
        self.ip_sets[i].members.iter().any(|n| f.has(n))
    }

    fn port_set_name(&self, i: usize) -> &str {
        &self.port_sets[i].name
    }

    fn port_set_has(&self, i: usize, f: Family) -> bool {
        self.port_sets[i].members.iter().any(|(n, _)| f.has(n))
    }
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
    c: &impl SetView,
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
        if let IrPort::Set(i) = p
            && c.port_set_has(*i, f)
        {
            alts.push(vec![json!({"match": {"op": "==", "left": {"concat": [addr, port]}, "right": format!("@{}", c.port_set_name(*i))}})]);
        }
    }
    (!alts.is_empty()).then_some(alts)
}

fn entity_exprs(
    c: &impl SetView,
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
            let right = match c.literal(*i) {
                Some(members) => {
                    let members: Vec<Value> =
                        members.iter().filter(|n| f.has(n)).map(prefix).collect();
                    (!members.is_empty()).then(|| json!({"set": members}))
                }
                None => c
                    .ip_set_has(*i, f)
                    .then(|| json!(format!("@{}", c.ip_set_name(*i)))),
            };
            let Some(right) = right else {
                if op == "==" {
                    return None;
                }
                continue;
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
        if let IrPort::Set(i) = p
            && c.port_set_has(*i, f)
        {
            base.push(json!({"match": {"op": "!=", "left": {"concat": [addr, port]}, "right": format!("@{}", c.port_set_name(*i))}}));
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
    rule_exprs_in(c, f, r)
}

fn rule_exprs_in(c: &impl SetView, f: Family, r: &IrRule) -> Vec<Vec<Value>> {
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
