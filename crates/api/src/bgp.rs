//! BGP resources: BGPConfiguration (cluster-wide `default` or per-node
//! `node.<name>`), BGPPeer (who peers with whom) and BGPFilter (import/export rules
//! peers refer to), with Calico's defaults (AS 64512, mesh on, port 179) and rules
//! (`node` xor `nodeSelector`, `peerIP` xor `peerSelector`, valid communities, ...).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::asn::{ASNumber, DEFAULT_AS_NUMBER};
use crate::meta::ObjectMeta;
use crate::validate::{Checker, Family};

/// BGP's well-known port, which BIRD listens on unless configured otherwise.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// Most communities / prefix advertisements one BGPConfiguration may hold.
pub const MAX_COMMUNITIES: usize = 500;

/// Log levels `logSeverityScreen` accepts.
pub const LOG_SEVERITIES: [&str; 6] = ["Trace", "Debug", "Info", "Warning", "Error", "Fatal"];

/// A Kubernetes secret key reference, as BGP passwords use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeySelector {
    /// The secret's name (in calico-node's namespace).
    #[serde(default)]
    pub name: String,
    /// The key within the secret.
    #[serde(default)]
    pub key: String,
    /// Whether a missing secret is tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Where a BGP (TCP MD5) password comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPassword {
    /// A key of a Kubernetes secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
}

impl BGPPassword {
    fn check(&self, path: &str, c: &mut Checker) {
        match &self.secret_key_ref {
            None => c.err(path, "needs a secretKeyRef"),
            Some(r) => {
                if r.name.is_empty() {
                    c.err(format!("{path}.secretKeyRef.name"), "is required");
                } else {
                    c.subdomain(&format!("{path}.secretKeyRef.name"), &r.name);
                }
                if r.key.is_empty() {
                    c.err(format!("{path}.secretKeyRef.key"), "is required");
                }
            }
        }
    }
}

/// A CIDR of service addresses to advertise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceIPBlock {
    /// The range; strictly masked.
    #[serde(
        default,
        with = "crate::net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr: Option<IpNet>,
}

/// A named BGP community.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Community {
    /// The name prefix advertisements refer to.
    #[serde(default)]
    pub name: String,
    /// `aa:nn` (standard) or `aa:nn:mm` (large).
    #[serde(default)]
    pub value: String,
}

/// Communities to attach to routes within a CIDR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixAdvertisement {
    /// The routes this applies to.
    #[serde(
        default,
        with = "crate::net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr: Option<IpNet>,
    /// Community names (from `communities`) or literal values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
}

/// On or off, as several settings spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EnabledDisabled {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

/// Which addresses BIRD listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BindMode {
    /// All addresses (default).
    None,
    /// Only the node's own address.
    NodeIP,
}

/// Which pool routes the BGP daemon programs into the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProgramClusterRoutes {
    /// Every pool's routes.
    Enabled,
    /// None.
    Disabled,
    /// Only IPIP pools' routes.
    #[serde(rename = "EnabledIPIPOnly")]
    EnabledIpipOnly,
    /// Only unencapsulated pools' routes.
    EnabledNoEncapOnly,
}

/// `spec` of a BGPConfiguration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPConfigurationSpec {
    /// BGP daemon log level: Trace, Debug, Info (default), Warning, Error, Fatal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Full node-to-node mesh; default true. Only on `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The cluster's AS number; default 64512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<ASNumber>,
    /// LoadBalancer service ranges to advertise.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceIPBlock>,
    /// External service ranges to advertise.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceIPBlock>,
    /// Cluster service ranges to advertise.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceIPBlock>,
    /// Enabled (default): advertise LoadBalancer ranges; Disabled: one /32 per address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_load_balancer_aggregation: Option<EnabledDisabled>,
    /// The BGP port; default 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Named communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities per advertised prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// Password of the mesh sessions. Only on `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BGPPassword>,
    /// Graceful restart time of mesh sessions (Go duration). Only on `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<String>,
    /// None (default) or NodeIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,
    /// Interfaces (globs) whose routes are not exported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_interfaces: Vec<String>,
    /// IPv4 address local workloads peer with.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV4",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_workload_peering_ipv4: Option<String>,
    /// IPv6 address local workloads peer with.
    #[serde(
        default,
        rename = "localWorkloadPeeringIPV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_workload_peering_ipv6: Option<String>,
    /// Which cluster routes the BGP daemon programs; default EnabledNoEncapOnly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_cluster_routes: Option<ProgramClusterRoutes>,
    /// Kernel metric of learned IPv4 routes; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_normal_route_priority: Option<i32>,
    /// Kernel metric of learned IPv6 routes; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_normal_route_priority: Option<i32>,
}

