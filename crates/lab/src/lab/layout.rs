//! The lab as data: every namespace, bridge, link, address and command line it will
//! make, computed from a [`LabSpec`] without touching the system, so that the build
//! is a walk over this and `down` knows the names.
//!
//! One subnet (`--encap none|vxlan`): nodes 198.18.0.1.. on bridge `br0`, which holds
//! 198.18.0.254, the nodes' default gateway (proxy ARP for the pods' 169.254.1.1 only
//! answers for destinations the node can route). Two subnets
//! (`vxlan-crosssubnet`): nodes alternate between 198.18.1.0/24 (`br1`) and
//! 198.18.2.0/24 (`br2`), `198.18.<s>.<10+i>`, behind router namespace `rtr` at
//! `198.18.<s>.1`. etcd, when asked for, runs in its own namespace at .250 of the first
//! subnet. L2 planes (`--topology l2-planes`): plane k is bridge `br<k>` with
//! 198.18.k.0/24; node i is 198.18.k.i on its interface `p<k>` of every plane (its
//! Node address the plane-1 one), the plane's reflector `rr<k>` is 198.18.k.250 and
//! the bridge 198.18.k.254, the nodes' default gateways (one ECMP default route).
//! The ToR/spine topologies (racks, ToR and spine routers) are laid out by
//! [`super::fabric`]. Bridges live in namespace `fab`; nothing is made in the host's
//! namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::json;

use super::fabric::{self, FabricRouter, P2pLink};
use super::spec::{
    ASN, Encap, LabSpec, POOL_CIDR, ROUTE_REFLECTORS, RR_CLUSTER_ID, StoreKind, Topology,
};
use super::{LabError, netns_prefix};
use crate::plan::{IpNet, Model, Plan, PlanInput, Role, plan};

/// The etcd client port.
pub const ETCD_PORT: u16 = 2379;
/// The node label that makes a node a route reflector.
pub const RR_LABEL: &str = "route-reflector=true";
/// The agents' BGP hold time, seconds (keepalives every third of it): short, so that
/// a session to a dead peer ends, and the lab converges, within seconds.
pub const BGP_HOLD_TIME: u16 = 9;

/// A bridge: one L2 segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// Its name in the fabric namespace.
    pub name: String,
    /// The subnet on it.
    pub subnet: Ipv4Net,
    /// An address the bridge itself holds (the gateway in the one-subnet layout).
    pub address: Option<Ipv4Net>,
}

/// A namespace with one leg on a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    /// The interface in the namespace.
    pub ifname: String,
    /// Its address.
    pub address: Ipv4Net,
    /// The bridge.
    pub bridge: String,
    /// The veth's other end, a port of the bridge in the fabric namespace.
    pub port: String,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Node name (`n1`; reflectors `rr1`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its fabric link (`eth0`; with L2 planes its link to the first plane it is
    /// in, whose address is its Node address).
    pub leg: Leg,
    /// Its links to further planes (L2 planes only).
    pub more_legs: Vec<Leg>,
    /// Its default gateways (several make one ECMP default route).
    pub gateways: Vec<Ipv4Addr>,
    /// Whether it is a dedicated route reflector (no pods).
    pub route_reflector: bool,
    /// A reflector's cluster ID.
    pub cluster_id: Option<Ipv4Addr>,
    /// Its rack (fabric topologies): labelled `rack=r<rack>`.
    pub rack: Option<u32>,
    /// Its own AS (`spec.bgp.asNumber`), else the cluster's.
    pub asn: Option<u32>,
}

impl Node {
    /// A plane reflector's plane (`rr<k>`; L2 planes only).
    pub fn plane(&self) -> Option<u32> {
        self.name.strip_prefix("rr")?.parse().ok()
    }

    /// Every fabric link: `leg` first.
    pub fn legs(&self) -> impl Iterator<Item = &Leg> {
        std::iter::once(&self.leg).chain(&self.more_legs)
    }
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Pod name (`n1-1`): the Kubernetes pod name too.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its namespace (`tl-<lab>-pn1-1`).
    pub ns: String,
    /// The container ID given to the CNI plugin.
    pub container_id: String,
}

/// The router between the two subnets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    /// Its namespace.
    pub ns: String,
    /// One leg per subnet.
    pub legs: Vec<Leg>,
}

/// The etcd namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Etcd {
    /// Its namespace.
    pub ns: String,
    /// Its fabric link (with L2 planes, on plane 1).
    pub leg: Leg,
    /// Its links to further planes (L2 planes only: a leg on every plane, so that
    /// each host reaches it over each of its planes).
    pub more_legs: Vec<Leg>,
    /// Its default gateway (so that nodes in the other subnet get answers).
    pub gateway: Ipv4Addr,
}

impl Etcd {
    /// Every fabric link: `leg` first.
    pub fn legs(&self) -> impl Iterator<Item = &Leg> {
        std::iter::once(&self.leg).chain(&self.more_legs)
    }
}

/// Host `.251` of a plane: etcd, with `--store etcd`.
pub const PLANE_ETCD_HOST: u8 = 251;

/// Everything a lab is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The lab's name.
    pub name: String,
    /// The state dir.
    pub dir: PathBuf,
    /// The namespace holding the bridges.
    pub fabric_ns: String,
    /// The bridges.
    pub bridges: Vec<Bridge>,
    /// The router, in the two-subnet layout.
    pub router: Option<Router>,
    /// The etcd namespace, with `--store etcd`.
    pub etcd: Option<Etcd>,
    /// L2 planes (0 unless the topology is `l2-planes`).
    pub planes: u32,
    /// The nodes, reflectors first.
    pub nodes: Vec<Node>,
    /// The pods, by node.
    pub pods: Vec<Pod>,
    /// The store URL the agents and the CNI plugin use.
    pub store_url: String,
    /// The ToR then spine routers (fabric topologies).
    pub routers: Vec<FabricRouter>,
    /// ToR-to-spine links (routed-spine topologies).
    pub links: Vec<P2pLink>,
}

fn net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).expect("prefix lengths here are <= 32")
}

