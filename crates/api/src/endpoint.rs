//! Endpoints policy applies to: WorkloadEndpoint (a pod's or VM's interface, written
//! by the CNI plugin) and HostEndpoint (a host interface), with their addresses,
//! profiles, named ports and, for workloads, NAT mappings and QoS limits.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::net::Protocol;
use crate::validate::{Checker, Family};

/// A named port on a host endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    /// The name rules refer to.
    #[serde(default)]
    pub name: String,
    /// TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The port number.
    #[serde(default)]
    pub port: u16,
}

/// A named port on a workload endpoint, optionally published on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpointPort {
    /// The name rules refer to.
    #[serde(default)]
    pub name: String,
    /// TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The port number.
    #[serde(default)]
    pub port: u16,
    /// Host port the workload port is published on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Host address the host port binds.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// A 1:1 NAT from an external address to one of the workload's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPNAT {
    /// The workload's address.
    #[serde(default, rename = "internalIP")]
    pub internal_ip: String,
    /// The address outsiders use.
    #[serde(default, rename = "externalIP")]
    pub external_ip: String,
}

/// Bandwidth, packet-rate and connection limits of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QoSControls {
    /// Ingress bandwidth, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_bandwidth: Option<i64>,
    /// Egress bandwidth, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_bandwidth: Option<i64>,
    /// Ingress burst, bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<i64>,
    /// Egress burst, bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<i64>,
    /// Ingress peak rate, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_peakrate: Option<i64>,
    /// Egress peak rate, bits/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_peakrate: Option<i64>,
    /// Ingress minimum burst, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_minburst: Option<i64>,
    /// Egress minimum burst, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_minburst: Option<i64>,
    /// Ingress packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_packet_rate: Option<i64>,
    /// Egress packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_packet_rate: Option<i64>,
    /// Ingress packet burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_packet_burst: Option<i64>,
    /// Egress packet burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_packet_burst: Option<i64>,
    /// Most concurrent ingress connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_max_connections: Option<i64>,
    /// Most concurrent egress connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_max_connections: Option<i64>,
}

impl QoSControls {
    fn check(&self, c: &mut Checker) {
        let fields = [
            ("ingressBandwidth", self.ingress_bandwidth),
            ("egressBandwidth", self.egress_bandwidth),
            ("ingressBurst", self.ingress_burst),
            ("egressBurst", self.egress_burst),
            ("ingressPeakrate", self.ingress_peakrate),
            ("egressPeakrate", self.egress_peakrate),
            ("ingressMinburst", self.ingress_minburst),
            ("egressMinburst", self.egress_minburst),
            ("ingressPacketRate", self.ingress_packet_rate),
            ("egressPacketRate", self.egress_packet_rate),
            ("ingressPacketBurst", self.ingress_packet_burst),
            ("egressPacketBurst", self.egress_packet_burst),
            ("ingressMaxConnections", self.ingress_max_connections),
            ("egressMaxConnections", self.egress_max_connections),
        ];
        for (field, v) in fields {
            c.range(&format!("spec.qosControls.{field}"), v, 0, i64::MAX);
        }
        for (dir, peak, bw) in [
            ("ingress", self.ingress_peakrate, self.ingress_bandwidth),
            ("egress", self.egress_peakrate, self.egress_bandwidth),
        ] {
            if let (Some(p), Some(b)) = (peak, bw)
                && p < b
            {
                c.err(
                    format!("spec.qosControls.{dir}Peakrate"),
                    format!("{p} is below the {dir} bandwidth {b}"),
                );
            }
        }
    }
}

/// `spec` of a WorkloadEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpointSpec {
    /// The orchestrator, e.g. `k8s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<String>,
    /// The workload's name (non-Kubernetes orchestrators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The node the workload runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The container's ID.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// The pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The interface inside the workload, e.g. `eth0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// The workload's addresses, e.g. `10.0.0.5/32`.
    #[serde(
        default,
        with = "crate::net::vec_net",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_networks: Vec<IpNet>,
    /// 1:1 NATs to the workload's addresses.
    #[serde(default, rename = "ipNATs", skip_serializing_if = "Vec::is_empty")]
    pub ip_nats: Vec<IPNAT>,
    /// IPv4 gateway the workload uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_gateway: Option<String>,
    /// IPv6 gateway the workload uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_gateway: Option<String>,
    /// Profiles whose rules and labels apply, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// The host side of the veth, e.g. `cali1234567890a`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// The workload interface's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WorkloadEndpointPort>,
    /// Source prefixes the workload may send from besides its own addresses.
    #[serde(
        default,
        with = "crate::net::vec_net",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_spoofed_source_prefixes: Vec<IpNet>,
    /// QoS limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_controls: Option<QoSControls>,
    /// AWS elastic IPs the workload may use.
    #[serde(
        default,
        rename = "awsElasticIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub aws_elastic_ips: Vec<String>,
}

