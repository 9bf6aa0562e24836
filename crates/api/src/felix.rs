//! FelixConfiguration: the data plane agent's settings, cluster-wide (`default`) or
//! per node (`node.<name>`). Calico leaves unset fields unset and the agent applies
//! its built-in defaults, so this module keeps what was written and offers the
//! defaults through `effective_*` accessors. Enumerated settings are matched without
//! regard to case, as Felix does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::Port;
use crate::validate::{Checker, Family, parse_duration};

/// Default prefix of workload interface names.
pub const DEFAULT_INTERFACE_PREFIX: &str = "cali";
/// Default VXLAN UDP port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Default VXLAN network identifier.
pub const DEFAULT_VXLAN_VNI: u32 = 4096;
/// Default WireGuard port (IPv4).
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// Default WireGuard device name (IPv4).
pub const DEFAULT_WIREGUARD_INTERFACE: &str = "wireguard.cali";
/// Default health endpoint port.
pub const DEFAULT_HEALTH_PORT: u16 = 9099;
/// Default route protocol of workload routes (RTPROT_BOOT).
pub const DEFAULT_DEVICE_ROUTE_PROTOCOL: u8 = 3;
/// Default kernel metric of normal routes.
pub const DEFAULT_NORMAL_ROUTE_PRIORITY: u32 = 1024;
/// Default kernel metric of preferred routes.
pub const DEFAULT_ELEVATED_ROUTE_PRIORITY: u32 = 512;
/// Inbound host ports Felix never blocks unless configured otherwise.
pub const DEFAULT_FAILSAFE_INBOUND: [(&str, u16); 9] = [
    ("tcp", 22),
    ("udp", 68),
    ("tcp", 179),
    ("tcp", 2379),
    ("tcp", 2380),
    ("tcp", 5473),
    ("tcp", 6443),
    ("tcp", 6666),
    ("tcp", 6667),
];
/// Outbound host ports Felix never blocks unless configured otherwise.
pub const DEFAULT_FAILSAFE_OUTBOUND: [(&str, u16); 9] = [
    ("udp", 53),
    ("udp", 67),
    ("tcp", 179),
    ("tcp", 2379),
    ("tcp", 2380),
    ("tcp", 5473),
    ("tcp", 6443),
    ("tcp", 6666),
    ("tcp", 6667),
];

/// A protocol, port and optional peer CIDR (failsafe ports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtoPort {
    /// `tcp`, `udp` or `sctp` (any case).
    #[serde(default)]
    pub protocol: String,
    /// The port.
    #[serde(default)]
    pub port: u16,
    /// Only traffic to/from this CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
}

/// A range of kernel routing table numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTableRange {
    /// First table.
    #[serde(default)]
    pub min: i64,
    /// Last table (inclusive).
    #[serde(default)]
    pub max: i64,
}

/// A health timeout for one of the agent's components.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthTimeoutOverride {
    /// The reporter's name.
    #[serde(default)]
    pub name: String,
    /// The timeout (Go duration).
    #[serde(default)]
    pub timeout: String,
}