/// Host `.250` of a plane: its route reflector.
pub const PLANE_RR_HOST: u8 = 250;
/// Host `.254` of a plane: its bridge, the nodes' gateway.
pub const PLANE_GATEWAY_HOST: u8 = 254;

/// Plane `k`'s subnet, 198.18.k.0/24.
pub fn plane_subnet(k: u32) -> Ipv4Net {
    net(Ipv4Addr::new(198, 18, k as u8, 0), 24)
}

/// Host `host` of plane `k`.
pub fn plane_addr(k: u32, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, k as u8, host)
}

/// Plane `k`'s bridge.
pub fn plane_bridge(k: u32) -> String {
    format!("br{k}")
}

/// The cluster ID of plane `k`'s reflector: one cluster per plane.
pub fn plane_cluster_id(k: u32) -> Ipv4Addr {
    Ipv4Addr::new(244, 0, 0, k as u8)
}

/// The L2-planes layout: a bridge per plane, the reflectors (one leg on their plane)
/// then the hosts (one leg on each plane they are in, [`LabSpec::host_planes`]).
fn planes_layout(spec: &LabSpec, ns: &dyn Fn(&str) -> String) -> (Vec<Bridge>, Vec<Node>) {
    let planes = 1..=spec.planes;
    let bridges = planes
        .clone()
        .map(|k| Bridge {
            name: plane_bridge(k),
            subnet: plane_subnet(k),
            address: Some(net(plane_addr(k, PLANE_GATEWAY_HOST), 24)),
        })
        .collect();
    let mut nodes: Vec<Node> = planes
        .clone()
        .map(|k| {
            let name = format!("rr{k}");
            Node {
                ns: ns(&name),
                leg: Leg {
                    ifname: format!("p{k}"),
                    address: net(plane_addr(k, PLANE_RR_HOST), 24),
                    bridge: plane_bridge(k),
                    port: name.clone(),
                },
                more_legs: Vec::new(),
                gateways: vec![plane_addr(k, PLANE_GATEWAY_HOST)],
                route_reflector: true,
                cluster_id: Some(plane_cluster_id(k)),
                rack: None,
                asn: None,
                name,
            }
        })
        .collect();
    for i in 1..=spec.nodes {
        let name = format!("n{i}");
        let mine = spec.host_planes(i);
        let mut legs: Vec<Leg> = mine
            .iter()
            .map(|&k| Leg {
                ifname: format!("p{k}"),
                address: net(plane_addr(k, i as u8), 24),
                bridge: plane_bridge(k),
                port: format!("{name}p{k}"),
            })
            .collect();
        let leg = legs.remove(0);
        nodes.push(Node {
            ns: ns(&name),
            leg,
            more_legs: legs,
            gateways: mine
                .iter()
                .map(|&k| plane_addr(k, PLANE_GATEWAY_HOST))
                .collect(),
            route_reflector: false,
            cluster_id: None,
            rack: None,
            asn: None,
            name,
        });
    }
    (bridges, nodes)
}

impl Layout {
    /// Lays out `spec` (which must be valid).
    pub fn new(spec: &LabSpec) -> Layout {
        let prefix = netns_prefix(&spec.name);
        let ns = |suffix: &str| format!("{prefix}{suffix}");
        if spec.topology == Topology::L2Planes {
            let (bridges, nodes) = planes_layout(spec, &ns);
            let mut legs: Vec<Leg> = (1..=spec.planes)
                .map(|k| Leg {
                    ifname: format!("p{k}"),
                    address: net(plane_addr(k, PLANE_ETCD_HOST), 24),
                    bridge: plane_bridge(k),
                    port: format!("etcd{k}"),
                })
                .collect();
            let etcd = (spec.store == StoreKind::Etcd).then(|| Etcd {
                ns: ns("etcd"),
                leg: legs.remove(0),
                more_legs: legs,
                gateway: plane_addr(1, PLANE_GATEWAY_HOST),
            });
            return Layout::finish(spec, ns("fab"), bridges, None, etcd, nodes, spec.planes);
        }
        if spec.topology.is_fabric() {
            let f = fabric::layout(spec, &ns);
            // etcd on every rack's bridge (.251), so that each node reaches it on its
            // own segment whatever the routers do.
            let mut legs: Vec<Leg> = (1..=spec.racks)
                .map(|r| Leg {
                    ifname: format!("r{r}"),
                    address: net(
                        Ipv4Addr::from(u32::from(fabric::rack_subnet(r).network()) + 251),
                        24,
                    ),
                    bridge: fabric::rack_bridge(r),
                    port: format!("etcd{r}"),
                })
                .collect();
            let etcd = (spec.store == StoreKind::Etcd).then(|| Etcd {
                ns: ns("etcd"),
                leg: legs.remove(0),
                more_legs: legs,
                gateway: fabric::tor_addr(1),
            });
            let mut l = Layout::finish(spec, ns("fab"), f.bridges, None, etcd, f.nodes, 0);
            l.routers = f.routers;
            l.links = f.links;
            return l;
        }
        let two = spec.encap.two_subnets();
        let subnets: Vec<u8> = if two { vec![1, 2] } else { vec![0] };
        let subnet = |s: u8| net(Ipv4Addr::new(198, 18, s, 0), 24);
        let gateway = |s: u8| {
            if two {
                Ipv4Addr::new(198, 18, s, 1)
            } else {
                Ipv4Addr::new(198, 18, s, 254)
            }
        };
        let bridges = subnets
            .iter()
            .map(|&s| Bridge {
                name: format!("br{s}"),
                subnet: subnet(s),
                address: (!two).then(|| net(gateway(s), 24)),
            })
            .collect();
        let router = two.then(|| Router {
            ns: ns("rtr"),
            legs: subnets
                .iter()
                .map(|&s| Leg {
                    ifname: format!("eth{s}"),
                    address: net(gateway(s), 24),
                    bridge: format!("br{s}"),
                    port: format!("rtr{s}"),
                })
                .collect(),
        });
        let rrs = match spec.topology {
            Topology::Mesh => 0,
            Topology::RouteReflector => ROUTE_REFLECTORS as usize,
            _ => unreachable!("laid out by planes_layout or fabric::layout"),
        };
        let mut nodes = Vec::new();
        for i in 0..spec.nodes as usize {
            let rr = i < rrs;
            let name = if rr {
                format!("rr{}", i + 1)
            } else {
                format!("n{}", i + 1 - rrs)
            };
            let s = subnets[i % subnets.len()];
            let host = if two { 10 + i } else { 1 + i };
            let address = net(Ipv4Addr::new(198, 18, s, host as u8), 24);
            nodes.push(Node {
                ns: ns(&name),
                leg: Leg {
                    ifname: "eth0".into(),
                    address,
                    bridge: format!("br{s}"),
                    port: name.clone(),
                },
                more_legs: Vec::new(),
                gateways: vec![gateway(s)],
                route_reflector: rr,
                cluster_id: rr.then(|| RR_CLUSTER_ID.parse().expect("a dotted quad")),
                rack: None,
                asn: None,
                name,
            });
        }
        let first = subnets[0];
        let etcd = (spec.store == StoreKind::Etcd).then(|| Etcd {
            ns: ns("etcd"),
            leg: Leg {
                ifname: "eth0".into(),
                address: net(Ipv4Addr::new(198, 18, first, 250), 24),
                bridge: format!("br{first}"),
                port: "etcd".into(),
            },
            more_legs: Vec::new(),
            gateway: gateway(first),
        });
        Layout::finish(spec, ns("fab"), bridges, router, etcd, nodes, 0)
    }

