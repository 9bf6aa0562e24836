//! What `lab up` is asked to build: the topology (a planner [`Model`] the lab can
//! build), the encapsulation, the datastore and the cluster's size, checked before
//! anything is made.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::LabError;
use crate::plan::Model;

/// The pool every lab uses (inside 100.64.0.0/10, the pods' range).
pub const POOL_CIDR: &str = "100.64.0.0/16";
/// The block size used unless `--block-size` says otherwise.
pub const DEFAULT_BLOCK_SIZE: u8 = 26;
/// Route reflectors of the `route-reflector` topology.
pub const ROUTE_REFLECTORS: u32 = 2;
/// The cluster ID the reflectors share (Calico's documented example).
pub const RR_CLUSTER_ID: &str = "244.0.0.1";
/// Planes of the `l2-planes` topology unless `--planes` says otherwise.
pub const DEFAULT_PLANES: u32 = 4;
/// The planes `l2-planes` builds: each is a /24 of 198.18.0.0/16 numbered by plane.
pub const PLANES: std::ops::RangeInclusive<u32> = 2..=4;
/// The cluster's AS number.
pub const ASN: u32 = 64512;
/// Most nodes a lab builds (the fabric is a /24 per subnet).
pub const MAX_NODES: u32 = 100;
/// Most pods per node (each pod is a namespace and a veth).
pub const MAX_PODS_PER_NODE: u32 = 50;

/// The BGP topology: the planner models the lab can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Every node peers with every other (Calico's node-to-node mesh).
    Mesh,
    /// Two of the nodes are dedicated route reflectors (labelled
    /// `route-reflector=true`, one cluster ID, no pods); the mesh is off and a global
    /// BGPPeer peers every node with them.
    RouteReflector,
    /// A layer-2 fabric of several planes (one bridge and subnet each); every node is
    /// in every plane (or `--planes-per-host` of them) and peers with each plane's dedicated route reflector (one per
    /// plane, its own cluster ID, no pods), so it learns each route once per plane
    /// and installs ECMP over the planes.
    L2Planes,
    /// A ToR router per rack (BIRD or FRR), each rack its own AS shared by its nodes
    /// (iBGP, the ToR reflects), the ToRs in an eBGP mesh over one L2 spine bridge.
    AsPerRackL2Spine,
    /// The same racks, the ToRs peering eBGP with spine routers over point-to-point
    /// links.
    AsPerRackL3Spine,
    /// Every node its own 4-octet private AS, eBGP to its rack's ToR; ToRs eBGP to the
    /// spines.
    AsPerServer,
    /// All nodes one AS, all ToRs another, the spines a third; the spines send the
    /// ToRs only a default route and the ToRs send their nodes only a default route.
    DownwardDefault,
}

impl Topology {
    /// The planner's model for it.
    pub fn model(self) -> Model {
        match self {
            Topology::Mesh => Model::Mesh,
            Topology::RouteReflector => Model::RouteReflector,
            Topology::L2Planes => Model::L2Planes,
            Topology::AsPerRackL2Spine => Model::AsPerRackL2Spine,
            Topology::AsPerRackL3Spine => Model::AsPerRackL3Spine,
            Topology::AsPerServer => Model::AsPerServer,
            Topology::DownwardDefault => Model::DownwardDefault,
        }
    }

    /// Whether it is built of racks with ToR (and spine) routers.
    pub fn is_fabric(self) -> bool {
        matches!(
            self,
            Topology::AsPerRackL2Spine
                | Topology::AsPerRackL3Spine
                | Topology::AsPerServer
                | Topology::DownwardDefault
        )
    }

    /// Whether its ToRs peer spine routers (all fabric topologies but the L2 spine).
    pub fn has_spines(self) -> bool {
        self.is_fabric() && self != Topology::AsPerRackL2Spine
    }

    /// Its name, as the planner's model.
    pub fn name(self) -> &'static str {
        self.model().name()
    }
}

impl TryFrom<Model> for Topology {
    type Error = LabError;

