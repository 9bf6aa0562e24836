//! `tabby-node`: the per-node agent. Flags mirror calico-node's environment
//! (NODENAME, IP, AS, CALICO_IPV4POOL_*, CALICO_ROUTER_ID) as TABBY_* variables.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ipnet::IpNet;
use tabby_api::ippool::EncapMode;
use tabby_node::agent::{AgentConfig, DefaultPool, IpSource};
use tabby_store::StoreUrl;

#[derive(Parser, Debug)]
#[command(
    name = "tabby-node",
    version,
    about = "Tabby's per-node agent: routes, VXLAN, natOutgoing, network policy and BGP from the datastore"
)]
struct Args {
    /// Node name (default: the host name).
    #[arg(long, env = "TABBY_NODENAME")]
    node_name: Option<String>,
    /// Datastore: a SQLite path or sqlite:///path, or etcd://host:port[,host:port].
    #[arg(long, env = "TABBY_STORE")]
    store: Option<String>,
    /// Node IPv4 address with prefix, `first-found`, or `interface=NAME`.
    #[arg(long, env = "TABBY_IP", default_value = "first-found")]
    ip: String,
    /// Node IPv6 address with prefix.
    #[arg(long, env = "TABBY_IP6")]
    ip6: Option<IpNet>,
    /// AS number for this node (default: inherit the cluster's).
    #[arg(long = "as", env = "TABBY_AS")]
    asn: Option<u32>,
    /// Node labels, `key=value`, repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Make this node a route reflector with this cluster ID.
    #[arg(long, env = "TABBY_RR_CLUSTER_ID")]
    route_reflector_cluster_id: Option<Ipv4Addr>,
    /// CIDR of the pool created when none exists (`none` to create none).
    #[arg(long, env = "TABBY_IPV4POOL_CIDR", default_value = "192.168.0.0/16")]
    default_ipv4_pool_cidr: String,
    /// Block size of that pool.
    #[arg(long, env = "TABBY_IPV4POOL_BLOCK_SIZE", default_value_t = 26)]
    default_ipv4_pool_block_size: u8,
    /// vxlanMode of that pool: Never, Always or CrossSubnet.
    #[arg(long, env = "TABBY_IPV4POOL_VXLAN", default_value = "Never")]
    default_ipv4_pool_vxlan: String,
    /// natOutgoing of that pool.
    #[arg(long, env = "TABBY_IPV4POOL_NAT_OUTGOING", default_value_t = true, action = clap::ArgAction::Set)]
    default_ipv4_pool_nat_outgoing: bool,
    /// Workload interface prefix.
    #[arg(long, env = "TABBY_INTERFACE_PREFIX", default_value = "cali")]
    interface_prefix: String,
    /// Pod MTU (default: host MTU minus encapsulation overhead).
    #[arg(long, env = "TABBY_MTU")]
    mtu: Option<u32>,
    /// Full resync period, seconds (Calico's routeRefreshInterval default). Drift is
    /// repaired on the netlink event; the resync is the safety net.
    #[arg(long, default_value_t = 90)]
    resync_secs: u64,
    /// Control socket for `tabbyctl node status`.
    #[arg(long, env = "TABBY_NODE_SOCKET", default_value = tabby_node::status::DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
    /// Address for /metrics, /liveness and /readiness (e.g. 127.0.0.1:9099).
    #[arg(long, env = "TABBY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Directory with BGP password secrets, `<dir>/<secret>/<key>`.
    #[arg(long, env = "TABBY_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Do not run BGP (VXLAN-only clusters).
    #[arg(long)]
    no_bgp: bool,
    /// Do not program natOutgoing.
    #[arg(long)]
    no_nat: bool,
    /// Do not enforce network policy (workload traffic is then not filtered).
    #[arg(long)]
    no_policy: bool,
    /// BGP router ID (default: the node's IPv4 address).
    #[arg(long, env = "TABBY_ROUTER_ID")]
    router_id: Option<Ipv4Addr>,
    /// BGP connect retry, seconds.
    #[arg(long, default_value_t = 5)]
    bgp_connect_retry: u64,
    /// BGP hold time, seconds.
    #[arg(long, default_value_t = 90)]
    bgp_hold_time: u16,
    /// Where `nodename` and `mtu` are written for the CNI plugin.
    #[arg(long, env = "TABBY_STATE_DIR", default_value = "/var/lib/tabby")]
    state_dir: PathBuf,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn encap(flag: &str, s: &str) -> anyhow::Result<EncapMode> {
    match s {
        "Never" | "never" => Ok(EncapMode::Never),
        "Always" | "always" => Ok(EncapMode::Always),
        "CrossSubnet" | "crosssubnet" | "cross-subnet" => Ok(EncapMode::CrossSubnet),
        _ => bail!("{flag} {s:?}: expected Never, Always or CrossSubnet"),
    }
}

fn config(a: Args) -> anyhow::Result<(AgentConfig, bool)> {
    let node = match a.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --node-name and the host name is unreadable")?
            .trim()
            .to_string(),
    };
    // A name the store would refuse fails now, naming the flag, rather than
    // being retried forever as "datastore not ready".
    let probe = tabby_api::Resource::with_spec(
        &node,
        None,
        tabby_api::Spec::Node(tabby_api::node::NodeSpec::default()),
    );
    if let Err(e) = probe.validate() {
        bail!("--node-name {node:?}: {e}");
    }
    let store = match a.store {
        Some(s) => StoreUrl::parse(&s).with_context(|| format!("--store {s:?}"))?,
        None => StoreUrl::default(),
    };
    let mut c = AgentConfig::new(&node, store);
    c.ip = a.ip.parse::<IpSource>().map_err(anyhow::Error::msg)?;
    c.ip6 = a.ip6;
    c.asn = a.asn;
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: expected KEY=VALUE");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    c.labels = labels;
    c.rr_cluster_id = a.route_reflector_cluster_id;
    c.default_pool = if a.default_ipv4_pool_cidr == "none" {
        None
    } else {
        let cidr: IpNet = a.default_ipv4_pool_cidr.parse().with_context(|| {
            format!(
                "--default-ipv4-pool-cidr {:?}: not a CIDR",
                a.default_ipv4_pool_cidr
            )
        })?;
        if !(20..=32).contains(&a.default_ipv4_pool_block_size) {
            bail!(
                "--default-ipv4-pool-block-size {}: outside 20..=32 for IPv4",
                a.default_ipv4_pool_block_size
            );
        }
        Some(DefaultPool {
            cidr,
            block_size: a.default_ipv4_pool_block_size,
            vxlan: encap("--default-ipv4-pool-vxlan", &a.default_ipv4_pool_vxlan)?,
            nat_outgoing: a.default_ipv4_pool_nat_outgoing,
        })
    };
    c.interface_prefix = a.interface_prefix;
    c.mtu = a.mtu;
    c.resync = Duration::from_secs(a.resync_secs.max(1));
    c.control_socket = a.control_socket;
    c.metrics_listen = a.metrics_listen;
    c.secrets_dir = a.secrets_dir;
    c.bgp = !a.no_bgp;
    c.nat = !a.no_nat;
    c.policy = !a.no_policy;
    c.router_id = a.router_id;
    c.bgp_connect_retry = a.bgp_connect_retry;
    c.bgp_hold_time = a.bgp_hold_time;
    c.state_dir = a.state_dir;
    Ok((c, a.log_json))
}

fn main() -> anyhow::Result<()> {
    let (cfg, json) = config(Args::parse())?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TABBY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        sub.json().init();
    } else {
        sub.init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(tabby_node::agent::run(cfg))
}