/// Whether `v` is a BGP community value: `aa:nn` (16-bit halves) or `aa:nn:mm`
/// (32-bit parts).
pub fn is_community_value(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    let digits = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match parts.len() {
        2 => parts.iter().all(|p| digits(p) && p.parse::<u16>().is_ok()),
        3 => parts.iter().all(|p| digits(p) && p.parse::<u32>().is_ok()),
        _ => false,
    }
}

impl BGPConfigurationSpec {
    /// The cluster AS number in effect (64512 unless set).
    pub fn effective_as_number(&self) -> u32 {
        self.as_number.map_or(DEFAULT_AS_NUMBER, ASNumber::get)
    }

    /// Whether the node-to-node mesh is on (default true).
    pub fn effective_mesh(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// The BGP port in effect.
    pub fn effective_listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_LISTEN_PORT)
    }

    /// The log level in effect.
    pub fn effective_log_severity(&self) -> &str {
        self.log_severity_screen.as_deref().unwrap_or("Info")
    }

    pub(crate) fn check(&self, meta: &ObjectMeta, c: &mut Checker) {
        if let Some(level) = &self.log_severity_screen
            && !LOG_SEVERITIES.contains(&level.as_str())
        {
            c.err(
                "spec.logSeverityScreen",
                format!("{level:?} is not one of {}", LOG_SEVERITIES.join(", ")),
            );
        }
        if meta.name != "default" {
            let only_default = [
                (
                    self.node_to_node_mesh_enabled.is_some(),
                    "nodeToNodeMeshEnabled",
                ),
                (self.node_mesh_password.is_some(), "nodeMeshPassword"),
                (
                    self.node_mesh_max_restart_time.is_some(),
                    "nodeMeshMaxRestartTime",
                ),
            ];
            for (set, field) in only_default {
                if set {
                    c.err(
                        format!("spec.{field}"),
                        "can only be set on the BGPConfiguration named \"default\"",
                    );
                }
            }
        }
        if self.listen_port == Some(0) {
            c.err("spec.listenPort", "0 is not a port (1..=65535)");
        }
        for (field, blocks) in [
            ("serviceLoadBalancerIPs", &self.service_load_balancer_ips),
            ("serviceExternalIPs", &self.service_external_ips),
            ("serviceClusterIPs", &self.service_cluster_ips),
        ] {
            for (i, b) in blocks.iter().enumerate() {
                let path = format!("spec.{field}[{i}].cidr");
                match &b.cidr {
                    Some(cidr) => c.masked(&path, cidr),
                    None => c.err(path, "is required"),
                }
            }
        }
        if self.communities.len() > MAX_COMMUNITIES {
            c.err(
                "spec.communities",
                format!(
                    "{} entries; at most {MAX_COMMUNITIES} are allowed",
                    self.communities.len()
                ),
            );
        }
        for (i, comm) in self.communities.iter().enumerate() {
            let path = format!("spec.communities[{i}]");
            if comm.name.is_empty() {
                c.err(format!("{path}.name"), "is required");
            } else {
                c.subdomain(&format!("{path}.name"), &comm.name);
            }
            if !is_community_value(&comm.value) {
                c.err(
                    format!("{path}.value"),
                    format!("{:?} is not a community (aa:nn or aa:nn:mm)", comm.value),
                );
            }
        }
        if self.prefix_advertisements.len() > MAX_COMMUNITIES {
            c.err(
                "spec.prefixAdvertisements",
                format!(
                    "{} entries; at most {MAX_COMMUNITIES} are allowed",
                    self.prefix_advertisements.len()
                ),
            );
        }
        for (i, adv) in self.prefix_advertisements.iter().enumerate() {
            let path = format!("spec.prefixAdvertisements[{i}]");
            match &adv.cidr {
                Some(cidr) => c.masked(&format!("{path}.cidr"), cidr),
                None => c.err(format!("{path}.cidr"), "is required"),
            }
            for (j, comm) in adv.communities.iter().enumerate() {
                let known = self.communities.iter().any(|k| &k.name == comm);
                if !known && !is_community_value(comm) {
                    c.err(
                        format!("{path}.communities[{j}]"),
                        format!(
                            "{comm:?} is neither a community named in spec.communities nor a value aa:nn or aa:nn:mm"
                        ),
                    );
                }
            }
        }
        if let Some(p) = &self.node_mesh_password {
            p.check("spec.nodeMeshPassword", c);
            if self.node_to_node_mesh_enabled == Some(false) {
                c.err(
                    "spec.nodeMeshPassword",
                    "has no effect with nodeToNodeMeshEnabled: false",
                );
            }
        }
        c.duration(
            "spec.nodeMeshMaxRestartTime",
            self.node_mesh_max_restart_time.as_ref(),
        );
        for (i, iface) in self.ignored_interfaces.iter().enumerate() {
            if iface.is_empty() {
                c.err(format!("spec.ignoredInterfaces[{i}]"), "is empty");
            }
        }
        c.ip(
            "spec.localWorkloadPeeringIPV4",
            self.local_workload_peering_ipv4.as_ref(),
            Family::V4,
        );
        c.ip(
            "spec.localWorkloadPeeringIPV6",
            self.local_workload_peering_ipv6.as_ref(),
            Family::V6,
        );
        c.range(
            "spec.ipv4NormalRoutePriority",
            self.ipv4_normal_route_priority,
            1,
            2_147_483_646,
        );
        c.range(
            "spec.ipv6NormalRoutePriority",
            self.ipv6_normal_route_priority,
            1,
            2_147_483_646,
        );
    }
}