    fn try_from(m: Model) -> Result<Topology, LabError> {
        match m {
            Model::Mesh => Ok(Topology::Mesh),
            Model::RouteReflector => Ok(Topology::RouteReflector),
            Model::L2Planes => Ok(Topology::L2Planes),
            Model::AsPerRackL2Spine => Ok(Topology::AsPerRackL2Spine),
            Model::AsPerRackL3Spine => Ok(Topology::AsPerRackL3Spine),
            Model::AsPerServer => Ok(Topology::AsPerServer),
            Model::DownwardDefault => Ok(Topology::DownwardDefault),
        }
    }
}

impl FromStr for Topology {
    type Err = LabError;

    fn from_str(s: &str) -> Result<Topology, LabError> {
        let m: Model = s.parse().map_err(|e: crate::plan::UnknownModel| {
            LabError::invalid("--topology", e.to_string())
        })?;
        Topology::try_from(m)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How pod traffic crosses the fabric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encap {
    /// Native routing (vxlanMode Never): BGP routes to the blocks.
    None,
    /// VXLAN between all nodes (vxlanMode Always).
    Vxlan,
    /// VXLAN only between subnets (vxlanMode CrossSubnet); the lab puts the nodes in
    /// two subnets behind a router.
    VxlanCrosssubnet,
}

impl Encap {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Encap::None => "none",
            Encap::Vxlan => "vxlan",
            Encap::VxlanCrosssubnet => "vxlan-crosssubnet",
        }
    }

    /// The IPPool's `vxlanMode`.
    pub fn vxlan_mode(self) -> &'static str {
        match self {
            Encap::None => "Never",
            Encap::Vxlan => "Always",
            Encap::VxlanCrosssubnet => "CrossSubnet",
        }
    }

    /// Whether the nodes sit in two subnets behind a router.
    pub fn two_subnets(self) -> bool {
        self == Encap::VxlanCrosssubnet
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which datastore the lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// A SQLite file in the lab's state dir.
    Sqlite,
    /// A one-member etcd (from PATH) in its own namespace on the fabric.
    Etcd,
}

impl StoreKind {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Etcd => "etcd",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The routing daemon that runs the ToR and spine routers of the fabric topologies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterKind {
    /// BIRD 2 (`bird`, `birdc`): one process per router (the default).
    Bird,
    /// FRR (`zebra` and `bgpd` from /usr/lib/frr, `vtysh`): two processes per router.
    Frr,
}

impl RouterKind {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RouterKind::Bird => "bird",
            RouterKind::Frr => "frr",
        }
    }
}

impl fmt::Display for RouterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RouterKind {
    type Err = LabError;

    fn from_str(s: &str) -> Result<RouterKind, LabError> {
        match s {
            "bird" => Ok(RouterKind::Bird),
            "frr" => Ok(RouterKind::Frr),
            other => Err(LabError::invalid(
                "--router",
                format!("{other:?}: expected bird or frr"),
            )),
        }
    }
}

/// Racks of the fabric topologies unless `--racks` says otherwise.
pub const DEFAULT_RACKS: u32 = 2;
/// Most racks a lab builds.
pub const MAX_RACKS: u32 = 8;
/// Spine routers of the routed-spine topologies unless `--spines` says otherwise.
pub const DEFAULT_SPINES: u32 = 1;
/// Most spine routers a lab builds.
pub const MAX_SPINES: u32 = 4;

/// A lab to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// The lab's name: namespaces `tl-<name>-...`, state in `<root>/<name>/`.
    pub name: String,
    /// The directory holding every lab's state dir.
    pub root: PathBuf,
    /// The BGP topology.
    pub topology: Topology,
    /// The encapsulation.
    pub encap: Encap,
    /// The datastore.
    pub store: StoreKind,
    /// Which pod pairs the reachability checks ping.
    pub matrix: MatrixMode,
    /// Nodes, route reflectors included (`l2-planes`: the hosts, its reflectors,
    /// one per plane, come on top).
    pub nodes: u32,
    /// Planes of the `l2-planes` topology (ignored by the others).
    pub planes: u32,
    /// Planes each `l2-planes` host is in, `None` for all of them: host i takes
    /// [`crate::plan::host_planes`] (`l` planes in rotation from plane i).
    pub planes_per_host: Option<u32>,
    /// Pods on each node (none on dedicated route reflectors).
    pub pods_per_node: u32,
    /// The pool's block size.
    pub block_size: u8,
    /// How long each wait (sessions, routes) may take, seconds.
    pub timeout_secs: u64,
    /// Racks of the fabric topologies (ignored by the others).
    pub racks: u32,
    /// Spine routers of the routed-spine topologies (ignored by the others).
    pub spines: u32,
    /// The daemon of the ToR and spine routers.
    pub router: RouterKind,
    /// BFD (300 ms x 3) on every BGP session: the nodes' (annotation
    /// `tabby.dev/bfd` on the BGPConfiguration and every BGPPeer) and the
    /// routers' (BIRD `bfd on`, FRR bfdd with `neighbor X bfd`).
    pub bfd: bool,
}

