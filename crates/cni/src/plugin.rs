//! `tabby`: Calico's `calico` main plugin. ADD asks the configured IPAM plugin
//! for addresses, wires the pod ([`tabby_dataplane::workload`]) and writes the
//! WorkloadEndpoint; any failure after IPAM undoes all of it. DEL removes the
//! endpoint (if it is this container's), the veth and the allocation, and succeeds
//! when they are already gone. CHECK compares the kernel and the store with
//! `prevResult`. STATUS and GC delegate to the IPAM plugin; GC also removes this
//! node's endpoints of containers that are no longer valid attachments.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::Value;
use tabby_api::endpoint::WorkloadEndpointSpec;
use tabby_api::{Kind, Resource, Spec};
use tabby_client::{Client, ClientError};
use tabby_dataplane::model::format_mac;
use tabby_dataplane::workload::{self, HOST_MAC, WorkloadSpec};
use tabby_dataplane::{Netlink, ProcSysctl, RtNetlink};

use crate::config::{DEFAULT_MTU_FILE, NetConf};
use crate::delegate;
use crate::env::{
    ANNOTATION_IP_ADDRS, ANNOTATION_IPV4_POOLS, ANNOTATION_IPV6_POOLS, CniEnv, parse_list,
};
use crate::naming::{DEFAULT_PREFIX, Workload};
use crate::spec::{CniError, CniResult, Command, Interface, IpConfig, code};
use crate::store::{self, store_err};

/// Annotation on endpoints naming the CNI network that made them (for GC).
pub const ANNOTATION_NETWORK: &str = "cni.tabby.dev/network";

fn dp_err(e: tabby_dataplane::Error) -> CniError {
    match e {
        tabby_dataplane::Error::Collision { .. } => {
            CniError::new(code::INTERFACE_EXISTS, e.to_string())
        }
        tabby_dataplane::Error::NotFound { ref what } if what.starts_with("network namespace") => {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("{e}; is CNI_NETNS the container's namespace?"),
            )
        }
        other => CniError::new(code::DATAPLANE, other.to_string()),
    }
}

fn workload(env: &CniEnv, conf: &NetConf, node: &str) -> Workload {
    let prefix = conf.interface_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    Workload::new(node, &env.container_id, &env.ifname, &env.args, prefix)
}

/// The pod MTU: config, then the agent's MTU file, then the smallest MTU of the
/// host's up, non-loopback, non-workload links (1500 if none).
pub async fn pod_mtu(conf: &NetConf, host: &dyn Netlink, prefix: &str) -> Result<u32, CniError> {
    if let Some(m) = conf.mtu.filter(|m| *m > 0) {
        return Ok(m);
    }
    if let Ok(s) = std::fs::read_to_string(DEFAULT_MTU_FILE)
        && let Ok(m) = s.trim().parse::<u32>()
        && m > 0
    {
        return Ok(m);
    }
    let links = host.links().await.map_err(dp_err)?;
    Ok(links
        .iter()
        .filter(|l| l.up && l.name != "lo" && !l.name.starts_with(prefix))
        .filter_map(|l| l.mtu)
        .min()
        .unwrap_or(1500))
}

/// Merges the pool and address annotations (endpoint first, CNI_ARGS override)
/// into the IPAM plugin's configuration, as Calico does with pod annotations.
pub fn ipam_stdin(raw: &Value, annotations: &BTreeMap<String, String>) -> Result<Value, CniError> {
    let mut v = raw.clone();
    let ipam = v
        .get_mut("ipam")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "the configuration has no \"ipam\" object",
            )
        })?;
    for (ann, field) in [
        (ANNOTATION_IPV4_POOLS, "ipv4_pools"),
        (ANNOTATION_IPV6_POOLS, "ipv6_pools"),
        (ANNOTATION_IP_ADDRS, "ip_addrs"),
    ] {
        if let Some(val) = annotations.get(ann) {
            let list = parse_list(val).map_err(|e| e.context(format!("annotation {ann}")))?;
            if field == "ipv6_pools" && !list.is_empty() {
                ipam.insert("assign_ipv6".into(), Value::String("true".into()));
            }
            ipam.insert(field.into(), serde_json::to_value(list).unwrap_or_default());
        }
    }
    Ok(v)
}

async fn read_endpoint(client: &Client, w: &Workload) -> Result<Option<Resource>, CniError> {
    client
        .get(Kind::WorkloadEndpoint, Some(&w.namespace), &w.endpoint_name)
        .await
        .map_err(|e| {
            store_err(
                format!(
                    "reading WorkloadEndpoint {}/{}",
                    w.namespace, w.endpoint_name
                ),
                e,
            )
        })
}