/// `spec` of a FelixConfiguration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FelixConfigurationSpec {
    /// Use Felix's built-in data plane (true) or an external driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_internal_dataplane_driver: Option<bool>,
    /// Path of an external data plane driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_driver: Option<String>,
    /// How long the data plane loop may stall before the agent reports unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_watchdog_timeout: Option<String>,
    /// Program IPv6 as well as IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_support: Option<bool>,
    /// How often routes are re-checked; default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_refresh_interval: Option<String>,
    /// How often interfaces are re-listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_refresh_interval: Option<String>,
    /// How often iptables rules are re-checked; default 180s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_refresh_interval: Option<String>,
    /// Delay before re-checking iptables after a write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_post_write_check_interval: Option<String>,
    /// Path of the iptables lock file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_lock_file_path: Option<String>,
    /// How long to wait for the iptables lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_lock_timeout: Option<String>,
    /// How often to retry the iptables lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_lock_probe_interval: Option<String>,
    /// Overrides of kernel feature detection, `Feature=value,...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_detect_override: Option<String>,
    /// Experimental features to turn on, `Feature=value,...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<String>,
    /// How often ipsets are re-checked; default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsets_refresh_interval: Option<String>,
    /// Largest ipset Felix creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ipset_size: Option<i64>,
    /// Which iptables to use; default Auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_backend: Option<String>,
    /// How often XDP programs are re-checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_refresh_interval: Option<String>,
    /// Timeout of netlink requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netlink_timeout: Option<String>,
    /// Address of the OpenStack metadata server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_addr: Option<String>,
    /// Port of the OpenStack metadata server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_port: Option<i64>,
    /// OpenStack region the node is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openstack_region: Option<String>,
    /// Prefixes of workload interface names (comma-separated); default `cali`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_prefix: Option<String>,
    /// Interfaces (names or /regex/) Felix ignores, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_exclude: Option<String>,
    /// Whether Felix's iptables rules go first or last; default Insert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_insert_mode: Option<String>,
    /// What happens to workload-to-host traffic; default Drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint_to_host_action: Option<String>,
    /// Verdict of allowed packets in the filter table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_filter_allow_action: Option<String>,
    /// Verdict of allowed packets in the mangle table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_mangle_allow_action: Option<String>,
    /// Verdict of denied packets in the filter table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_filter_deny_action: Option<String>,
    /// Prefix of Log-action log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_prefix: Option<String>,
    /// Log file path; empty disables file logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file_path: Option<String>,
    /// Log level of the log file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_file: Option<String>,
    /// Log level on stderr; default Info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Log level sent to syslog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_sys: Option<String>,
    /// Only debug-log from source files matching this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_debug_filename_regex: Option<String>,
    /// Use IPIP; unset derives it from the IP pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_enabled: Option<bool>,
    /// MTU of the IPIP device; 0 derives it from the host MTU.
    #[serde(default, rename = "ipipMTU", skip_serializing_if = "Option::is_none")]
    pub ipip_mtu: Option<i64>,
    /// Use VXLAN; unset derives it from the IP pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_enabled: Option<bool>,
    /// MTU of the IPv4 VXLAN device; 0 derives it from the host MTU.
    #[serde(default, rename = "vxlanMTU", skip_serializing_if = "Option::is_none")]
    pub vxlan_mtu: Option<i64>,
    /// MTU of the IPv6 VXLAN device; 0 derives it from the host MTU.
    #[serde(
        default,
        rename = "vxlanMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_mtu_v6: Option<i64>,
    /// UDP port of VXLAN; default 4789.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_port: Option<i64>,
    /// VXLAN network identifier; default 4096.
    #[serde(default, rename = "vxlanVNI", skip_serializing_if = "Option::is_none")]
    pub vxlan_vni: Option<i64>,
    /// Let workloads send VXLAN packets.
    #[serde(
        default,
        rename = "allowVXLANPacketsFromWorkloads",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_vxlan_packets_from_workloads: Option<bool>,
    /// Let workloads send IPIP packets.
    #[serde(
        default,
        rename = "allowIPIPPacketsFromWorkloads",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_ipip_packets_from_workloads: Option<bool>,
    /// How often status is reported; default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<String>,
    /// Time-to-live of reported status.
    #[serde(
        default,
        rename = "reportingTTL",
        skip_serializing_if = "Option::is_none"
    )]
    pub reporting_ttl: Option<String>,
    /// Report per-endpoint status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_reporting_enabled: Option<bool>,
    /// Batching delay of endpoint status reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_reporting_delay: Option<String>,
    /// Directory endpoint status files are written under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_status_path_prefix: Option<String>,
    /// Packet mark bits Felix may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iptables_mark_mask: Option<u32>,
    /// Do not drop conntrack-INVALID packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_conntrack_invalid_check: Option<bool>,
    /// Serve the health endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_enabled: Option<bool>,
    /// Address the health endpoint listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_host: Option<String>,
    /// Port of the health endpoint; default 9099.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<i64>,
    /// Per-reporter health timeouts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_timeout_overrides: Vec<HealthTimeoutOverride>,
    /// Serve Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_enabled: Option<bool>,
    /// Address the metrics endpoint listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_host: Option<String>,
    /// Port of the metrics endpoint; default 9091.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_metrics_port: Option<i64>,
    /// Include Go runtime metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_go_metrics_enabled: Option<bool>,
    /// Include process metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_process_metrics_enabled: Option<bool>,
    /// Include WireGuard metrics.
    #[serde(
        default,
        rename = "prometheusWireGuardMetricsEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub prometheus_wireguard_metrics_enabled: Option<bool>,
    /// Inbound host ports never blocked by policy; an empty list means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    /// Outbound host ports never blocked by policy; an empty list means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
    /// Kubernetes NodePort ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_node_port_ranges: Option<Vec<Port>>,
    /// Report anonymous usage statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reporting_enabled: Option<bool>,
    /// Delay before the first usage report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reporting_initial_delay: Option<String>,
    /// Interval of usage reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reporting_interval: Option<String>,
    /// Source ports outgoing NAT may use, e.g. `32768:65535`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_port_range: Option<Port>,
    /// Source address of outgoing NAT instead of the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_address: Option<String>,
    /// Destinations outgoing NAT leaves alone; default IPPoolsOnly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing_exclusions: Option<String>,
    /// Source address of workload routes (IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_route_source_address: Option<String>,
    /// Source address of workload routes (IPv6).
    #[serde(
        default,
        rename = "deviceRouteSourceAddressIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_route_source_address_ipv6: Option<String>,
    /// Route protocol number of workload routes; default 3 (boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_route_protocol: Option<i64>,
    /// Remove routes to workload interfaces that Felix did not add; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_external_routes: Option<bool>,
    /// Which cluster routes Felix programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_cluster_routes: Option<String>,
    /// Whether Felix turns on IP forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forwarding: Option<String>,
    /// Kernel metric of normal IPv4 routes; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_normal_route_priority: Option<i64>,
    /// Kernel metric of preferred IPv4 routes; default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_elevated_route_priority: Option<i64>,
    /// Kernel metric of normal IPv6 routes; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_normal_route_priority: Option<i64>,
    /// Kernel metric of preferred IPv6 routes; default 512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_elevated_route_priority: Option<i64>,
    /// CIDRs of non-cluster hosts allowed to send IPIP/VXLAN traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_nodes_list: Option<Vec<String>>,
    /// Where to write a heap profile on SIGUSR1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_memory_profile_path: Option<String>,
    /// Block rather than drop logs when the log queue is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_disable_log_dropping: Option<bool>,
    /// Testing: hang the calculation graph after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_simulate_calc_graph_hang_after: Option<String>,
    /// Testing: hang the data plane after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_simulate_dataplane_hang_after: Option<String>,
    /// Testing: delay every data plane apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_simulate_dataplane_apply_delay: Option<String>,
    /// Address of the debug (pprof) server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_host: Option<String>,
    /// Port of the debug (pprof) server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_port: Option<i64>,
    /// Deprecated: accelerate sidecar traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar_acceleration_enabled: Option<bool>,
    /// Use XDP for untracked deny rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_enabled: Option<bool>,
    /// Allow generic (driver-less) XDP.
    #[serde(
        default,
        rename = "genericXDPEnabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub generic_xdp_enabled: Option<bool>,
    /// Use nftables instead of iptables; Auto follows kube-proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_mode: Option<String>,
    /// How often nftables rules are re-checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_refresh_interval: Option<String>,
    /// Verdict of allowed packets in the nftables filter chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_filter_allow_action: Option<String>,
    /// Verdict of allowed packets in the nftables mangle chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_mangle_allow_action: Option<String>,
    /// Verdict of denied packets in the nftables filter chains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_filter_deny_action: Option<String>,
    /// Packet mark bits Felix may use in nftables mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_mark_mask: Option<u32>,
    /// Use the eBPF data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_enabled: Option<bool>,
    /// Set kernel.unprivileged_bpf_disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_disable_unprivileged: Option<bool>,
    /// Log level of the BPF programs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_log_level: Option<String>,
    /// Per-interface pcap filters of BPF debug logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_log_filters: Option<BTreeMap<String, String>>,
    /// Which connect-time load balancer events to log.
    #[serde(
        default,
        rename = "bpfCTLBLogFilter",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_ctlb_log_filter: Option<String>,
    /// Regex of host interfaces BPF programs attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_data_iface_pattern: Option<String>,
    /// Regex of layer-3 interfaces BPF programs attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_l3_iface_pattern: Option<String>,
    /// Deprecated: use bpfConnectTimeLoadBalancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_connect_time_load_balancing_enabled: Option<bool>,
    /// Connect-time load balancing of services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_connect_time_load_balancing: Option<String>,
    /// NAT host-networked traffic without connect-time load balancing.
    #[serde(
        default,
        rename = "bpfHostNetworkedNATWithoutCTLB",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_host_networked_nat_without_ctlb: Option<String>,
    /// How external service traffic is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_external_service_mode: Option<String>,
    /// Clients that never get direct server return.
    #[serde(
        default,
        rename = "bpfDSROptoutCIDRs",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_dsr_optout_cidrs: Option<Vec<String>>,
    /// Connmark of traffic from outside to services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_ext_to_service_connmark: Option<i64>,
    /// Remove kube-proxy's iptables rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_iptables_cleanup_enabled: Option<bool>,
    /// Minimum interval of the BPF kube-proxy's syncs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_min_sync_period: Option<String>,
    /// Deprecated: EndpointSlices are always used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_kube_proxy_endpoint_slices_enabled: Option<bool>,
    /// Ports used for service source NAT.
    #[serde(
        default,
        rename = "bpfPSNATPorts",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_psnat_ports: Option<Port>,
    /// Entries of the NAT frontend map.
    #[serde(
        default,
        rename = "bpfMapSizeNATFrontend",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_nat_frontend: Option<i64>,
    /// Entries of the NAT backend map.
    #[serde(
        default,
        rename = "bpfMapSizeNATBackend",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_nat_backend: Option<i64>,
    /// Entries of the NAT affinity map.
    #[serde(
        default,
        rename = "bpfMapSizeNATAffinity",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_nat_affinity: Option<i64>,
    /// Entries of the route map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_route: Option<i64>,
    /// Entries of the conntrack map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_conntrack: Option<i64>,
    /// Per-CPU conntrack map entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_per_cpu_conntrack: Option<i64>,
    /// Whether the conntrack map grows when full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_conntrack_scaling: Option<String>,
    /// Entries of the conntrack cleanup queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_conntrack_cleanup_queue: Option<i64>,
    /// Entries of the IP set map.
    #[serde(
        default,
        rename = "bpfMapSizeIPSets",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_map_size_ip_sets: Option<i64>,
    /// Entries of the interface state map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_map_size_if_state: Option<i64>,
    /// Skip Linux conntrack for traffic BPF handles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_host_conntrack_bypass: Option<bool>,
    /// Reverse path filtering of workload traffic.
    #[serde(
        default,
        rename = "bpfEnforceRPF",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_enforce_rpf: Option<String>,
    /// Record policy debug information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_policy_debug_enabled: Option<bool>,
    /// Interfaces whose packets always go through conntrack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_force_track_packets_from_ifaces: Option<Vec<String>>,
    /// Regex of interfaces GRO is turned off on.
    #[serde(
        default,
        rename = "bpfDisableGROForIfaces",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_disable_gro_for_ifaces: Option<String>,
    /// CIDRs excluded from service NAT.
    #[serde(
        default,
        rename = "bpfExcludeCIDRsFromNAT",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_exclude_cidrs_from_nat: Option<Vec<String>>,
    /// Redirect packets straight to the peer interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_redirect_to_peer: Option<String>,
    /// How BPF programs attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_attach_type: Option<String>,
    /// Collect BPF program profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_profiling: Option<String>,
    /// How stale conntrack entries are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_conntrack_cleanup_mode: Option<String>,
    /// Conntrack timeouts by kind (durations or Auto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_conntrack_timeouts: Option<BTreeMap<String, String>>,
    /// Log level of BPF conntrack cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_conntrack_log_level: Option<String>,
    /// BPF JIT hardening.
    #[serde(
        default,
        rename = "bpfJITHardening",
        skip_serializing_if = "Option::is_none"
    )]
    pub bpf_jit_hardening: Option<String>,
    /// Where workload routes come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_source: Option<String>,
    /// Deprecated: the kernel routing tables Felix may use; use routeTableRanges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_range: Option<RouteTableRange>,
    /// The kernel routing tables Felix may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table_ranges: Option<Vec<RouteTableRange>>,
    /// Do not program routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_sync_disabled: Option<bool>,
    /// How traffic to unused service addresses is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_loop_prevention: Option<String>,
    /// Whether workloads may ask to send from other addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_source_spoofing: Option<String>,
    /// Regex of interfaces whose MTU decides the default tunnel MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_iface_pattern: Option<String>,
    /// Program OpenStack floating IPs.
    #[serde(
        default,
        rename = "floatingIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub floating_ips: Option<String>,
    /// Manage Windows firewall rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_manage_firewall_rules: Option<String>,
    /// Encrypt IPv4 pod traffic with WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_enabled: Option<bool>,
    /// Encrypt IPv6 pod traffic with WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_enabled_v6: Option<bool>,
    /// WireGuard port (IPv4); default 51820.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_listening_port: Option<i64>,
    /// WireGuard port (IPv6); default 51821.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_listening_port_v6: Option<i64>,
    /// Priority of WireGuard's routing rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_routing_rule_priority: Option<i64>,
    /// WireGuard device name (IPv4); default `wireguard.cali`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_interface_name: Option<String>,
    /// WireGuard device name (IPv6); default `wg-v6.cali`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_interface_name_v6: Option<String>,
    /// WireGuard MTU (IPv4); 0 derives it from the host MTU.
    #[serde(
        default,
        rename = "wireguardMTU",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_mtu: Option<i64>,
    /// WireGuard MTU (IPv6); 0 derives it from the host MTU.
    #[serde(
        default,
        rename = "wireguardMTUV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_mtu_v6: Option<i64>,
    /// Also encrypt host-to-host traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_host_encryption_enabled: Option<bool>,
    /// WireGuard persistent keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_keep_alive: Option<String>,
    /// Use threaded NAPI on WireGuard devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_threading_enabled: Option<bool>,
    /// What to do with the EC2 source/destination check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_src_dst_check: Option<String>,
    /// Use AWS secondary IPs for pods.
    #[serde(
        default,
        rename = "awsSecondaryIPSupport",
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_secondary_ip_support: Option<String>,
    /// Priority of AWS secondary IP routing rules.
    #[serde(
        default,
        rename = "awsSecondaryIPRoutingRulePriority",
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_secondary_ip_routing_rule_priority: Option<i64>,
    /// Timeout of AWS API calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_request_timeout: Option<String>,
    /// Only NAT outgoing traffic leaving this interface (glob).
    #[serde(
        default,
        rename = "iptablesNATOutgoingInterfaceFilter",
        skip_serializing_if = "Option::is_none"
    )]
    pub iptables_nat_outgoing_interface_filter: Option<String>,
    /// Directory of the policy sync API socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_sync_path_prefix: Option<String>,
    /// Where the cgroup v2 hierarchy is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_v2_path: Option<String>,
    /// Go GC percentage (GOGC); -1 disables the collector.
    #[serde(
        default,
        rename = "goGCThreshold",
        skip_serializing_if = "Option::is_none"
    )]
    pub go_gc_threshold: Option<i64>,
    /// Go soft memory limit in MB; -1 disables it.
    #[serde(
        default,
        rename = "goMemoryLimitMB",
        skip_serializing_if = "Option::is_none"
    )]
    pub go_memory_limit_mb: Option<i64>,
    /// Go GOMAXPROCS; -1 leaves the runtime default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_max_procs: Option<i64>,
    /// What Drop means (for debugging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_action_override: Option<String>,
    /// Rate limit of Log-action logs, e.g. `10/second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_action_rate_limit: Option<String>,
    /// Burst of Log-action logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_action_rate_limit_burst: Option<i64>,
    /// How often flow logs are flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_logs_flush_interval: Option<String>,
    /// Trace the flow log collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_logs_collector_debug_trace: Option<bool>,
    /// Address of the flow aggregator flow logs go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_logs_goldmane_server: Option<String>,
}