/// How the next hop of routes sent to a peer is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NextHopMode {
    /// BIRD's default behaviour.
    Auto,
    /// `next hop self`.
    #[serde(rename = "Self")]
    SelfAddress,
    /// `next hop keep`.
    Keep,
}

/// Which source address a BGP session uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceAddress {
    /// The node's own address (default).
    #[serde(rename = "UseNodeIP")]
    UseNodeIp,
    /// Whatever the kernel picks.
    None,
}

/// Whether the peer side of a local-workload peering is created for you.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReversePeering {
    /// Automatically (default).
    Auto,
    /// Only as configured.
    Manual,
}

/// `spec` of a BGPPeer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPeerSpec {
    /// The one node that peers; with neither this nor `nodeSelector`, every node does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The remote address: `IP`, `IP:port` or `[IPv6]:port`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// The remote AS number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<ASNumber>,
    /// Which local nodes peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Peer with the Calico nodes this selects (their AS comes from their Node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// Deprecated: keep the original next hop (eBGP only); use `nextHopMode: Keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_original_next_hop: Option<bool>,
    /// Auto, Self or Keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    /// TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BGPPassword>,
    /// UseNodeIP (default) or None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// Graceful restart time (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
    /// How many times the local AS may appear in received AS paths.
    #[serde(
        default,
        rename = "numAllowedLocalASNumbers",
        skip_serializing_if = "Option::is_none"
    )]
    pub num_allowed_local_as_numbers: Option<i32>,
    /// GTSM: the peer is at most this many hops away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<i32>,
    /// Keepalive time (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    /// A gateway through which the peer is reachable (a static route is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_by: Option<String>,
    /// Names of BGPFilters applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Peer with the local workloads this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_workload_selector: Option<String>,
    /// Override of the local AS number for this peering.
    #[serde(
        default,
        rename = "localASNumber",
        skip_serializing_if = "Option::is_none"
    )]
    pub local_as_number: Option<ASNumber>,
    /// Auto (default) or Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverse_peering: Option<ReversePeering>,
}

