//! Who this node peers with, derived from the datastore as Calico's confd does it
//! for BIRD: the node-to-node mesh, explicit BGPPeers (global, per node, by node
//! selector or by peer selector) with their reverse peerings, route reflection,
//! the passive rule, per-peer session settings, passwords and BGPFilters. Pure:
//! the only I/O is reading secrets through a [`SecretSource`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};
use tabby_api::bgp::{
    BGPConfigurationSpec, BGPPassword, BGPPeerSpec, DEFAULT_LISTEN_PORT, NextHopMode,
    ReversePeering, SourceAddress,
};
use tabby_api::{Kind, Resource};
use tabby_bgp::PeerConfig;
use tabby_bgp::api::FamilyName;
use tabby_bgp::policy::Filter;
use tabby_selector::Selector;

use crate::filters::to_bgp_filter;

/// `type_label` of node-to-node mesh sessions (as `calicoctl node status` shows).
pub const LABEL_MESH: &str = "node-to-node mesh";
/// `type_label` of sessions from BGPPeers that apply to every node.
pub const LABEL_GLOBAL: &str = "global";
/// `type_label` of sessions from BGPPeers for particular nodes, and reverse peerings.
pub const LABEL_NODE: &str = "node specific";

/// The most seconds BGP's graceful restart capability can carry (12 bits).
const MAX_RESTART_TIME: u16 = 4095;
/// TTL of multihop eBGP sessions (Calico puts `multihop` on every peer).
const EBGP_MULTIHOP_TTL: u8 = 255;

/// Everything [`derive`] looks at: a datastore snapshot and a secret reader.
pub struct PeerInputs<'a> {
    /// This node's name.
    pub node_name: &'a str,
    /// Every Node resource.
    pub nodes: &'a [&'a Resource],
    /// The BGPConfiguration named `default`, if any.
    pub bgp_config: Option<&'a BGPConfigurationSpec>,
    /// The annotations of that BGPConfiguration: `tabby.dev/bfd` there
    /// turns BFD on for the node-to-node mesh.
    pub bgp_config_annotations: Option<&'a BTreeMap<String, String>>,
    /// The BGPConfiguration named `node.<this node>`, if any (its `listenPort`
    /// overrides the global one, as in Calico).
    pub node_bgp_config: Option<&'a BGPConfigurationSpec>,
    /// Every BGPPeer.
    pub peers: &'a [&'a Resource],
    /// Every BGPFilter.
    pub filters: &'a [&'a Resource],
    /// Where passwords (`secretKeyRef`s) are read from.
    pub secrets: &'a dyn SecretSource,
}

/// Reads the value of one key of a (Kubernetes-style) secret.
pub trait SecretSource: Send + Sync {
    /// The value of `key` in secret `name`, if both exist.
    fn get(&self, name: &str, key: &str) -> Option<String>;
}

/// Secrets from files `<dir>/<name>/<key>` (as a mounted Kubernetes secret
/// volume lays them out; one trailing newline is trimmed), else from the
/// environment variable `TABBY_SECRET_<NAME>_<KEY>` (see [`secret_env_var`]).
#[derive(Clone, Debug, Default)]
pub struct FileEnvSecrets {
    /// The directory of secret subdirectories; `None` reads only the environment.
    pub dir: Option<PathBuf>,
}

impl FileEnvSecrets {
    fn lookup(
        &self,
        name: &str,
        key: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Option<String> {
        let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']);
        if !plain(name) || !plain(key) {
            return None;
        }
        if let Some(dir) = &self.dir
            && let Ok(mut v) = std::fs::read_to_string(dir.join(name).join(key))
        {
            if v.ends_with('\n') {
                v.pop();
                if v.ends_with('\r') {
                    v.pop();
                }
            }
            return Some(v);
        }
        env(&secret_env_var(name, key))
    }
}

impl SecretSource for FileEnvSecrets {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        self.lookup(name, key, |var| std::env::var(var).ok())
    }
}

/// The environment variable [`FileEnvSecrets`] reads for key `key` of secret
/// `name`: `TABBY_SECRET_<NAME>_<KEY>`, upper-cased, every character that is not
/// an ASCII letter or digit replaced by `_` (`bgp-secrets`/`rr.pw` gives
/// `TABBY_SECRET_BGP_SECRETS_RR_PW`).
pub fn secret_env_var(name: &str, key: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("TABBY_SECRET_{}_{}", clean(name), clean(key))
}

/// No secrets at all: every password is missing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _name: &str, _key: &str) -> Option<String> {
        None
    }
}

/// Secrets held in memory, keyed by (secret name, key); for tests and tools.
#[derive(Clone, Debug, Default)]
pub struct MapSecrets(pub HashMap<(String, String), String>);

impl MapSecrets {
    /// Adds (or replaces) one value.
    pub fn with(mut self, name: &str, key: &str, value: &str) -> Self {
        self.0
            .insert((name.to_string(), key.to_string()), value.to_string());
        self
    }
}

impl SecretSource for MapSecrets {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        self.0.get(&(name.to_string(), key.to_string())).cloned()
    }
}

/// What this node's BGP speaker should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedBgp {
    /// Local AS: the Node's `spec.bgp.asNumber`, else the BGPConfiguration's, else 64512.
    pub asn: u32,
    /// BGP identifier: the node's IPv4 address (a hash of the node name on an
    /// IPv6-only node, as Calico's `CALICO_ROUTER_ID=hash`); the caller applies
    /// any override.
    pub router_id: Ipv4Addr,
    /// Route-reflector cluster ID, when this node is a route reflector.
    pub cluster_id: Option<Ipv4Addr>,
    /// Where to listen: the node's address with `bindMode: NodeIP`, else the
    /// unspecified address (`[::]`, dual-stack, when the node has IPv6); the port is `listenPort` (`node.<name>`, then
    /// `default`) or 179.
    pub listen: SocketAddr,
    /// The sessions, sorted by address, one per address.
    pub peers: Vec<PeerConfig>,
    /// Problems that did not stop the derivation (a peer skipped, a password
    /// missing, ...), each naming the resource.
    pub warnings: Vec<String>,
}

/// Why this node cannot run BGP at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// There is no Node resource for this node.
    #[error("Node {node:?}: not found; a BGP node needs its Node resource (with spec.bgp)")]
    NodeNotFound {
        /// The node name.
        node: String,
    },
    /// The Node resource lacks something BGP needs, or has it in a bad form.
    #[error("Node {node:?}: {field} {problem}")]
    NodeField {
        /// The node name.
        node: String,
        /// The field path, e.g. `spec.bgp.ipv4Address`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// Calico's `CALICO_ROUTER_ID=hash`: the first four bytes of SHA-256 of the node
/// name, the first lowered by 32 when above 223 (no multicast or reserved IDs).
pub fn hash_router_id(node_name: &str) -> Ipv4Addr {
    let d = Sha256::digest(node_name.as_bytes());
    let first = if d[0] > 223 { d[0] - 32 } else { d[0] };
    Ipv4Addr::new(first, d[1], d[2], d[3])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn of(ip: IpAddr) -> Fam {
        if ip.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }

    fn name(self) -> FamilyName {
        match self {
            Fam::V4 => FamilyName::Ipv4Unicast,
            Fam::V6 => FamilyName::Ipv6Unicast,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Fam::V4 => "IPv4",
            Fam::V6 => "IPv6",
        }
    }
}

/// The BGP view of one Node resource.
struct NodeInfo<'a> {
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    asn: u32,
    /// `routeReflectorClusterID` when set (non-empty): the node is a route reflector.
    cluster: Option<&'a str>,
}

impl NodeInfo<'_> {
    fn addr(&self, f: Fam) -> Option<IpAddr> {
        match f {
            Fam::V4 => self.v4.map(IpAddr::V4),
            Fam::V6 => self.v6.map(IpAddr::V6),
        }
    }

    fn has_addr(&self, ip: IpAddr) -> bool {
        self.addr(Fam::of(ip)) == Some(ip)
    }
}

/// Where a candidate session came from, for duplicate handling and warnings.
#[derive(Clone, Debug)]
enum Origin {
    Global(String),
    Mesh(String),
    Node(String),
    Reverse(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Global(p) | Origin::Node(p) => write!(f, "BGPPeer {p:?}"),
            Origin::Reverse(p) => write!(f, "BGPPeer {p:?} (reverse peering)"),
            Origin::Mesh(n) => write!(f, "the node-to-node mesh (Node {n:?})"),
        }
    }
}

/// One session to be: its target and where it came from.
struct Target<'n> {
    addr: IpAddr,
    /// Port from `peerIP` (`IP:port`), if given.
    port: Option<u16>,
    remote_as: u32,
    /// The Tabby node at that address, if any.
    node: Option<&'n NodeInfo<'n>>,
}