fn check_mtu(path: &str, mtu: Option<i64>, c: &mut Checker) {
    if let Some(m) = mtu
        && m != 0
        && !(68..=65535).contains(&m)
    {
        c.err(
            path,
            format!("{m} is not an MTU (0 for automatic, or 68..=65535)"),
        );
    }
}

fn check_proto_ports(path: &str, ports: Option<&[ProtoPort]>, c: &mut Checker) {
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        if !["tcp", "udp", "sctp"]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&p.protocol))
        {
            c.err(
                format!("{path}[{i}].protocol"),
                format!("{:?} is not tcp, udp or sctp", p.protocol),
            );
        }
        if let Some(n) = p.net.as_ref().filter(|n| !n.is_empty())
            && crate::net::parse_net(n).is_none()
        {
            c.err(format!("{path}[{i}].net"), format!("{n:?} is not a CIDR"));
        }
    }
}

fn check_port_ranges(path: &str, ports: Option<&[Port]>, c: &mut Checker) {
    for (i, p) in ports.unwrap_or_default().iter().enumerate() {
        if matches!(p, Port::Named(_)) {
            c.err(
                format!("{path}[{i}]"),
                format!("{p} is not a port number or range"),
            );
        }
    }
}

fn check_route_tables(path: &str, ranges: &[RouteTableRange], c: &mut Checker) {
    let (lo, hi) = (1, i64::from(u32::MAX));
    for (i, r) in ranges.iter().enumerate() {
        if r.min > r.max || r.min < lo || r.max > hi {
            c.err(
                format!("{path}[{i}]"),
                format!("{}-{} is not a range within {lo}..={hi}", r.min, r.max),
            );
        }
    }
}