/// Parses a BGPPeer `peerIP`: `IP`, `IP:port` or `[IPv6]:port`.
pub fn parse_peer_address(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    let sock: SocketAddr = s.parse().ok()?;
    (sock.port() != 0).then_some((sock.ip(), Some(sock.port())))
}

fn set(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.is_empty())
}

impl BGPPeerSpec {
    /// The remote address and port, when `peerIP` is set and valid.
    pub fn peer_address(&self) -> Option<(IpAddr, Option<u16>)> {
        self.peer_ip.as_deref().and_then(parse_peer_address)
    }

    /// Whether this peering applies to every node.
    pub fn is_global(&self) -> bool {
        !set(&self.node) && !set(&self.node_selector)
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        if set(&self.node) && set(&self.node_selector) {
            c.err(
                "spec.nodeSelector",
                "cannot be combined with spec.node; set one or the other",
            );
        }
        if let Some(n) = self.node.as_ref().filter(|n| !n.is_empty()) {
            c.subdomain("spec.node", n);
        }
        let peer_ip = set(&self.peer_ip);
        let peer_sel = set(&self.peer_selector);
        let local_sel = set(&self.local_workload_selector);
        if peer_ip && peer_sel {
            c.err(
                "spec.peerSelector",
                "cannot be combined with spec.peerIP; set one or the other",
            );
        }
        if peer_sel && self.as_number.is_some() {
            c.err(
                "spec.asNumber",
                "cannot be combined with spec.peerSelector (selected peers' AS numbers come from their Node resources)",
            );
        }
        if local_sel {
            if peer_ip || peer_sel {
                c.err(
                    "spec.localWorkloadSelector",
                    "cannot be combined with spec.peerIP or spec.peerSelector",
                );
            }
            if self.as_number.is_none() {
                c.err(
                    "spec.asNumber",
                    "is required with spec.localWorkloadSelector",
                );
            }
        }
        if !peer_ip && !peer_sel && !local_sel {
            c.err(
                "spec.peerIP",
                "one of spec.peerIP, spec.peerSelector or spec.localWorkloadSelector is required",
            );
        }
        if peer_ip && self.as_number.is_none() {
            c.err("spec.asNumber", "is required with spec.peerIP");
        }
        let peer = self.peer_address();
        if let Some(ip) = self.peer_ip.as_ref().filter(|s| !s.is_empty())
            && peer.is_none()
        {
            c.err(
                "spec.peerIP",
                format!("{ip:?} is not an IP address, IP:port or [IPv6]:port"),
            );
        }
        c.selector("spec.nodeSelector", self.node_selector.as_ref(), false);
        c.selector("spec.peerSelector", self.peer_selector.as_ref(), false);
        c.selector(
            "spec.localWorkloadSelector",
            self.local_workload_selector.as_ref(),
            false,
        );
        if self.keep_original_next_hop == Some(true) && self.next_hop_mode.is_some() {
            c.err(
                "spec.keepOriginalNextHop",
                "cannot be combined with spec.nextHopMode; use nextHopMode: Keep",
            );
        }
        if let Some(p) = &self.password {
            p.check("spec.password", c);
        }
        c.duration("spec.maxRestartTime", self.max_restart_time.as_ref());
        c.duration("spec.keepaliveTime", self.keepalive_time.as_ref());
        c.range(
            "spec.numAllowedLocalASNumbers",
            self.num_allowed_local_as_numbers,
            0,
            255,
        );
        c.range("spec.ttlSecurity", self.ttl_security, 0, 255);
        if let Some(via) = self.reachable_by.as_ref().filter(|s| !s.is_empty()) {
            match via.parse::<IpAddr>() {
                Err(_) => c.err("spec.reachableBy", format!("{via:?} is not an IP address")),
                Ok(gw) => {
                    if let Some((ip, _)) = peer
                        && ip.is_ipv4() != gw.is_ipv4()
                    {
                        c.err(
                            "spec.reachableBy",
                            format!("{gw} is not in the same address family as peerIP {ip}"),
                        );
                    }
                }
            }
        }
        for (i, f) in self.filters.iter().enumerate() {
            c.subdomain(&format!("spec.filters[{i}]"), f);
        }
    }
}

