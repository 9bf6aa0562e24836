//! `tabbyctl ipam show|check|release|configure|split`: calicoctl's IPAM commands over
//! [`tabby_ipam::Ipam`], with pools, node labels and the IPAM configuration read from the
//! store's v3 resources (`tabby_client::ipam`). Output keeps calicoctl's wording.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tabby_api::{Kind, Resource};
use tabby_client::Client;
use tabby_ipam::check::AffinityProblemKind;
use tabby_ipam::config::KubeVirtPersistence;
use tabby_ipam::handle::{WINDOWS_RESERVED_HANDLE, attrs};
use tabby_ipam::{AllocationInfo, Ipam, IpamConfig, ReleaseOptions, Usage};

use crate::connect::Connection;
use crate::output::{go_g5, write_box_table};

mod report;
mod split;

#[derive(clap::Args, Debug)]
pub struct IpamArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Show pool utilisation (with --show-blocks per block), one address (--ip) or the
    /// IPAM configuration (--show-configuration).
    Show(ShowArgs),
    /// Check the IPAM data for leaked addresses, dangling handles and bad affinities.
    Check(CheckArgs),
    /// Release an address (--ip; even one an endpoint still uses, as calicoctl does),
    /// or what a check report found leaked and still is (--from-report).
    Release(ReleaseArgs),
    /// Change the IPAM configuration (the `default` IPAMConfiguration).
    Configure(ConfigureArgs),
    /// Split a pool into NUMBER (a power of two) equal pools; blocks in use stay.
    Split(split::SplitArgs),
}