fn check_health_overrides(path: &str, overrides: &[HealthTimeoutOverride], c: &mut Checker) {
    for (i, o) in overrides.iter().enumerate() {
        if o.name.is_empty() {
            c.err(format!("{path}[{i}].name"), "is required");
        }
        if let Err(e) = parse_duration(&o.timeout) {
            c.err(format!("{path}[{i}].timeout"), e);
        }
    }
}

impl FelixConfigurationSpec {
    /// Prefixes of workload interface names.
    pub fn effective_interface_prefixes(&self) -> Vec<String> {
        match self.interface_prefix.as_deref() {
            Some(p) if !p.is_empty() => p.split(',').map(|s| s.trim().to_string()).collect(),
            _ => vec![DEFAULT_INTERFACE_PREFIX.to_string()],
        }
    }

    /// The VXLAN UDP port in effect.
    pub fn effective_vxlan_port(&self) -> u16 {
        self.vxlan_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_VXLAN_PORT)
    }

    /// The VXLAN VNI in effect.
    pub fn effective_vxlan_vni(&self) -> u32 {
        self.vxlan_vni
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(DEFAULT_VXLAN_VNI)
    }

    /// The route protocol of workload routes in effect.
    pub fn effective_device_route_protocol(&self) -> u8 {
        self.device_route_protocol
            .and_then(|p| u8::try_from(p).ok())
            .unwrap_or(DEFAULT_DEVICE_ROUTE_PROTOCOL)
    }

    /// Whether routes Felix did not add are removed (default true).
    pub fn effective_remove_external_routes(&self) -> bool {
        self.remove_external_routes.unwrap_or(true)
    }

    /// The action for workload-to-host traffic in effect: Drop, Return or Accept.
    pub fn effective_default_endpoint_to_host_action(&self) -> String {
        normalise(
            self.default_endpoint_to_host_action.as_deref(),
            &["Drop", "Return", "Accept"],
        )
        .unwrap_or("Drop")
        .to_string()
    }

    /// The route refresh interval in effect (default 90s).
    pub fn effective_route_refresh_interval(&self) -> Duration {
        self.route_refresh_interval
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
            .unwrap_or(Duration::from_secs(90))
    }

    /// Inbound failsafe ports in effect.
    pub fn effective_failsafe_inbound(&self) -> Vec<ProtoPort> {
        failsafe(
            self.failsafe_inbound_host_ports.as_deref(),
            &DEFAULT_FAILSAFE_INBOUND,
        )
    }

    /// Outbound failsafe ports in effect.
    pub fn effective_failsafe_outbound(&self) -> Vec<ProtoPort> {
        failsafe(
            self.failsafe_outbound_host_ports.as_deref(),
            &DEFAULT_FAILSAFE_OUTBOUND,
        )
    }

    pub(crate) fn check(&self, c: &mut Checker) {
        c.duration(
            "spec.dataplaneWatchdogTimeout",
            self.dataplane_watchdog_timeout.as_ref(),
        );
        c.duration(
            "spec.routeRefreshInterval",
            self.route_refresh_interval.as_ref(),
        );
        c.duration(
            "spec.interfaceRefreshInterval",
            self.interface_refresh_interval.as_ref(),
        );
        c.duration(
            "spec.iptablesRefreshInterval",
            self.iptables_refresh_interval.as_ref(),
        );
        c.duration(
            "spec.iptablesPostWriteCheckInterval",
            self.iptables_post_write_check_interval.as_ref(),
        );
        c.duration(
            "spec.iptablesLockTimeout",
            self.iptables_lock_timeout.as_ref(),
        );
        c.duration(
            "spec.iptablesLockProbeInterval",
            self.iptables_lock_probe_interval.as_ref(),
        );
        c.duration(
            "spec.ipsetsRefreshInterval",
            self.ipsets_refresh_interval.as_ref(),
        );
        c.one_of_ci(
            "spec.iptablesBackend",
            self.iptables_backend.as_ref(),
            &["Legacy", "NFT", "Auto"],
        );
        c.duration(
            "spec.xdpRefreshInterval",
            self.xdp_refresh_interval.as_ref(),
        );
        c.duration("spec.netlinkTimeout", self.netlink_timeout.as_ref());
        c.range("spec.metadataPort", self.metadata_port, 1, 65535);
        c.one_of_ci(
            "spec.chainInsertMode",
            self.chain_insert_mode.as_ref(),
            &["Insert", "Append"],
        );
        c.one_of_ci(
            "spec.defaultEndpointToHostAction",
            self.default_endpoint_to_host_action.as_ref(),
            &["Drop", "Return", "Accept"],
        );
        c.one_of_ci(
            "spec.iptablesFilterAllowAction",
            self.iptables_filter_allow_action.as_ref(),
            &["Accept", "Return"],
        );
        c.one_of_ci(
            "spec.iptablesMangleAllowAction",
            self.iptables_mangle_allow_action.as_ref(),
            &["Accept", "Return"],
        );
        c.one_of_ci(
            "spec.iptablesFilterDenyAction",
            self.iptables_filter_deny_action.as_ref(),
            &["Drop", "Reject"],
        );
        c.one_of_ci(
            "spec.logSeverityFile",
            self.log_severity_file.as_ref(),
            &[
                "Trace", "Debug", "Info", "Warning", "Error", "Fatal", "Panic",
            ],
        );
        c.one_of_ci(
            "spec.logSeverityScreen",
            self.log_severity_screen.as_ref(),
            &[
                "Trace", "Debug", "Info", "Warning", "Error", "Fatal", "Panic",
            ],
        );
        c.one_of_ci(
            "spec.logSeveritySys",
            self.log_severity_sys.as_ref(),
            &[
                "Trace", "Debug", "Info", "Warning", "Error", "Fatal", "Panic",
            ],
        );
        check_mtu("spec.ipipMTU", self.ipip_mtu, c);
        check_mtu("spec.vxlanMTU", self.vxlan_mtu, c);
        check_mtu("spec.vxlanMTUV6", self.vxlan_mtu_v6, c);
        c.range("spec.vxlanPort", self.vxlan_port, 1, 65535);
        c.range("spec.vxlanVNI", self.vxlan_vni, 1, 16_777_215);
        c.duration("spec.reportingInterval", self.reporting_interval.as_ref());
        c.duration("spec.reportingTTL", self.reporting_ttl.as_ref());
        c.duration(
            "spec.endpointReportingDelay",
            self.endpoint_reporting_delay.as_ref(),
        );
        c.range("spec.healthPort", self.health_port, 1, 65535);
        check_health_overrides(
            "spec.healthTimeoutOverrides",
            &self.health_timeout_overrides,
            c,
        );
        c.range(
            "spec.prometheusMetricsPort",
            self.prometheus_metrics_port,
            1,
            65535,
        );
        check_proto_ports(
            "spec.failsafeInboundHostPorts",
            self.failsafe_inbound_host_ports.as_deref(),
            c,
        );
        check_proto_ports(
            "spec.failsafeOutboundHostPorts",
            self.failsafe_outbound_host_ports.as_deref(),
            c,
        );
        check_port_ranges(
            "spec.kubeNodePortRanges",
            self.kube_node_port_ranges.as_deref(),
            c,
        );
        c.duration(
            "spec.usageReportingInitialDelay",
            self.usage_reporting_initial_delay.as_ref(),
        );
        c.duration(
            "spec.usageReportingInterval",
            self.usage_reporting_interval.as_ref(),
        );
        check_port_ranges("spec.natPortRange", Some(self.nat_port_range.as_slice()), c);
        c.ip(
            "spec.natOutgoingAddress",
            self.nat_outgoing_address.as_ref(),
            Family::Any,
        );
        c.one_of_ci(
            "spec.natOutgoingExclusions",
            self.nat_outgoing_exclusions.as_ref(),
            &["IPPoolsOnly", "IPPoolsAndHostIPs"],
        );
        c.ip(
            "spec.deviceRouteSourceAddress",
            self.device_route_source_address.as_ref(),
            Family::V4,
        );
        c.ip(
            "spec.deviceRouteSourceAddressIPv6",
            self.device_route_source_address_ipv6.as_ref(),
            Family::V6,
        );
        c.range(
            "spec.deviceRouteProtocol",
            self.device_route_protocol,
            0,
            255,
        );
        c.one_of_ci(
            "spec.programClusterRoutes",
            self.program_cluster_routes.as_ref(),
            &[
                "Enabled",
                "Disabled",
                "EnabledIPIPOnly",
                "EnabledNoEncapOnly",
            ],
        );
        c.one_of_ci(
            "spec.ipForwarding",
            self.ip_forwarding.as_ref(),
            &["Enabled", "Disabled"],
        );
        c.range(
            "spec.ipv4NormalRoutePriority",
            self.ipv4_normal_route_priority,
            1,
            2_147_483_646,
        );
        c.range(
            "spec.ipv4ElevatedRoutePriority",
            self.ipv4_elevated_route_priority,
            1,
            2_147_483_646,
        );
        c.range(
            "spec.ipv6NormalRoutePriority",
            self.ipv6_normal_route_priority,
            1,
            2_147_483_646,
        );
        c.range(
            "spec.ipv6ElevatedRoutePriority",
            self.ipv6_elevated_route_priority,
            1,
            2_147_483_646,
        );
        c.duration(
            "spec.debugSimulateCalcGraphHangAfter",
            self.debug_simulate_calc_graph_hang_after.as_ref(),
        );
        c.duration(
            "spec.debugSimulateDataplaneHangAfter",
            self.debug_simulate_dataplane_hang_after.as_ref(),
        );
        c.duration(
            "spec.debugSimulateDataplaneApplyDelay",
            self.debug_simulate_dataplane_apply_delay.as_ref(),
        );
        c.range("spec.debugPort", self.debug_port, 1, 65535);
        c.one_of_ci(
            "spec.nftablesMode",
            self.nftables_mode.as_ref(),
            &["Disabled", "Enabled", "Auto"],
        );
        c.duration(
            "spec.nftablesRefreshInterval",
            self.nftables_refresh_interval.as_ref(),
        );
        c.one_of_ci(
            "spec.nftablesFilterAllowAction",
            self.nftables_filter_allow_action.as_ref(),
            &["Accept", "Return"],
        );
        c.one_of_ci(
            "spec.nftablesMangleAllowAction",
            self.nftables_mangle_allow_action.as_ref(),
            &["Accept", "Return"],
        );
        c.one_of_ci(
            "spec.nftablesFilterDenyAction",
            self.nftables_filter_deny_action.as_ref(),
            &["Drop", "Reject"],
        );
        c.one_of_ci(
            "spec.bpfLogLevel",
            self.bpf_log_level.as_ref(),
            &["Off", "Info", "Debug"],
        );
        c.one_of_ci(
            "spec.bpfConnectTimeLoadBalancing",
            self.bpf_connect_time_load_balancing.as_ref(),
            &["TCP", "Enabled", "Disabled"],
        );
        c.one_of_ci(
            "spec.bpfHostNetworkedNATWithoutCTLB",
            self.bpf_host_networked_nat_without_ctlb.as_ref(),
            &["Enabled", "Disabled"],
        );
        c.one_of_ci(
            "spec.bpfExternalServiceMode",
            self.bpf_external_service_mode.as_ref(),
            &["Tunnel", "DSR"],
        );
        c.duration(
            "spec.bpfKubeProxyMinSyncPeriod",
            self.bpf_kube_proxy_min_sync_period.as_ref(),
        );
        check_port_ranges(
            "spec.bpfPSNATPorts",
            Some(self.bpf_psnat_ports.as_slice()),
            c,
        );
        c.range(
            "spec.bpfMapSizeNATFrontend",
            self.bpf_map_size_nat_frontend,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizeNATBackend",
            self.bpf_map_size_nat_backend,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizeNATAffinity",
            self.bpf_map_size_nat_affinity,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizeRoute",
            self.bpf_map_size_route,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizeConntrack",
            self.bpf_map_size_conntrack,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizePerCpuConntrack",
            self.bpf_map_size_per_cpu_conntrack,
            1,
            i64::from(u32::MAX),
        );
        c.one_of_ci(
            "spec.bpfMapSizeConntrackScaling",
            self.bpf_map_size_conntrack_scaling.as_ref(),
            &["Disabled", "DoubleIfFull"],
        );
        c.range(
            "spec.bpfMapSizeConntrackCleanupQueue",
            self.bpf_map_size_conntrack_cleanup_queue,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizeIPSets",
            self.bpf_map_size_ip_sets,
            1,
            i64::from(u32::MAX),
        );
        c.range(
            "spec.bpfMapSizeIfState",
            self.bpf_map_size_if_state,
            1,
            i64::from(u32::MAX),
        );
        c.one_of_ci(
            "spec.bpfEnforceRPF",
            self.bpf_enforce_rpf.as_ref(),
            &["Disabled", "Strict", "Loose"],
        );
        c.one_of_ci(
            "spec.bpfRedirectToPeer",
            self.bpf_redirect_to_peer.as_ref(),
            &["Disabled", "Enabled", "L2Only"],
        );
        c.one_of_ci(
            "spec.bpfAttachType",
            self.bpf_attach_type.as_ref(),
            &["TC", "TCX"],
        );
        c.one_of_ci(
            "spec.bpfProfiling",
            self.bpf_profiling.as_ref(),
            &["Enabled", "Disabled"],
        );
        c.one_of_ci(
            "spec.bpfConntrackCleanupMode",
            self.bpf_conntrack_cleanup_mode.as_ref(),
            &["Auto", "Userspace", "BPFProgram"],
        );
        c.one_of_ci(
            "spec.bpfConntrackLogLevel",
            self.bpf_conntrack_log_level.as_ref(),
            &["Off", "Debug"],
        );
        c.one_of_ci(
            "spec.bpfJITHardening",
            self.bpf_jit_hardening.as_ref(),
            &["Auto", "Strict"],
        );
        c.one_of_ci(
            "spec.routeSource",
            self.route_source.as_ref(),
            &["CalicoIPAM", "WorkloadIPs"],
        );
        if let Some(r) = &self.route_table_range
            && (r.min > r.max || r.min < 1 || r.max > 250)
        {
            c.err(
                "spec.routeTableRange",
                format!("{}-{} is not a range within 1..=250", r.min, r.max),
            );
        }
        check_route_tables(
            "spec.routeTableRanges",
            self.route_table_ranges.as_deref().unwrap_or_default(),
            c,
        );
        c.one_of_ci(
            "spec.serviceLoopPrevention",
            self.service_loop_prevention.as_ref(),
            &["Drop", "Reject", "Disabled"],
        );
        c.one_of_ci(
            "spec.workloadSourceSpoofing",
            self.workload_source_spoofing.as_ref(),
            &["Disabled", "Any"],
        );
        c.one_of_ci(
            "spec.floatingIPs",
            self.floating_ips.as_ref(),
            &["Enabled", "Disabled"],
        );
        c.one_of_ci(
            "spec.windowsManageFirewallRules",
            self.windows_manage_firewall_rules.as_ref(),
            &["Enabled", "Disabled"],
        );
        c.range(
            "spec.wireguardListeningPort",
            self.wireguard_listening_port,
            1,
            65535,
        );
        c.range(
            "spec.wireguardListeningPortV6",
            self.wireguard_listening_port_v6,
            1,
            65535,
        );
        check_mtu("spec.wireguardMTU", self.wireguard_mtu, c);
        check_mtu("spec.wireguardMTUV6", self.wireguard_mtu_v6, c);
        c.duration(
            "spec.wireguardKeepAlive",
            self.wireguard_keep_alive.as_ref(),
        );
        c.one_of_ci(
            "spec.awsSrcDstCheck",
            self.aws_src_dst_check.as_ref(),
            &["DoNothing", "Enable", "Disable"],
        );
        c.one_of_ci(
            "spec.awsSecondaryIPSupport",
            self.aws_secondary_ip_support.as_ref(),
            &["Enabled", "EnabledENIPerWorkload", "Disabled"],
        );
        c.duration("spec.awsRequestTimeout", self.aws_request_timeout.as_ref());
        c.one_of_ci(
            "spec.dropActionOverride",
            self.drop_action_override.as_ref(),
            &["Drop", "Accept", "LogAndDrop", "LogAndAccept"],
        );
        c.duration(
            "spec.flowLogsFlushInterval",
            self.flow_logs_flush_interval.as_ref(),
        );

        if let Some(p) = &self.interface_prefix {
            let ok = p.split(',').all(|part| {
                !part.is_empty()
                    && part.len() <= 15
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            });
            if !ok {
                c.err(
                    "spec.interfacePrefix",
                    format!("{p:?} is not a comma-separated list of interface name prefixes"),
                );
            }
        }
        if let Some(Port::Number(p)) = &self.nat_port_range {
            c.err(
                "spec.natPortRange",
                format!("{p} is a single port; give a range lo:hi"),
            );
        }
        for (field, mask) in [
            ("iptablesMarkMask", self.iptables_mark_mask),
            ("nftablesMarkMask", self.nftables_mark_mask),
        ] {
            if mask == Some(0) {
                c.err(
                    format!("spec.{field}"),
                    "must leave Felix at least one mark bit",
                );
            }
        }
        for (field, list) in [
            ("bpfDSROptoutCIDRs", &self.bpf_dsr_optout_cidrs),
            ("bpfExcludeCIDRsFromNAT", &self.bpf_exclude_cidrs_from_nat),
            ("externalNodesList", &self.external_nodes_list),
        ] {
            for (i, n) in list.as_deref().unwrap_or_default().iter().enumerate() {
                if crate::net::parse_net(n).is_none() {
                    c.err(
                        format!("spec.{field}[{i}]"),
                        format!("{n:?} is not an IP address or CIDR"),
                    );
                }
            }
        }
        if let Some(t) = &self.bpf_conntrack_timeouts {
            for (k, v) in t {
                if !v.eq_ignore_ascii_case("auto") && parse_duration(v).is_err() {
                    c.err(
                        format!("spec.bpfConntrackTimeouts.{k}"),
                        format!("{v:?} is not a duration or Auto"),
                    );
                }
            }
        }
    }
}

