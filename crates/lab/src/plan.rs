//! The topology planner behind `tabbyctl plan`: from a cluster's size (nodes, racks,
//! pods per node), its IPAM (pools, block size, borrowed addresses) and device route
//! capacities, the BGP sessions and route-table sizes of every device role under each
//! network model, side by side. Pure arithmetic, no I/O; [`render_table`] and
//! [`render_svg`] turn a [`Plan`] into text.
//!
//! Sizing rule from the seeds: the fabric must hold as many routes as there are blocks
//! plus borrowed /32s. Each [`Model`] variant documents how that total (`F` below) lands
//! on each device.

mod svg;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The CIDR type of [`PlanInput::pools`], re-exported so that callers need no ipnet.
pub use ipnet::IpNet;

pub use svg::render_svg;

/// The pool planned when none is given.
pub const DEFAULT_POOL: &str = "100.64.0.0/10";

/// Addresses a node needs beyond its pods when Calico sizes a block for it.
const BLOCK_HEADROOM: u64 = 2;

/// Calico's allowed IPv4 block sizes.
const V4_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 20..=32;
/// Calico's allowed IPv6 block sizes.
const V6_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 116..=128;

/// The private 4-octet AS range (RFC 6996): 4200000000..=4294967294.
const PRIVATE_ASNS_4_OCTET: u64 = 4_294_967_294 - 4_200_000_000 + 1;

/// Above this many nodes Calico recommends route reflectors over the full mesh.
const MESH_RECOMMENDED_MAX: u32 = 100;

/// A BGP network model from the seed documents.
///
/// Symbols used below: `N` nodes, `R` racks, `n` nodes in the largest rack
/// (`ceil(N/R)`), `T` ToRs per rack, `S` spines, `K` route reflectors, `L` planes,
/// `l` planes per host, `b` blocks per node, `B = N·b` blocks, `X` borrowed /32s,
/// `F = B + X` the fabric's routes, `r = n·b + ceil(X·n/N)` the routes of the largest
/// rack. Per-device figures are for one device; "paths" counts every copy of a prefix
/// kept in the device's BGP RIB (a node's own blocks are originated locally, once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Model {
    /// `mesh`: every node peers with every other node (Calico's default).
    ///
    /// Node: sessions `N-1`; routes `F` (every block, its own as the blackhole Felix
    /// programs, plus every borrowed /32); paths `F`, since each remote prefix comes
    /// only from its originator. Total sessions `N(N-1)/2`. The fabric is L2 and holds
    /// no routes.
    #[serde(rename = "mesh")]
    Mesh,
    /// `route-reflector`: `K` dedicated route reflectors; every node peers with every
    /// RR and the RRs peer each other.
    ///
    /// Node: sessions `K`; routes `F`; paths `b + (F-b)·K` (each RR reflects every
    /// remote prefix). RR: sessions `N + K-1`; routes `F`; paths `F`: the RRs share a
    /// cluster ID (Calico's documented setup), so a prefix reflected by another RR is
    /// dropped on its CLUSTER_LIST. Total sessions `N·K + K(K-1)/2`.
    #[serde(rename = "route-reflector")]
    RouteReflector,
    /// `l2-planes`: an L2 fabric of `L` planes (VLANs), one RR per plane; each host is
    /// in `l` planes and peers with the RR of each.
    ///
    /// Node: sessions `l`; routes `F` (one FIB route per prefix, ECMP over planes);
    /// paths `b + (F-b)·l`, a route learned once per plane. RR: hosts per plane
    /// `h = ceil(N·l/L)`, sessions `h`, routes and paths `h·b + ceil(X·h/N)` (the RRs do
    /// not peer: a plane only reaches its own hosts). Total sessions `N·l`. With
    /// `l < L` the node figures are an upper bound: a route is learned once per plane
    /// shared with its originator.
    #[serde(rename = "l2-planes")]
    L2Planes,
    /// `as-per-rack-l2-spine`: each rack its own AS; its ToRs reflect for its nodes over
    /// iBGP; all ToRs peer each other over eBGP across an Ethernet (L2) spine.
    ///
    /// Node: sessions `T`; routes `F`; paths `b + (F-b)·T`. ToR: sessions
    /// `n + R·T-1` (its rack's nodes, every other ToR); routes `F`; paths
    /// `r·T + (F-r)·(R·T-1)`: its rack's prefixes from the nodes and each rack-mate ToR,
    /// every other prefix from every other ToR (an eBGP full mesh re-advertises best
    /// paths to all peers; only the copies carrying the ToR's own AS are dropped).
    /// Total sessions `N·T + R·T(R·T-1)/2`. The spine switches frames and holds no
    /// routes.
    #[serde(rename = "as-per-rack-l2-spine")]
    AsPerRackL2Spine,
    /// `as-per-rack-l3-spine`: each rack its own AS; its ToRs reflect for its nodes over
    /// iBGP and peer `S` spine routers over eBGP; no ToR-to-ToR sessions.
    ///
    /// Node: sessions `T`; routes `F`; paths `b + (F-b)·T`. ToR: sessions `n + S`;
    /// routes `F`; paths `r + (F-r)·S` (remote prefixes from each spine; its own rack's
    /// come back with its AS in the path and are dropped). Spine: sessions `R·T`;
    /// routes `F`; paths `F·T` (each prefix from the `T` ToRs of its rack; the spines
    /// share an AS, so copies re-advertised by other ToRs loop and are dropped).
    /// Total sessions `N·T + R·T·S`.
    #[serde(rename = "as-per-rack-l3-spine")]
    AsPerRackL3Spine,
    /// `as-per-server`: every node its own private 4-octet AS with eBGP to its ToRs;
    /// ToRs eBGP to the spines; no route reflectors.
    ///
    /// Figures as for `as-per-rack-l3-spine` (node: `T` sessions, `F` routes,
    /// `b + (F-b)·T` paths; ToR: `n + S`, `F`, `r + (F-r)·S`; spine: `R·T`, `F`, `F·T`),
    /// every session eBGP; the ToRs of a rack share an AS, so prefixes nodes echo back
    /// loop and are dropped. Needs `N + R + 1` private ASNs. Total sessions
    /// `N·T + R·T·S`.
    #[serde(rename = "as-per-server")]
    AsPerServer,
    /// `downward-default`: all nodes one AS, all ToRs one AS; upstream sends only a
    /// default route down.
    ///
    /// Node: sessions `T`; routes `b + 1` (own blocks and the default); paths `b + T`
    /// (the default from each ToR). ToR: sessions `n + S`; routes `r + 1` (its rack's
    /// blocks and borrowed /32s, and the default); paths `r + S`. Spine: sessions
    /// `R·T`; routes `F` (spines hold all); paths `F·T`. Total sessions `N·T + R·T·S`.
    #[serde(rename = "downward-default")]
    DownwardDefault,
}