impl LabSpec {
    /// A spec with the defaults: mesh, no encapsulation, SQLite, 3 nodes, 2 pods each.
    pub fn new(name: &str, root: &Path) -> LabSpec {
        LabSpec {
            name: name.to_string(),
            root: root.to_path_buf(),
            topology: Topology::Mesh,
            encap: Encap::None,
            store: StoreKind::Sqlite,
            matrix: MatrixMode::Full,
            nodes: 3,
            planes: DEFAULT_PLANES,
            planes_per_host: None,
            pods_per_node: 2,
            block_size: DEFAULT_BLOCK_SIZE,
            timeout_secs: 60,
            racks: DEFAULT_RACKS,
            spines: DEFAULT_SPINES,
            router: RouterKind::Bird,
            bfd: false,
        }
    }

    /// This lab's state dir.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    /// Checks everything the build relies on.
    pub fn validate(&self) -> Result<(), LabError> {
        check_name(&self.name)?;
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(LabError::invalid(
                "--nodes",
                format!("{} is outside 1..={MAX_NODES}", self.nodes),
            ));
        }
        if !(1..=MAX_PODS_PER_NODE).contains(&self.pods_per_node) {
            return Err(LabError::invalid(
                "--pods-per-node",
                format!("{} is outside 1..={MAX_PODS_PER_NODE}", self.pods_per_node),
            ));
        }
        if !(20..=32).contains(&self.block_size) {
            return Err(LabError::invalid(
                "--block-size",
                format!("{} is outside 20..=32 for IPv4", self.block_size),
            ));
        }
        if self.topology == Topology::RouteReflector {
            if self.nodes < ROUTE_REFLECTORS + 1 {
                return Err(LabError::invalid(
                    "--nodes",
                    format!(
                        "{}: route-reflector makes {ROUTE_REFLECTORS} of the nodes reflectors and needs at least one more for pods",
                        self.nodes
                    ),
                ));
            }
            if self.encap != Encap::None {
                return Err(LabError::invalid(
                    "--encap",
                    format!(
                        "{} with route-reflector is not built yet: the reflectors would take a VXLAN tunnel address, and so a block, which the planner's dedicated reflectors do not have; use --encap none",
                        self.encap
                    ),
                ));
            }
        }
        if self.topology == Topology::L2Planes {
            if !PLANES.contains(&self.planes) {
                return Err(LabError::invalid(
                    "--planes",
                    format!(
                        "{} is outside {}..={}",
                        self.planes,
                        PLANES.start(),
                        PLANES.end()
                    ),
                ));
            }
            self.validate_membership()?;
            if self.encap != Encap::None {
                return Err(LabError::invalid(
                    "--encap",
                    format!(
                        "{} with l2-planes is not built yet: VXLAN tunnels to a node's one address, which is on one plane, so cutting that plane would cut the tunnels; use --encap none",
                        self.encap
                    ),
                ));
            }
        }
        if self.topology.is_fabric() {
            self.validate_fabric()?;
        }
        if self.timeout_secs == 0 {
            return Err(LabError::invalid("--timeout", "must be at least 1 s"));
        }
        Ok(())
    }
}

impl LabSpec {
    /// The planes host `i` (1-based) is in.
    pub fn host_planes(&self, i: u32) -> Vec<u32> {
        crate::plan::host_planes(i, self.planes, self.planes_per_host())
    }

    /// Planes each host is in.
    pub fn planes_per_host(&self) -> u32 {
        self.planes_per_host.unwrap_or(self.planes)
    }