/// How a filter rule's CIDR is compared with a route's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOperator {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is not the CIDR.
    NotEqual,
    /// The prefix is within the CIDR.
    In,
    /// The prefix is not within the CIDR.
    NotIn,
}

/// Where routes a filter rule matches come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterMatchSource {
    /// Routes learned from BGP peers.
    RemotePeers,
}

/// The kind of peer a filter rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerType {
    /// External peers.
    #[serde(rename = "eBGP")]
    EBgp,
    /// Internal peers.
    #[serde(rename = "iBGP")]
    IBgp,
}

/// What a matching filter rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterAction {
    /// Let the route through (after its operations).
    Accept,
    /// Drop the route.
    Reject,
}

/// Bounds on the prefix length a filter rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixLength {
    /// Shortest prefix matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i32>,
    /// Longest prefix matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i32>,
}

/// Community values a filter rule matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterCommunities {
    /// `aa:nn` or `aa:nn:mm` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A community to add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddCommunity {
    /// `aa:nn` or `aa:nn:mm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// AS numbers to prepend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrependASPath {
    /// Prepended in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<ASNumber>,
}

/// A route priority to set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetPriority {
    /// The kernel metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i32>,
}

/// One change an accepting filter rule makes to a route; exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterOperation {
    /// Add a community.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_community: Option<AddCommunity>,
    /// Prepend to the AS path.
    #[serde(
        default,
        rename = "prependASPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub prepend_as_path: Option<PrependASPath>,
    /// Set the route priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_priority: Option<SetPriority>,
}

/// One BGPFilter rule (the same shape for IPv4 and IPv6 lists).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterRule {
    /// The prefix to compare with; needs `matchOperator`.
    #[serde(
        default,
        with = "crate::net::opt_cidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub cidr: Option<IpNet>,
    /// Prefix-length bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLength>,
    /// How `cidr` is compared; needs `cidr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    /// Where the route came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<FilterMatchSource>,
    /// Interface glob the route uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// eBGP or iBGP peers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
    /// Communities the route carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<FilterCommunities>,
    /// AS numbers the route's AS path starts with.
    #[serde(
        default,
        rename = "asPathPrefix",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub as_path_prefix: Vec<ASNumber>,
    /// The route priority matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Accept or Reject; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<FilterAction>,
    /// Changes to accepted routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<FilterOperation>,
}