impl Model {
    /// Every model, in the order they are compared.
    pub const ALL: [Model; 7] = [
        Model::Mesh,
        Model::RouteReflector,
        Model::L2Planes,
        Model::AsPerRackL2Spine,
        Model::AsPerRackL3Spine,
        Model::AsPerServer,
        Model::DownwardDefault,
    ];

    /// The model's name on the command line and in files, e.g. `route-reflector`.
    pub fn name(self) -> &'static str {
        match self {
            Model::Mesh => "mesh",
            Model::RouteReflector => "route-reflector",
            Model::L2Planes => "l2-planes",
            Model::AsPerRackL2Spine => "as-per-rack-l2-spine",
            Model::AsPerRackL3Spine => "as-per-rack-l3-spine",
            Model::AsPerServer => "as-per-server",
            Model::DownwardDefault => "downward-default",
        }
    }

    /// Whether the model's devices depend on how nodes are spread over racks.
    fn uses_racks(self) -> bool {
        !matches!(self, Model::Mesh | Model::RouteReflector | Model::L2Planes)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model name that is none of [`Model::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {0:?}; expected one of {names}", names = model_names())]
pub struct UnknownModel(pub String);

fn model_names() -> String {
    Model::ALL.map(Model::name).join(", ")
}

impl FromStr for Model {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Model, UnknownModel> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownModel(s.to_string()))
    }
}

/// A device role in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A Kubernetes node running Tabby (one of the `N`).
    Node,
    /// A top-of-rack switch or router.
    Tor,
    /// A spine router.
    Spine,
    /// A dedicated route reflector (not one of the `N` nodes).
    RouteReflector,
}

impl Role {
    /// The role as the table shows it: `node`, `ToR`, `spine`, `RR`.
    pub fn label(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Tor => "ToR",
            Role::Spine => "spine",
            Role::RouteReflector => "RR",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Route-table limits per role; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacities {
    /// A node's limit (the Linux FIB rarely is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// A ToR's limit, e.g. 16000 or 128000 for commodity switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tor: Option<u64>,
    /// A spine's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spine: Option<u64>,
    /// A route reflector's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rr: Option<u64>,
}

impl Capacities {
    /// The limit of `role`.
    pub fn of(&self, role: Role) -> Option<u64> {
        match role {
            Role::Node => self.node,
            Role::Tor => self.tor,
            Role::Spine => self.spine,
            Role::RouteReflector => self.rr,
        }
    }
}

fn default_racks() -> u32 {
    1
}
fn default_pools() -> Vec<IpNet> {
    vec![DEFAULT_POOL.parse().expect("the default pool is a CIDR")]
}
fn default_route_reflectors() -> u32 {
    2
}
fn default_planes() -> u32 {
    4
}
fn default_spines() -> u32 {
    2
}
fn default_tors_per_rack() -> u32 {
    1
}

/// What to plan: a cluster, its IPAM and its devices' limits. Read from YAML or JSON
/// with camelCase keys (`nodes`, `racks`, `podsPerNode`, `blockSize`, `pools`,
/// `borrowed`, `routeReflectors`, `planes`, `planesPerHost`, `spines`, `torsPerRack`,
/// `capacity: {node, tor, spine, rr}`, `models`); unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanInput {
    /// Kubernetes nodes (required, at least 1).
    #[serde(default)]
    pub nodes: u32,
    /// Racks the nodes are spread over (default 1).
    #[serde(default = "default_racks")]
    pub racks: u32,
    /// Pods per node at most (required, at least 1).
    #[serde(default)]
    pub pods_per_node: u32,
    /// IPAM block prefix length; `None` takes [`suggest_block_size`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IP pools, all of one family (default `100.64.0.0/10`).
    #[serde(default = "default_pools")]
    pub pools: Vec<IpNet>,
    /// Addresses borrowed from other nodes' blocks, cluster-wide: each is a /32 (/128)
    /// route.
    #[serde(default)]
    pub borrowed: u32,
    /// Addresses each node takes from the pools besides its pods: 1 when a pool uses
    /// VXLAN (the node's tunnel address), 0 otherwise.
    #[serde(default)]
    pub tunnel_addresses: u32,
    /// Route reflectors of the `route-reflector` model (default 2).
    #[serde(default = "default_route_reflectors")]
    pub route_reflectors: u32,
    /// Planes of the `l2-planes` model (default 4).
    #[serde(default = "default_planes")]
    pub planes: u32,
    /// Planes each host is in; `None` is all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planes_per_host: Option<u32>,
    /// Spine routers of the routed-spine models (default 2).
    #[serde(default = "default_spines")]
    pub spines: u32,
    /// ToRs in each rack (default 1).
    #[serde(default = "default_tors_per_rack")]
    pub tors_per_rack: u32,
    /// Route-table limits per role.
    #[serde(default)]
    pub capacity: Capacities,
    /// Models to compare; empty is all of them.
    #[serde(default)]
    pub models: Vec<Model>,
}

impl Default for PlanInput {
    /// Every default; `nodes` and `podsPerNode` are 0 and must be set.
    fn default() -> PlanInput {
        PlanInput {
            nodes: 0,
            racks: default_racks(),
            pods_per_node: 0,
            block_size: None,
            pools: default_pools(),
            borrowed: 0,
            tunnel_addresses: 0,
            route_reflectors: default_route_reflectors(),
            planes: default_planes(),
            planes_per_host: None,
            spines: default_spines(),
            tors_per_rack: default_tors_per_rack(),
            capacity: Capacities::default(),
            models: Vec::new(),
        }
    }
}

/// Input the planner rejects, naming the field (camelCase, as in the file), e.g.
/// `podsPerNode: must be at least 1 (got 0)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// The field path: `nodes`, `pools[1]`, `capacity.tor`, ...
    pub field: String,
    /// The rule broken.
    pub message: String,
}

impl PlanError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> PlanError {
        PlanError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One device role of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolePlan {
    /// The role.
    pub role: Role,
    /// Devices of this role.
    pub count: u32,
    /// BGP sessions of one device.
    pub sessions: u64,
    /// Routes one device must hold: blocks, borrowed /32s and the default as the model
    /// says (a node's local workload routes are in `local_workload_routes`).
    pub routes: u64,
    /// Paths in one device's BGP RIB, counting the copies several RRs, planes or peers
    /// send of the same prefix.
    pub paths: u64,
    /// A node's /32 (/128) routes to its own pods; 0 for other roles.
    pub local_workload_routes: u64,
    /// Whether the device holds a default route learned from upstream.
    pub default_route: bool,
    /// The role's route-table limit, if any.
    pub capacity: Option<u64>,
    /// Whether `routes` fits `capacity`.
    pub fits: bool,
}

/// One model's figures for the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelPlan {
    /// The model.
    pub model: Model,
    /// Its device roles: node first, then RR, ToR, spine as the model has them.
    pub roles: Vec<RolePlan>,
    /// BGP sessions in the whole cluster (each counted once).
    pub total_sessions: u64,
    /// IPAM blocks in the cluster (`B`, the same for every model).
    pub total_blocks: u64,
    /// Whether every role fits its capacity.
    pub fits: bool,
    /// What the figures assume or warn about.
    pub notes: Vec<String>,
}

/// The plan: the resolved input and every model's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The input with defaults resolved: the block size chosen, `planesPerHost` set,
    /// `models` listing every model planned.
    pub input: PlanInput,
    /// Whether the block size was suggested rather than given.
    pub block_size_suggested: bool,
    /// Blocks each node needs (`b`).
    pub blocks_per_node: u32,
    /// Blocks in the cluster (`B = N·b`).
    pub total_blocks: u64,
    /// Routes the fabric must hold: blocks plus borrowed /32s (`F = B + X`).
    pub fabric_routes: u64,
    /// Nodes in the largest rack (`n`), which per-ToR figures use.
    pub largest_rack: u32,
    /// One entry per model, in the order of `input.models`.
    pub models: Vec<ModelPlan>,
}