    /// The pods of the workload nodes and the store, around the fabric.
    fn finish(
        spec: &LabSpec,
        fabric_ns: String,
        bridges: Vec<Bridge>,
        router: Option<Router>,
        etcd: Option<Etcd>,
        nodes: Vec<Node>,
        planes: u32,
    ) -> Layout {
        let prefix = netns_prefix(&spec.name);
        let ns = |suffix: &str| format!("{prefix}{suffix}");
        let mut pods = Vec::new();
        for n in nodes.iter().filter(|n| !n.route_reflector) {
            for i in 1..=spec.pods_per_node {
                pods.push(Pod {
                    name: format!("{}-{i}", n.name),
                    node: n.name.clone(),
                    ns: ns(&format!("p{}-{i}", n.name)),
                    container_id: format!("tabby-lab-{}-{}-{i}", spec.name, n.name),
                });
            }
        }
        let dir = spec.dir();
        let store_url = match &etcd {
            Some(e) => etcd_url(e.legs()),
            None => format!("sqlite://{}", dir.join("store.db").display()),
        };
        Layout {
            name: spec.name.clone(),
            dir,
            fabric_ns,
            bridges,
            router,
            etcd,
            planes,
            nodes,
            pods,
            store_url,
            routers: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Every namespace, in the order they are made: fabric, routers, etcd, nodes, pods.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.fabric_ns.clone()];
        v.extend(self.router.iter().map(|r| r.ns.clone()));
        v.extend(self.routers.iter().map(|r| r.ns.clone()));
        v.extend(self.etcd.iter().map(|e| e.ns.clone()));
        v.extend(self.nodes.iter().map(|n| n.ns.clone()));
        v.extend(self.pods.iter().map(|p| p.ns.clone()));
        v
    }

