//! Names Calico derives: the host veth (`cali` + 11 hex digits of
//! sha1(`<namespace>.<pod>`), or of the container ID outside Kubernetes) and the
//! WorkloadEndpoint (`<node>-k8s-<pod>-<endpoint>`, dashes doubled).

use sha1::{Digest, Sha1};
use tabby_api::endpoint::workload_endpoint_name;

use crate::env::CniArgs;

/// Default host interface prefix.
pub const DEFAULT_PREFIX: &str = "cali";

/// `prefix + hex(sha1("<namespace>.<pod>"))[..11]`.
pub fn veth_name_k8s(prefix: &str, namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let keep = 15usize.saturating_sub(prefix.len()).min(11);
    format!("{prefix}{}", &hex[..keep])
}

/// `prefix + containerID[..11]` (Calico outside Kubernetes).
pub fn veth_name_plain(prefix: &str, container_id: &str) -> String {
    let keep = 15usize.saturating_sub(prefix.len()).min(11);
    let id: String = container_id.chars().take(keep).collect();
    format!("{prefix}{id}")
}

/// Who a CNI invocation is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `k8s` when the pod identity is in CNI_ARGS, else `cni`.
    pub orchestrator: String,
    /// The endpoint's namespace (`default` outside Kubernetes).
    pub namespace: String,
    /// The pod's name (Kubernetes only).
    pub pod: Option<String>,
    /// Workload part of the endpoint name: the pod name or the container ID.
    pub workload: String,
    /// The WorkloadEndpoint's name.
    pub endpoint_name: String,
    /// The host veth's name.
    pub host_ifname: String,
}

impl Workload {
    /// Derives everything from node, container ID, interface and CNI_ARGS.
    pub fn new(
        node: &str,
        container_id: &str,
        ifname: &str,
        args: &CniArgs,
        prefix: &str,
    ) -> Workload {
        match (args.pod_namespace(), args.pod_name()) {
            (Some(ns), Some(pod)) => Workload {
                orchestrator: "k8s".into(),
                namespace: ns.to_owned(),
                pod: Some(pod.to_owned()),
                workload: pod.to_owned(),
                endpoint_name: workload_endpoint_name(node, "k8s", pod, ifname),
                host_ifname: veth_name_k8s(prefix, ns, pod),
            },
            _ => Workload {
                orchestrator: "cni".into(),
                namespace: "default".into(),
                pod: None,
                workload: container_id.to_owned(),
                endpoint_name: workload_endpoint_name(node, "cni", container_id, ifname),
                host_ifname: veth_name_plain(prefix, container_id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_test_vector() {
        assert_eq!(
            veth_name_k8s("cali", "namespace", "podname"),
            "cali82111e10a96"
        );
        assert_eq!(
            veth_name_plain("cali", "0123456789abcdef"),
            "cali0123456789a"
        );
    }

    #[test]
    fn workload_identity() {
        let args = CniArgs::parse("K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=my-pod").unwrap();
        let w = Workload::new("node-1", "abc", "eth0", &args, "cali");
        assert_eq!(w.endpoint_name, "node--1-k8s-my--pod-eth0");
        assert_eq!(w.namespace, "kube-system");
        assert_eq!(w.host_ifname.len(), 15);
        let w = Workload::new("n", "abcdef", "eth0", &CniArgs::default(), "cali");
        assert_eq!(w.orchestrator, "cni");
        assert_eq!(w.endpoint_name, "n-cni-abcdef-eth0");
        assert_eq!(w.host_ifname, "caliabcdef");
    }
}