impl Plan {
    /// The models that do not fit, each with the roles that overflow.
    pub fn misfits(&self) -> impl Iterator<Item = (&ModelPlan, Vec<&RolePlan>)> {
        self.models
            .iter()
            .filter(|m| !m.fits)
            .map(|m| (m, m.roles.iter().filter(|r| !r.fits).collect()))
    }
}

/// The block size Calico's rule gives: the smallest block holding `pods_per_node + 2`
/// addresses, clamped to the allowed range (IPv4 20..=32, IPv6 116..=128). Beyond the
/// largest block a node takes several ([`blocks_per_node`]).
pub fn suggest_block_size(pods_per_node: u32, ipv6: bool) -> u8 {
    let needed = u64::from(pods_per_node) + BLOCK_HEADROOM;
    // Host bits of the smallest power of two >= needed.
    let host_bits = u64::BITS - (needed - 1).leading_zeros();
    let (bits, range) = if ipv6 {
        (128u32, V6_BLOCK_SIZES)
    } else {
        (32u32, V4_BLOCK_SIZES)
    };
    let size = bits.saturating_sub(host_bits);
    (size as u8).clamp(*range.start(), *range.end())
}

/// Addresses in a block of prefix length `block_size` (IPv6 when above 32).
fn block_addresses(block_size: u8) -> u128 {
    let bits: u32 = if block_size > 32 { 128 } else { 32 };
    let host_bits = bits.saturating_sub(u32::from(block_size));
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Blocks of prefix length `block_size` a node with `pods_per_node` pods needs:
/// `ceil(pods / addresses per block)`. Sizes above 32 are IPv6.
pub fn blocks_per_node(pods_per_node: u32, block_size: u8) -> u32 {
    u128::from(pods_per_node).div_ceil(block_addresses(block_size)) as u32
}

/// The planes host `host` (1-based) is in when each of `nodes` hosts is in
/// `per_host` of `planes` planes, assigned in rotation: host i takes the `per_host`
/// planes from plane `((i-1) mod planes) + 1` on, wrapping. Every plane then holds
/// `floor` or `ceil(N·l/L)` hosts, and two hosts share at least `2l - L` planes (none
/// may be shared when `2l <= L`). Sorted.
pub fn host_planes(host: u32, planes: u32, per_host: u32) -> Vec<u32> {
    let planes = planes.max(1);
    let first = host.saturating_sub(1) % planes;
    let mut v: Vec<u32> = (0..per_host.min(planes))
        .map(|j| (first + j) % planes + 1)
        .collect();
    v.sort_unstable();
    v
}

/// Hosts in each plane (`[plane 1, plane 2, ...]`) under [`host_planes`].
pub fn plane_hosts(nodes: u32, planes: u32, per_host: u32) -> Vec<u64> {
    let mut v = vec![0u64; planes as usize];
    for i in 1..=nodes {
        for k in host_planes(i, planes, per_host) {
            v[(k - 1) as usize] += 1;
        }
    }
    v
}

/// The first pair of hosts (1-based) sharing no plane under [`host_planes`], if any:
/// they could not reach each other over an L2-planes fabric.
pub fn unconnected_hosts(nodes: u32, planes: u32, per_host: u32) -> Option<(u32, u32)> {
    let sets: Vec<Vec<u32>> = (1..=nodes)
        .map(|i| host_planes(i, planes, per_host))
        .collect();
    for i in 0..sets.len() {
        for j in i + 1..sets.len() {
            if !sets[i].iter().any(|k| sets[j].contains(k)) {
                return Some((i as u32 + 1, j as u32 + 1));
            }
        }
    }
    None
}

/// The figures every model shares, from validated input.
struct Cluster {
    n: u64,
    racks: u64,
    largest_rack: u64,
    tors_per_rack: u64,
    spines: u64,
    rrs: u64,
    planes: u64,
    planes_per_host: u64,
    pods: u64,
    b: u64,
    blocks: u64,
    borrowed: u64,
    fabric: u64,
}

impl Cluster {
    /// Borrowed /32s on `hosts` of the nodes, spread evenly, rounded up.
    fn borrowed_on(&self, hosts: u64) -> u64 {
        self.borrowed.saturating_mul(hosts).div_ceil(self.n)
    }

    /// Routes of the largest rack's nodes: `r`.
    fn rack_routes(&self) -> u64 {
        self.largest_rack.saturating_mul(self.b) + self.borrowed_on(self.largest_rack)
    }

    fn tors(&self) -> u64 {
        self.racks * self.tors_per_rack
    }

    /// A node's paths when each remote prefix arrives `copies` times.
    fn node_paths(&self, copies: u64) -> u64 {
        self.b + (self.fabric - self.b).saturating_mul(copies)
    }
}

fn check_at_least_1(field: &str, value: u32) -> Result<(), PlanError> {
    if value == 0 {
        return Err(PlanError::new(field, "must be at least 1 (got 0)"));
    }
    Ok(())
}

/// Plans every model `input` asks for (all when `models` is empty).
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let mut resolved = input.clone();
    check_at_least_1("nodes", input.nodes)?;
    check_at_least_1("podsPerNode", input.pods_per_node)?;
    check_at_least_1("racks", input.racks)?;
    if input.racks > input.nodes {
        return Err(PlanError::new(
            "racks",
            format!(
                "{} racks for {} nodes; a rack needs at least one node",
                input.racks, input.nodes
            ),
        ));
    }
    check_at_least_1("routeReflectors", input.route_reflectors)?;
    check_at_least_1("planes", input.planes)?;
    check_at_least_1("spines", input.spines)?;
    check_at_least_1("torsPerRack", input.tors_per_rack)?;
    let planes_per_host = input.planes_per_host.unwrap_or(input.planes);
    if planes_per_host == 0 || planes_per_host > input.planes {
        return Err(PlanError::new(
            "planesPerHost",
            format!(
                "{planes_per_host} is outside 1..={} (the planes)",
                input.planes
            ),
        ));
    }
    resolved.planes_per_host = Some(planes_per_host);
    for (field, value) in [
        ("capacity.node", input.capacity.node),
        ("capacity.tor", input.capacity.tor),
        ("capacity.spine", input.capacity.spine),
        ("capacity.rr", input.capacity.rr),
    ] {
        if value == Some(0) {
            return Err(PlanError::new(
                field,
                "must be at least 1 route (leave it out for unlimited)",
            ));
        }
    }
    let models = if input.models.is_empty() {
        Model::ALL.to_vec()
    } else {
        let mut seen = Vec::new();
        for (i, m) in input.models.iter().enumerate() {
            if seen.contains(m) {
                return Err(PlanError::new(
                    format!("models[{i}]"),
                    format!("{m} is listed twice"),
                ));
            }
            seen.push(*m);
        }
        seen
    };
    resolved.models = models.clone();

    let ipv6 = check_pools(&input.pools)?;
    let (block_size, suggested) = match input.block_size {
        Some(size) => {
            let (family, range) = if ipv6 {
                ("IPv6", V6_BLOCK_SIZES)
            } else {
                ("IPv4", V4_BLOCK_SIZES)
            };
            if !range.contains(&size) {
                return Err(PlanError::new(
                    "blockSize",
                    format!(
                        "{size} is outside {}..={} for {family}",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            (size, false)
        }
        None => (suggest_block_size(input.pods_per_node, ipv6), true),
    };
    resolved.block_size = Some(block_size);
    // A VXLAN tunnel address comes out of the node's blocks like a pod's.
    let b = blocks_per_node(input.pods_per_node + input.tunnel_addresses, block_size);
    let blocks = u64::from(input.nodes) * u64::from(b);
    check_pool_room(&input.pools, block_size, suggested, input.nodes, b, blocks)?;

    let n = u64::from(input.nodes);
    let racks = u64::from(input.racks);
    let cluster = Cluster {
        n,
        racks,
        largest_rack: n.div_ceil(racks),
        tors_per_rack: u64::from(input.tors_per_rack),
        spines: u64::from(input.spines),
        rrs: u64::from(input.route_reflectors),
        planes: u64::from(input.planes),
        planes_per_host: u64::from(planes_per_host),
        pods: u64::from(input.pods_per_node),
        b: u64::from(b),
        blocks,
        borrowed: u64::from(input.borrowed),
        fabric: blocks + u64::from(input.borrowed),
    };
    let models = models
        .iter()
        .map(|&m| plan_model(m, &cluster, &input.capacity))
        .collect();
    Ok(Plan {
        input: resolved,
        block_size_suggested: suggested,
        blocks_per_node: b,
        total_blocks: blocks,
        fabric_routes: cluster.fabric,
        largest_rack: cluster.largest_rack as u32,
        models,
    })
}

/// Checks the pools are there and of one family; returns whether they are IPv6.
fn check_pools(pools: &[IpNet]) -> Result<bool, PlanError> {
    let Some(first) = pools.first() else {
        return Err(PlanError::new("pools", "give at least one pool"));
    };
    let ipv6 = matches!(first, IpNet::V6(_));
    for (i, pool) in pools.iter().enumerate() {
        if matches!(pool, IpNet::V6(_)) != ipv6 {
            return Err(PlanError::new(
                format!("pools[{i}]"),
                format!(
                    "{pool} is not {} like {first}; plan one address family at a time",
                    if ipv6 { "IPv6" } else { "IPv4" }
                ),
            ));
        }
    }
    Ok(ipv6)
}

/// Checks every pool holds a block and all of them hold every node's blocks.
fn check_pool_room(
    pools: &[IpNet],
    block_size: u8,
    suggested: bool,
    nodes: u32,
    per_node: u32,
    needed: u64,
) -> Result<(), PlanError> {
    let how = if suggested { "suggested" } else { "given" };
    let mut room: u128 = 0;
    for (i, pool) in pools.iter().enumerate() {
        if pool.prefix_len() > block_size {
            return Err(PlanError::new(
                format!("pools[{i}]"),
                format!("{pool} is smaller than one /{block_size} block (the {how} blockSize)"),
            ));
        }
        let blocks = 1u128
            .checked_shl(u32::from(block_size - pool.prefix_len()))
            .unwrap_or(u128::MAX);
        room = room.saturating_add(blocks);
    }
    if room < u128::from(needed) {
        let pools_text = if pools.len() == 1 {
            format!("{} holds", pools[0])
        } else {
            format!("{} pools hold", pools.len())
        };
        return Err(PlanError::new(
            "pools",
            format!(
                "{pools_text} {room} /{block_size} blocks; {nodes} nodes × {per_node} need {needed}"
            ),
        ));
    }
    Ok(())
}

fn role(
    role: Role,
    count: u64,
    sessions: u64,
    routes: u64,
    paths: u64,
    cap: &Capacities,
) -> RolePlan {
    let capacity = cap.of(role);
    RolePlan {
        role,
        count: count.min(u64::from(u32::MAX)) as u32,
        sessions,
        routes,
        paths,
        local_workload_routes: 0,
        default_route: false,
        capacity,
        fits: capacity.is_none_or(|c| routes <= c),
    }
}

fn plan_model(model: Model, c: &Cluster, cap: &Capacities) -> ModelPlan {
    let f = c.fabric;
    let t = c.tors_per_rack;
    let tors = c.tors();
    let mut notes = Vec::new();
    let mut node = role(Role::Node, c.n, t, f, c.node_paths(t), cap);
    node.local_workload_routes = c.pods;
    let (roles, total_sessions) = match model {
        Model::Mesh => {
            node.sessions = c.n - 1;
            node.paths = f;
            if c.n > u64::from(MESH_RECOMMENDED_MAX) {
                notes.push(format!(
                    "{} nodes: Calico recommends route reflectors above about {MESH_RECOMMENDED_MAX} nodes",
                    c.n
                ));
            }
            let total = c.n * (c.n - 1) / 2;
            (vec![node], total)
        }
        Model::RouteReflector => {
            let k = c.rrs;
            node.sessions = k;
            node.paths = c.node_paths(k);
            let rr = role(Role::RouteReflector, k, c.n + k - 1, f, f, cap);
            if k == 1 {
                notes.push("a single route reflector is a single point of failure".into());
            } else {
                notes.push(format!(
                    "the {k} RRs share a cluster ID, so each keeps one path per prefix (with distinct cluster IDs, {} paths)",
                    f.saturating_mul(k)
                ));
            }
            let total = c.n * k + k * (k - 1) / 2;
            (vec![node, rr], total)
        }
        Model::L2Planes => {
            let (planes, l) = (c.planes, c.planes_per_host);
            node.sessions = l;
            node.paths = c.node_paths(l);
            let hosts = c.n.saturating_mul(l).div_ceil(planes);
            let plane_routes = hosts.saturating_mul(c.b) + c.borrowed_on(hosts);
            let rr = role(
                Role::RouteReflector,
                planes,
                hosts,
                plane_routes,
                plane_routes,
                cap,
            );
            if l < planes {
                notes.push(format!(
                    "hosts are in {l} of {planes} planes (at most {hosts} per plane, the RR figures are the busiest plane's): a route is learned once per plane shared with its originator, so node paths are an upper bound"
                ));
                if 2 * l <= planes {
                    notes.push(
                        "two hosts may share no plane and then cannot reach each other; assign planes so that every pair shares one"
                            .into(),
                    );
                }
            }
            (vec![node, rr], c.n * l)
        }
        Model::AsPerRackL2Spine => {
            let r = c.rack_routes();
            let peers = tors - 1;
            let tor = role(
                Role::Tor,
                tors,
                c.largest_rack + peers,
                f,
                r.saturating_mul(t) + (f - r).saturating_mul(peers),
                cap,
            );
            notes.push(format!(
                "the {tors} ToRs are a full eBGP mesh: each receives every other rack's routes from every other ToR"
            ));
            let total = c.n * t + tors * peers / 2;
            (vec![node, tor], total)
        }
        Model::AsPerRackL3Spine | Model::AsPerServer => {
            let r = c.rack_routes();
            let s = c.spines;
            let tor = role(
                Role::Tor,
                tors,
                c.largest_rack + s,
                f,
                r + (f - r).saturating_mul(s),
                cap,
            );
            let spine = role(Role::Spine, s, tors, f, f.saturating_mul(t), cap);
            if model == Model::AsPerServer {
                let asns = c.n + c.racks + 1;
                if asns > PRIVATE_ASNS_4_OCTET {
                    notes.push(format!(
                        "needs {asns} private ASNs (nodes, racks, spines); the 4-octet private range holds only {PRIVATE_ASNS_4_OCTET}"
                    ));
                } else {
                    notes.push(format!(
                        "needs {asns} private 4-octet ASNs: one per node, one per rack's ToRs, one for the spines"
                    ));
                }
            }
            (vec![node, tor, spine], c.n * t + tors * s)
        }
        Model::DownwardDefault => {
            let r = c.rack_routes();
            let s = c.spines;
            node.routes = c.b + 1;
            node.paths = c.b + t;
            node.default_route = true;
            node.fits = node.capacity.is_none_or(|cap| node.routes <= cap);
            let mut tor = role(Role::Tor, tors, c.largest_rack + s, r + 1, r + s, cap);
            tor.default_route = true;
            let spine = role(Role::Spine, s, tors, f, f.saturating_mul(t), cap);
            if c.borrowed > 0 {
                notes.push(
                    "borrowed /32s: a node holds only its own blocks and the default, so an address another node borrowed from one of its blocks is unreachable from it (its blackhole route wins); avoid borrowing (strictAffinity)"
                        .into(),
                );
            }
            (vec![node, tor, spine], c.n * t + tors * s)
        }
    };
    if model.uses_racks() && !c.n.is_multiple_of(c.racks) {
        notes.push(format!(
            "{} nodes over {} racks: racks of {} and {}; per-ToR figures use the largest rack",
            c.n,
            c.racks,
            c.largest_rack,
            c.n / c.racks
        ));
    }
    let fits = roles.iter().all(|r| r.fits);
    ModelPlan {
        model,
        roles,
        total_sessions,
        total_blocks: c.blocks,
        fits,
        notes,
    }
}

/// Lays rows out as calicoctl's tables (Go's tabwriter: min width 5, padding 3, every
/// cell padded, a blank line after).
fn write_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    const MIN_WIDTH: usize = 5;
    const PADDING: usize = 3;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        for (cell, w) in cells.zip(&widths) {
            let width = (w + PADDING).max(MIN_WIDTH);
            out.push_str(cell);
            out.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out.push('\n');
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// The plan as calicoctl-style tables: one row per model and role (MODEL ROLE COUNT
/// SESSIONS ROUTES PATHS CAPACITY FITS), the totals per model, the block size, the
/// notes and what does not fit.
pub fn render_table(p: &Plan) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = p
        .models
        .iter()
        .flat_map(|m| {
            m.roles.iter().map(move |r| {
                vec![
                    m.model.to_string(),
                    r.role.to_string(),
                    r.count.to_string(),
                    r.sessions.to_string(),
                    r.routes.to_string(),
                    r.paths.to_string(),
                    r.capacity
                        .map_or_else(|| "unlimited".to_string(), |c| c.to_string()),
                    yes_no(r.fits),
                ]
            })
        })
        .collect();
    write_table(
        &mut out,
        &[
            "MODEL", "ROLE", "COUNT", "SESSIONS", "ROUTES", "PATHS", "CAPACITY", "FITS",
        ],
        &rows,
    );
    let totals: Vec<Vec<String>> = p
        .models
        .iter()
        .map(|m| {
            let devices: u64 = m.roles.iter().map(|r| u64::from(r.count)).sum();
            vec![
                m.model.to_string(),
                devices.to_string(),
                m.total_sessions.to_string(),
                yes_no(m.fits),
            ]
        })
        .collect();
    out.push_str("Totals per model:\n");
    write_table(&mut out, &["MODEL", "DEVICES", "SESSIONS", "FITS"], &totals);

    let input = &p.input;
    let size = input.block_size.unwrap_or_default();
    let how = if p.block_size_suggested {
        format!(
            "suggested: the smallest block holding {} pods + {BLOCK_HEADROOM} addresses",
            input.pods_per_node
        )
    } else {
        "given".to_string()
    };
    let plural = |n: u64, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    out.push_str(&format!(
        "Block size: /{size} ({how}); {} per node, {} in total; fabric routes {} (blocks + {} borrowed /32s).\n",
        plural(u64::from(p.blocks_per_node), "block"),
        plural(p.total_blocks, "block"),
        p.fabric_routes,
        input.borrowed,
    ));
    out.push_str(&format!(
        "Each node also holds {} local workload routes (not in ROUTES).\n",
        input.pods_per_node
    ));
    let notes: Vec<String> = p
        .models
        .iter()
        .flat_map(|m| m.notes.iter().map(move |n| format!("  {}: {n}\n", m.model)))
        .collect();
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        notes.iter().for_each(|n| out.push_str(n));
    }
    let misfits: Vec<String> = p
        .misfits()
        .map(|(m, roles)| {
            let why: Vec<String> = roles
                .iter()
                .map(|r| {
                    format!(
                        "{} needs {} routes, capacity {}",
                        r.role,
                        r.routes,
                        r.capacity.unwrap_or_default()
                    )
                })
                .collect();
            format!("  {}: {}\n", m.model, why.join("; "))
        })
        .collect();
    if !misfits.is_empty() {
        out.push_str("\nDOES NOT FIT:\n");
        misfits.iter().for_each(|m| out.push_str(m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_in_rotation() {
        assert_eq!(host_planes(1, 4, 3), [1, 2, 3]);
        assert_eq!(host_planes(3, 4, 3), [1, 3, 4]);
        assert_eq!(host_planes(6, 4, 4), [1, 2, 3, 4]);
        assert_eq!(plane_hosts(5, 4, 3), [4, 4, 4, 3]);
        assert_eq!(plane_hosts(8, 4, 2), [4, 4, 4, 4]);
        assert_eq!(unconnected_hosts(5, 4, 3), None);
        assert_eq!(unconnected_hosts(3, 4, 2), Some((1, 3)));
        assert_eq!(unconnected_hosts(2, 4, 2), None);
        assert_eq!(unconnected_hosts(4, 3, 2), None);
    }
}