impl BGPFilterRule {
    fn check(&self, path: &str, v6: bool, c: &mut Checker) {
        let (family, max_len) = if v6 { ("IPv6", 128) } else { ("IPv4", 32) };
        if self.action.is_none() {
            c.err(format!("{path}.action"), "is required (Accept or Reject)");
        }
        if let Some(cidr) = &self.cidr {
            if matches!(cidr, IpNet::V6(_)) != v6 {
                c.err(
                    format!("{path}.cidr"),
                    format!("{cidr} is not an {family} CIDR"),
                );
            }
            c.masked(&format!("{path}.cidr"), cidr);
        }
        match (self.cidr.is_some(), self.match_operator.is_some()) {
            (true, false) => c.err(format!("{path}.matchOperator"), "is required with cidr"),
            (false, true) => c.err(format!("{path}.cidr"), "is required with matchOperator"),
            _ => {}
        }
        if let Some(pl) = &self.prefix_length {
            if self.cidr.is_none() {
                c.err(format!("{path}.prefixLength"), "needs cidr");
            }
            c.range(&format!("{path}.prefixLength.min"), pl.min, 0, max_len);
            c.range(&format!("{path}.prefixLength.max"), pl.max, 0, max_len);
            if let (Some(min), Some(max)) = (pl.min, pl.max)
                && min > max
            {
                c.err(
                    format!("{path}.prefixLength"),
                    format!("min {min} is greater than max {max}"),
                );
            }
        }
        if let Some(iface) = &self.interface
            && iface.is_empty()
        {
            c.err(format!("{path}.interface"), "is empty");
        }
        if let Some(comms) = &self.communities {
            for (i, v) in comms.values.iter().enumerate() {
                if !is_community_value(v) {
                    c.err(
                        format!("{path}.communities.values[{i}]"),
                        format!("{v:?} is not a community (aa:nn or aa:nn:mm)"),
                    );
                }
            }
        }
        if !self.operations.is_empty() && self.action == Some(FilterAction::Reject) {
            c.err(
                format!("{path}.operations"),
                "only rules with action Accept can have operations",
            );
        }
        for (i, op) in self.operations.iter().enumerate() {
            let p = format!("{path}.operations[{i}]");
            let count = [
                op.add_community.is_some(),
                op.prepend_as_path.is_some(),
                op.set_priority.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if count != 1 {
                c.err(
                    &p,
                    "set exactly one of addCommunity, prependASPath, setPriority",
                );
            }
            if let Some(add) = &op.add_community {
                match add.value.as_deref() {
                    Some(v) if is_community_value(v) => {}
                    Some(v) => c.err(
                        format!("{p}.addCommunity.value"),
                        format!("{v:?} is not a community (aa:nn or aa:nn:mm)"),
                    ),
                    None => c.err(format!("{p}.addCommunity.value"), "is required"),
                }
            }
            if let Some(pre) = &op.prepend_as_path
                && pre.prefix.is_empty()
            {
                c.err(format!("{p}.prependASPath.prefix"), "is empty");
            }
            if let Some(sp) = &op.set_priority {
                match sp.value {
                    None => c.err(format!("{p}.setPriority.value"), "is required"),
                    Some(v) => {
                        c.range(&format!("{p}.setPriority.value"), Some(v), 1, 2_147_483_646)
                    }
                }
            }
        }
    }
}

/// `spec` of a BGPFilter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes sent to peers, first match wins.
    #[serde(default, rename = "exportV4", skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BGPFilterRule>,
    /// Rules for IPv4 routes received from peers.
    #[serde(default, rename = "importV4", skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes sent to peers.
    #[serde(default, rename = "exportV6", skip_serializing_if = "Vec::is_empty")]
    pub export_v6: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes received from peers.
    #[serde(default, rename = "importV6", skip_serializing_if = "Vec::is_empty")]
    pub import_v6: Vec<BGPFilterRule>,
}