    fn validate_membership(&self) -> Result<(), LabError> {
        let l = self.planes_per_host();
        if !(1..=self.planes).contains(&l) {
            return Err(LabError::invalid(
                "--planes-per-host",
                format!("{l} is outside 1..={} (the planes)", self.planes),
            ));
        }
        if let Some((a, b)) = crate::plan::unconnected_hosts(self.nodes, self.planes, l) {
            return Err(LabError::invalid(
                "--planes-per-host",
                format!(
                    "{l} of {} planes: hosts n{a} ({}) and n{b} ({}) share no plane, and a plane only reaches its own hosts, so their pods could not reach each other; give more than half the planes ({} or more) or fewer nodes",
                    self.planes,
                    plane_list(&self.host_planes(a)),
                    plane_list(&self.host_planes(b)),
                    self.planes / 2 + 1
                ),
            ));
        }
        Ok(())
    }

    fn validate_fabric(&self) -> Result<(), LabError> {
        let t = self.topology;
        if !(1..=MAX_RACKS).contains(&self.racks) {
            return Err(LabError::invalid(
                "--racks",
                format!("{} is outside 1..={MAX_RACKS}", self.racks),
            ));
        }
        if !self.nodes.is_multiple_of(self.racks) {
            return Err(LabError::invalid(
                "--nodes",
                format!(
                    "{} nodes over {} racks: {t} needs the same number of nodes in every rack, so that every ToR matches the planner's per-ToR figures",
                    self.nodes, self.racks
                ),
            ));
        }
        if t.has_spines() && !(1..=MAX_SPINES).contains(&self.spines) {
            return Err(LabError::invalid(
                "--spines",
                format!("{} is outside 1..={MAX_SPINES}", self.spines),
            ));
        }
        if self.encap != Encap::None {
            return Err(LabError::invalid(
                "--encap",
                format!(
                    "{} with {t} is not built: the fabric routes the pools natively, which is the point of the ToR designs; use --encap none",
                    self.encap
                ),
            ));
        }
        Ok(())
    }
}

fn plane_list(planes: &[u32]) -> String {
    let v: Vec<String> = planes.iter().map(|k| format!("plane {k}")).collect();
    v.join(", ")
}

/// Lab names become namespace and file names and the namespace prefix `tl-<name>-`
/// must not be the prefix of another lab's: lowercase letters and digits only.
pub fn check_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::invalid(
            "--name",
            format!(
                "{name:?}: use 1..=24 lowercase letters and digits (no '-': namespace tl-<name>-... must not prefix another lab's)"
            ),
        ))
    }
}

/// Which pod pairs the reachability check pings: every pair (N² pings, the default),
/// a sample of `K` destinations per pod (N·K, for large labs) or none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatrixMode {
    /// Every ordered pair of pods.
    #[default]
    Full,
    /// Each pod pings `K` others, spread evenly over the pods after it (so every pod
    /// is a source and a destination `K` times and every node is covered).
    Sample(u32),
    /// No pings: the check is sessions and routes only.
    None,
}

impl MatrixMode {
    /// The offsets `d` (1..n) for which pod `i` pings pod `(i + d) % n`, of `n` pods.
    pub fn offsets(self, n: usize) -> Vec<usize> {
        let all = n.saturating_sub(1);
        match self {
            MatrixMode::Full => (1..n).collect(),
            MatrixMode::None => Vec::new(),
            MatrixMode::Sample(k) if k as usize >= all => (1..n).collect(),
            MatrixMode::Sample(k) => {
                let k = k as usize;
                (0..k).map(|m| 1 + m * all / k).collect()
            }
        }
    }
}

impl FromStr for MatrixMode {
    type Err = LabError;