/// The parts of the derivation every peer needs.
struct Ctx<'a, 'n> {
    inputs: &'a PeerInputs<'a>,
    local: &'n NodeInfo<'n>,
    nodes: &'n [NodeInfo<'n>],
    /// Port other Tabby nodes listen on (the global listenPort).
    node_port: u16,
    global_as: u32,
    warnings: Vec<String>,
    /// BGPFilters converted so far, by name.
    filters: HashMap<String, Result<Filter, String>>,
}

/// Parses a Node's `spec.bgp.ipv4Address`/`ipv6Address` (CIDR or bare address).
fn node_addr(text: Option<&str>, f: Fam) -> Result<Option<IpAddr>, String> {
    let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    match tabby_api::net::parse_net(t) {
        Some(net) if Fam::of(net.addr()) == f => Ok(Some(net.addr())),
        _ => Err(format!(
            "{t:?} is not an {} address (with an optional prefix length)",
            f.text()
        )),
    }
}

fn node_info<'a>(r: &'a Resource, global_as: u32) -> Option<Result<NodeInfo<'a>, PeerError>> {
    let spec = r.spec.as_node()?;
    let bgp = spec.bgp.as_ref()?;
    let err = |field, problem| PeerError::NodeField {
        node: r.name().to_string(),
        field,
        problem,
    };
    let v4 = match node_addr(bgp.ipv4_address.as_deref(), Fam::V4) {
        Ok(a) => a,
        Err(p) => return Some(Err(err("spec.bgp.ipv4Address", p))),
    };
    let v6 = match node_addr(bgp.ipv6_address.as_deref(), Fam::V6) {
        Ok(a) => a,
        Err(p) => return Some(Err(err("spec.bgp.ipv6Address", p))),
    };
    Some(Ok(NodeInfo {
        name: r.name(),
        labels: r.labels(),
        v4: v4.and_then(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }),
        v6: v6.and_then(|a| match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }),
        asn: bgp.as_number.map_or(global_as, |a| a.get()),
        cluster: bgp
            .route_reflector_cluster_id
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty()),
    }))
}