fn endpoint_resource(
    existing: Option<&Resource>,
    w: &Workload,
    env: &CniEnv,
    conf: &NetConf,
    node: &str,
    ips: &[IpAddr],
    cont_mac: &str,
) -> Resource {
    let spec = WorkloadEndpointSpec {
        orchestrator: Some(w.orchestrator.clone()),
        workload: (w.orchestrator != "k8s").then(|| w.workload.clone()),
        node: Some(node.to_owned()),
        container_id: Some(env.container_id.clone()),
        pod: w.pod.clone(),
        endpoint: Some(env.ifname.clone()),
        ip_networks: ips.iter().map(|ip| IpNet::from(*ip)).collect(),
        profiles: vec![format!("kns.{}", w.namespace)],
        interface_name: Some(w.host_ifname.clone()),
        mac: Some(cont_mac.to_owned()),
        ..WorkloadEndpointSpec::default()
    };
    let mut r = match existing {
        Some(e) => e.clone(),
        None => Resource::new(Kind::WorkloadEndpoint, &w.endpoint_name, Some(&w.namespace)),
    };
    r.spec = Spec::WorkloadEndpoint(Box::new(spec));
    r.metadata
        .labels
        .insert("projectcalico.org/namespace".into(), w.namespace.clone());
    r.metadata.labels.insert(
        "projectcalico.org/orchestrator".into(),
        w.orchestrator.clone(),
    );
    r.metadata
        .annotations
        .insert(ANNOTATION_NETWORK.into(), conf.name.clone());
    r
}

/// Runs the IPAM plugin for `command`. Our own `tabby-ipam` runs in-process on the
/// store handle this process already has (one process and one store open per ADD
/// instead of two; the result is the same JSON the binary would print); any other
/// IPAM plugin is executed from `CNI_PATH` as the spec describes.
/// `TABBY_CNI_EXEC_IPAM=1` forces the exec path for `tabby-ipam` too.
async fn run_ipam(
    env: &CniEnv,
    conf: &NetConf,
    command: Command,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    if conf.ipam.plugin != "tabby-ipam" || std::env::var_os("TABBY_CNI_EXEC_IPAM").is_some() {
        return delegate::exec(&conf.ipam.plugin, &env.path, command, stdin);
    }
    let (ipam_conf, _) = NetConf::parse(stdin)?;
    let mut ipam_env = env.clone();
    ipam_env.command = Some(command);
    match crate::ipam_plugin::run(&ipam_env, &ipam_conf).await {
        Ok(Some(v)) => Ok(serde_json::to_vec(&v).unwrap_or_default()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(e.context(format!("tabby-ipam {}", command.as_str()))),
    }
}

fn ipam_result(out: &[u8]) -> Result<CniResult, CniError> {
    let v: Value = serde_json::from_slice(out).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the IPAM plugin's result is not JSON: {e}"),
        )
    })?;
    CniResult::from_value(&v)
}

/// Whether `r` is the endpoint an earlier ADD of this attachment (container ID
/// and interface) wrote.
fn is_this_attachment(r: &Resource, env: &CniEnv) -> bool {
    r.spec.as_workload_endpoint().is_some_and(|s| {
        s.container_id.as_deref() == Some(env.container_id.as_str())
            && s.endpoint.as_deref().is_none_or(|e| e == env.ifname)
    })
}

/// Whether this container's IPAM handle holds addresses already (an earlier ADD
/// allocated them). Known for `tabby-ipam` only; `None` for other IPAM plugins.
async fn handle_held(
    env: &CniEnv,
    conf: &NetConf,
    client: &Client,
) -> Result<Option<bool>, CniError> {
    if conf.ipam.plugin != "tabby-ipam" {
        return Ok(None);
    }
    let h = tabby_ipam::handle::cni_handle(&conf.name, &env.container_id);
    let held = tabby_client::ipam::ipam_for(client)
        .ips_by_handle(&h)
        .await
        .map_err(crate::ipam_plugin::ipam_err)?;
    Ok(Some(!held.is_empty()))
}