impl BGPFilterSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        for (field, rules, v6) in [
            ("exportV4", &self.export_v4, false),
            ("importV4", &self.import_v4, false),
            ("exportV6", &self.export_v6, true),
            ("importV6", &self.import_v6, true),
        ] {
            for (i, r) in rules.iter().enumerate() {
                r.check(&format!("spec.{field}[{i}]"), v6, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config_problems(v: serde_json::Value, name: &str) -> Vec<String> {
        let spec: BGPConfigurationSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&ObjectMeta::named(name, None), &mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    fn peer_problems(v: serde_json::Value) -> Vec<String> {
        let spec: BGPPeerSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    fn filter_problems(v: serde_json::Value) -> Vec<String> {
        let spec: BGPFilterSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn configuration_defaults() {
        let spec = BGPConfigurationSpec::default();
        assert_eq!(spec.effective_as_number(), 64512);
        assert!(spec.effective_mesh());
        assert_eq!(spec.effective_listen_port(), 179);
        assert_eq!(spec.effective_log_severity(), "Info");
        let spec: BGPConfigurationSpec =
            serde_json::from_value(json!({"asNumber": "1.10", "nodeToNodeMeshEnabled": false}))
                .unwrap();
        assert_eq!(spec.effective_as_number(), 65546);
        assert!(!spec.effective_mesh());
    }

    #[test]
    fn configuration_rules() {
        assert!(config_problems(
            json!({"logSeverityScreen": "Info", "asNumber": 64512, "nodeToNodeMeshEnabled": false,
                   "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}], "listenPort": 179,
                   "communities": [{"name": "bgp-large", "value": "63400:300:100"}],
                   "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["bgp-large", "63400:120"]}],
                   "nodeMeshMaxRestartTime": "120s"}),
            "default"
        )
        .is_empty());
        let e = config_problems(json!({"logSeverityScreen": "Loud"}), "default");
        assert!(
            e[0].starts_with("spec.logSeverityScreen: \"Loud\""),
            "{e:?}"
        );
        let e = config_problems(json!({"nodeToNodeMeshEnabled": true}), "node.node1");
        assert!(
            e[0].starts_with("spec.nodeToNodeMeshEnabled: can only be set"),
            "{e:?}"
        );
        let e = config_problems(
            json!({"serviceClusterIPs": [{"cidr": "10.96.0.1/12"}]}),
            "default",
        );
        assert!(
            e[0].starts_with("spec.serviceClusterIPs[0].cidr: 10.96.0.1/12 has host bits"),
            "{e:?}"
        );
        let e = config_problems(
            json!({"communities": [{"name": "x", "value": "70000:1"}]}),
            "default",
        );
        assert!(e[0].starts_with("spec.communities[0].value:"), "{e:?}");
        let e = config_problems(
            json!({"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["nope"]}]}),
            "default",
        );
        assert!(
            e[0].starts_with("spec.prefixAdvertisements[0].communities[0]:"),
            "{e:?}"
        );
        let e = config_problems(json!({"nodeMeshMaxRestartTime": "2 minutes"}), "default");
        assert!(e[0].starts_with("spec.nodeMeshMaxRestartTime:"), "{e:?}");
        let e = config_problems(
            json!({"nodeMeshPassword": {"secretKeyRef": {"name": "bgp"}}}),
            "default",
        );
        assert_eq!(e, ["spec.nodeMeshPassword.secretKeyRef.key: is required"]);
        let e = config_problems(json!({"listenPort": 0}), "default");
        assert!(e[0].starts_with("spec.listenPort:"), "{e:?}");
        let e = config_problems(json!({"localWorkloadPeeringIPV4": "fd00::1"}), "default");
        assert!(e[0].starts_with("spec.localWorkloadPeeringIPV4:"), "{e:?}");
        assert!(
            serde_json::from_value::<BGPConfigurationSpec>(json!({"bindMode": "All"})).is_err()
        );
    }

    #[test]
    fn community_values() {
        assert!(is_community_value("65000:100"));
        assert!(is_community_value("4200000000:1:2"));
        assert!(!is_community_value("65536:1"));
        assert!(!is_community_value("1"));
        assert!(!is_community_value("a:b"));
        assert!(!is_community_value("1:2:3:4"));
    }

    #[test]
    fn peer_exclusions() {
        assert!(peer_problems(json!({"peerIP": "192.0.2.1", "asNumber": 64513})).is_empty());
        assert!(peer_problems(json!({"nodeSelector": "!has(route-reflector)", "peerSelector": "has(route-reflector)"})).is_empty());
        let e = peer_problems(
            json!({"node": "n1", "nodeSelector": "all()", "peerIP": "192.0.2.1", "asNumber": 1}),
        );
        assert_eq!(
            e,
            ["spec.nodeSelector: cannot be combined with spec.node; set one or the other"]
        );
        let e =
            peer_problems(json!({"peerIP": "192.0.2.1", "peerSelector": "all()", "asNumber": 1}));
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.peerSelector: cannot be combined with spec.peerIP")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.asNumber: cannot be combined")),
            "{e:?}"
        );
        let e = peer_problems(json!({}));
        assert!(e[0].starts_with("spec.peerIP: one of"), "{e:?}");
        let e = peer_problems(json!({"peerIP": "192.0.2.1"}));
        assert_eq!(e, ["spec.asNumber: is required with spec.peerIP"]);
        let e = peer_problems(json!({"localWorkloadSelector": "color == 'red'"}));
        assert_eq!(
            e,
            ["spec.asNumber: is required with spec.localWorkloadSelector"]
        );
    }

    #[test]
    fn peer_addresses_and_fields() {
        assert_eq!(
            parse_peer_address("192.0.2.1:1179"),
            Some(("192.0.2.1".parse().unwrap(), Some(1179)))
        );
        assert_eq!(
            parse_peer_address("[fd00::1]:179"),
            Some(("fd00::1".parse().unwrap(), Some(179)))
        );
        assert_eq!(parse_peer_address("fd00::1").map(|p| p.1), Some(None));
        assert!(parse_peer_address("192.0.2.1:0").is_none());
        assert!(parse_peer_address("peer.example").is_none());
        let e = peer_problems(json!({"peerIP": "10.0.0.300", "asNumber": 1}));
        assert!(e[0].starts_with("spec.peerIP: \"10.0.0.300\""), "{e:?}");
        let e =
            peer_problems(json!({"peerIP": "10.0.0.1", "asNumber": 1, "reachableBy": "fd00::1"}));
        assert!(e[0].starts_with("spec.reachableBy:"), "{e:?}");
        let e = peer_problems(
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": true, "nextHopMode": "Self"}),
        );
        assert!(e[0].starts_with("spec.keepOriginalNextHop:"), "{e:?}");
        let e = peer_problems(
            json!({"peerIP": "10.0.0.1", "asNumber": 1, "ttlSecurity": 300, "keepaliveTime": "x"}),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ttlSecurity: 300 is outside 0..=255")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("spec.keepaliveTime:")),
            "{e:?}"
        );
        let e = peer_problems(json!({"peerSelector": "has(", "nodeSelector": "x =="}));
        assert!(
            e.iter().any(|e| e.starts_with("spec.peerSelector:")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("spec.nodeSelector:")),
            "{e:?}"
        );
        let e =
            peer_problems(json!({"peerIP": "10.0.0.1", "asNumber": 1, "filters": ["Bad Name"]}));
        assert!(e[0].starts_with("spec.filters[0]:"), "{e:?}");
        let spec: BGPPeerSpec =
            serde_json::from_value(json!({"nextHopMode": "Self", "sourceAddress": "UseNodeIP"}))
                .unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"nextHopMode": "Self", "sourceAddress": "UseNodeIP"})
        );
    }

    #[test]
    fn filter_rules() {
        assert!(filter_problems(json!({
            "exportV4": [{"action": "Accept", "matchOperator": "In", "cidr": "77.0.0.0/16",
                          "prefixLength": {"min": 16, "max": 24},
                          "operations": [{"addCommunity": {"value": "65000:1"}}, {"prependASPath": {"prefix": [65000]}}]}],
            "importV6": [{"action": "Reject", "matchOperator": "NotIn", "cidr": "9000::0/64"}],
            "importV4": [{"action": "Reject", "source": "RemotePeers", "interface": "eth*", "peerType": "eBGP"}]
        }))
        .is_empty());
        let e = filter_problems(json!({"exportV4": [{"cidr": "77.0.0.0/16"}]}));
        assert!(
            e.contains(&"spec.exportV4[0].action: is required (Accept or Reject)".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"spec.exportV4[0].matchOperator: is required with cidr".to_string()),
            "{e:?}"
        );
        let e = filter_problems(
            json!({"exportV6": [{"action": "Accept", "cidr": "77.0.0.0/16", "matchOperator": "In"}]}),
        );
        assert!(
            e[0].starts_with("spec.exportV6[0].cidr: 77.0.0.0/16 is not an IPv6 CIDR"),
            "{e:?}"
        );
        let e = filter_problems(
            json!({"exportV4": [{"action": "Reject", "operations": [{"setPriority": {"value": 5}}]}]}),
        );
        assert!(e[0].starts_with("spec.exportV4[0].operations:"), "{e:?}");
        let e = filter_problems(
            json!({"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/8", "matchOperator": "In", "prefixLength": {"min": 30, "max": 33}}]}),
        );
        assert!(
            e[0].starts_with("spec.exportV4[0].prefixLength.max:"),
            "{e:?}"
        );
        let e = filter_problems(json!({"exportV4": [{"action": "Accept", "operations": [{}]}]}));
        assert!(
            e[0].starts_with("spec.exportV4[0].operations[0]: set exactly one"),
            "{e:?}"
        );
        assert!(
            serde_json::from_value::<BGPFilterSpec>(json!({"exportV4": [{"action": "Drop"}]}))
                .is_err()
        );
    }
}