/// Whether two route-reflector cluster IDs are the same (as addresses when both
/// parse, else as strings, as confd compares them).
fn same_cluster(a: &str, b: &str) -> bool {
    match (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A Go duration as whole seconds (rounded, as confd does), capped for BGP.
fn duration_secs(text: &str) -> Result<u16, String> {
    let d = tabby_api::parse_duration(text.trim())?;
    let secs = d.as_secs_f64().round();
    if secs > f64::from(u16::MAX) {
        return Err(format!("{text:?} is more than {} seconds", u16::MAX));
    }
    // In range: checked just above.
    Ok(secs as u16)
}

impl<'n> Ctx<'_, 'n> {
    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    fn node_with_addr(&self, ip: IpAddr) -> Option<&'n NodeInfo<'n>> {
        let nodes: &'n [NodeInfo<'n>] = self.nodes;
        nodes.iter().find(|n| n.has_addr(ip))
    }

    /// The password a `secretKeyRef` names: `Ok(None)` without one (or an
    /// optional one that is missing), `Err(())` when a required secret cannot be
    /// read: security settings fail closed, so that session is not made at all
    /// (warned about, naming the secret), never made without its password.
    fn password(&mut self, what: &str, pw: Option<&BGPPassword>) -> Result<Option<String>, ()> {
        let Some(r) = pw.and_then(|p| p.secret_key_ref.as_ref()) else {
            return Ok(None);
        };
        match self.inputs.secrets.get(&r.name, &r.key) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => {
                self.warn(format!(
                    "{what}: password secret {}/{} cannot be read; no session until it can (never one without its password)",
                    r.name, r.key
                ));
                Err(())
            }
        }
    }

    fn restart_time(&mut self, what: &str, field: &str, v: Option<&String>) -> Option<u16> {
        let text = v?;
        match duration_secs(text) {
            Ok(s) if s > MAX_RESTART_TIME => {
                self.warn(format!(
                    "{what}: {field} {text:?} is more than the {MAX_RESTART_TIME}s BGP can carry; using {MAX_RESTART_TIME}s"
                ));
                Some(MAX_RESTART_TIME)
            }
            Ok(s) => Some(s),
            Err(e) => {
                self.warn(format!("{what}: {field}: {e}; using the default"));
                None
            }
        }
    }

    /// The speaker's filter for BGPFilter `name`, converted once. A missing filter,
    /// or one with a rule the speaker cannot apply, is refused whole: the peer gets
    /// no session until it is fixed (its Reject rules must never silently vanish).
    fn filter(&mut self, peer: &str, name: &str) -> Option<Filter> {
        let filters = self.inputs.filters;
        let converted =
            self.filters
                .entry(name.to_string())
                .or_insert_with(|| {
                    let spec = filters
                        .iter()
                        .find(|r| r.kind() == Kind::BGPFilter && r.name() == name)
                        .and_then(|r| r.spec.as_bgp_filter());
                    match spec {
                        None => Err(format!("BGPFilter {name:?} does not exist")),
                        Some(spec) => to_bgp_filter(name, spec)
                            .map_err(|e| format!("BGPFilter {name:?}: {e}")),
                    }
                })
                .clone();
        match converted {
            Ok(f) => Some(f),
            Err(e) => {
                self.warn(format!(
                    "BGPPeer {peer:?}: {e}; no session with this peer until the filter can be applied whole"
                ));
                None
            }
        }
    }

    /// A session to `t` with the settings common to every kind of peer.
    fn base(&self, t: &Target<'_>, label: &str, local_as: Option<u32>) -> PeerConfig {
        let f = Fam::of(t.addr);
        let mut pc = PeerConfig::new(t.addr, t.remote_as);
        pc.port = t.port.unwrap_or(if t.node.is_some() {
            self.node_port
        } else {
            DEFAULT_LISTEN_PORT
        });
        pc.local_as = local_as;
        pc.families = vec![f.name()];
        pc.type_label = label.to_string();
        pc.source_address = self.local.addr(f);
        let local_as = local_as.unwrap_or(self.local.asn);
        let ibgp = t.remote_as == local_as;
        if !ibgp {
            pc.multihop = Some(EBGP_MULTIHOP_TTL);
        }
        // confd: this node reflects to an iBGP peer unless the peer is a route
        // reflector of the same cluster.
        if let Some(mine) = self.local.cluster
            && ibgp
        {
            let peer_cluster = t.node.and_then(|n| n.cluster);
            pc.route_reflector_client = !peer_cluster.is_some_and(|c| same_cluster(c, mine));
        }
        // confd: mesh and global peers that are Calico nodes are passive
        // towards a peer whose address string is greater, so the node with the
        // greater address connects.
        if (label == LABEL_MESH || label == LABEL_GLOBAL)
            && t.node.is_some()
            && let Some(own) = self.local.addr(f)
        {
            pc.passive = t.addr.to_string() > own.to_string();
        }
        pc
    }

    /// Applies a BGPPeer's session settings to `pc`. `reverse` leaves out the
    /// one-directional ones (local AS, next hop, allowed local AS), which
    /// describe the forward side of the peering.
    /// Returns `false` when the session must not be made (a required password or
    /// a filter that cannot be had).
    fn apply_spec(
        &mut self,
        name: &str,
        spec: &BGPPeerSpec,
        pc: &mut PeerConfig,
        reverse: bool,
    ) -> bool {
        let what = format!("BGPPeer {name:?}");
        match self.password(&what, spec.password.as_ref()) {
            Ok(p) => pc.password = p,
            Err(()) => return false,
        }
        // Tabby's extensions ride on annotations so manifests stay Calico's:
        // bgp.tabby.dev/{max-prefixes,max-prefixes-restart-secs,max-stale-secs,transit}
        // and tabby.dev/bfd.
        let peers = self.inputs.peers;
        if let Some(r) = peers
            .iter()
            .find(|r| r.kind() == Kind::BGPPeer && r.name() == name)
        {
            let annotations = r
                .metadata
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()));
            if let Err(e) = pc.apply_annotations(annotations) {
                self.warn(format!("{what}: {e}; no session until it is fixed"));
                return false;
            }
        }
        if spec.source_address == Some(SourceAddress::None) {
            pc.source_address = None;
        }
        pc.graceful_restart_time =
            self.restart_time(&what, "spec.maxRestartTime", spec.max_restart_time.as_ref());
        if let Some(text) = &spec.keepalive_time {
            match duration_secs(text) {
                Ok(s) => pc.keepalive_secs = Some(s.max(1)),
                Err(e) => self.warn(format!(
                    "{what}: spec.keepaliveTime: {e}; using the default"
                )),
            }
        }
        match spec.ttl_security {
            Some(n) if n > 0 => {
                pc.ttl_security = Some(u8::try_from(n).unwrap_or(u8::MAX));
                pc.multihop = None;
            }
            _ => {}
        }
        let mut filters = Vec::with_capacity(spec.filters.len());
        for f in &spec.filters {
            match self.filter(name, f) {
                Some(x) => filters.push(x),
                None => return false,
            }
        }
        pc.filters = filters;
        if reverse {
            return true;
        }
        let ebgp = pc.remote_as != pc.local_as.unwrap_or(self.local.asn);
        match spec.next_hop_mode {
            Some(NextHopMode::SelfAddress) => pc.next_hop_self = true,
            Some(NextHopMode::Keep) => pc.next_hop_keep = true,
            Some(NextHopMode::Auto) | None => {}
        }
        // The deprecated field only ever applied to eBGP peers.
        if spec.keep_original_next_hop == Some(true) && ebgp && !pc.next_hop_self {
            pc.next_hop_keep = true;
        }
        if let Some(n) = spec.num_allowed_local_as_numbers {
            pc.allow_local_as = u8::try_from(n.max(0)).unwrap_or(u8::MAX);
        }
        true
    }

    /// Parses a selector field of BGPPeer `name`, warning when it is bad.
    fn selector(&mut self, name: &str, field: &str, text: &str) -> Option<Selector> {
        match Selector::parse(text) {
            Ok(s) => Some(s),
            Err(e) => {
                self.warn(format!(
                    "BGPPeer {name:?}: {field} {text:?}: {e}; skipping this BGPPeer"
                ));
                None
            }
        }
    }
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Derives this node's BGP instance and sessions from the datastore, following
/// Calico's confd. Sessions come from, in this order (the first for an address
/// wins): global BGPPeers, the node-to-node mesh, node-specific BGPPeers, and
/// reverse peerings; addresses of this node itself are never peers.
pub fn derive(inputs: &PeerInputs<'_>) -> Result<DerivedBgp, PeerError> {
    let no_config = BGPConfigurationSpec::default();
    let global = inputs.bgp_config.unwrap_or(&no_config);
    let global_as = global.effective_as_number();
    let me = inputs.node_name;
    let mut warnings = Vec::new();

    // The local node: must exist, run BGP and have an address.
    let local_res = inputs
        .nodes
        .iter()
        .find(|r| r.kind() == Kind::Node && r.name() == me)
        .ok_or_else(|| PeerError::NodeNotFound {
            node: me.to_string(),
        })?;
    let local = node_info(local_res, global_as).ok_or_else(|| PeerError::NodeField {
        node: me.to_string(),
        field: "spec.bgp",
        problem: "is missing; a BGP node needs one with ipv4Address or ipv6Address".into(),
    })??;
    if local.v4.is_none() && local.v6.is_none() {
        return Err(PeerError::NodeField {
            node: me.to_string(),
            field: "spec.bgp.ipv4Address",
            problem: "is missing; a BGP node needs one (or spec.bgp.ipv6Address)".into(),
        });
    }
    let cluster_id = match local.cluster {
        None => None,
        Some(c) => Some(c.parse::<Ipv4Addr>().map_err(|_| PeerError::NodeField {
            node: me.to_string(),
            field: "spec.bgp.routeReflectorClusterID",
            problem: format!("{c:?} is not an IPv4-formatted cluster ID"),
        })?),
    };
    let router_id = match local.v4 {
        Some(a) => a,
        None => {
            let id = hash_router_id(me);
            warnings.push(format!(
                "Node {me:?}: no spec.bgp.ipv4Address; using router ID {id}, a hash of the node name (set the router ID to override)"
            ));
            id
        }
    };
    let own_port = inputs
        .node_bgp_config
        .and_then(|c| c.listen_port)
        .or(global.listen_port)
        .unwrap_or(DEFAULT_LISTEN_PORT);
    let listen_ip = match (global.bind_mode, local.v4, local.v6) {
        (Some(tabby_api::bgp::BindMode::NodeIP), Some(a), _) => IpAddr::V4(a),
        (Some(tabby_api::bgp::BindMode::NodeIP), None, Some(a)) => IpAddr::V6(a),
        // `[::]` is dual-stack on Linux (bindv6only=0): IPv4 peers arrive v4-mapped,
        // which the speaker folds back; a v4-only listener would refuse IPv6 peers.
        (_, _, Some(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };

    // Every other BGP node, by name; a node with a bad address is left out.
    let mut others: Vec<NodeInfo<'_>> = Vec::new();
    for r in inputs.nodes.iter().filter(|r| r.kind() == Kind::Node) {
        if r.name() == me {
            continue;
        }
        match node_info(r, global_as) {
            None => {}
            Some(Ok(n)) => others.push(n),
            Some(Err(e)) => warnings.push(format!("{e}; not peering with it")),
        }
    }
    others.sort_by(|a, b| a.name.cmp(b.name));
    // `nodes` holds the local node too, so that selectors and addresses see it.
    let mut all = vec![local];
    all.extend(others);
    let local = &all[0];

    let mut ctx = Ctx {
        inputs,
        local,
        nodes: &all,
        node_port: global.listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
        global_as,
        warnings,
        filters: HashMap::new(),
    };

    let mut peer_specs: Vec<(&str, &BGPPeerSpec)> = inputs
        .peers
        .iter()
        .filter_map(|r| r.spec.as_bgp_peer().map(|s| (r.name(), s)))
        .collect();
    peer_specs.sort_by(|a, b| a.0.cmp(b.0));

    let mut candidates: Vec<(PeerConfig, Origin)> = Vec::new();

    // 1. Global BGPPeers (no node, no nodeSelector) come first: a node-specific
    //    peering to the same address is then dropped, as confd drops it.
    // 3. Then node-specific ones (node or nodeSelector matching this node).
    let mut node_specific = Vec::new();
    for &(name, spec) in &peer_specs {
        if spec.is_global() {
            forward(&mut ctx, name, spec, true, &mut candidates);
        } else {
            node_specific.push((name, spec));
        }
    }

    // 2. The node-to-node mesh: iBGP to every other node, except route
    //    reflectors; a route reflector takes no part in it.
    let mesh_password = if global.effective_mesh() && local.cluster.is_none() {
        ctx.password(
            "BGPConfiguration \"default\": spec.nodeMeshPassword",
            global.node_mesh_password.as_ref(),
        )
    } else {
        Err(())
    };
    // BFD for the mesh: the `tabby.dev/bfd` annotation of the default
    // BGPConfiguration; a bad value means no mesh sessions, reported.
    let mesh_bfd = match inputs
        .bgp_config_annotations
        .and_then(|a| a.get(tabby_bgp::api::annotations::BFD))
    {
        None => Ok(None),
        Some(v) => tabby_bgp::api::parse_bfd(v).map_err(|e| {
            ctx.warn(format!(
                "BGPConfiguration \"default\": metadata.annotations[{}]: {v:?} is not \"on\" or BFD options such as \"interval=300ms,multiplier=3\": {e}; no node-to-node mesh sessions until it is fixed",
                tabby_bgp::api::annotations::BFD
            ))
        }),
    };
    if let (Ok(password), Ok(mesh_bfd)) = (mesh_password, mesh_bfd) {
        let restart = ctx.restart_time(
            "BGPConfiguration \"default\"",
            "spec.nodeMeshMaxRestartTime",
            global.node_mesh_max_restart_time.as_ref(),
        );
        for n in &all[1..] {
            if n.cluster.is_some() {
                continue;
            }
            for f in [Fam::V4, Fam::V6] {
                let (Some(addr), Some(_)) = (n.addr(f), local.addr(f)) else {
                    continue;
                };
                let t = Target {
                    addr,
                    port: None,
                    remote_as: n.asn,
                    node: Some(n),
                };
                let mut pc = ctx.base(&t, LABEL_MESH, None);
                pc.password.clone_from(&password);
                pc.graceful_restart_time = restart;
                pc.set_bfd(mesh_bfd.clone());
                candidates.push((pc, Origin::Mesh(n.name.to_string())));
            }
        }
    }

    for (name, spec) in node_specific {
        forward(&mut ctx, name, spec, false, &mut candidates);
    }

    // 4. Reverse peerings: where this node is the remote side of a BGPPeer
    //    (selected by its peerSelector, or its address and AS are the
    //    peerIP/asNumber), it peers back with that BGPPeer's local nodes,
    //    unless reversePeering is Manual.
    for &(name, spec) in &peer_specs {
        reverse(&mut ctx, name, spec, own_port, &mut candidates);
    }

    // One session per address: the first wins.
    let mut seen: HashMap<IpAddr, Origin> = HashMap::new();
    let mut peers = Vec::new();
    for (pc, origin) in candidates {
        if local.has_addr(pc.address) {
            continue;
        }
        if let Some(first) = seen.get(&pc.address) {
            let expected = matches!(origin, Origin::Reverse(_))
                || matches!((first, &origin), (Origin::Global(_), Origin::Node(_)));
            if !expected {
                ctx.warnings.push(format!(
                    "{origin}: {} is already a peer through {first}; ignoring this peering",
                    pc.address
                ));
            }
            continue;
        }
        seen.insert(pc.address, origin);
        peers.push(pc);
    }
    peers.sort_by_key(|p| p.address);
    // A BGPPeer selecting many nodes would repeat the same warning per session.
    let mut said = HashSet::new();
    let mut warnings = ctx.warnings;
    warnings.retain(|w| said.insert(w.clone()));

    Ok(DerivedBgp {
        asn: local.asn,
        router_id,
        cluster_id,
        listen: SocketAddr::new(listen_ip, own_port),
        peers,
        warnings,
    })
}

/// Sessions of BGPPeer `name` if it applies to this node (global, `node`, or a
/// matching `nodeSelector`).
fn forward(
    ctx: &mut Ctx<'_, '_>,
    name: &str,
    spec: &BGPPeerSpec,
    global: bool,
    out: &mut Vec<(PeerConfig, Origin)>,
) {
    if !global {
        let applies = if let Some(node) = set(&spec.node) {
            node == ctx.local.name
        } else if let Some(sel) = set(&spec.node_selector) {
            match ctx.selector(name, "spec.nodeSelector", sel) {
                Some(s) => s.matches(ctx.local.labels),
                None => return,
            }
        } else {
            false
        };
        if !applies {
            return;
        }
    }
    if set(&spec.local_workload_selector).is_some() {
        ctx.warn(format!(
            "BGPPeer {name:?}: spec.localWorkloadSelector peerings are not supported by Tabby; skipping this BGPPeer"
        ));
        return;
    }
    let (label, origin) = if global {
        (LABEL_GLOBAL, Origin::Global(name.to_string()))
    } else {
        (LABEL_NODE, Origin::Node(name.to_string()))
    };
    let mut targets = Vec::new();
    if let Some(sel) = set(&spec.peer_selector) {
        let Some(s) = ctx.selector(name, "spec.peerSelector", sel) else {
            return;
        };
        let nodes: &[NodeInfo<'_>] = ctx.nodes;
        for n in nodes[1..].iter().filter(|n| s.matches(n.labels)) {
            for f in [Fam::V4, Fam::V6] {
                if let (Some(addr), Some(_)) = (n.addr(f), ctx.local.addr(f)) {
                    targets.push(Target {
                        addr,
                        port: None,
                        remote_as: n.asn,
                        node: Some(n),
                    });
                }
            }
        }
    } else if let Some(ip) = set(&spec.peer_ip) {
        let Some((addr, port)) = tabby_api::bgp::parse_peer_address(ip) else {
            ctx.warn(format!(
                "BGPPeer {name:?}: spec.peerIP {ip:?} is not an IP address, IP:port or [IPv6]:port; skipping this BGPPeer"
            ));
            return;
        };
        let Some(asn) = spec.as_number else {
            ctx.warn(format!(
                "BGPPeer {name:?}: spec.asNumber is required with spec.peerIP; skipping this BGPPeer"
            ));
            return;
        };
        let f = Fam::of(addr);
        if ctx.local.addr(f).is_none() {
            if !global {
                ctx.warn(format!(
                    "BGPPeer {name:?}: peer {addr} is {} but Node {:?} has no {} address; skipping it",
                    f.text(),
                    ctx.local.name,
                    f.text()
                ));
            }
            return;
        }
        let node = ctx.node_with_addr(addr);
        // A Tabby node without an explicit port is reached on the port nodes listen on.
        let port = port.or_else(|| node.filter(|n| n.asn == asn.get()).map(|_| ctx.node_port));
        targets.push(Target {
            addr,
            port: Some(port.unwrap_or(DEFAULT_LISTEN_PORT)),
            remote_as: asn.get(),
            node,
        });
    } else {
        ctx.warn(format!(
            "BGPPeer {name:?}: neither spec.peerIP nor spec.peerSelector is set; skipping this BGPPeer"
        ));
        return;
    }
    let local_as = spec.local_as_number.map(|a| a.get());
    for t in targets {
        let mut pc = ctx.base(&t, label, local_as);
        if ctx.apply_spec(name, spec, &mut pc, false) {
            out.push((pc, origin.clone()));
        }
    }
}

/// Reverse sessions of BGPPeer `name` when this node is its remote side.
fn reverse(
    ctx: &mut Ctx<'_, '_>,
    name: &str,
    spec: &BGPPeerSpec,
    own_port: u16,
    out: &mut Vec<(PeerConfig, Origin)>,
) {
    if spec.reverse_peering == Some(ReversePeering::Manual)
        || set(&spec.local_workload_selector).is_some()
    {
        return;
    }
    let local = ctx.local;
    let families: Vec<Fam> = if let Some(sel) = set(&spec.peer_selector) {
        // A bad selector is reported by the forward pass on the nodes the
        // BGPPeer applies to; here it just means no reverse peering.
        let Ok(s) = Selector::parse(sel) else {
            return;
        };
        if !s.matches(local.labels) {
            return;
        }
        vec![Fam::V4, Fam::V6]
    } else if let Some(ip) = set(&spec.peer_ip) {
        let Some((addr, port)) = tabby_api::bgp::parse_peer_address(ip) else {
            return;
        };
        let asn = spec.as_number.map_or(ctx.global_as, |a| a.get());
        if !local.has_addr(addr) || local.asn != asn || port.is_some_and(|p| p != own_port) {
            return;
        }
        vec![Fam::of(addr)]
    } else {
        return;
    };
    // The BGPPeer's local side: its node, the nodes its nodeSelector selects,
    // or every node.
    let nodes: &[NodeInfo<'_>] = ctx.nodes;
    let peer_nodes: Vec<&NodeInfo<'_>> = if let Some(node) = set(&spec.node) {
        nodes[1..].iter().filter(|n| n.name == node).collect()
    } else if let Some(sel) = set(&spec.node_selector) {
        let Ok(s) = Selector::parse(sel) else {
            return;
        };
        nodes[1..].iter().filter(|n| s.matches(n.labels)).collect()
    } else {
        nodes[1..].iter().collect()
    };
    for n in peer_nodes {
        for &f in &families {
            let (Some(addr), Some(_)) = (n.addr(f), local.addr(f)) else {
                continue;
            };
            let t = Target {
                addr,
                port: None,
                remote_as: n.asn,
                node: Some(n),
            };
            let mut pc = ctx.base(&t, LABEL_NODE, None);
            if ctx.apply_spec(name, spec, &mut pc, true) {
                out.push((pc, Origin::Reverse(name.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_bgp::policy::FilterAction;

    /// A datastore snapshot read from YAML.
    struct World {
        nodes: Vec<Resource>,
        configs: Vec<Resource>,
        peers: Vec<Resource>,
        filters: Vec<Resource>,
    }

    fn world(yaml: &str) -> World {
        let mut w = World {
            nodes: vec![],
            configs: vec![],
            peers: vec![],
            filters: vec![],
        };
        for r in tabby_api::load::parse_documents(yaml, "t.yaml").unwrap() {
            match r.kind() {
                Kind::Node => w.nodes.push(r),
                Kind::BGPConfiguration => w.configs.push(r),
                Kind::BGPPeer => w.peers.push(r),
                Kind::BGPFilter => w.filters.push(r),
                k => panic!("unexpected {k}"),
            }
        }
        w
    }

    impl World {
        fn config(&self, name: &str) -> Option<&BGPConfigurationSpec> {
            self.configs
                .iter()
                .find(|r| r.name() == name)
                .and_then(|r| r.spec.as_bgp_configuration())
        }

        fn try_derive(
            &self,
            node: &str,
            secrets: &dyn SecretSource,
        ) -> Result<DerivedBgp, PeerError> {
            let nodes: Vec<&Resource> = self.nodes.iter().collect();
            let peers: Vec<&Resource> = self.peers.iter().collect();
            let filters: Vec<&Resource> = self.filters.iter().collect();
            derive(&PeerInputs {
                node_name: node,
                nodes: &nodes,
                bgp_config: self.config("default"),
                bgp_config_annotations: self
                    .configs
                    .iter()
                    .find(|r| r.name() == "default")
                    .map(|r| &r.metadata.annotations),
                node_bgp_config: self.config(&format!("node.{node}")),
                peers: &peers,
                filters: &filters,
                secrets,
            })
        }

        fn derive(&self, node: &str) -> DerivedBgp {
            self.try_derive(node, &NoSecrets).unwrap()
        }
    }

    fn node(name: &str, labels: &str, bgp: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec: {{bgp: {{{bgp}}}}}\n"
        )
    }

    fn doc(kind: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addrs(d: &DerivedBgp) -> Vec<String> {
        d.peers.iter().map(|p| p.address.to_string()).collect()
    }

    fn peer<'a>(d: &'a DerivedBgp, addr: &str) -> &'a PeerConfig {
        d.peers
            .iter()
            .find(|p| p.address == ip(addr))
            .unwrap_or_else(|| panic!("no peer {addr} in {:?}", addrs(d)))
    }

    fn three_nodes() -> String {
        [
            doc("BGPConfiguration", "default", "{asNumber: 65000}"),
            node("n1", "rack: a", "ipv4Address: 10.0.0.1/24"),
            node("n2", "rack: b", "ipv4Address: 10.0.0.2/24, asNumber: 65002"),
            node("n3", "rack: a", "ipv4Address: 10.0.0.10/24"),
            // Not a BGP node: never a peer.
            "---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n4}\nspec: {}\n"
                .to_string(),
        ]
        .concat()
    }

    /// A document with annotations.
    fn annotated(kind: &str, name: &str, annotations: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec: {spec}\n"
        )
    }

    #[test]
    fn bfd_annotations_on_the_mesh_and_bgppeers() {
        use std::time::Duration;
        let nodes = [
            node("n1", "rack: a", "ipv4Address: 10.0.0.1/24"),
            node("n2", "rack: b", "ipv4Address: 10.0.0.2/24"),
        ]
        .concat();
        let tor = |bfd: &str| {
            annotated(
                "BGPPeer",
                "tor",
                &format!("tabby.dev/bfd: \"{bfd}\""),
                "{peerIP: 10.0.0.254, asNumber: 65100}",
            )
        };
        let plain = doc("BGPPeer", "other", "{peerIP: 10.0.0.253, asNumber: 65100}");
        // The default BGPConfiguration's annotation: the mesh; a BGPPeer's:
        // that peer only.
        let w = world(
            &[
                annotated(
                    "BGPConfiguration",
                    "default",
                    "tabby.dev/bfd: \"on\"",
                    "{asNumber: 65000}",
                ),
                nodes.clone(),
                tor("interval=100ms,multiplier=5,min-rx=200ms"),
                plain.clone(),
            ]
            .concat(),
        );
        let d = w.derive("n1");
        assert_eq!(d.warnings, Vec::<String>::new());
        assert_eq!(
            peer(&d, "10.0.0.2").bfd,
            Some(tabby_bgp::bfd::SessionOpts::default()),
            "mesh: on = 300ms x3"
        );
        let t = peer(&d, "10.0.0.254").bfd.clone().expect("tor has BFD");
        assert_eq!(
            (t.desired_min_tx, t.required_min_rx, t.detect_mult),
            (Duration::from_millis(100), Duration::from_millis(200), 5)
        );
        assert_eq!(peer(&d, "10.0.0.253").bfd, None);
        // Without the BGPConfiguration annotation the mesh has no BFD.
        let w = world(
            &[
                doc("BGPConfiguration", "default", "{asNumber: 65000}"),
                nodes.clone(),
                tor("on"),
            ]
            .concat(),
        );
        let d = w.derive("n1");
        assert_eq!(peer(&d, "10.0.0.2").bfd, None);
        assert!(peer(&d, "10.0.0.254").bfd.is_some());
        // Bad values: no session, a problem naming the annotation.
        let w = world(
            &[
                annotated(
                    "BGPConfiguration",
                    "default",
                    "tabby.dev/bfd: \"fast\"",
                    "{asNumber: 65000}",
                ),
                nodes,
                tor("interval=1ms"),
                plain,
            ]
            .concat(),
        );
        let d = w.derive("n1");
        assert_eq!(addrs(&d), ["10.0.0.253"], "only the peer without BFD");
        let problems = d.warnings.join("\n");
        assert!(
            problems.contains("BGPConfiguration \"default\": metadata.annotations[tabby.dev/bfd]")
                && problems.contains("\"fast\""),
            "{problems}"
        );
        assert!(
            problems.contains("BGPPeer \"tor\": metadata.annotations[tabby.dev/bfd]")
                && problems.contains("desiredMinTx"),
            "{problems}"
        );
    }

    #[test]
    fn three_node_mesh() {
        let w = world(&three_nodes());
        let d1 = w.derive("n1");
        assert_eq!(d1.asn, 65000, "inherited from the BGPConfiguration");
        assert_eq!(d1.router_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(d1.cluster_id, None);
        assert_eq!(d1.listen, "0.0.0.0:179".parse().unwrap());
        assert_eq!(d1.warnings, Vec::<String>::new());
        assert_eq!(addrs(&d1), ["10.0.0.2", "10.0.0.10"]);

        // n3 shares the cluster AS: plain iBGP.
        let mut want = PeerConfig::new(ip("10.0.0.10"), 65000);
        want.type_label = LABEL_MESH.into();
        want.families = vec![FamilyName::Ipv4Unicast];
        want.source_address = Some(ip("10.0.0.1"));
        want.passive = true; // "10.0.0.10" > "10.0.0.1"
        assert_eq!(peer(&d1, "10.0.0.10"), &want);
        // n2 overrides its AS: the mesh session to it is eBGP, multihop.
        let p2 = peer(&d1, "10.0.0.2");
        assert_eq!(
            (p2.remote_as, p2.multihop, p2.passive),
            (65002, Some(255), true)
        );
        assert_eq!(p2.type_label, "node-to-node mesh");

        let d2 = w.derive("n2");
        assert_eq!(d2.asn, 65002, "the Node's own asNumber wins");
        assert_eq!(addrs(&d2), ["10.0.0.1", "10.0.0.10"]);
        assert!(d2.peers.iter().all(|p| p.remote_as == 65000 && !p.passive));
        assert!(d2.peers.iter().all(|p| p.multihop == Some(255)));

        // The comparison is on strings: "10.0.0.2" > "10.0.0.10", so n3 waits
        // for n2 although 2 < 10.
        let d3 = w.derive("n3");
        assert!(!peer(&d3, "10.0.0.1").passive);
        assert!(peer(&d3, "10.0.0.2").passive);
        assert_eq!(peer(&d3, "10.0.0.1").multihop, None);

        // Exactly one side of every pair waits for the other.
        for (a, b, da, db) in [
            ("10.0.0.1", "10.0.0.2", &d1, &d2),
            ("10.0.0.1", "10.0.0.10", &d1, &d3),
            ("10.0.0.2", "10.0.0.10", &d2, &d3),
        ] {
            assert_ne!(peer(da, b).passive, peer(db, a).passive, "{a} <-> {b}");
        }

        // Without any BGPConfiguration the AS is 64512.
        let w = world(
            &[
                node("a", "", "ipv4Address: 10.0.0.1/24"),
                node("b", "", "ipv4Address: 10.0.0.2/24"),
            ]
            .concat(),
        );
        let d = w.derive("a");
        assert_eq!((d.asn, peer(&d, "10.0.0.2").remote_as), (64512, 64512));
    }

    #[test]
    fn mesh_off_with_global_node_and_selector_peers() {
        let yaml = [
            doc("BGPConfiguration", "default", "{asNumber: 65000, nodeToNodeMeshEnabled: false}"),
            node("n1", "rack: a", "ipv4Address: 10.0.0.1/24, ipv6Address: 2001:db8::1/64"),
            node("n2", "rack: b", "ipv4Address: 10.0.0.2/24"),
            doc("BGPPeer", "tor", "{peerIP: 192.0.2.1, asNumber: 65100, keepOriginalNextHop: true}"),
            // Same address for one node only: the global peering wins, silently.
            doc("BGPPeer", "tor-n1", "{node: n1, peerIP: 192.0.2.1, asNumber: 65000}"),
            doc(
                "BGPPeer",
                "n1-ibgp",
                "{node: n1, peerIP: \"192.0.2.2:1179\", asNumber: 65000, nextHopMode: Self, \
                 numAllowedLocalASNumbers: 2, sourceAddress: None, maxRestartTime: 2m, keepaliveTime: 10s}",
            ),
            doc("BGPPeer", "n2-only", "{node: n2, peerIP: 192.0.2.3, asNumber: 65000}"),
            doc(
                "BGPPeer",
                "rack-a",
                "{nodeSelector: \"rack == 'a'\", peerIP: \"[2001:db8::99]:1790\", asNumber: 65200, \
                 localASNumber: 64999, ttlSecurity: 3}",
            ),
            doc("BGPPeer", "rack-b", "{nodeSelector: \"rack == 'b'\", peerIP: 192.0.2.4, asNumber: 65000}"),
        ]
        .concat();
        let w = world(&yaml);
        let d = w.derive("n1");
        assert_eq!(d.warnings, Vec::<String>::new());
        assert_eq!(addrs(&d), ["192.0.2.1", "192.0.2.2", "2001:db8::99"]);

        let mut tor = PeerConfig::new(ip("192.0.2.1"), 65100);
        tor.type_label = LABEL_GLOBAL.into();
        tor.families = vec![FamilyName::Ipv4Unicast];
        tor.source_address = Some(ip("10.0.0.1"));
        tor.multihop = Some(255);
        tor.next_hop_keep = true;
        assert_eq!(peer(&d, "192.0.2.1"), &tor);

        let mut ibgp = PeerConfig::new(ip("192.0.2.2"), 65000);
        ibgp.port = 1179;
        ibgp.type_label = LABEL_NODE.into();
        ibgp.families = vec![FamilyName::Ipv4Unicast];
        ibgp.next_hop_self = true;
        ibgp.allow_local_as = 2;
        ibgp.graceful_restart_time = Some(120);
        ibgp.keepalive_secs = Some(10);
        assert_eq!(peer(&d, "192.0.2.2"), &ibgp);

        let mut v6 = PeerConfig::new(ip("2001:db8::99"), 65200);
        v6.port = 1790;
        v6.local_as = Some(64999);
        v6.type_label = LABEL_NODE.into();
        v6.families = vec![FamilyName::Ipv6Unicast];
        v6.source_address = Some(ip("2001:db8::1"));
        v6.ttl_security = Some(3);
        assert_eq!(peer(&d, "2001:db8::99"), &v6);
        assert!(d.peers.iter().all(|p| p.validate().is_ok()));

        // n2: the global peer, its own node peer and its rack's.
        let d2 = w.derive("n2");
        assert_eq!(addrs(&d2), ["192.0.2.1", "192.0.2.3", "192.0.2.4"]);
        assert_eq!(peer(&d2, "192.0.2.1").source_address, Some(ip("10.0.0.2")));
        assert_eq!(peer(&d2, "192.0.2.4").type_label, "node specific");
    }

    #[test]
    fn peer_selector_peers_and_their_reverse() {
        let yaml = [
            doc("BGPConfiguration", "default", "{nodeToNodeMeshEnabled: false}"),
            node("n1", "", "ipv4Address: 10.0.0.1/24"),
            node("e1", "role: edge", "ipv4Address: 10.0.0.5/24, asNumber: 65005"),
            node("e2", "role: edge", "ipv4Address: 10.0.0.6/24"),
            node("w1", "role: worker", "ipv4Address: 10.0.0.7/24"),
            doc("BGPPeer", "to-edge", "{peerSelector: \"role == 'edge'\", maxRestartTime: 300s}"),
            doc(
                "BGPPeer",
                "workers",
                "{nodeSelector: \"role == 'worker'\", peerSelector: \"role == 'worker' || role == 'edge'\", \
                 reversePeering: Manual}",
            ),
        ]
        .concat();
        let w = world(&yaml);

        // n1 is selected by neither side's nodeSelector but "to-edge" is global.
        let d = w.derive("n1");
        assert_eq!(addrs(&d), ["10.0.0.5", "10.0.0.6"]);
        let e1 = peer(&d, "10.0.0.5");
        assert_eq!(
            (e1.remote_as, e1.multihop),
            (65005, Some(255)),
            "e1's own AS: eBGP"
        );
        assert_eq!(e1.type_label, "global");
        assert_eq!(e1.graceful_restart_time, Some(300));
        // Global peers that are nodes follow the passive rule.
        assert!(e1.passive && peer(&d, "10.0.0.6").passive);
        assert_eq!(peer(&d, "10.0.0.6").remote_as, 64512);

        // e1: the global peering to e2 (not to itself), and the reverse of
        // "to-edge" to every node; "workers" is Manual, so no reverse to w1
        // from it, but "to-edge" reverses to all nodes, w1 included.
        let d = w.derive("e1");
        assert_eq!(addrs(&d), ["10.0.0.1", "10.0.0.6", "10.0.0.7"]);
        assert_eq!(peer(&d, "10.0.0.6").type_label, "global");
        assert!(peer(&d, "10.0.0.6").passive);
        for a in ["10.0.0.1", "10.0.0.7"] {
            let p = peer(&d, a);
            assert_eq!(p.type_label, "node specific", "{a}");
            assert!(!p.passive, "reverse peerings connect: {a}");
            assert_eq!(
                p.graceful_restart_time,
                Some(300),
                "session settings carry over"
            );
            assert_eq!(p.remote_as, 64512);
        }
        assert_eq!(d.warnings, Vec::<String>::new());

        // w1: global peers to the edges first; "workers" adds nothing new
        // (edges already peered, itself skipped).
        let d = w.derive("w1");
        assert_eq!(addrs(&d), ["10.0.0.5", "10.0.0.6"]);
        assert!(d.peers.iter().all(|p| p.type_label == "global"));
        assert_eq!(d.warnings, Vec::<String>::new());
    }

    fn rr_world(mesh: bool) -> World {
        world(
            &[
                doc(
                    "BGPConfiguration",
                    "default",
                    &format!("{{nodeToNodeMeshEnabled: {mesh}}}"),
                ),
                node(
                    "rr1",
                    "route-reflector: \"true\"",
                    "ipv4Address: 10.0.0.1/24, routeReflectorClusterID: 244.0.0.1",
                ),
                node(
                    "rr2",
                    "route-reflector: \"true\"",
                    "ipv4Address: 10.0.0.2/24, routeReflectorClusterID: 244.0.0.1",
                ),
                node("c1", "", "ipv4Address: 10.0.0.3/24"),
                node("c2", "", "ipv4Address: 10.0.0.4/24"),
                doc(
                    "BGPPeer",
                    "peer-to-rr",
                    "{nodeSelector: \"!has(route-reflector)\", peerSelector: has(route-reflector)}",
                ),
                doc(
                    "BGPPeer",
                    "rr-mesh",
                    "{nodeSelector: has(route-reflector), peerSelector: has(route-reflector)}",
                ),
                doc(
                    "BGPPeer",
                    "rr-upstream",
                    "{node: rr1, peerIP: 192.0.2.1, asNumber: 64512}",
                ),
                doc(
                    "BGPPeer",
                    "rr-tor",
                    "{node: rr1, peerIP: 192.0.2.2, asNumber: 65100}",
                ),
            ]
            .concat(),
        )
    }

    #[test]
    fn route_reflectors_and_clients() {
        for mesh in [false, true] {
            let w = rr_world(mesh);
            let rr1 = w.derive("rr1");
            assert_eq!(rr1.cluster_id, Some(Ipv4Addr::new(244, 0, 0, 1)));
            assert_eq!(
                addrs(&rr1),
                ["10.0.0.2", "10.0.0.3", "10.0.0.4", "192.0.2.1", "192.0.2.2"],
                "mesh {mesh}: an RR skips the mesh"
            );
            // The other RR of the same cluster is not a client.
            assert!(!peer(&rr1, "10.0.0.2").route_reflector_client);
            // Clients come from the reverse of "peer-to-rr".
            for c in ["10.0.0.3", "10.0.0.4"] {
                let p = peer(&rr1, c);
                assert!(p.route_reflector_client, "{c}");
                assert_eq!(
                    (p.type_label.as_str(), p.remote_as),
                    ("node specific", 64512)
                );
            }
            // An iBGP router outside the cluster is a client too (as in confd);
            // an eBGP one never is.
            assert!(peer(&rr1, "192.0.2.1").route_reflector_client);
            assert!(!peer(&rr1, "192.0.2.2").route_reflector_client);
            assert!(rr1.peers.iter().all(|p| !p.passive));

            let c1 = w.derive("c1");
            assert_eq!(c1.cluster_id, None);
            let want: &[&str] = if mesh {
                // The mesh still joins the clients, but never the RRs.
                &["10.0.0.1", "10.0.0.2", "10.0.0.4"]
            } else {
                &["10.0.0.1", "10.0.0.2"]
            };
            assert_eq!(addrs(&c1), want, "mesh {mesh}");
            assert!(c1.peers.iter().all(|p| !p.route_reflector_client));
            assert_eq!(peer(&c1, "10.0.0.1").type_label, "node specific");
            if mesh {
                assert_eq!(peer(&c1, "10.0.0.4").type_label, "node-to-node mesh");
            }
            assert_eq!(rr1.warnings, Vec::<String>::new());
            assert_eq!(c1.warnings, Vec::<String>::new());
        }
    }

    #[test]
    fn mesh_password_and_restart_time_from_a_file_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bgp-secrets")).unwrap();
        std::fs::write(dir.path().join("bgp-secrets").join("mesh-pw"), "s3cret\n").unwrap();
        let yaml = [
            doc(
                "BGPConfiguration",
                "default",
                "{nodeMeshPassword: {secretKeyRef: {name: bgp-secrets, key: mesh-pw}}, nodeMeshMaxRestartTime: 2m30s}",
            ),
            node("n1", "", "ipv4Address: 10.0.0.1/24"),
            node("n2", "", "ipv4Address: 10.0.0.2/24"),
        ]
        .concat();
        let w = world(&yaml);
        let files = FileEnvSecrets {
            dir: Some(dir.path().to_path_buf()),
        };
        let d = w.try_derive("n1", &files).unwrap();
        let p = peer(&d, "10.0.0.2");
        assert_eq!(
            p.password.as_deref(),
            Some("s3cret"),
            "trailing newline trimmed"
        );
        assert_eq!(p.graceful_restart_time, Some(150));
        assert_eq!(d.warnings, Vec::<String>::new());

        // No such secret: no mesh session at all (never one without its
        // password), and it says so, naming the secret.
        let d = w.try_derive("n1", &NoSecrets).unwrap();
        assert!(d.peers.is_empty(), "{:?}", d.peers);
        assert_eq!(
            d.warnings,
            [
                "BGPConfiguration \"default\": spec.nodeMeshPassword: password secret bgp-secrets/mesh-pw cannot be read; no session until it can (never one without its password)"
            ]
        );
        // The map-backed source for tests gives the same result as the file.
        let map = MapSecrets::default().with("bgp-secrets", "mesh-pw", "s3cret");
        let d = w.try_derive("n1", &map).unwrap();
        assert_eq!(peer(&d, "10.0.0.2").password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn file_then_environment_secrets() {
        assert_eq!(
            secret_env_var("bgp-secrets", "rr.pw"),
            "TABBY_SECRET_BGP_SECRETS_RR_PW"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s").join("k"), "crlf\r\n").unwrap();
        std::fs::write(dir.path().join("s").join("two"), "a\n\n").unwrap();
        let env = |var: &str| (var == "TABBY_SECRET_S_OTHER").then(|| "from-env".to_string());
        let files = FileEnvSecrets {
            dir: Some(dir.path().to_path_buf()),
        };
        assert_eq!(files.lookup("s", "k", env).as_deref(), Some("crlf"));
        assert_eq!(
            files.lookup("s", "two", env).as_deref(),
            Some("a\n"),
            "one newline only"
        );
        assert_eq!(files.lookup("s", "other", env).as_deref(), Some("from-env"));
        assert_eq!(files.lookup("s", "none", env), None);
        assert_eq!(
            files.lookup("..", "k", env),
            None,
            "no escaping the directory"
        );
        assert_eq!(files.lookup("s", "../s/k", env), None);
        let env_only = FileEnvSecrets { dir: None };
        assert_eq!(
            env_only.lookup("s", "other", env).as_deref(),
            Some("from-env")
        );
        assert_eq!(env_only.lookup("s", "k", env), None);
    }

    #[test]
    fn bind_mode_and_listen_port() {
        let base = [
            node(
                "n1",
                "",
                "ipv4Address: 10.0.0.1/24, ipv6Address: 2001:db8::1/64",
            ),
            node("n2", "", "ipv4Address: 10.0.0.2/24"),
        ]
        .concat();
        let w = world(&format!(
            "{base}{}{}",
            doc(
                "BGPConfiguration",
                "default",
                "{bindMode: NodeIP, listenPort: 1790}"
            ),
            doc("BGPConfiguration", "node.n1", "{listenPort: 17900}")
        ));
        let d = w.derive("n1");
        assert_eq!(
            d.listen,
            "10.0.0.1:17900".parse().unwrap(),
            "the node's own port"
        );
        assert_eq!(
            peer(&d, "10.0.0.2").port,
            1790,
            "other nodes listen on the global port"
        );
        let d = w.derive("n2");
        assert_eq!(d.listen, "10.0.0.2:1790".parse().unwrap());
        assert_eq!(peer(&d, "10.0.0.1").port, 1790);

        let w = world(&format!(
            "{base}{}",
            doc("BGPConfiguration", "default", "{listenPort: 1790}")
        ));
        // n1 is dual-stack: one `[::]` listener takes both families.
        assert_eq!(w.derive("n1").listen, "[::]:1790".parse().unwrap());
        assert_eq!(w.derive("n2").listen, "0.0.0.0:1790".parse().unwrap());
        let w = world(&base);
        assert_eq!(w.derive("n2").listen, "0.0.0.0:179".parse().unwrap());

        // An IPv6-only node listens on [::] (or its address) and takes its
        // router ID from a hash of its name.
        let v6 = [
            node("node16", "", "ipv6Address: 2001:db8::16/64"),
            node("v6b", "", "ipv6Address: 2001:db8::17/64"),
        ]
        .concat();
        let d = world(&v6).derive("node16");
        assert_eq!(d.listen, "[::]:179".parse().unwrap());
        assert_eq!(d.router_id, Ipv4Addr::new(200, 251, 245, 244));
        assert_eq!(
            d.warnings,
            [
                "Node \"node16\": no spec.bgp.ipv4Address; using router ID 200.251.245.244, a hash of the node name (set the router ID to override)"
            ]
        );
        let w = world(&format!(
            "{v6}{}",
            doc("BGPConfiguration", "default", "{bindMode: NodeIP}")
        ));
        assert_eq!(
            w.derive("node16").listen,
            "[2001:db8::16]:179".parse().unwrap()
        );
        assert_eq!(hash_router_id("n1"), Ipv4Addr::new(103, 107, 139, 184));
    }

    #[test]
    fn ipv6_peers() {
        let yaml = [
            node(
                "n1",
                "",
                "ipv4Address: 10.0.0.1/24, ipv6Address: 2001:db8::1/64",
            ),
            node(
                "n2",
                "",
                "ipv4Address: 10.0.0.2/24, ipv6Address: 2001:db8::2/64",
            ),
            node("n3", "", "ipv4Address: 10.0.0.3/24"),
            node("n4", "", "ipv6Address: 2001:db8::4/64"),
            doc(
                "BGPPeer",
                "v6-tor",
                "{peerIP: \"2001:db8:ff::1\", asNumber: 65100}",
            ),
        ]
        .concat();
        let w = world(&yaml);
        let d = w.derive("n1");
        assert_eq!(
            addrs(&d),
            [
                "10.0.0.2",
                "10.0.0.3",
                "2001:db8::2",
                "2001:db8::4",
                "2001:db8:ff::1"
            ]
        );
        let p = peer(&d, "2001:db8::2");
        assert_eq!(p.families, [FamilyName::Ipv6Unicast]);
        assert_eq!(p.source_address, Some(ip("2001:db8::1")));
        assert!(p.passive, "\"2001:db8::2\" > \"2001:db8::1\"");
        assert_eq!(peer(&d, "10.0.0.2").families, [FamilyName::Ipv4Unicast]);
        let tor = peer(&d, "2001:db8:ff::1");
        assert_eq!(
            (tor.type_label.as_str(), tor.multihop),
            ("global", Some(255))
        );
        assert_eq!(tor.families, [FamilyName::Ipv6Unicast]);

        // An IPv4-only node has no IPv6 sessions: no v6 mesh, no v6 global peer.
        let d = w.derive("n3");
        assert_eq!(addrs(&d), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(d.warnings, Vec::<String>::new());
        // And an IPv6-only node no IPv4 ones.
        let d = w.derive("n4");
        assert_eq!(addrs(&d), ["2001:db8::1", "2001:db8::2", "2001:db8:ff::1"]);
        assert!(!peer(&d, "2001:db8::1").passive && !peer(&d, "2001:db8::2").passive);
    }

    #[test]
    fn bad_selectors_and_peers_are_warnings() {
        let yaml = [
            doc(
                "BGPConfiguration",
                "default",
                "{nodeToNodeMeshEnabled: false}",
            ),
            node("n1", "rack: a", "ipv4Address: 10.0.0.1/24"),
            node("n2", "", "ipv4Address: 10.0.0.2/24"),
            doc(
                "BGPPeer",
                "bad-node-sel",
                "{nodeSelector: \"rack == 'a'\", peerIP: 192.0.2.1, asNumber: 65100}",
            ),
            doc("BGPPeer", "bad-peer-sel", "{peerSelector: all()}"),
            doc("BGPPeer", "good", "{peerIP: 192.0.2.9, asNumber: 65100}"),
            doc(
                "BGPPeer",
                "v6-for-v4",
                "{node: n1, peerIP: \"2001:db8::9\", asNumber: 65100}",
            ),
        ]
        .concat();
        let mut w = world(&yaml);
        // Specs from the store are not always validated: break two selectors.
        for r in &mut w.peers {
            let name = r.name().to_string();
            let spec = r.spec.as_bgp_peer_mut().unwrap();
            match name.as_str() {
                "bad-node-sel" => spec.node_selector = Some("rack ==".into()),
                "bad-peer-sel" => spec.peer_selector = Some("has(".into()),
                _ => {}
            }
        }
        let d = w.derive("n1");
        assert_eq!(addrs(&d), ["192.0.2.9"], "the good peer survives");
        assert_eq!(d.warnings.len(), 3, "{:#?}", d.warnings);
        assert!(
            d.warnings[0].starts_with("BGPPeer \"bad-peer-sel\": spec.peerSelector \"has(\": "),
            "{}",
            d.warnings[0]
        );
        assert!(d.warnings[0].ends_with("; skipping this BGPPeer"));
        assert!(
            d.warnings[1].starts_with("BGPPeer \"bad-node-sel\": spec.nodeSelector \"rack ==\": "),
            "{}",
            d.warnings[1]
        );
        assert_eq!(
            d.warnings[2],
            "BGPPeer \"v6-for-v4\": peer 2001:db8::9 is IPv6 but Node \"n1\" has no IPv6 address; skipping it"
        );

        // Another node with a broken address is left out, with a warning.
        let mut w = world(
            &[
                node("n1", "", "ipv4Address: 10.0.0.1/24"),
                node("n2", "", "ipv4Address: 10.0.0.2/24"),
            ]
            .concat(),
        );
        w.nodes[1]
            .spec
            .as_node_mut()
            .unwrap()
            .bgp
            .as_mut()
            .unwrap()
            .ipv4_address = Some("10.0.0.300/24".into());
        let d = w.derive("n1");
        assert_eq!(d.peers, vec![]);
        assert_eq!(
            d.warnings,
            [
                "Node \"n2\": spec.bgp.ipv4Address \"10.0.0.300/24\" is not an IPv4 address (with an optional prefix length); not peering with it"
            ]
        );
    }

    #[test]
    fn duplicate_addresses_keep_the_first() {
        let yaml = [
            node("n1", "", "ipv4Address: 10.0.0.1/24"),
            node("n2", "", "ipv4Address: 10.0.0.2/24"),
            doc(
                "BGPPeer",
                "a-explicit",
                "{peerIP: 10.0.0.2, asNumber: 64512, maxRestartTime: 60s}",
            ),
            doc("BGPPeer", "b-again", "{peerIP: 10.0.0.2, asNumber: 64512}"),
        ]
        .concat();
        let d = world(&yaml).derive("n1");
        assert_eq!(addrs(&d), ["10.0.0.2"]);
        let p = peer(&d, "10.0.0.2");
        assert_eq!(
            (p.type_label.as_str(), p.graceful_restart_time),
            ("global", Some(60))
        );
        assert!(p.passive, "a global peer at a node's address is a node");
        assert_eq!(
            d.warnings,
            [
                "BGPPeer \"b-again\": 10.0.0.2 is already a peer through BGPPeer \"a-explicit\"; ignoring this peering",
                "the node-to-node mesh (Node \"n2\"): 10.0.0.2 is already a peer through BGPPeer \"a-explicit\"; ignoring this peering",
            ]
        );
        // A BGPPeer to this node's own address (global peers reach every
        // node) is skipped on that node without a word.
        let d = world(&yaml).derive("n2");
        assert_eq!(addrs(&d), ["10.0.0.1"]);
        assert_eq!(d.warnings, Vec::<String>::new());
    }

    #[test]
    fn local_node_problems_are_errors_naming_it() {
        let w = world(&node("n1", "", "ipv4Address: 10.0.0.1/24"));
        let e = w.try_derive("n9", &NoSecrets).unwrap_err();
        assert_eq!(e, PeerError::NodeNotFound { node: "n9".into() });
        assert_eq!(
            e.to_string(),
            "Node \"n9\": not found; a BGP node needs its Node resource (with spec.bgp)"
        );
        let w =
            world("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {}\n");
        assert_eq!(
            w.try_derive("n1", &NoSecrets).unwrap_err().to_string(),
            "Node \"n1\": spec.bgp is missing; a BGP node needs one with ipv4Address or ipv6Address"
        );
        let w = world(&node("n1", "", "asNumber: 65000"));
        assert_eq!(
            w.try_derive("n1", &NoSecrets).unwrap_err().to_string(),
            "Node \"n1\": spec.bgp.ipv4Address is missing; a BGP node needs one (or spec.bgp.ipv6Address)"
        );
        let mut w = world(&node(
            "n1",
            "",
            "ipv4Address: 10.0.0.1/24, routeReflectorClusterID: 244.0.0.1",
        ));
        w.nodes[0]
            .spec
            .as_node_mut()
            .unwrap()
            .bgp
            .as_mut()
            .unwrap()
            .route_reflector_cluster_id = Some("cluster-a".into());
        assert_eq!(
            w.try_derive("n1", &NoSecrets).unwrap_err().to_string(),
            "Node \"n1\": spec.bgp.routeReflectorClusterID \"cluster-a\" is not an IPv4-formatted cluster ID"
        );
    }

    #[test]
    fn peer_filters_and_passwords() {
        let yaml = [
            doc(
                "BGPConfiguration",
                "default",
                "{nodeToNodeMeshEnabled: false}",
            ),
            node("n1", "", "ipv4Address: 10.0.0.1/24"),
            doc(
                "BGPFilter",
                "no-default",
                "{exportV4: [{cidr: 0.0.0.0/0, matchOperator: Equal, action: Reject}]}",
            ),
            doc(
                "BGPFilter",
                "by-iface",
                "{exportV4: [{interface: \"eth*\", action: Accept}]}",
            ),
            doc(
                "BGPPeer",
                "tor",
                "{peerIP: 192.0.2.1, asNumber: 65100, filters: [no-default, nope, by-iface], \
                 password: {secretKeyRef: {name: bgp, key: tor}}}",
            ),
            doc(
                "BGPPeer",
                "tor2",
                "{peerIP: 192.0.2.2, asNumber: 65100, filters: [no-default], \
                 password: {secretKeyRef: {name: bgp, key: missing}}}",
            ),
        ]
        .concat();
        let w = world(&yaml);
        let secrets = MapSecrets::default().with("bgp", "tor", "pw");
        // "tor" names a missing filter and one that cannot be applied; "tor2" a
        // password that cannot be read: neither gets a session.
        let d = w.try_derive("n1", &secrets).unwrap();
        assert!(d.peers.is_empty(), "{:?}", d.peers);
        assert_eq!(
            d.warnings,
            [
                "BGPPeer \"tor\": BGPFilter \"nope\" does not exist; no session with this peer until the filter can be applied whole",
                "BGPPeer \"tor2\": password secret bgp/missing cannot be read; no session until it can (never one without its password)",
            ]
        );
        // Fixed (the filters exist and apply, the secret is there): both peer, with
        // their filters and passwords.
        let fixed = yaml
            .replace(
                "filters: [no-default, nope, by-iface]",
                "filters: [no-default]",
            )
            .replace("key: missing", "key: tor");
        let w = world(&fixed);
        let d = w.try_derive("n1", &secrets).unwrap();
        let tor = peer(&d, "192.0.2.1");
        assert_eq!(tor.password.as_deref(), Some("pw"));
        assert_eq!(tor.filters.len(), 1);
        assert_eq!(tor.filters[0].name, "no-default");
        assert_eq!(tor.filters[0].export_v4[0].action, FilterAction::Reject);
        assert_eq!(
            tor.filters[0].export_v4[0].cidr,
            Some("0.0.0.0/0".parse().unwrap())
        );
        assert_eq!(peer(&d, "192.0.2.2").filters, tor.filters);
        assert_eq!(peer(&d, "192.0.2.2").password.as_deref(), Some("pw"));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // A filter with a rule the speaker cannot apply is refused whole.
        let unusable = yaml.replace(
            "filters: [no-default, nope, by-iface]",
            "filters: [no-default, by-iface]",
        );
        let d = world(&unusable).try_derive("n1", &secrets).unwrap();
        assert!(d.peers.iter().all(|p| p.address.to_string() != "192.0.2.1"));
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("by-iface") && w.contains("interface")),
            "{:?}",
            d.warnings
        );
        assert!(d.peers.iter().all(|p| p.validate().is_ok()));
    }
}
