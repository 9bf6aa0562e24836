//! `tabby-ipam`: Calico's `calico-ipam`. ADD auto-assigns (or assigns the given
//! addresses) under the handle `<network>.<containerID>`, DEL releases the handle,
//! CHECK verifies the handle still holds the addresses, STATUS checks the store and
//! that an enabled pool exists, GC releases this node's handles of this network
//! whose container is not a valid attachment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tabby_api::Kind;
use tabby_client::ipam::ipam_for;
use tabby_ipam::{AssignIpArgs, AutoAssignArgs, Ipam, IpamError, handle::cni_handle};

use crate::config::NetConf;
use crate::env::{ANNOTATION_IP_ADDRS, CniEnv, parse_list};
use crate::spec::{CniError, CniResult, Command, IpConfig, code};
use crate::store;

/// Allocation attribute naming the CNI network (for GC).
pub const ATTR_NETWORK: &str = "network";

/// An IPAM error as a spec error with a message a user can act on.
pub fn ipam_err(e: IpamError) -> CniError {
    let c = match &e {
        IpamError::PoolNotUsable(_)
        | IpamError::InvalidPool { .. }
        | IpamError::NotInPool { .. }
        | IpamError::PoolDisabled { .. }
        | IpamError::InvalidArgument(_) => code::INVALID_CONFIG,
        IpamError::Exhausted(_)
        | IpamError::BlockLimit { .. }
        | IpamError::NoPoolsForNode { .. }
        | IpamError::NoQualifiedPool { .. } => code::IPAM_EXHAUSTED,
        IpamError::TooManyRetries { .. } => code::TRY_AGAIN,
        IpamError::Block(_) => code::INVALID_CONFIG,
        _ => code::DATASTORE,
    };
    let mut msg = e.to_string();
    if c == code::IPAM_EXHAUSTED {
        msg.push_str("; add an IP pool or free addresses (tabbyctl ipam check)");
    }
    if matches!(e, IpamError::PoolNotUsable(_)) {
        msg.push_str("; list pools with `tabbyctl get ippools`");
    }
    CniError::new(c, msg)
}

fn handle(conf: &NetConf, env: &CniEnv) -> String {
    cni_handle(&conf.name, &env.container_id)
}

fn to_result(conf: &NetConf, ips: &[IpNet]) -> CniResult {
    let block = conf.ipam.result_prefix.as_deref() == Some("block");
    CniResult {
        cni_version: conf.cni_version.clone(),
        ips: ips
            .iter()
            .map(|n| IpConfig {
                address: if block { *n } else { IpNet::from(n.addr()) },
                gateway: None,
                interface: None,
                version: None,
            })
            .collect(),
        ..CniResult::default()
    }
}

async fn ipam(conf: &NetConf) -> Result<Ipam, CniError> {
    Ok(ipam_for(&store::client(conf).await?))
}

/// ADD.
pub async fn add(env: &CniEnv, conf: &NetConf) -> Result<CniResult, CniError> {
    let node = conf.node_name()?;
    let ipam = ipam(conf).await?;
    let handle = handle(conf, env);
    // A repeated ADD gets what the handle already holds (as calico-ipam).
    let existing = ipam.ips_by_handle(&handle).await.map_err(ipam_err)?;
    if !existing.is_empty() {
        let mut nets = Vec::new();
        for ip in existing {
            let block = ipam
                .get_assignment_attributes(ip)
                .await
                .map_err(ipam_err)?
                .map(|a| a.block.prefix_len())
                .unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
            nets.push(IpNet::new(ip, block).unwrap_or_else(|_| IpNet::from(ip)));
        }
        return Ok(to_result(conf, &nets));
    }
    let mut attrs = BTreeMap::new();
    attrs.insert("node".to_owned(), node.clone());
    attrs.insert(ATTR_NETWORK.to_owned(), conf.name.clone());
    if let (Some(ns), Some(pod)) = (env.args.pod_namespace(), env.args.pod_name()) {
        attrs.insert("namespace".to_owned(), ns.to_owned());
        attrs.insert("pod".to_owned(), pod.to_owned());
    }
    attrs.insert("timestamp".to_owned(), now());

    let mut ip_addrs = conf.ipam.ip_addrs.clone();
    if ip_addrs.is_empty()
        && let Some(v) = env.args.annotations().get(ANNOTATION_IP_ADDRS)
    {
        ip_addrs = parse_list(v)?;
    }
    if !ip_addrs.is_empty() {
        let mut out = Vec::new();
        for s in &ip_addrs {
            let ip: IpAddr = s.parse().map_err(|_| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("ipAddrs: {s:?} is not an IP address"),
                )
            })?;
            let mut a = AssignIpArgs::new(ip, node.clone());
            a.handle = Some(handle.clone());
            a.attrs = attrs.clone();
            match ipam.assign_ip(&a).await {
                Ok(net) => out.push(net),
                Err(e) => {
                    let _ = ipam.release_by_handle(&handle).await;
                    return Err(ipam_err(e).context(format!("assigning {ip}")));
                }
            }
        }
        return Ok(to_result(conf, &out));
    }

    let want4 = usize::from(conf.ipam.want_v4());
    let want6 = usize::from(conf.ipam.want_v6());
    if want4 + want6 == 0 {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "ipam: assign_ipv4 and assign_ipv6 are both false; nothing to assign",
        ));
    }
    let mut args = AutoAssignArgs::new(node.clone(), want4, want6).with_handle(handle.clone());
    args.attrs = attrs;
    args.ipv4_pools = conf.ipam.ipv4_pools.clone();
    args.ipv6_pools = conf.ipam.ipv6_pools.clone();
    let res = ipam.auto_assign(&args).await;
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            // Half a dual-stack allocation is released (as calico-ipam).
            let _ = ipam.release_by_handle(&handle).await;
            return Err(ipam_err(e.error));
        }
    };
    let mut ips = Vec::new();
    for (fam, a) in [("IPv4", &res.v4), ("IPv6", &res.v6)] {
        if let Some(a) = a {
            if let Some(pf) = a.partial_fulfillment_error() {
                let _ = ipam.release_by_handle(&handle).await;
                return Err(CniError::new(
                    code::IPAM_EXHAUSTED,
                    format!("{pf}; {fam} pools are exhausted or none is usable by node {node}"),
                ));
            }
            ips.extend(a.ips.iter().copied());
        }
    }
    Ok(to_result(conf, &ips))
}