/// ADD. Safe to repeat for one attachment: the IPAM handle gives the same
/// addresses, wiring an earlier call left is completed rather than refused, and
/// an unchanged endpoint is not rewritten, so a repeat returns the same result.
/// A failure releases the addresses only when this call allocated them.
pub async fn add(env: &CniEnv, conf: &NetConf, raw: &Value) -> Result<CniResult, CniError> {
    conf.require_main()?;
    let node = conf.node_name()?;
    let w = workload(env, conf, &node);
    let netns = env.netns.clone().unwrap_or_default();
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {} does not exist", netns.display()),
        ));
    }
    let client = store::client(conf).await?;
    let existing = read_endpoint(&client, &w).await?;
    let live = existing
        .as_ref()
        .is_some_and(|r| is_this_attachment(r, env));
    // Addresses this call did not allocate are never released by its rollback:
    // with tabby-ipam, those the handle already held; with another IPAM plugin
    // (which cannot tell), all of them once this attachment has an endpoint.
    let releasable = match handle_held(env, conf, &client).await? {
        Some(held) => !held,
        None => !live,
    };
    let mut annotations = existing
        .as_ref()
        .map(|r| r.metadata.annotations.clone())
        .unwrap_or_default();
    annotations.extend(env.args.annotations());
    let stdin = ipam_stdin(raw, &annotations)?;
    let stdin_bytes = serde_json::to_vec(&stdin).unwrap_or_default();
    let out = run_ipam(env, conf, Command::Add, &stdin_bytes).await?;
    let allocated = ipam_result(&out);
    let undo_ipam = || async {
        if !releasable {
            tracing::info!("ADD failed; the addresses predate it and are kept");
            return;
        }
        if let Err(e) = run_ipam(env, conf, Command::Del, &stdin_bytes).await {
            tracing::error!(error = %e, "releasing the addresses of a failed ADD");
        }
    };
    let allocated = match allocated {
        Ok(a) if !a.ips.is_empty() => a,
        Ok(_) => {
            undo_ipam().await;
            return Err(CniError::new(
                code::IPAM_EXHAUSTED,
                format!("{} returned no address", conf.ipam.plugin),
            ));
        }
        Err(e) => {
            undo_ipam().await;
            return Err(e);
        }
    };
    match wire_and_record(
        env,
        conf,
        &client,
        &w,
        &node,
        existing.as_ref(),
        &allocated,
        &netns,
    )
    .await
    {
        Ok(r) => Ok(r),
        Err(e) => {
            undo_ipam().await;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn wire_and_record(
    env: &CniEnv,
    conf: &NetConf,
    client: &Client,
    w: &Workload,
    node: &str,
    existing: Option<&Resource>,
    allocated: &CniResult,
    netns: &Path,
) -> Result<CniResult, CniError> {
    let host = RtNetlink::current().map_err(dp_err)?;
    let cont = RtNetlink::in_netns(netns).map_err(dp_err)?;
    let prefix = conf.interface_prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    let mtu = pod_mtu(conf, &host, prefix).await?;
    let ips = allocated.addresses();
    let spec = WorkloadSpec {
        host_ifname: w.host_ifname.clone(),
        cont_ifname: env.ifname.clone(),
        netns: netns.to_path_buf(),
        addresses: ips.clone(),
        mtu,
        allow_ip_forwarding: conf.container_settings.allow_ip_forwarding,
    };
    let (wired, resumed) = workload::ensure(
        &host,
        &ProcSysctl::current(),
        &cont,
        &ProcSysctl::in_netns(netns),
        &spec,
    )
    .await
    .map_err(dp_err)?;
    let cont_mac = format_mac(&wired.cont_mac);
    let r = endpoint_resource(existing, w, env, conf, node, &ips, &cont_mac);
    let written = match existing {
        // A repeated ADD finds the endpoint as it would write it.
        Some(e) if e.spec == r.spec && e.metadata == r.metadata => Ok(r),
        Some(_) => client.replace(r).await,
        None => client.create(r).await,
    };
    if let Err(e) = written {
        // Links this call did not create may carry a running pod.
        if !resumed {
            let _ = workload::teardown(&host, Some(&cont), Some(&w.host_ifname), &env.ifname).await;
        }
        return Err(store_err(
            format!(
                "writing WorkloadEndpoint {}/{}",
                w.namespace, w.endpoint_name
            ),
            e,
        ));
    }
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: w.host_ifname.clone(),
                mac: format_mac(&HOST_MAC),
                mtu: Some(mtu),
                sandbox: String::new(),
            },
            Interface {
                name: env.ifname.clone(),
                mac: cont_mac,
                mtu: Some(mtu),
                sandbox: netns.display().to_string(),
            },
        ],
        ips: ips
            .iter()
            .map(|ip| IpConfig {
                address: IpNet::from(*ip),
                gateway: None,
                interface: Some(1),
                version: None,
            })
            .collect(),
        routes: Vec::new(),
        dns: Default::default(),
    })
}