#[derive(clap::Args, Debug)]
struct ShowArgs {
    /// Report whether this address is in use, and by which handle and owner.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["show_blocks", "show_configuration"])]
    ip: Option<IpAddr>,
    /// Show each block's utilisation under its pool.
    #[arg(long)]
    show_blocks: bool,
    /// Show the IPAM configuration instead.
    #[arg(long, conflicts_with = "show_blocks")]
    show_configuration: bool,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Write a machine-readable report (calicoctl's JSON shape) to FILE.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print every address checked.
    #[arg(long)]
    show_all_ips: bool,
    /// Print every address (and handle, block) with a problem.
    #[arg(long)]
    show_problem_ips: bool,
}

#[derive(clap::Args, Debug)]
struct ReleaseArgs {
    /// The address to release.
    #[arg(long, value_name = "ADDR", conflicts_with = "from_report")]
    ip: Option<IpAddr>,
    /// Release the leaked addresses and handles of a report from `ipam check -o FILE`
    /// that are still leaked; with several reports, only what all of them call leaked.
    #[arg(long, value_name = "FILE")]
    from_report: Vec<PathBuf>,
    /// Use reports written by another tabbyctl version.
    #[arg(long, requires = "from_report")]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct ConfigureArgs {
    /// Never borrow addresses from blocks affine to other nodes.
    #[arg(long = "strictaffinity", value_name = "true|false", action = clap::ArgAction::Set)]
    strict_affinity: Option<bool>,
    /// Most blocks one node may claim (0: the default of 20; needs strict affinity).
    #[arg(long, value_name = "N")]
    max_blocks_per_host: Option<u32>,
    /// Whether KubeVirt VMs keep their addresses.
    #[arg(long, value_name = "Enabled|Disabled")]
    kubevirt_ip_persistence: Option<String>,
}

pub async fn run(conn: &Connection, args: &IpamArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let ipam = tabby_client::ipam::ipam_for(&client);
    match &args.action {
        Action::Show(a) if a.show_configuration => show_configuration(&ipam, out).await,
        Action::Show(ShowArgs { ip: Some(ip), .. }) => show_ip(&ipam, *ip, out).await,
        Action::Show(a) => show_utilization(&ipam, a.show_blocks, out).await,
        Action::Check(a) => check(&client, &ipam, a, out).await,
        Action::Release(a) => release(&client, &ipam, a, out).await,
        Action::Configure(a) => configure(&ipam, a, out).await,
        Action::Split(a) => split::run(&client, &ipam, a, out).await,
    }
}

/// Refuses an address no pool (and no stored block of a since-deleted pool) holds.
async fn ensure_known(ipam: &Ipam, ip: IpAddr, flag: &str) -> anyhow::Result<()> {
    let pools = ipam
        .source()
        .pools()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    if tabby_ipam::pool::pool_for_ip(&pools, ip).is_some() {
        return Ok(());
    }
    let family = tabby_ipam::IpFamily::of_addr(&ip);
    let blocks = ipam.list_blocks(Some(family)).await?;
    if blocks.iter().any(|b| b.cidr.contains(&ip)) {
        return Ok(());
    }
    bail!("{flag} {ip}: IP address {ip} is not in any configured IP pool")
}

fn usage_row(grouping: &str, cidr: String, u: &Usage) -> Vec<String> {
    let cap = u.capacity as f64;
    let with_pct = |n: u128| format!("{} ({:.0}%)", go_g5(n as f64), 100.0 * n as f64 / cap);
    vec![
        grouping.to_string(),
        cidr,
        go_g5(cap),
        with_pct(u.in_use),
        with_pct(u.available),
    ]
}

async fn show_utilization(ipam: &Ipam, blocks: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let usage = ipam.get_utilization(&[]).await?;
    let mut rows = Vec::new();
    for pool in &usage {
        rows.push(usage_row("IP Pool", pool.cidr.to_string(), &pool.usage));
        if blocks {
            for b in &pool.blocks {
                rows.push(usage_row("Block", b.cidr.to_string(), &b.usage));
            }
        }
    }
    write_box_table(
        out,
        &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        &rows,
    )?;
    Ok(())
}

async fn show_ip(ipam: &Ipam, ip: IpAddr, out: &mut dyn Write) -> anyhow::Result<()> {
    ensure_known(ipam, ip, "--ip").await?;
    let Some(a) = ipam.get_assignment_attributes(ip).await? else {
        writeln!(out, "{ip} is not assigned")?;
        return Ok(());
    };
    writeln!(out, "IP {ip} is in use")?;
    match &a.handle {
        Some(h) => writeln!(out, "Handle ID: {h}")?,
        None => writeln!(out, "Handle ID: <none>")?,
    }
    if a.attrs.is_empty() {
        writeln!(out, "No Active Owner attributes defined")?;
    } else {
        writeln!(out, "Active Owner Attributes:")?;
        for (k, v) in &a.attrs {
            writeln!(out, "  {k}: {v}")?;
        }
    }
    Ok(())
}

async fn show_configuration(ipam: &Ipam, out: &mut dyn Write) -> anyhow::Result<()> {
    let cfg = ipam.ipam_config().await?;
    let persistence = match cfg.kube_virt_vm_address_persistence {
        KubeVirtPersistence::Enabled => "Enabled",
        KubeVirtPersistence::Disabled => "Disabled",
    };
    let rows: Vec<Vec<String>> = [
        ("StrictAffinity", cfg.strict_affinity.to_string()),
        ("AutoAllocateBlocks", cfg.auto_allocate_blocks.to_string()),
        ("MaxBlocksPerHost", cfg.max_blocks_per_host.to_string()),
        ("IPCooldownSeconds", cfg.ip_cooldown_seconds.to_string()),
        ("KubeVirtVMAddressPersistence", persistence.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| vec![k.to_string(), v])
    .collect();
    write_box_table(out, &["PROPERTY", "VALUE"], &rows)?;
    Ok(())
}

async fn configure(ipam: &Ipam, args: &ConfigureArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let persistence = match args.kubevirt_ip_persistence.as_deref() {
        None => None,
        Some("Enabled") => Some(KubeVirtPersistence::Enabled),
        Some("Disabled") => Some(KubeVirtPersistence::Disabled),
        Some(other) => {
            bail!("--kubevirt-ip-persistence {other:?}: invalid value; use Enabled or Disabled")
        }
    };
    if args.strict_affinity.is_none() && args.max_blocks_per_host.is_none() && persistence.is_none()
    {
        bail!(
            "at least one configuration option must be specified (--strictaffinity, --max-blocks-per-host, --kubevirt-ip-persistence)"
        );
    }
    if let Some(n) = args.max_blocks_per_host
        && n > 1_000_000
    {
        bail!("--max-blocks-per-host {n}: must be at most 1000000");
    }
    let mut cfg: IpamConfig = ipam.ipam_config().await?;
    if let Some(s) = args.strict_affinity {
        cfg.strict_affinity = s;
    }
    if let Some(n) = args.max_blocks_per_host {
        cfg.max_blocks_per_host = n;
    }
    if let Some(p) = persistence {
        cfg.kube_virt_vm_address_persistence = p;
    }
    ipam.set_ipam_config(&cfg).await?;
    if let Some(s) = args.strict_affinity {
        writeln!(out, "Successfully set StrictAffinity to: {s}")?;
    }
    if let Some(n) = args.max_blocks_per_host {
        writeln!(out, "Successfully set MaxBlocksPerHost to: {n}")?;
    }
    if let Some(p) = &args.kubevirt_ip_persistence {
        writeln!(out, "Successfully set KubeVirtVMAddressPersistence to: {p}")?;
    }
    Ok(())
}

async fn release(
    client: &Client,
    ipam: &Ipam,
    args: &ReleaseArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if !args.from_report.is_empty() {
        return report::release_from_reports(client, ipam, &args.from_report, args.force, out)
            .await;
    }
    let Some(ip) = args.ip else {
        bail!("ipam release: give the address to release with --ip ADDR, or --from-report FILE");
    };
    ensure_known(ipam, ip, "--ip").await?;
    // calicoctl releases regardless; saying who still uses the address costs one list.
    let owners = InUse::load(client).await?;
    for owner in owners.ips.get(&ip).into_iter().flatten() {
        eprintln!("warning: {ip} is still used by {owner}; releasing it anyway");
    }
    let unallocated = ipam.release_ips(&[ReleaseOptions::new(ip)]).await?;
    if !unallocated.is_empty() {
        bail!("IP address {ip} is not assigned");
    }
    writeln!(out, "Successfully released IP address {ip}")?;
    Ok(())
}

/// What the cluster's resources say is using addresses: workload endpoints' networks
/// and nodes' tunnel addresses, by address; and which nodes exist.
struct InUse {
    ips: BTreeMap<IpAddr, Vec<String>>,
    nodes: BTreeSet<String>,
    node_ips: usize,
    workload_ips: usize,
}

fn host_part(addr: &str) -> Option<IpAddr> {
    let host = addr.split('/').next().unwrap_or(addr);
    host.trim().parse().ok()
}

fn node_tunnel_ips(n: &Resource) -> Vec<IpAddr> {
    let Some(spec) = n.spec.as_node() else {
        return Vec::new();
    };
    let mut raw: Vec<&str> = Vec::new();
    raw.extend(spec.ipv4_vxlan_tunnel_addr.as_deref());
    raw.extend(spec.ipv6_vxlan_tunnel_addr.as_deref());
    if let Some(bgp) = &spec.bgp {
        raw.extend(bgp.ipv4_ipip_tunnel_addr.as_deref());
    }
    if let Some(wg) = &spec.wireguard {
        raw.extend(wg.interface_ipv4_address.as_deref());
        raw.extend(wg.interface_ipv6_address.as_deref());
    }
    raw.into_iter().filter_map(host_part).collect()
}

impl InUse {
    async fn load(client: &Client) -> anyhow::Result<InUse> {
        let mut ips: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        let mut nodes = BTreeSet::new();
        let (mut node_ips, mut workload_ips) = (0, 0);
        for n in client.list(Kind::Node, None).await? {
            nodes.insert(n.name().to_string());
            for ip in node_tunnel_ips(&n) {
                ips.entry(ip)
                    .or_default()
                    .push(format!("Node({})", n.name()));
                node_ips += 1;
            }
        }
        for w in client.list(Kind::WorkloadEndpoint, None).await? {
            let Some(spec) = w.spec.as_workload_endpoint() else {
                continue;
            };
            let owner = format!(
                "Workload({}/{})",
                w.namespace().unwrap_or("default"),
                w.name()
            );
            for net in &spec.ip_networks {
                ips.entry(net.addr()).or_default().push(owner.clone());
                workload_ips += 1;
            }
        }
        Ok(InUse {
            ips,
            nodes,
            node_ips,
            workload_ips,
        })
    }

    /// The node a tunnel allocation belongs to, if it is one.
    fn tunnel_node(a: &AllocationInfo) -> Option<String> {
        const PREFIXES: [&str; 5] = [
            "ipip-tunnel-addr-",
            "vxlan-tunnel-addr-",
            "vxlan-v6-tunnel-addr-",
            "wireguard-tunnel-addr-",
            "wireguard-v6-tunnel-addr-",
        ];
        let by_type = a
            .attrs
            .get(attrs::TYPE)
            .is_some_and(|t| t.ends_with("TunnelAddress"));
        let from_handle = a
            .handle
            .as_deref()
            .and_then(|h| PREFIXES.iter().find_map(|p| h.strip_prefix(p)));
        if !by_type && from_handle.is_none() {
            return None;
        }
        a.attrs
            .get(attrs::NODE)
            .cloned()
            .or_else(|| from_handle.map(str::to_string))
    }

    /// Who uses an allocation: endpoints and nodes holding its address, or the node of
    /// a tunnel handle while that node exists. Empty means leaked.
    fn owners(&self, a: &AllocationInfo) -> Vec<String> {
        let mut owners = self.ips.get(&a.ip).cloned().unwrap_or_default();
        if a.handle.as_deref() == Some(WINDOWS_RESERVED_HANDLE) {
            owners.push("Reserved for Windows".to_string());
        }
        if let Some(node) = Self::tunnel_node(a)
            && self.nodes.contains(&node)
        {
            let owner = format!("Node({node})");
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        }
        owners
    }
}

fn attr_string(a: &AllocationInfo) -> String {
    let extra: Vec<String> = a.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "Main:{} Extra:{}",
        a.handle.as_deref().unwrap_or("<none>"),
        extra.join(",")
    )
}

fn affinity_text(kind: &AffinityProblemKind) -> String {
    match kind {
        AffinityProblemKind::MissingAffinity => {
            "block is affine to the host but the host's affinity is missing".to_string()
        }
        AffinityProblemKind::BlockMissing => "affinity exists but the block does not".to_string(),
        AffinityProblemKind::PointsElsewhere { block_affinity } => format!(
            "affinity exists but the block's affinity is {}",
            block_affinity.as_deref().unwrap_or("<none>")
        ),
        AffinityProblemKind::NotConfirmed { state } => {
            format!("affinity is stuck in state {state:?}")
        }
    }
}

async fn check(
    client: &Client,
    ipam: &Ipam,
    args: &CheckArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let show_problems = args.show_problem_ips || args.show_all_ips;
    writeln!(out, "Checking IPAM for inconsistencies...\n")?;
    let revision = client.store().revision().await?;

    writeln!(out, "Loading all IPAM blocks...")?;
    let blocks = ipam.list_blocks(None).await?;
    writeln!(out, "Found {} IPAM blocks.", blocks.len())?;
    let mut allocations: Vec<(AllocationInfo, Option<String>)> = Vec::new();
    for b in &blocks {
        writeln!(
            out,
            " IPAM block {} affinity={}:",
            b.cidr,
            b.affinity.as_deref().unwrap_or("<none>")
        )?;
        for a in b.allocations() {
            if args.show_all_ips {
                writeln!(out, "  {} allocated; attrs {}", a.ip, attr_string(&a))?;
            }
            allocations.push((a, b.host_affinity().map(str::to_string)));
        }
    }
    writeln!(
        out,
        "IPAM blocks record {} allocations.\n",
        allocations.len()
    )?;

    writeln!(out, "Loading all IPAM pools...")?;
    let pools = ipam
        .source()
        .pools()
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let active: Vec<_> = pools.iter().filter(|p| p.enabled()).collect();
    for p in &active {
        writeln!(out, "  {}", p.cidr)?;
    }
    writeln!(out, "Found {} active IP pools.\n", active.len())?;

    writeln!(out, "Loading all nodes.")?;
    let in_use = InUse::load(client).await?;
    writeln!(out, "Found {} node tunnel IPs.\n", in_use.node_ips)?;
    writeln!(out, "Loading all workload endpoints.")?;
    writeln!(out, "Found {} workload IPs.", in_use.workload_ips)?;
    writeln!(
        out,
        "Workloads and nodes are using {} IPs.\n",
        in_use.ips.len()
    )?;
    if args.show_all_ips {
        for (ip, owners) in &in_use.ips {
            for o in owners {
                writeln!(out, "  {ip} belongs to {o}")?;
            }
        }
    }

    writeln!(out, "Loading all handles")?;
    let handles = ipam.list_handles().await?;
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for (a, affinity) in &allocations {
        let node = a
            .attrs
            .get(attrs::NODE)
            .cloned()
            .or_else(|| affinity.clone())
            .unwrap_or_default();
        *by_node.entry(node).or_default() += 1;
    }
    const TOP: usize = 20;
    writeln!(out, "Looking for top (up to {TOP}) nodes by allocations...")?;
    let mut ranked: Vec<(&String, &usize)> = by_node.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (n, c) in ranked.iter().take(TOP) {
        writeln!(out, "  {n} has {c} allocations")?;
    }
    if let Some((_, max)) = ranked.first() {
        let median = ranked[ranked.len() / 2].1;
        writeln!(
            out,
            "Node with most allocations has {max}; median is {median}"
        )?;
    }
    writeln!(out)?;

    // One snapshot of the IPAM tree for the structural checks and the leak scan.
    let report = ipam
        .check_with_owners(|a| !in_use.owners(a).is_empty())
        .await?;
    let mut problems = 0usize;

    writeln!(
        out,
        "Scanning for IPs that are allocated but not actually in use..."
    )?;
    for a in &report.orphaned {
        if show_problems {
            writeln!(out, "  {} leaked; attrs {}", a.ip, attr_string(a))?;
        }
    }
    problems += report.orphaned.len();
    writeln!(
        out,
        "Found {} IPs that are allocated in IPAM but not actually in use.",
        report.orphaned.len()
    )?;

    writeln!(
        out,
        "Scanning for IPs that are in use by a workload or node but not allocated in IPAM..."
    )?;
    let allocated: BTreeSet<IpAddr> = allocations.iter().map(|(a, _)| a.ip).collect();
    let (mut outside, mut unallocated) = (0usize, 0usize);
    for (ip, owners) in &in_use.ips {
        if show_problems && owners.len() > 1 {
            writeln!(out, "  {ip} has multiple owners.")?;
        }
        if allocated.contains(ip) {
            continue;
        }
        let in_pool = active.iter().any(|p| p.contains(*ip));
        for o in owners {
            if show_problems && in_pool {
                writeln!(
                    out,
                    "  {ip} in use by {o} and in active IPAM pool but has no IPAM allocation."
                )?;
            } else if show_problems {
                writeln!(out, "  {ip} in use by {o} is not in any active IP pool.")?;
            }
        }
        if in_pool {
            unallocated += 1;
        } else {
            outside += 1;
        }
    }
    problems += outside + unallocated;
    writeln!(
        out,
        "Found {outside} in-use IPs that are not in active IP pools."
    )?;
    writeln!(
        out,
        "Found {unallocated} in-use IPs that are in active IP pools but have no corresponding IPAM allocation.\n"
    )?;

    writeln!(out, "Scanning for IPAM handles with no matching IPs...")?;
    let referenced: BTreeSet<&str> = allocations
        .iter()
        .filter_map(|(a, _)| a.handle.as_deref())
        .collect();
    let leaked_handles: Vec<&str> = handles
        .iter()
        .map(|h| h.handle_id.as_str())
        .filter(|h| !referenced.contains(h))
        .collect();
    for h in &leaked_handles {
        if show_problems {
            writeln!(out, "  {h} doesn't have any active IPs.")?;
        }
    }
    problems += leaked_handles.len();
    writeln!(
        out,
        "Found {} handles with no matching IPs (and {} handles with matches).",
        leaked_handles.len(),
        handles.len() - leaked_handles.len()
    )?;

    writeln!(out, "Scanning for IPs with missing handle...")?;
    let missing: BTreeSet<&str> = report
        .missing_handles
        .iter()
        .filter_map(|a| a.handle.as_deref())
        .collect();
    for h in &missing {
        if show_problems {
            writeln!(out, "  {h} is in use in a block but doesn't exist.")?;
        }
    }
    problems += missing.len();
    writeln!(
        out,
        "Found {} handles mentioned in blocks with no matching handle resource.",
        missing.len()
    )?;

    writeln!(
        out,
        "Scanning for handles whose address counts disagree with the blocks..."
    )?;
    // A handle with no addresses at all is already counted above.
    let mismatches: Vec<_> = report
        .handle_mismatches
        .iter()
        .filter(|m| !(m.actual == 0 && leaked_handles.contains(&m.handle.as_str())))
        .collect();
    for m in &mismatches {
        if show_problems {
            writeln!(
                out,
                "  {} records {} addresses in {} but the block holds {}.",
                m.handle, m.recorded, m.block, m.actual
            )?;
        }
    }
    problems += mismatches.len();
    writeln!(
        out,
        "Found {} handles whose counts disagree with the blocks.",
        mismatches.len()
    )?;

    writeln!(out, "Scanning for blocks with wrong or missing affinity...")?;
    for p in &report.affinity_problems {
        if show_problems {
            writeln!(
                out,
                "  {} for {}: {}.",
                p.cidr,
                p.host,
                affinity_text(&p.kind)
            )?;
        }
    }
    problems += report.affinity_problems.len();
    writeln!(
        out,
        "Found {} block affinity problems.",
        report.affinity_problems.len()
    )?;

    writeln!(out, "Scanning for invalid or overlapping blocks...")?;
    for (cidr, why) in &report.invalid_blocks {
        if show_problems {
            writeln!(out, "  block {cidr} is invalid: {}.", why.join("; "))?;
        }
    }
    for (a, b) in &report.overlapping_blocks {
        if show_problems {
            writeln!(out, "  blocks {a} and {b} overlap.")?;
        }
    }
    let structural = report.invalid_blocks.len() + report.overlapping_blocks.len();
    problems += structural;
    writeln!(out, "Found {structural} invalid or overlapping blocks.")?;

    writeln!(out, "Check complete; found {problems} problems.")?;

    if let Some(path) = &args.output {
        // Handle revisions let `release --from-report` see whether a handle changed.
        let handle_revisions: BTreeMap<String, i64> = client
            .store()
            .list(&tabby_ipam::keys::handle_prefix())
            .await?
            .kvs
            .into_iter()
            .filter_map(|kv| {
                tabby_ipam::keys::parse_handle_key(&kv.key)
                    .map(|h| (h.to_string(), kv.mod_revision))
            })
            .collect();
        let leaked: BTreeSet<IpAddr> = report.orphaned.iter().map(|a| a.ip).collect();
        let mut by_ip: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (a, affinity) in &allocations {
            let node = a
                .attrs
                .get(attrs::NODE)
                .cloned()
                .or_else(|| affinity.clone())
                .unwrap_or_default();
            let mut entry = json!({
                "ip": a.ip.to_string(),
                "sequenceNumber": a.sequence_number,
                "inUse": !leaked.contains(&a.ip),
                "owners": in_use.owners(a),
            });
            let fields = [
                ("handle", a.handle.clone()),
                ("pod", a.attrs.get(attrs::POD).cloned()),
                ("namespace", a.attrs.get(attrs::NAMESPACE).cloned()),
                ("node", Some(node.clone()).filter(|n| !n.is_empty())),
                ("type", a.attrs.get(attrs::TYPE).cloned()),
                ("creationTimestamp", a.attrs.get(attrs::TIMESTAMP).cloned()),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    entry[k] = json!(v);
                }
            }
            if affinity.as_deref().unwrap_or("") != node {
                entry["borrowed"] = json!(true);
            }
            by_ip.entry(a.ip.to_string()).or_default().push(entry);
        }
        let report_json = json!({
            "version": format!("v{}", env!("CARGO_PKG_VERSION")),
            "clusterGUID": "",
            "datastoreLocked": false,
            "clusterInformationRevision": revision.to_string(),
            "clusterType": "tabby",
            "allocations": by_ip,
            "leakedHandles": leaked_handles
                .iter()
                .map(|h| match handle_revisions.get(*h) {
                    Some(rev) => json!({"ID": h, "revision": rev.to_string()}),
                    None => json!({"ID": h}),
                })
                .collect::<Vec<_>>(),
            "problems": problems,
        });
        let text = serde_json::to_string_pretty(&report_json)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("-o {}: cannot write the report", path.display()))?;
    }
    Ok(())
}