/// DEL: release the handle; nothing to release is success.
pub async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let ipam = ipam(conf).await?;
    ipam.release_by_handle(&handle(conf, env))
        .await
        .map(drop)
        .map_err(ipam_err)
}

/// CHECK: every address of `prevResult` is still held by the handle.
pub async fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let prev = CniResult::from_value(prev)?;
    let ipam = ipam(conf).await?;
    let h = handle(conf, env);
    let held: BTreeSet<IpAddr> = ipam
        .ips_by_handle(&h)
        .await
        .map_err(ipam_err)?
        .into_iter()
        .collect();
    let missing: Vec<String> = prev
        .addresses()
        .into_iter()
        .filter(|ip| !held.contains(ip))
        .map(|ip| ip.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!("IPAM handle {h} does not hold {}", missing.join(", ")),
        ))
    }
}

/// STATUS: the store answers and at least one pool is enabled.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let client = store::client(conf)
        .await
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg))?;
    let pools = client.list(Kind::IPPool, None).await.map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("the datastore does not answer: {e}"),
        )
    })?;
    let enabled = pools
        .iter()
        .filter_map(|p| p.spec.as_ip_pool())
        .filter(|s| !s.disabled.unwrap_or(false))
        .count();
    if enabled == 0 {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            "no enabled IP pool; create one (tabbyctl apply -f ippool.yaml)",
        ));
    }
    Ok(())
}

/// GC: releases this node's allocations of this network whose container is not
/// in `cni.dev/valid-attachments`. Returns the released handles.
pub async fn gc(conf: &NetConf) -> Result<Vec<String>, CniError> {
    let attachments = conf.gc_attachments()?;
    let node = conf.node_name()?;
    let ipam = ipam(conf).await?;
    let valid: BTreeSet<&str> = attachments
        .iter()
        .map(|a| a.container_id.as_str())
        .collect();
    let prefix = format!("{}.", conf.name);
    let mut stale = BTreeSet::new();
    for b in ipam.list_blocks(None).await.map_err(ipam_err)? {
        for a in b.allocations() {
            let Some(h) = a.handle.as_deref() else {
                continue;
            };
            let Some(cid) = h.strip_prefix(&prefix) else {
                continue;
            };
            if a.attrs.get("node").map(String::as_str) != Some(node.as_str()) {
                continue;
            }
            // The prefix alone is ambiguous when network names contain dots.
            if a.attrs.get(ATTR_NETWORK).is_some_and(|n| n != &conf.name) {
                continue;
            }
            if !valid.contains(cid) {
                stale.insert(h.to_owned());
            }
        }
    }
    let mut released = Vec::new();
    for h in stale {
        ipam.release_by_handle(&h).await.map_err(ipam_err)?;
        tracing::info!(handle = %h, "GC released");
        released.push(h);
    }
    Ok(released)
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    secs.to_string()
}

/// Runs one `tabby-ipam` invocation; `Ok(Some(json))` is printed on stdout.
pub async fn run(env: &CniEnv, conf: &NetConf) -> Result<Option<serde_json::Value>, CniError> {
    match env.command {
        Some(Command::Add) => {
            let r = add(env, conf).await?;
            Ok(Some(
                serde_json::to_value(r.for_version(&conf.cni_version)).unwrap_or_default(),
            ))
        }
        Some(Command::Del) => del(env, conf).await.map(|_| None),
        Some(Command::Check) => check(env, conf).await.map(|_| None),
        Some(Command::Status) => status(conf).await.map(|_| None),
        Some(Command::Gc) => gc(conf).await.map(|_| None),
        Some(Command::Version) | None => Ok(Some(crate::spec::version_info())),
    }
}