/// DEL. Every step runs; the errors are joined.
pub async fn del(env: &CniEnv, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
    conf.require_main()?;
    let node = conf.node_name()?;
    let w = workload(env, conf, &node);
    let mut errors: Vec<CniError> = Vec::new();

    let client = store::client(conf).await?;
    // Whether the pod's names (endpoint, host veth) are this container's: after a
    // sandbox restart they belong to the new container, and a late DEL of the old
    // one must leave them alone (as Calico's containerID check).
    let mut owned = true;
    match read_endpoint(&client, &w).await {
        Ok(Some(r)) => {
            let cid = r
                .spec
                .as_workload_endpoint()
                .and_then(|s| s.container_id.clone());
            owned = cid.as_deref().is_none_or(|c| c == env.container_id);
            if owned {
                match client
                    .delete(
                        Kind::WorkloadEndpoint,
                        Some(&w.namespace),
                        &w.endpoint_name,
                        r.resource_version(),
                    )
                    .await
                {
                    Ok(_) | Err(ClientError::NotFound { .. }) => {}
                    Err(e) => errors.push(store_err("deleting WorkloadEndpoint", e)),
                }
            } else {
                tracing::info!(endpoint = %w.endpoint_name, "endpoint belongs to another container; kept");
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }

    match RtNetlink::current() {
        Ok(host) => {
            let cont = env
                .netns
                .as_ref()
                .filter(|p| p.exists())
                .and_then(|p| RtNetlink::in_netns(p).ok());
            let cont_ref: Option<&dyn Netlink> = cont.as_ref().map(|c| c as &dyn Netlink);
            let host_ifname = owned.then_some(w.host_ifname.as_str());
            if let Err(e) = workload::teardown(&host, cont_ref, host_ifname, &env.ifname).await {
                errors.push(dp_err(e));
            }
        }
        Err(e) => errors.push(dp_err(e)),
    }

    let stdin = serde_json::to_vec(raw).unwrap_or_default();
    if let Err(e) = run_ipam(env, conf, Command::Del, &stdin).await {
        errors.push(e);
    }
    join(errors)
}

fn join(mut errors: Vec<CniError>) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let code = errors[0].code;
            let msg = errors
                .iter()
                .map(|e| e.msg.clone())
                .collect::<Vec<_>>()
                .join("; ");
            Err(CniError::new(code, msg))
        }
    }
}

/// CHECK.
pub async fn check(env: &CniEnv, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
    conf.require_main()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let prev = CniResult::from_value(prev)?;
    let node = conf.node_name()?;
    let w = workload(env, conf, &node);
    let netns = env.netns.clone().unwrap_or_default();
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {} does not exist", netns.display()),
        ));
    }
    let stdin = serde_json::to_vec(raw).unwrap_or_default();
    run_ipam(env, conf, Command::Check, &stdin).await?;

    let mut diffs = Vec::new();
    let client = store::client(conf).await?;
    match read_endpoint(&client, &w).await? {
        None => diffs.push(format!(
            "WorkloadEndpoint {}/{} does not exist",
            w.namespace, w.endpoint_name
        )),
        Some(r) => {
            let s = r.spec.as_workload_endpoint().cloned().unwrap_or_default();
            if s.container_id.as_deref() != Some(env.container_id.as_str()) {
                diffs.push(format!(
                    "WorkloadEndpoint {} belongs to container {:?}",
                    w.endpoint_name, s.container_id
                ));
            }
            let want: BTreeSet<IpNet> = prev.addresses().into_iter().map(IpNet::from).collect();
            let have: BTreeSet<IpNet> = s.ip_networks.iter().copied().collect();
            if want != have {
                diffs.push(format!(
                    "WorkloadEndpoint {} has ipNetworks {have:?}, prevResult {want:?}",
                    w.endpoint_name
                ));
            }
        }
    }
    let host = RtNetlink::current().map_err(dp_err)?;
    let cont = RtNetlink::in_netns(&netns).map_err(dp_err)?;
    let spec = WorkloadSpec {
        host_ifname: w.host_ifname.clone(),
        cont_ifname: env.ifname.clone(),
        netns: netns.clone(),
        addresses: prev.addresses(),
        mtu: 0,
        allow_ip_forwarding: false,
    };
    diffs.extend(workload::check(&host, &cont, &spec).await.map_err(dp_err)?);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(code::CHECK_FAILED, diffs.join("; ")))
    }
}