    fn from_str(s: &str) -> Result<MatrixMode, LabError> {
        let bad = || {
            LabError::invalid(
                "--matrix",
                format!("{s:?}: use full, none or sample:K (K >= 1 destinations per pod)"),
            )
        };
        match s {
            "full" => Ok(MatrixMode::Full),
            "none" => Ok(MatrixMode::None),
            _ => match s.strip_prefix("sample:").map(str::parse::<u32>) {
                Some(Ok(k)) if k >= 1 => Ok(MatrixMode::Sample(k)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for MatrixMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatrixMode::Full => f.write_str("full"),
            MatrixMode::Sample(k) => write!(f, "sample:{k}"),
            MatrixMode::None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_from_planner_names() {
        assert_eq!("mesh".parse::<Topology>().unwrap(), Topology::Mesh);
        assert_eq!(
            "route-reflector".parse::<Topology>().unwrap(),
            Topology::RouteReflector
        );
        assert_eq!("l2-planes".parse::<Topology>().unwrap(), Topology::L2Planes);
        assert_eq!(
            "as-per-server".parse::<Topology>().unwrap(),
            Topology::AsPerServer
        );
        assert!(Topology::DownwardDefault.has_spines());
        assert!(!Topology::AsPerRackL2Spine.has_spines());
        assert!(Topology::AsPerRackL2Spine.is_fabric() && !Topology::Mesh.is_fabric());
        assert_eq!("frr".parse::<RouterKind>().unwrap(), RouterKind::Frr);
        assert!("quagga".parse::<RouterKind>().is_err());
        let e = "ring".parse::<Topology>().unwrap_err().to_string();
        assert!(e.contains("unknown model"), "{e}");
    }

    #[test]
    fn names_checked() {
        assert!(check_name("lab").is_ok());
        assert!(check_name("m1234").is_ok());
        for bad in ["", "a-b", "Lab", "a/b", "a.b", &"x".repeat(25)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn specs_checked() {
        let ok = LabSpec::new("lab", Path::new("/tmp"));
        ok.validate().unwrap();
        assert_eq!(ok.dir(), Path::new("/tmp/lab"));
        let mut s = ok.clone();
        s.nodes = 0;
        assert!(s.validate().unwrap_err().to_string().contains("--nodes"));
        let mut s = ok.clone();
        s.topology = Topology::RouteReflector;
        s.nodes = 2;
        assert!(s.validate().is_err());
        s.nodes = 4;
        s.validate().unwrap();
        s.encap = Encap::Vxlan;
        assert!(s.validate().unwrap_err().to_string().contains("--encap"));
        let mut s = ok.clone();
        s.topology = Topology::L2Planes;
        s.validate().unwrap();
        s.planes = 5;
        assert!(s.validate().unwrap_err().to_string().contains("2..=4"));
        s.planes = 2;
        s.store = StoreKind::Etcd;
        s.validate().unwrap();
        s.encap = Encap::Vxlan;
        assert!(s.validate().unwrap_err().to_string().contains("--encap"));
        let mut s = ok.clone();
        s.topology = Topology::AsPerRackL3Spine;
        s.nodes = 4;
        s.validate().unwrap();
        s.nodes = 3;
        assert!(s.validate().unwrap_err().to_string().contains("every rack"));
        s.nodes = 4;
        s.spines = 0;
        assert!(s.validate().unwrap_err().to_string().contains("--spines"));
        s.spines = 1;
        s.encap = Encap::Vxlan;
        assert!(s.validate().unwrap_err().to_string().contains("--encap"));
        let mut s = ok;
        s.block_size = 19;
        assert!(s.validate().unwrap_err().to_string().contains("20..=32"));
    }

    #[test]
    fn matrix_modes() {
        assert_eq!("full".parse::<MatrixMode>().unwrap(), MatrixMode::Full);
        assert_eq!("none".parse::<MatrixMode>().unwrap(), MatrixMode::None);
        let m = "sample:3".parse::<MatrixMode>().unwrap();
        assert_eq!(m, MatrixMode::Sample(3));
        assert_eq!(m.to_string(), "sample:3");
        for bad in ["sample:0", "sample:", "sample:x", "some", ""] {
            let e = bad.parse::<MatrixMode>().unwrap_err().to_string();
            assert!(e.contains("--matrix"), "{bad:?}: {e}");
        }
        assert_eq!(MatrixMode::Full.offsets(4), [1, 2, 3]);
        assert!(MatrixMode::None.offsets(4).is_empty());
        // 10 pods, 3 destinations each: spread over the 9 others.
        assert_eq!(MatrixMode::Sample(3).offsets(10), [1, 4, 7]);
        // Asking for more than there are is every pair.
        assert_eq!(MatrixMode::Sample(5).offsets(4), [1, 2, 3]);
        assert!(MatrixMode::Sample(2).offsets(1).is_empty());
    }
}