fn check_port_protocol(path: &str, protocol: Option<&Protocol>, c: &mut Checker) {
    match protocol {
        None => c.err(format!("{path}.protocol"), "is required (TCP, UDP or SCTP)"),
        Some(p) if !p.supports_ports() => c.err(
            format!("{path}.protocol"),
            format!("{p} is not TCP, UDP or SCTP"),
        ),
        Some(_) => {}
    }
}

fn check_port_name(path: &str, name: &str, c: &mut Checker) {
    if name.is_empty() {
        c.err(format!("{path}.name"), "is required");
    } else if name
        .parse::<crate::net::Port>()
        .map_or(true, |p| !matches!(p, crate::net::Port::Named(_)))
    {
        c.err(
            format!("{path}.name"),
            format!("{name:?} is not a port name (up to 15 lower-case letters, digits and '-')"),
        );
    }
}

/// Calico's name for a workload endpoint: `<node>-<orchestrator>-<workload>-<endpoint>`
/// with every `-` inside a part doubled, e.g. `node1-k8s-my--pod-eth0` for pod
/// `my-pod` on `node1`. For Kubernetes the workload part is the pod's name.
pub fn workload_endpoint_name(
    node: &str,
    orchestrator: &str,
    workload: &str,
    endpoint: &str,
) -> String {
    [node, orchestrator, workload, endpoint]
        .iter()
        .map(|part| part.replace('-', "--"))
        .collect::<Vec<_>>()
        .join("-")
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

impl WorkloadEndpointSpec {
    /// The name Calico derives from node, orchestrator, pod (or workload) and
    /// endpoint, when all are set.
    pub fn expected_name(&self) -> Option<String> {
        let orchestrator = present(&self.orchestrator)?;
        let workload = if orchestrator == "k8s" {
            present(&self.pod)?
        } else {
            present(&self.workload)?
        };
        Some(workload_endpoint_name(
            present(&self.node)?,
            orchestrator,
            workload,
            present(&self.endpoint)?,
        ))
    }

    pub(crate) fn check(&self, meta: &ObjectMeta, c: &mut Checker) {
        if let Some(want) = self.expected_name()
            && !meta.name.is_empty()
            && meta.name != want
        {
            c.err(
                "metadata.name",
                format!(
                    "{:?} does not match the endpoint's node, orchestrator, workload and endpoint; Calico names it {want:?}",
                    meta.name
                ),
            );
        }
        for (field, v) in [
            ("node", &self.node),
            ("pod", &self.pod),
            ("endpoint", &self.endpoint),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                c.subdomain(&format!("spec.{field}"), v);
            }
        }
        c.interface_name("spec.interfaceName", self.interface_name.as_ref(), false);
        c.mac("spec.mac", self.mac.as_ref());
        c.ip("spec.ipv4Gateway", self.ipv4_gateway.as_ref(), Family::V4);
        c.ip("spec.ipv6Gateway", self.ipv6_gateway.as_ref(), Family::V6);
        for (i, n) in self.ip_nats.iter().enumerate() {
            let path = format!("spec.ipNATs[{i}]");
            match n.internal_ip.parse::<IpAddr>() {
                Err(_) => c.err(
                    format!("{path}.internalIP"),
                    format!("{:?} is not an IP address", n.internal_ip),
                ),
                Ok(ip) => {
                    if !self.ip_networks.iter().any(|net| net.contains(&ip)) {
                        c.err(
                            format!("{path}.internalIP"),
                            format!("{ip} is not one of the endpoint's ipNetworks"),
                        );
                    }
                }
            }
            c.ip(
                &format!("{path}.externalIP"),
                Some(&n.external_ip),
                Family::Any,
            );
            if n.external_ip.is_empty() {
                c.err(format!("{path}.externalIP"), "is required");
            }
        }
        for (i, p) in self.profiles.iter().enumerate() {
            if p.is_empty() {
                c.err(format!("spec.profiles[{i}]"), "is empty");
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            check_port_name(&path, &p.name, c);
            check_port_protocol(&path, p.protocol.as_ref(), c);
            if p.port == 0 {
                c.err(format!("{path}.port"), "is required (1..=65535)");
            }
            if p.host_port == Some(0) {
                c.err(format!("{path}.hostPort"), "0 is not a port (1..=65535)");
            }
            c.ip(&format!("{path}.hostIP"), p.host_ip.as_ref(), Family::Any);
        }
        if let Some(q) = &self.qos_controls {
            q.check(c);
        }
        for (i, ip) in self.aws_elastic_ips.iter().enumerate() {
            c.ip(&format!("spec.awsElasticIPs[{i}]"), Some(ip), Family::V4);
        }
    }
}

/// `spec` of a HostEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpointSpec {
    /// The node the interface is on; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The interface, or `*` for all of the node's interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// Addresses the interface is expected to have.
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<String>,
    /// Profiles whose rules and labels apply, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

impl HostEndpointSpec {
    pub(crate) fn check(&self, c: &mut Checker) {
        match self.node.as_ref().filter(|n| !n.is_empty()) {
            None => c.err("spec.node", "is required"),
            Some(n) => c.subdomain("spec.node", n),
        }
        let iface = self.interface_name.as_ref().filter(|i| !i.is_empty());
        if iface.is_none() && self.expected_ips.is_empty() {
            c.err(
                "spec.interfaceName",
                "set interfaceName, expectedIPs, or both",
            );
        }
        c.interface_name("spec.interfaceName", iface, true);
        for (i, ip) in self.expected_ips.iter().enumerate() {
            c.ip(&format!("spec.expectedIPs[{i}]"), Some(ip), Family::Any);
            if ip.is_empty() {
                c.err(format!("spec.expectedIPs[{i}]"), "is empty");
            }
        }
        for (i, p) in self.profiles.iter().enumerate() {
            if p.is_empty() {
                c.err(format!("spec.profiles[{i}]"), "is empty");
            }
        }
        for (i, p) in self.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            check_port_name(&path, &p.name, c);
            check_port_protocol(&path, p.protocol.as_ref(), c);
            if p.port == 0 {
                c.err(format!("{path}.port"), "is required (1..=65535)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wep(v: serde_json::Value) -> Vec<String> {
        let spec: WorkloadEndpointSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&ObjectMeta::named("node1-k8s-mypod--1-eth0", None), &mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    fn hep(v: serde_json::Value) -> Vec<String> {
        let spec: HostEndpointSpec = serde_json::from_value(v).unwrap();
        let mut c = Checker::default();
        spec.check(&mut c);
        c.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn workload_endpoint() {
        let good = json!({
            "orchestrator": "k8s", "node": "node1", "pod": "mypod-1", "endpoint": "eth0",
            "containerID": "abc123", "interfaceName": "cali0ef24ba8c3e",
            "mac": "ca:fe:1d:52:bb:e9", "ipNetworks": ["192.168.0.5/32"],
            "ipNATs": [{"internalIP": "192.168.0.5", "externalIP": "203.0.113.5"}],
            "profiles": ["kns.default", "ksa.default.default"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "hostPort": 80}],
            "serviceAccountName": "default",
        });
        assert!(wep(good.clone()).is_empty());
        let spec: WorkloadEndpointSpec = serde_json::from_value(good.clone()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), good);

        let e = wep(
            json!({"ipNetworks": ["10.0.0.5/32"], "ipNATs": [{"internalIP": "10.0.0.6", "externalIP": "x"}]}),
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ipNATs[0].internalIP: 10.0.0.6 is not one of")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.ipNATs[0].externalIP:")),
            "{e:?}"
        );
        let e = wep(
            json!({"orchestrator": "k8s", "node": "node1", "pod": "other", "endpoint": "eth0"}),
        );
        assert!(
            e[0].starts_with("metadata.name: \"node1-k8s-mypod--1-eth0\" does not match"),
            "{e:?}"
        );
        assert!(
            e[0].ends_with("Calico names it \"node1-k8s-other-eth0\""),
            "{e:?}"
        );
        let e = wep(json!({"interfaceName": "a-very-long-interface-name"}));
        assert!(e[0].starts_with("spec.interfaceName:"), "{e:?}");
        let e = wep(json!({"ports": [{"name": "HTTP", "protocol": "ICMP", "port": 0}]}));
        assert!(
            e.iter().any(|e| e.starts_with("spec.ports[0].name:")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("spec.ports[0].protocol:")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("spec.ports[0].port:")),
            "{e:?}"
        );
        let e = wep(json!({"qosControls": {"ingressBandwidth": -1}}));
        assert!(
            e[0].starts_with("spec.qosControls.ingressBandwidth:"),
            "{e:?}"
        );
        let e = wep(json!({"qosControls": {"egressBandwidth": 100, "egressPeakrate": 50}}));
        assert!(
            e[0].starts_with("spec.qosControls.egressPeakrate:"),
            "{e:?}"
        );
    }

    #[test]
    fn names_double_dashes() {
        assert_eq!(
            workload_endpoint_name("node1", "k8s", "my-nginx-b1337a", "eth0"),
            "node1-k8s-my--nginx--b1337a-eth0"
        );
        assert_eq!(
            workload_endpoint_name("rack-1", "cni", "abc", "eth0"),
            "rack--1-cni-abc-eth0"
        );
    }

    #[test]
    fn host_endpoint() {
        assert!(
            hep(
                json!({"node": "node1", "interfaceName": "eth0", "expectedIPs": ["192.0.2.1"],
                           "ports": [{"name": "ssh", "protocol": "TCP", "port": 22}]})
            )
            .is_empty()
        );
        assert!(hep(json!({"node": "node1", "interfaceName": "*"})).is_empty());
        let e = hep(json!({}));
        assert!(e.contains(&"spec.node: is required".to_string()), "{e:?}");
        assert!(
            e.contains(&"spec.interfaceName: set interfaceName, expectedIPs, or both".to_string()),
            "{e:?}"
        );
        let e = hep(json!({"node": "n", "expectedIPs": ["not-an-ip"]}));
        assert!(e[0].starts_with("spec.expectedIPs[0]:"), "{e:?}");
    }
}