    /// Checks every address is in the lab's ranges and every interface name fits.
    pub fn check(&self) -> Result<(), LabError> {
        let mut legs: Vec<&Leg> = self.nodes.iter().flat_map(Node::legs).collect();
        legs.extend(self.router.iter().flat_map(|r| &r.legs));
        legs.extend(self.etcd.iter().flat_map(Etcd::legs));
        legs.extend(self.routers.iter().flat_map(|r| &r.legs));
        for l in &self.links {
            for (name, addr) in [(&l.tor_if, l.tor_addr), (&l.spine_if, l.spine_addr)] {
                tabby_testnet::addr::check_ifname(name)
                    .map_err(|e| LabError::invalid("interface name", e.to_string()))?;
                tabby_testnet::addr::check_net("fabric address", IpNet::V4(addr))
                    .map_err(|e| LabError::invalid("fabric address", e.to_string()))?;
            }
        }
        for leg in legs {
            for name in [&leg.ifname, &leg.port, &leg.bridge] {
                tabby_testnet::addr::check_ifname(name)
                    .map_err(|e| LabError::invalid("interface name", e.to_string()))?;
            }
            tabby_testnet::addr::check_net("fabric address", IpNet::V4(leg.address))
                .map_err(|e| LabError::invalid("fabric address", e.to_string()))?;
        }
        Ok(())
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The names of every device the planner checks: the nodes, then the routers.
    pub fn device_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(self.routers.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// A ToR or spine router by name.
    pub fn fabric_router(&self, name: &str) -> Option<&FabricRouter> {
        self.routers.iter().find(|r| r.name == name)
    }

    /// A router's dir for its configuration, sockets and pid files.
    pub fn router_dir(&self, router: &str) -> PathBuf {
        self.dir.join(router)
    }

    /// The node's control socket.
    pub fn socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.ctl"))
    }

    /// The node's agent log.
    pub fn log(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{what}.log"))
    }

    /// The node's agent state dir (`nodename`, `mtu`).
    pub fn node_state(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }

    /// The agent's command line (after the binary).
    pub fn agent_args(&self, node: &Node) -> Vec<String> {
        let mut v: Vec<String> = [
            "--node-name",
            &node.name,
            "--store",
            &self.node_store_url(node),
            "--ip",
            &node.leg.address.to_string(),
            "--control-socket",
            &self.socket(&node.name).display().to_string(),
            "--state-dir",
            &self.node_state(&node.name).display().to_string(),
            "--default-ipv4-pool-cidr",
            "none",
            "--bgp-connect-retry",
            "1",
            "--resync-secs",
            "30",
            "--bgp-hold-time",
            &BGP_HOLD_TIME.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(id) = node.cluster_id {
            v.extend(
                [
                    "--label",
                    RR_LABEL,
                    "--route-reflector-cluster-id",
                    &id.to_string(),
                ]
                .map(String::from),
            );
        }
        if let Some(r) = node.rack {
            v.extend(["--label".to_string(), format!("rack=r{r}")]);
        }
        if let Some(asn) = node.asn {
            v.extend(["--as".to_string(), asn.to_string()]);
        }
        v
    }

    /// The store URL node `node`'s agent and CNI plugin use: with etcd on several
    /// segments (L2 planes, racks), etcd's addresses on the node's own segments.
    pub fn node_store_url(&self, node: &Node) -> String {
        match &self.etcd {
            Some(e) if !e.more_legs.is_empty() => etcd_url(
                e.legs()
                    .filter(|l| node.legs().any(|n| n.bridge == l.bridge)),
            ),
            _ => self.store_url.clone(),
        }
    }

    /// etcd's command line (after the binary).
    pub fn etcd_args(&self, etcd: &Etcd) -> Vec<String> {
        let ips: Vec<Ipv4Addr> = etcd.legs().map(|l| l.address.addr()).collect();
        let urls = |ips: &[Ipv4Addr]| {
            ips.iter()
                .map(|ip| format!("http://{ip}:{ETCD_PORT}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let data = self.dir.join("etcd-data");
        [
            "--name".to_string(),
            "lab".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen-client-urls".into(),
            format!("{},http://127.0.0.1:{ETCD_PORT}", urls(&ips)),
            "--advertise-client-urls".into(),
            urls(&ips),
            "--listen-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls".into(),
            "http://127.0.0.1:2380".into(),
            "--initial-cluster".into(),
            "lab=http://127.0.0.1:2380".into(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--logger".into(),
            "zap".into(),
            "--log-outputs".into(),
            "stderr".into(),
            "--log-level".into(),
            "warn".into(),
        ]
        .to_vec()
    }

    /// The CNI network configuration for a pod on `node`.
    pub fn cni_conf(&self, node: &str, mtu: u32) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "tabby",
            "nodename": node,
            "datastore": self.node(node).map_or(self.store_url.clone(), |n| self.node_store_url(n)),
            "mtu": mtu,
            "log_level": "info",
            "log_file_path": self.dir.join("cni.log"),
            "ipam": {"type": "tabby-ipam"},
        })
    }

    /// The CNI environment for `command` (ADD, DEL) of `pod`.
    pub fn cni_env(&self, pod: &Pod, command: &str, cni_path: &str) -> Vec<(String, String)> {
        [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", pod.container_id.clone()),
            ("CNI_NETNS", format!("/run/netns/{}", pod.ns)),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", cni_path.to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
                    pod.name
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// An `etcd://` URL naming etcd at each leg's address.
fn etcd_url<'a>(legs: impl Iterator<Item = &'a Leg>) -> String {
    let v: Vec<String> = legs
        .map(|l| format!("{}:{ETCD_PORT}", l.address.addr()))
        .collect();
    format!("etcd://{}", v.join(","))
}

/// The resources the lab writes before the agents start: the pool, the cluster's BGP
/// settings and, for route reflectors, the peering with them.
///
/// L2 planes: every host peers with each plane's reflector over that plane, from its
/// address there (`sourceAddress: None` lets the kernel pick it; the Node address is
/// on plane 1 only), so that a route reflected on plane k keeps the originator's
/// plane-k address as its next hop. Peer selectors would peer with Node addresses,
/// so the sessions are spelled out by address, each side its own BGPPeer
/// (`reversePeering: Manual`: the automatic reverse side would use Node addresses
/// too).
pub fn resources(spec: &LabSpec) -> String {
    let mesh = spec.topology == Topology::Mesh;
    let fabric_peers = if spec.topology.is_fabric() {
        fabric::resources(spec)
    } else {
        String::new()
    };
    let mut y = format!(
        "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {{name: lab-pool}}
spec: {{cidr: {POOL_CIDR}, blockSize: {}, vxlanMode: {}, ipipMode: Never, natOutgoing: false}}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {{name: default}}
spec: {{nodeToNodeMeshEnabled: {mesh}, asNumber: {ASN}}}
",
        spec.block_size,
        spec.encap.vxlan_mode(),
    );
    if spec.topology == Topology::RouteReflector {
        y.push_str(
            "---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
",
        );
    }
    if spec.topology == Topology::L2Planes {
        for k in 1..=spec.planes {
            let rr = plane_addr(k, PLANE_RR_HOST);
            let hosts: Vec<u32> = (1..=spec.nodes)
                .filter(|&i| spec.host_planes(i).contains(&k))
                .collect();
            if hosts.len() as u32 == spec.nodes {
                y.push_str(&format!(
                    "---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: plane-{k}}}
spec: {{nodeSelector: \"!has(route-reflector)\", peerIP: \"{rr}\", asNumber: {ASN}, sourceAddress: None, reversePeering: Manual}}
"
                ));
            } else {
                // Only some hosts are in this plane: a host-side peer each.
                for &i in &hosts {
                    y.push_str(&format!(
                        "---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: n{i}-plane-{k}}}
spec: {{node: n{i}, peerIP: \"{rr}\", asNumber: {ASN}, sourceAddress: None, reversePeering: Manual}}
"
                    ));
                }
            }
            for i in hosts {
                y.push_str(&format!(
                    "---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: plane-{k}-n{i}}}
spec: {{node: rr{k}, peerIP: \"{}\", asNumber: {ASN}, reversePeering: Manual}}
",
                    plane_addr(k, i as u8)
                ));
            }
        }
    }
    y.push_str(&fabric_peers);
    if spec.bfd {
        y = with_bfd(&y);
    }
    y
}

/// The annotation turning BFD on, 300 ms x 3 (`lab up --bfd`).
pub const BFD_ANNOTATION: &str = "tabby.dev/bfd: \"on\"";

/// `resources` with BFD on every BGP session: the annotation on the
/// BGPConfiguration (the mesh) and on every BGPPeer.
fn with_bfd(yaml: &str) -> String {
    yaml.split_inclusive("---\n")
        .map(|doc| {
            let bgp = doc.contains("kind: BGPConfiguration\n") || doc.contains("kind: BGPPeer\n");
            if bgp && !doc.contains("tabby.dev/bfd") {
                doc.replacen(
                    "metadata: {name: ",
                    &format!("metadata: {{annotations: {{{BFD_ANNOTATION}}}, name: "),
                    1,
                )
            } else {
                doc.to_string()
            }
        })
        .collect()
}

/// The planner's question for this lab: the workload nodes (dedicated reflectors are
/// the planner's `routeReflectors`, not nodes), their pods, the lab's block size and
/// pool, one model.
pub fn plan_input(spec: &LabSpec) -> PlanInput {
    if spec.topology.is_fabric() {
        return PlanInput {
            nodes: spec.nodes,
            racks: spec.racks,
            pods_per_node: spec.pods_per_node,
            block_size: Some(spec.block_size),
            pools: vec![POOL_CIDR.parse().expect("the lab pool is a CIDR")],
            spines: spec.spines,
            tors_per_rack: 1,
            models: vec![spec.topology.model()],
            ..PlanInput::default()
        };
    }
    let rrs = match spec.topology {
        Topology::Mesh => 0,
        Topology::RouteReflector => ROUTE_REFLECTORS,
        Topology::L2Planes => {
            return PlanInput {
                nodes: spec.nodes,
                pods_per_node: spec.pods_per_node,
                block_size: Some(spec.block_size),
                pools: vec![POOL_CIDR.parse().expect("the lab pool is a CIDR")],
                planes: spec.planes,
                planes_per_host: spec.planes_per_host,
                models: vec![Model::L2Planes],
                ..PlanInput::default()
            };
        }
        _ => unreachable!("fabric topologies are planned above"),
    };
    PlanInput {
        nodes: spec.nodes - rrs,
        pods_per_node: spec.pods_per_node,
        block_size: Some(spec.block_size),
        pools: vec![POOL_CIDR.parse().expect("the lab pool is a CIDR")],
        route_reflectors: rrs.max(1),
        tunnel_addresses: u32::from(spec.encap != Encap::None),
        models: vec![spec.topology.model()],
        ..PlanInput::default()
    }
}

/// The same question as a `tabbyctl plan` command line, for the summary.
pub fn plan_command(spec: &LabSpec) -> String {
    let i = plan_input(spec);
    let mut s = format!(
        "tabbyctl plan --model {} --nodes {} --pods-per-node {} --block-size {} --pool {POOL_CIDR}",
        spec.topology, i.nodes, i.pods_per_node, spec.block_size
    );
    if spec.topology == Topology::RouteReflector {
        s.push_str(&format!(" --route-reflectors {}", i.route_reflectors));
    }
    if spec.topology == Topology::L2Planes {
        s.push_str(&format!(" --planes {}", i.planes));
        if let Some(l) = i.planes_per_host {
            s.push_str(&format!(" --planes-per-host {l}"));
        }
    }
    if spec.topology.is_fabric() {
        s.push_str(&format!(" --racks {}", i.racks));
        if spec.topology.has_spines() {
            s.push_str(&format!(" --spines {}", i.spines));
        }
    }
    if i.tunnel_addresses > 0 {
        s.push_str(&format!(" --tunnel-addresses {}", i.tunnel_addresses));
    }
    s
}

/// What the planner predicts for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The planner's role for it.
    pub role: Role,
    /// BGP sessions.
    pub sessions: u64,
    /// Routes to blocks (and borrowed /32s).
    pub routes: u64,
    /// Routes to the device's own pods.
    pub pod_routes: u64,
}

/// The planner's figures for every node of `layout`, in its order, then for every
/// ToR and spine router.
pub fn expected(spec: &LabSpec, layout: &Layout) -> Result<(Plan, Vec<Expected>), LabError> {
    let p = plan(&plan_input(spec))?;
    let model = &p.models[0];
    let role_of = |r: Role| model.roles.iter().find(|x| x.role == r);
    // L2 planes: the planner's reflector figures are the busiest plane's; each
    // plane's reflector serves its own hosts' blocks.
    let plane_hosts = crate::plan::plane_hosts(spec.nodes, spec.planes, spec.planes_per_host());
    let blocks = u64::from(crate::plan::blocks_per_node(
        spec.pods_per_node,
        spec.block_size,
    ));
    let mut v = Vec::new();
    for n in &layout.nodes {
        let role = if n.route_reflector {
            Role::RouteReflector
        } else {
            Role::Node
        };
        if let (true, Some(k)) = (n.route_reflector && layout.planes > 0, n.plane()) {
            let h = plane_hosts.get(k as usize - 1).copied().unwrap_or(0);
            v.push(Expected {
                role,
                sessions: h,
                routes: h * blocks,
                pod_routes: 0,
            });
            continue;
        }
        let r = role_of(role).ok_or_else(|| {
            LabError::invalid(
                "--topology",
                format!("the planner has no {role} role for {}", model.model),
            )
        })?;
        v.push(Expected {
            role,
            sessions: r.sessions,
            routes: r.routes,
            pod_routes: r.local_workload_routes,
        });
    }
    for router in &layout.routers {
        let r = role_of(router.role).ok_or_else(|| {
            LabError::invalid(
                "--topology",
                format!(
                    "the planner has no {} role for {}",
                    router.role, model.model
                ),
            )
        })?;
        v.push(Expected {
            role: router.role,
            sessions: r.sessions,
            routes: r.routes,
            pod_routes: 0,
        });
    }
    Ok((p, v))
}

/// The pod MTU the agent wrote for the CNI plugin, else the host's 1500 minus VXLAN's
/// 50 when the pool encapsulates.
pub fn pod_mtu(state_dir: &Path, encap: Encap) -> u32 {
    std::fs::read_to_string(state_dir.join("mtu"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(if encap == Encap::None { 1500 } else { 1450 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topology: Topology, encap: Encap, store: StoreKind, nodes: u32) -> LabSpec {
        let mut s = LabSpec::new("t1", Path::new("/run/tl"));
        s.topology = topology;
        s.encap = encap;
        s.store = store;
        s.nodes = nodes;
        s
    }

    #[test]
    fn one_subnet_mesh() {
        let s = spec(Topology::Mesh, Encap::None, StoreKind::Sqlite, 3);
        let l = Layout::new(&s);
        l.check().unwrap();
        assert_eq!(
            l.namespaces(),
            [
                "tl-t1-fab",
                "tl-t1-n1",
                "tl-t1-n2",
                "tl-t1-n3",
                "tl-t1-pn1-1",
                "tl-t1-pn1-2",
                "tl-t1-pn2-1",
                "tl-t1-pn2-2",
                "tl-t1-pn3-1",
                "tl-t1-pn3-2"
            ]
        );
        assert_eq!(l.bridges.len(), 1);
        assert_eq!(l.bridges[0].address.unwrap().to_string(), "198.18.0.254/24");
        let n3 = l.node("n3").unwrap();
        assert_eq!(n3.leg.address.to_string(), "198.18.0.3/24");
        assert_eq!(n3.gateways, [Ipv4Addr::new(198, 18, 0, 254)]);
        assert_eq!(n3.leg.port, "n3");
        assert_eq!(l.store_url, "sqlite:///run/tl/t1/store.db");
        assert_eq!(l.pods[5].name, "n3-2");
        assert_eq!(l.pods[5].container_id, "tabby-lab-t1-n3-2");
        let args = l.agent_args(n3);
        assert!(args.windows(2).any(|w| w == ["--ip", "198.18.0.3/24"]));
        assert!(args.windows(2).any(|w| w == ["--bgp-hold-time", "9"]));
        assert!(!args.contains(&"--label".to_string()));
    }

    #[test]
    fn two_subnets_with_etcd() {
        let s = spec(Topology::Mesh, Encap::VxlanCrosssubnet, StoreKind::Etcd, 4);
        let l = Layout::new(&s);
        l.check().unwrap();
        let r = l.router.as_ref().unwrap();
        assert_eq!(r.ns, "tl-t1-rtr");
        assert_eq!(r.legs[1].address.to_string(), "198.18.2.1/24");
        assert_eq!(r.legs[1].bridge, "br2");
        let ips: Vec<String> = l.nodes.iter().map(|n| n.leg.address.to_string()).collect();
        assert_eq!(
            ips,
            [
                "198.18.1.10/24",
                "198.18.2.11/24",
                "198.18.1.12/24",
                "198.18.2.13/24"
            ]
        );
        assert_eq!(l.nodes[1].gateways, [Ipv4Addr::new(198, 18, 2, 1)]);
        assert!(l.bridges.iter().all(|b| b.address.is_none()));
        let e = l.etcd.as_ref().unwrap();
        assert_eq!(e.leg.address.to_string(), "198.18.1.250/24");
        assert_eq!(l.store_url, "etcd://198.18.1.250:2379");
        assert!(
            l.etcd_args(e)
                .contains(&"http://198.18.1.250:2379,http://127.0.0.1:2379".to_string())
        );
        assert_eq!(l.namespaces()[1..3], ["tl-t1-rtr", "tl-t1-etcd"]);
    }

    #[test]
    fn route_reflectors_are_dedicated() {
        let s = spec(Topology::RouteReflector, Encap::None, StoreKind::Sqlite, 4);
        let l = Layout::new(&s);
        let names: Vec<&str> = l.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["rr1", "rr2", "n1", "n2"]);
        assert!(l.pods.iter().all(|p| p.node.starts_with('n')));
        assert_eq!(l.pods.len(), 4);
        let args = l.agent_args(&l.nodes[0]);
        assert!(
            args.windows(2)
                .any(|w| w == ["--route-reflector-cluster-id", RR_CLUSTER_ID])
        );
        let y = resources(&s);
        assert!(y.contains("nodeToNodeMeshEnabled: false"), "{y}");
        assert!(y.contains("peerSelector: route-reflector == 'true'"), "{y}");
        let docs = tabby_api::load::parse_documents(&y, "lab.yaml").unwrap();
        assert_eq!(docs.len(), 3);
    }

    #[test]
    fn bfd_annotates_the_bgp_configuration_and_every_bgppeer() {
        for t in [
            Topology::Mesh,
            Topology::RouteReflector,
            Topology::L2Planes,
            Topology::AsPerRackL3Spine,
        ] {
            let mut s = spec(t, Encap::None, StoreKind::Sqlite, 4);
            let plain = resources(&s);
            assert!(!plain.contains("tabby.dev/bfd"), "{plain}");
            s.bfd = true;
            let y = resources(&s);
            let docs = tabby_api::load::parse_documents(&y, "lab.yaml").unwrap();
            let mut bgp = 0;
            for d in &docs {
                let bfd = d.metadata.annotations.get("tabby.dev/bfd");
                match d.kind() {
                    tabby_api::Kind::BGPConfiguration | tabby_api::Kind::BGPPeer => {
                        bgp += 1;
                        assert_eq!(bfd.map(String::as_str), Some("on"), "{t}: {y}");
                    }
                    _ => assert_eq!(bfd, None, "{t}: {y}"),
                }
            }
            assert!(bgp >= 2 || t == Topology::Mesh, "{t}: {y}");
        }
        // FRR ToRs of iBGP racks: the nodes do not wait for BFD (FRR starts it
        // single hop only once BGP is up).
        let mut s = spec(
            Topology::AsPerRackL3Spine,
            Encap::None,
            StoreKind::Sqlite,
            4,
        );
        s.bfd = true;
        s.router = crate::lab::spec::RouterKind::Frr;
        let y = resources(&s);
        assert!(
            y.contains("annotations: {tabby.dev/bfd: \"on,no-wait\"}, name: rack-r1-tor"),
            "{y}"
        );
        s.topology = Topology::AsPerServer;
        let y = resources(&s);
        assert!(
            y.contains("annotations: {tabby.dev/bfd: \"on\"}, name: rack-r1-tor"),
            "{y}"
        );
    }

    #[test]
    fn planner_expectations() {
        let s = spec(Topology::Mesh, Encap::None, StoreKind::Sqlite, 3);
        let (_, e) = expected(&s, &Layout::new(&s)).unwrap();
        assert_eq!(
            e[0],
            Expected {
                role: Role::Node,
                sessions: 2,
                routes: 3,
                pod_routes: 2
            }
        );
        let s = spec(Topology::RouteReflector, Encap::None, StoreKind::Sqlite, 5);
        let (_, e) = expected(&s, &Layout::new(&s)).unwrap();
        // Reflectors: 3 clients + the other reflector; clients: the 2 reflectors.
        assert_eq!(
            (e[0].role, e[0].sessions, e[0].routes),
            (Role::RouteReflector, 4, 3)
        );
        assert_eq!(e[0].pod_routes, 0);
        assert_eq!((e[2].role, e[2].sessions, e[2].routes), (Role::Node, 2, 3));
        assert_eq!(
            plan_command(&s),
            "tabbyctl plan --model route-reflector --nodes 3 --pods-per-node 2 --block-size 26 --pool 100.64.0.0/16 --route-reflectors 2"
        );
        let y = resources(&spec(
            Topology::Mesh,
            Encap::VxlanCrosssubnet,
            StoreKind::Sqlite,
            2,
        ));
        assert!(y.contains("vxlanMode: CrossSubnet"), "{y}");
        assert!(y.contains("nodeToNodeMeshEnabled: true"), "{y}");
    }

    #[test]
    fn l2_planes() {
        let mut s = spec(Topology::L2Planes, Encap::None, StoreKind::Sqlite, 3);
        s.planes = 2;
        let l = Layout::new(&s);
        l.check().unwrap();
        let names: Vec<&str> = l.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["rr1", "rr2", "n1", "n2", "n3"]);
        assert_eq!(l.bridges.len(), 2);
        assert_eq!(l.bridges[1].address.unwrap().to_string(), "198.18.2.254/24");
        let rr2 = l.node("rr2").unwrap();
        assert_eq!(rr2.leg.address.to_string(), "198.18.2.250/24");
        assert_eq!(rr2.leg.bridge, "br2");
        assert!(rr2.more_legs.is_empty());
        let args = l.agent_args(rr2);
        assert!(
            args.windows(2)
                .any(|w| w == ["--route-reflector-cluster-id", "244.0.0.2"])
        );
        let n3 = l.node("n3").unwrap();
        let legs: Vec<String> = n3
            .legs()
            .map(|g| format!("{} {} {}", g.ifname, g.address, g.port))
            .collect();
        assert_eq!(legs, ["p1 198.18.1.3/24 n3p1", "p2 198.18.2.3/24 n3p2"]);
        assert_eq!(n3.gateways.len(), 2);
        assert!(
            l.agent_args(n3)
                .windows(2)
                .any(|w| w == ["--ip", "198.18.1.3/24"])
        );
        assert_eq!(l.pods.len(), 6);
        let y = resources(&s);
        assert!(y.contains("peerIP: \"198.18.2.250\""), "{y}");
        assert!(y.contains("metadata: {name: plane-2-n3}"), "{y}");
        let docs = tabby_api::load::parse_documents(&y, "lab.yaml").unwrap();
        assert_eq!(docs.len(), 2 + 2 * (1 + 3));
        let (_, e) = expected(&s, &l).unwrap();
        // Reflectors: the plane's 3 hosts; hosts: one reflector per plane.
        assert_eq!(
            (e[0].role, e[0].sessions, e[0].routes),
            (Role::RouteReflector, 3, 3)
        );
        assert_eq!((e[2].role, e[2].sessions, e[2].routes), (Role::Node, 2, 3));
        assert_eq!(
            plan_command(&s),
            "tabbyctl plan --model l2-planes --nodes 3 --pods-per-node 2 --block-size 26 --pool 100.64.0.0/16 --planes 2"
        );
    }

    #[test]
    fn l2_planes_partial_membership() {
        let mut s = spec(Topology::L2Planes, Encap::None, StoreKind::Sqlite, 5);
        s.planes = 4;
        s.planes_per_host = Some(3);
        s.validate().unwrap();
        let l = Layout::new(&s);
        l.check().unwrap();
        // n3 is in planes 3, 4 and 1 (in rotation from plane 3): its Node address is
        // its first plane's, plane 1.
        let n3 = l.node("n3").unwrap();
        let legs: Vec<String> = n3
            .legs()
            .map(|g| format!("{} {} {}", g.ifname, g.address, g.port))
            .collect();
        assert_eq!(
            legs,
            [
                "p1 198.18.1.3/24 n3p1",
                "p3 198.18.3.3/24 n3p3",
                "p4 198.18.4.3/24 n3p4"
            ]
        );
        assert_eq!(
            n3.gateways,
            [1, 3, 4].map(|k| plane_addr(k, PLANE_GATEWAY_HOST))
        );
        let y = resources(&s);
        // Plane 4 holds n2, n3, n4 only: a peer per host on both sides.
        assert!(y.contains("metadata: {name: n3-plane-4}"), "{y}");
        assert!(!y.contains("metadata: {name: n1-plane-4}"), "{y}");
        assert!(!y.contains("metadata: {name: plane-4-n1}"), "{y}");
        assert!(y.contains("metadata: {name: plane-4-n2}"), "{y}");
        assert!(!y.contains("metadata: {name: plane-4}"), "{y}");
        let docs = tabby_api::load::parse_documents(&y, "lab.yaml").unwrap();
        assert_eq!(docs.len(), 2 + 2 * 15);
        let (p, e) = expected(&s, &l).unwrap();
        // The planner's reflector figures are the busiest plane's (4 hosts); each
        // reflector is predicted its own plane's hosts.
        let rr = p.models[0]
            .roles
            .iter()
            .find(|r| r.role == Role::RouteReflector)
            .unwrap();
        assert_eq!((rr.sessions, rr.routes), (4, 4));
        let rrs: Vec<(u64, u64)> = e[..4].iter().map(|x| (x.sessions, x.routes)).collect();
        assert_eq!(rrs, [(4, 4), (4, 4), (4, 4), (3, 3)]);
        // Hosts: a session per plane they are in, every block once in the FIB.
        assert_eq!((e[4].role, e[4].sessions, e[4].routes), (Role::Node, 3, 5));
        assert!(plan_command(&s).ends_with("--planes 4 --planes-per-host 3"));
        // Two of four planes: n1 (1, 2) and n3 (3, 4) share none.
        s.planes_per_host = Some(2);
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("n1 (plane 1, plane 2) and n3 (plane 3, plane 4)"),
            "{err}"
        );
        s.nodes = 2;
        s.validate().unwrap();
        s.planes_per_host = Some(5);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("outside 1..=4")
        );
        // etcd on L2 planes: a leg on every plane; each host names its planes' ones.
        s.nodes = 5;
        s.planes_per_host = Some(3);
        s.store = StoreKind::Etcd;
        s.validate().unwrap();
        let l = Layout::new(&s);
        l.check().unwrap();
        let e = l.etcd.as_ref().unwrap();
        let legs: Vec<String> = e
            .legs()
            .map(|g| format!("{} {} {}", g.ifname, g.address, g.bridge))
            .collect();
        assert_eq!(legs[3], "p4 198.18.4.251/24 br4");
        assert_eq!(
            l.store_url,
            "etcd://198.18.1.251:2379,198.18.2.251:2379,198.18.3.251:2379,198.18.4.251:2379"
        );
        let n2 = l.node("n2").unwrap();
        let url = "etcd://198.18.2.251:2379,198.18.3.251:2379,198.18.4.251:2379";
        assert!(l.agent_args(n2).windows(2).any(|w| w == ["--store", url]));
        assert_eq!(l.cni_conf("n2", 1500)["datastore"], url);
        assert!(l.etcd_args(e).contains(&format!(
            "{},http://127.0.0.1:2379",
            l.store_url.replace("etcd://", "http://").replace(",", ",http://")
        )));
    }

    #[test]
    fn fabric_etcd_on_every_rack() {
        let s = spec(Topology::AsPerServer, Encap::None, StoreKind::Etcd, 4);
        s.validate().unwrap();
        let l = Layout::new(&s);
        l.check().unwrap();
        let e = l.etcd.as_ref().unwrap();
        let legs: Vec<String> = e
            .legs()
            .map(|g| format!("{} {} {} {}", g.ifname, g.address, g.bridge, g.port))
            .collect();
        assert_eq!(
            legs,
            [
                "r1 198.18.1.251/24 rack1 etcd1",
                "r2 198.18.2.251/24 rack2 etcd2"
            ]
        );
        // n3 is in rack 2: its rack's etcd address only.
        let n3 = l.node("n3").unwrap();
        assert_eq!(l.node_store_url(n3), "etcd://198.18.2.251:2379");
        assert_eq!(
            l.cni_conf("n3", 1500)["datastore"],
            "etcd://198.18.2.251:2379"
        );
    }

    #[test]
    fn fabric_topologies() {
        let mut s = spec(Topology::AsPerServer, Encap::None, StoreKind::Sqlite, 4);
        s.spines = 2;
        let l = Layout::new(&s);
        l.check().unwrap();
        assert_eq!(
            l.namespaces()[..5],
            [
                "tl-t1-fab",
                "tl-t1-tor1",
                "tl-t1-tor2",
                "tl-t1-spine1",
                "tl-t1-spine2"
            ]
        );
        assert_eq!(l.device_names().len(), 8);
        let args = l.agent_args(l.node("n3").unwrap());
        assert!(
            args.windows(2).any(|w| w == ["--label", "rack=r2"]),
            "{args:?}"
        );
        assert!(
            args.windows(2).any(|w| w == ["--as", "4200000003"]),
            "{args:?}"
        );
        assert_eq!(l.router_dir("tor1"), Path::new("/run/tl/t1/tor1"));
        let y = resources(&s);
        assert!(y.contains("nodeToNodeMeshEnabled: false"), "{y}");
        assert!(
            y.contains("peerIP: \"198.18.1.254\", asNumber: 65001"),
            "{y}"
        );
        let (_, e) = expected(&s, &l).unwrap();
        // Nodes: their ToR; ToRs: 2 nodes and 2 spines; spines: the 2 ToRs.
        let got: Vec<(Role, u64, u64)> = e.iter().map(|e| (e.role, e.sessions, e.routes)).collect();
        assert_eq!(
            got,
            [
                (Role::Node, 1, 4),
                (Role::Node, 1, 4),
                (Role::Node, 1, 4),
                (Role::Node, 1, 4),
                (Role::Tor, 4, 4),
                (Role::Tor, 4, 4),
                (Role::Spine, 2, 4),
                (Role::Spine, 2, 4),
            ]
        );
        assert_eq!(
            plan_command(&s),
            "tabbyctl plan --model as-per-server --nodes 4 --pods-per-node 2 --block-size 26 --pool 100.64.0.0/16 --racks 2 --spines 2"
        );
        // Downward default: a node holds its block and the default, a ToR its rack's
        // two blocks and the default; no static default route on the nodes.
        let s = spec(Topology::DownwardDefault, Encap::None, StoreKind::Sqlite, 4);
        let l = Layout::new(&s);
        assert!(l.nodes.iter().all(|n| n.gateways.is_empty()));
        assert!(!l.agent_args(&l.nodes[0]).contains(&"--as".to_string()));
        let (_, e) = expected(&s, &l).unwrap();
        assert_eq!((e[0].routes, e[4].routes, e[6].routes), (2, 3, 4));
    }

    #[test]
    fn cni_environment() {
        let s = spec(Topology::Mesh, Encap::None, StoreKind::Sqlite, 1);
        let l = Layout::new(&s);
        let env = l.cni_env(&l.pods[0], "ADD", "/bin");
        assert!(env.contains(&("CNI_NETNS".into(), "/run/netns/tl-t1-pn1-1".into())));
        assert!(
            env.iter()
                .any(|(k, v)| k == "CNI_ARGS" && v.ends_with("K8S_POD_NAME=n1-1"))
        );
        let c = l.cni_conf("n1", 1500);
        assert_eq!(c["datastore"], "sqlite:///run/tl/t1/store.db");
        assert_eq!(c["nodename"], "n1");
    }
}