fn normalise<'a>(value: Option<&str>, allowed: &[&'a str]) -> Option<&'a str> {
    let v = value?;
    allowed.iter().copied().find(|a| a.eq_ignore_ascii_case(v))
}

fn failsafe(set: Option<&[ProtoPort]>, default: &[(&str, u16)]) -> Vec<ProtoPort> {
    match set {
        Some(ports) => ports.to_vec(),
        None => default
            .iter()
            .map(|(protocol, port)| ProtoPort {
                protocol: (*protocol).to_string(),
                port: *port,
                net: None,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: serde_json::Value) -> Vec<String> {
        let spec: FelixConfigurationSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn calico_names_round_trip() {
        let v = json!({
            "ipipEnabled": true, "ipipMTU": 1440, "vxlanMTUV6": 1430, "vxlanVNI": 4096,
            "bpfDSROptoutCIDRs": ["10.0.0.0/8"], "wireguardMTUV6": 1400,
            "prometheusWireGuardMetricsEnabled": true, "floatingIPs": "Disabled",
            "deviceRouteSourceAddressIPv6": "fd00::1", "externalNodesList": ["192.0.2.0/24"],
            "failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}],
            "routeTableRanges": [{"min": 1, "max": 250}], "natPortRange": "32768:65535",
            "logSeverityScreen": "Info", "chainInsertMode": "insert", "reportingInterval": "30s",
            "iptablesMarkMask": 4294901760u32, "healthTimeoutOverrides": [{"name": "InternalDataplaneMainLoop", "timeout": "90s"}],
        });
        assert!(problems(v.clone()).is_empty(), "{:?}", problems(v.clone()));
        let spec: FelixConfigurationSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), v);
        assert!(
            serde_json::from_value::<FelixConfigurationSpec>(json!({"ipipMtu": 1440})).is_err()
        );
    }

    #[test]
    fn defaults() {
        let spec = FelixConfigurationSpec::default();
        assert_eq!(spec.effective_interface_prefixes(), ["cali"]);
        assert_eq!(spec.effective_vxlan_port(), 4789);
        assert_eq!(spec.effective_vxlan_vni(), 4096);
        assert_eq!(spec.effective_device_route_protocol(), 3);
        assert!(spec.effective_remove_external_routes());
        assert_eq!(spec.effective_default_endpoint_to_host_action(), "Drop");
        assert_eq!(
            spec.effective_route_refresh_interval(),
            Duration::from_secs(90)
        );
        assert_eq!(spec.effective_failsafe_inbound().len(), 9);
        let spec: FelixConfigurationSpec = serde_json::from_value(
            json!({"failsafeInboundHostPorts": [], "defaultEndpointToHostAction": "ACCEPT"}),
        )
        .unwrap();
        assert!(
            spec.effective_failsafe_inbound().is_empty(),
            "explicitly empty means none"
        );
        assert_eq!(spec.effective_default_endpoint_to_host_action(), "Accept");
    }

    #[test]
    fn rules() {
        let e = problems(json!({"chainInsertMode": "middle"}));
        assert!(
            e[0].starts_with("spec.chainInsertMode: \"middle\" is not one of Insert, Append"),
            "{e:?}"
        );
        let e = problems(json!({"vxlanPort": 0, "vxlanVNI": 16777216, "ipipMTU": 20}));
        assert!(e.iter().any(|e| e.starts_with("spec.vxlanPort:")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("spec.vxlanVNI:")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("spec.ipipMTU:")), "{e:?}");
        let e = problems(json!({"routeRefreshInterval": "often"}));
        assert!(e[0].starts_with("spec.routeRefreshInterval:"), "{e:?}");
        let e = problems(json!({"failsafeInboundHostPorts": [{"protocol": "icmp", "port": 1}]}));
        assert!(
            e[0].starts_with("spec.failsafeInboundHostPorts[0].protocol:"),
            "{e:?}"
        );
        let e = problems(json!({"routeTableRange": {"min": 10, "max": 300}}));
        assert!(e[0].starts_with("spec.routeTableRange: 10-300"), "{e:?}");
        let e =
            problems(json!({"natOutgoingAddress": "nope", "deviceRouteSourceAddress": "fd00::1"}));
        assert!(
            e.iter().any(|e| e.starts_with("spec.natOutgoingAddress:")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.deviceRouteSourceAddress:")),
            "{e:?}"
        );
        let e = problems(json!({"interfacePrefix": "cali,tap,", "natPortRange": 80}));
        assert!(
            e.iter().any(|e| e.starts_with("spec.interfacePrefix:")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("spec.natPortRange:")),
            "{e:?}"
        );
        let e = problems(json!({"kubeNodePortRanges": ["http"]}));
        assert!(e[0].starts_with("spec.kubeNodePortRanges[0]:"), "{e:?}");
    }
}