/// STATUS: the IPAM plugin's.
pub async fn status(env: &CniEnv, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
    conf.require_main()?;
    let stdin = serde_json::to_vec(raw).unwrap_or_default();
    run_ipam(env, conf, Command::Status, &stdin).await.map(drop)
}

/// GC: the IPAM plugin's, then this node's stale endpoints of this network.
pub async fn gc(env: &CniEnv, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
    conf.require_main()?;
    let attachments = conf.gc_attachments()?;
    let stdin = serde_json::to_vec(raw).unwrap_or_default();
    let mut errors = Vec::new();
    if let Err(e) = run_ipam(env, conf, Command::Gc, &stdin).await {
        errors.push(e);
    }
    let node = conf.node_name()?;
    let valid: BTreeSet<(&str, &str)> = attachments
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let client = store::client(conf).await?;
    let weps = client
        .list(Kind::WorkloadEndpoint, None)
        .await
        .map_err(|e| store_err("listing WorkloadEndpoints", e))?;
    for r in weps {
        let Some(s) = r.spec.as_workload_endpoint() else {
            continue;
        };
        if s.node.as_deref() != Some(node.as_str())
            || r.metadata.annotations.get(ANNOTATION_NETWORK) != Some(&conf.name)
        {
            continue;
        }
        let cid = s.container_id.as_deref().unwrap_or_default();
        let ifname = s.endpoint.as_deref().unwrap_or_default();
        if valid.contains(&(cid, ifname)) || valid.contains(&(cid, "")) {
            continue;
        }
        if let Some(h) = s.interface_name.as_deref()
            && let Ok(host) = RtNetlink::current()
            && let Err(e) = workload::teardown(&host, None, Some(h), ifname).await
        {
            errors.push(dp_err(e));
        }
        match client
            .delete(
                Kind::WorkloadEndpoint,
                r.namespace(),
                r.name(),
                r.resource_version(),
            )
            .await
        {
            Ok(_) | Err(ClientError::NotFound { .. }) => {
                tracing::info!(endpoint = %r.name(), "GC removed endpoint")
            }
            Err(e) => errors.push(store_err(
                format!("deleting WorkloadEndpoint {}", r.name()),
                e,
            )),
        }
    }
    join(errors)
}

/// Runs one `tabby` invocation; `Ok(Some(json))` is printed on stdout.
pub async fn run(env: &CniEnv, conf: &NetConf, raw: &Value) -> Result<Option<Value>, CniError> {
    match env.command {
        Some(Command::Add) => {
            let r = add(env, conf, raw).await?;
            Ok(Some(
                serde_json::to_value(r.for_version(&conf.cni_version)).unwrap_or_default(),
            ))
        }
        Some(Command::Del) => del(env, conf, raw).await.map(|_| None),
        Some(Command::Check) => check(env, conf, raw).await.map(|_| None),
        Some(Command::Status) => status(env, conf, raw).await.map(|_| None),
        Some(Command::Gc) => gc(env, conf, raw).await.map(|_| None),
        Some(Command::Version) | None => Ok(Some(crate::spec::version_info())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_reach_ipam() {
        let raw = serde_json::json!({"name":"n","ipam":{"type":"tabby-ipam","ipv4_pools":["a"]}});
        let mut ann = BTreeMap::new();
        ann.insert(ANNOTATION_IPV4_POOLS.to_owned(), "[\"b\"]".to_owned());
        ann.insert(ANNOTATION_IPV6_POOLS.to_owned(), "v6pool".to_owned());
        let v = ipam_stdin(&raw, &ann).unwrap();
        assert_eq!(v["ipam"]["ipv4_pools"], serde_json::json!(["b"]));
        assert_eq!(v["ipam"]["ipv6_pools"], serde_json::json!(["v6pool"]));
        assert_eq!(v["ipam"]["assign_ipv6"], "true");
        let v = ipam_stdin(&raw, &BTreeMap::new()).unwrap();
        assert_eq!(v, raw);
    }

    #[tokio::test]
    async fn mtu_from_node() {
        let w = tabby_dataplane::fake::FakeWorld::new();
        w.add_link("host", "lo", None, 65536);
        w.add_link("host", "eth0", None, 1450);
        w.add_link("host", "eth1", None, 9000);
        w.add_link("host", "cali0123456789a", Some("veth"), 1000);
        let h = w.netlink("host");
        let conf = NetConf::default();
        assert_eq!(pod_mtu(&conf, &h, "cali").await.unwrap(), 1450);
        let conf = NetConf {
            mtu: Some(1400),
            ..NetConf::default()
        };
        assert_eq!(pod_mtu(&conf, &h, "cali").await.unwrap(), 1400);
    }
}
