//! The agent's event loop: start-up (register the Node, default pool, tunnel
//! address, sysctls), then a loop that wakes on store changes, BGP best-path changes,
//! netlink events and a resync timer, recomputes the desired state and applies it.
//! The store being unreachable never tears anything down: the last good view is
//! kept, retried, and fully resynced when the store answers again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::StreamExt;
use ipnet::IpNet;
use tabby_api::ippool::{EncapMode, IPPoolSpec};
use tabby_api::node::{NodeAddress, NodeAddressType, NodeBGPSpec, NodeSpec};
use tabby_api::{ASNumber, Kind, Resource, Spec};
use tabby_bgp::{BgpHandle, InstanceConfig, PeerConfig};
use tabby_client::Client;
use tabby_dataplane::{Netlink, NetlinkEvent, RtNetlink, Sysctl, TABBY_ROUTE_PROTOCOL};
use tabby_ipam::TunnelKind;
use tabby_store::StoreUrl;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::desired::{self, Advertisement, Desired, KernelView, Settings, VXLAN_DEVICE};
use crate::metrics::{Health, Metrics};
use crate::peers::{DerivedBgp, FileEnvSecrets, PeerInputs};
use crate::reconcile::Reconciler;
use crate::snapshot::StoreView;
use crate::status::{PeerRow, StatusReport};

/// How the node's address is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpSource {
    /// Given (`--ip 198.18.0.1/24`).
    Explicit(IpNet),
    /// Calico's `first-found`: the first global IPv4 address on an interface that
    /// is not a known virtual one.
    FirstFound,
    /// Calico's `interface=NAME`: the first address on that interface.
    Interface(String),
}

impl std::str::FromStr for IpSource {
    type Err = String;
    fn from_str(s: &str) -> Result<IpSource, String> {
        if s == "first-found" || s == "autodetect" {
            return Ok(IpSource::FirstFound);
        }
        if let Some(i) = s.strip_prefix("interface=") {
            return Ok(IpSource::Interface(i.to_string()));
        }
        s.parse::<IpNet>().map(IpSource::Explicit).map_err(|_| {
            format!("--ip {s:?}: expected an address with prefix (198.18.0.1/24), first-found, or interface=NAME")
        })
    }
}

/// The pool created when the store has none (calico-node's CALICO_IPV4POOL_*).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultPool {
    /// `CALICO_IPV4POOL_CIDR` (Calico: 192.168.0.0/16).
    pub cidr: IpNet,
    /// `CALICO_IPV4POOL_BLOCK_SIZE` (26).
    pub block_size: u8,
    /// `CALICO_IPV4POOL_VXLAN` (Never).
    pub vxlan: EncapMode,
    /// `CALICO_IPV4POOL_NAT_OUTGOING` (true).
    pub nat_outgoing: bool,
}

/// Everything the agent is told at start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name.
    pub node_name: String,
    /// Datastore.
    pub store: StoreUrl,
    /// Node IPv4 address.
    pub ip: IpSource,
    /// Node IPv6 address.
    pub ip6: Option<IpNet>,
    /// AS number to store on the Node (`None` = inherit the cluster's).
    pub asn: Option<u32>,
    /// Labels to set on the Node.
    pub labels: BTreeMap<String, String>,
    /// Route reflector cluster ID to set on the Node.
    pub rr_cluster_id: Option<Ipv4Addr>,
    /// Pool to create when there is none.
    pub default_pool: Option<DefaultPool>,
    /// Workload interface prefix.
    pub interface_prefix: String,
    /// Pod MTU override.
    pub mtu: Option<u32>,
    /// Periodic full resync.
    pub resync: Duration,
    /// Control socket for `tabbyctl node status`.
    pub control_socket: PathBuf,
    /// Prometheus metrics and health endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of BGP password secrets (`<dir>/<secret>/<key>`).
    pub secrets_dir: Option<PathBuf>,
    /// Run the BGP speaker.
    pub bgp: bool,
    /// BGP router ID override (`CALICO_ROUTER_ID`).
    pub router_id: Option<Ipv4Addr>,
    /// BGP connect retry, seconds.
    pub bgp_connect_retry: u64,
    /// BGP hold time, seconds.
    pub bgp_hold_time: u16,
    /// Program natOutgoing with nftables.
    pub nat: bool,
    /// Enforce network policy with nftables.
    pub policy: bool,
    /// How long learned routes survive a restart before peers must have re-sent them.
    pub restart_grace: Duration,
    /// Where `nodename` and `mtu` are written for the CNI plugin (Calico's
    /// `/var/lib/calico`).
    pub state_dir: PathBuf,
}

impl AgentConfig {
    /// Defaults for everything but the node name and store.
    pub fn new(node_name: &str, store: StoreUrl) -> AgentConfig {
        AgentConfig {
            node_name: node_name.to_string(),
            store,
            ip: IpSource::FirstFound,
            ip6: None,
            asn: None,
            labels: BTreeMap::new(),
            rr_cluster_id: None,
            default_pool: Some(DefaultPool {
                cidr: "192.168.0.0/16".parse().expect("valid CIDR"),
                block_size: 26,
                vxlan: EncapMode::Never,
                nat_outgoing: true,
            }),
            interface_prefix: "cali".into(),
            mtu: None,
            resync: Duration::from_secs(30),
            control_socket: PathBuf::from(crate::status::DEFAULT_CONTROL_SOCKET),
            metrics_listen: None,
            secrets_dir: None,
            bgp: true,
            router_id: None,
            bgp_connect_retry: 5,
            bgp_hold_time: 90,
            nat: true,
            policy: true,
            restart_grace: Duration::from_secs(30),
            state_dir: PathBuf::from("/var/lib/tabby"),
        }
    }
}

const SKIP_IFACE_PREFIXES: &[&str] = &[
    "lo",
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "cali",
    "tunl",
    "flannel",
    "kube-ipvs",
    "cni",
    "vxlan",
    "wireguard",
    "wg",
];

/// Finds the node address on this host (in the agent's namespace).
pub async fn detect_ip(nl: &dyn Netlink, src: &IpSource) -> anyhow::Result<(IpNet, u32)> {
    let links = nl.links().await?;
    let addrs = nl.addresses(None).await?;
    let find_on = |index: u32| {
        addrs
            .iter()
            .find(|a| a.index == index && a.net.addr().is_ipv4())
            .map(|a| a.net)
    };
    match src {
        IpSource::Explicit(net) => {
            let on = addrs
                .iter()
                .find(|a| a.net.addr() == net.addr())
                .map(|a| a.index);
            match on {
                Some(i) => Ok((*net, i)),
                None => bail!(
                    "--ip {net}: no interface in this namespace has {}; check the address",
                    net.addr()
                ),
            }
        }
        IpSource::Interface(name) => {
            let l = links
                .iter()
                .find(|l| &l.name == name)
                .with_context(|| format!("--ip interface={name}: no such interface"))?;
            let net = find_on(l.index)
                .with_context(|| format!("--ip interface={name}: it has no IPv4 address"))?;
            Ok((net, l.index))
        }
        IpSource::FirstFound => {
            for l in links.iter().filter(|l| l.up) {
                if SKIP_IFACE_PREFIXES.iter().any(|p| l.name.starts_with(p)) {
                    continue;
                }
                if let Some(net) = find_on(l.index)
                    && !net.addr().is_loopback()
                {
                    return Ok((net, l.index));
                }
            }
            bail!(
                "--ip first-found: no up interface with an IPv4 address (skipping {}); pass --ip ADDRESS/PREFIX",
                SKIP_IFACE_PREFIXES.join(", ")
            )
        }
    }
}

/// Registers or updates this node's Node resource.
pub async fn register_node(
    client: &Client,
    cfg: &AgentConfig,
    ipv4: IpNet,
) -> anyhow::Result<Resource> {
    let name = &cfg.node_name;
    let apply = |r: &mut Resource| {
        for (k, v) in &cfg.labels {
            r.metadata.labels.insert(k.clone(), v.clone());
        }
        if let Spec::Node(n) = &mut r.spec {
            let bgp = n.bgp.get_or_insert_with(NodeBGPSpec::default);
            bgp.ipv4_address = Some(ipv4.to_string());
            if let Some(v6) = cfg.ip6 {
                bgp.ipv6_address = Some(v6.to_string());
            }
            if let Some(asn) = cfg.asn {
                bgp.as_number = Some(ASNumber::new(asn));
            }
            if let Some(id) = cfg.rr_cluster_id {
                bgp.route_reflector_cluster_id = Some(id.to_string());
            }
            let mut addrs = vec![NodeAddress {
                address: ipv4.to_string(),
                type_: Some(NodeAddressType::CalicoNodeIp),
            }];
            if let Some(v6) = cfg.ip6 {
                addrs.push(NodeAddress {
                    address: v6.to_string(),
                    type_: Some(NodeAddressType::CalicoNodeIp),
                });
            }
            n.addresses = addrs;
        }
    };
    match client.get(Kind::Node, None, name).await? {
        Some(_) => Ok(client
            .modify(Kind::Node, None, name, |r| {
                apply(r);
                Ok(())
            })
            .await?),
        None => {
            let mut r = Resource::with_spec(name, None, Spec::Node(NodeSpec::default()));
            apply(&mut r);
            match client.create(r).await {
                Ok(r) => Ok(r),
                Err(tabby_client::ClientError::AlreadyExists { .. }) => Ok(client
                    .modify(Kind::Node, None, name, |r| {
                        apply(r);
                        Ok(())
                    })
                    .await?),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Creates the default pool when the store has no pool at all.
pub async fn ensure_default_pool(client: &Client, pool: &DefaultPool) -> anyhow::Result<bool> {
    if !client.list(Kind::IPPool, None).await?.is_empty() {
        return Ok(false);
    }
    let spec = IPPoolSpec {
        cidr: Some(pool.cidr),
        block_size: Some(i32::from(pool.block_size)),
        vxlan_mode: Some(pool.vxlan),
        ipip_mode: Some(EncapMode::Never),
        nat_outgoing: Some(pool.nat_outgoing),
        ..Default::default()
    };
    let r = Resource::with_spec("default-ipv4-ippool", None, Spec::IPPool(spec));
    match client.create(r).await {
        Ok(_) => Ok(true),
        Err(tabby_client::ClientError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("create the default IP pool")),
    }
}

/// Makes sure the node has a VXLAN tunnel address (and MAC) when a pool needs one.
async fn ensure_vxlan_tunnel(
    client: &Client,
    snap: &desired::Snapshot,
    node: &str,
) -> anyhow::Result<bool> {
    let vxlan_pools: Vec<String> = snap
        .pools
        .iter()
        .filter(|p| !p.disabled && p.cidr.addr().is_ipv4() && p.vxlan != EncapMode::Never)
        .map(|p| p.name.clone())
        .collect();
    let me = snap.nodes.iter().find(|n| n.name == node);
    if vxlan_pools.is_empty() || me.is_some_and(|n| n.vxlan_tunnel_ip.is_some()) {
        return Ok(false);
    }
    let ipam = tabby_client::ipam::ipam_for(client);
    let ip = ipam
        .ensure_tunnel_address(node, TunnelKind::Vxlan, &vxlan_pools)
        .await
        .context("allocate the VXLAN tunnel address")?;
    let mac = desired::vxlan_mac_for(node);
    client
        .modify(Kind::Node, None, node, |r| {
            if let Spec::Node(n) = &mut r.spec {
                n.ipv4_vxlan_tunnel_addr = Some(ip.to_string());
                if n.vxlan_tunnel_mac_addr.is_none() {
                    n.vxlan_tunnel_mac_addr = Some(tabby_dataplane::model::format_mac(&mac));
                }
            }
            Ok(())
        })
        .await?;
    info!(%ip, "allocated the VXLAN tunnel address");
    Ok(true)
}

/// Host sysctls the agent needs.
pub fn host_sysctls() -> Vec<(String, String)> {
    [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// State shared with the status and metrics endpoints.
pub struct Shared {
    /// Node name.
    pub node: String,
    /// The BGP speaker, once running.
    pub bgp: Mutex<Option<BgpHandle>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
    /// Routes installed after the last pass.
    pub routes_installed: Mutex<u64>,
    /// Unix time of the last successful pass.
    pub last_reconcile: Mutex<Option<u64>>,
}

impl Shared {
    /// The status report for the control socket.
    pub async fn report(&self) -> StatusReport {
        let bgp = self.bgp.lock().expect("lock poisoned").clone();
        let peers = match bgp {
            Some(h) => h.peers().await.unwrap_or_default(),
            None => Vec::new(),
        };
        StatusReport {
            node: self.node.clone(),
            running: true,
            peers: peers.iter().map(PeerRow::from_status).collect(),
            routes_installed: *self.routes_installed.lock().expect("lock poisoned"),
            last_reconcile_unix: *self.last_reconcile.lock().expect("lock poisoned"),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The running BGP side: instance-level settings and the peers we configured.
struct BgpState {
    handle: BgpHandle,
    instance: InstanceConfig,
    peers: BTreeMap<IpAddr, PeerConfig>,
    exports: BTreeMap<IpNet, Advertisement>,
}

enum Wake {
    Store,
    Kernel,
    Routes,
    Resync,
    Stop,
}

/// Runs the agent until SIGTERM/SIGINT. On SIGTERM routes stay in place and BGP
/// closes without a NOTIFICATION, so peers keep our routes (graceful restart).
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let nl: Arc<dyn Netlink> = Arc::new(RtNetlink::current()?);
    let sysctl = tabby_dataplane::ProcSysctl::current();
    // Signals first, so a SIGTERM during start-up is never the default (fatal) action.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    let (ipv4, uplink) = detect_ip(nl.as_ref(), &cfg.ip).await?;
    info!(node = %cfg.node_name, %ipv4, "starting");
    sysctl
        .set_all(&host_sysctls())
        .context("set the host sysctls")?;
    let ipip_supported = probe_ipip(nl.as_ref()).await;
    if !nl
        .routes(tabby_dataplane::Family::V4)
        .await
        .unwrap_or_default()
        .iter()
        .any(|r| r.dst.prefix_len() == 0)
    {
        warn!(
            "no IPv4 default route: proxy ARP will not answer pods for their 169.254.1.1 gateway until there is one"
        );
    }

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let shared = Arc::new(Shared {
        node: cfg.node_name.clone(),
        bgp: Mutex::new(None),
        metrics: metrics.clone(),
        health: health.clone(),
        routes_installed: Mutex::new(0),
        last_reconcile: Mutex::new(None),
    });
    if let Some(addr) = cfg.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-listen {addr}"))?;
        tokio::spawn(crate::metrics::serve(l, metrics.clone(), health.clone()));
    }
    if let Some(dir) = cfg.control_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    {
        let shared = shared.clone();
        let path = cfg.control_socket.clone();
        tokio::spawn(async move {
            let r = crate::status::serve_control(&path, move || {
                let shared = shared.clone();
                Box::pin(async move { shared.report().await })
            })
            .await;
            if let Err(e) = r {
                warn!(error = %e, "control socket stopped");
            }
        });
    }

    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("create {}", cfg.state_dir.display()))?;
    write_if_changed(&cfg.state_dir.join("nodename"), &cfg.node_name)?;

    // The store: wait for it (never touching the data plane meanwhile).
    let client = loop {
        match connect_and_register(&cfg, ipv4).await {
            Ok(c) => break c,
            Err(e) => {
                metrics.inc_store_errors();
                metrics.set_store_connected(false);
                warn!(error = %format!("{e:#}"), "datastore not ready; retrying in 2s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = sigterm.recv() => return Ok(()),
                    _ = sigint.recv() => return Ok(()),
                }
            }
        }
    };
    metrics.set_store_connected(true);

    let (wake_tx, mut wake_rx) = mpsc::channel::<Wake>(1024);
    spawn_store_watch(client.clone(), wake_tx.clone(), metrics.clone());
    match tabby_dataplane::monitor(None) {
        Ok(mut events) => {
            let tx = wake_tx.clone();
            let prefix = cfg.interface_prefix.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    let relevant = match &ev {
                        NetlinkEvent::Route { route, .. } => route.protocol == TABBY_ROUTE_PROTOCOL,
                        NetlinkEvent::Link { name, .. } => {
                            name.starts_with(&prefix) || name == VXLAN_DEVICE
                        }
                        NetlinkEvent::Neighbour { .. } => true,
                        NetlinkEvent::Other => false,
                    };
                    if relevant && tx.try_send(Wake::Kernel).is_err() {
                        // The loop is busy and will look at the kernel anyway.
                    }
                }
            });
        }
        Err(e) => warn!(error = %e, "no netlink monitor; relying on the periodic resync"),
    }
    {
        let tx = wake_tx.clone();
        let every = cfg.resync;
        tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.tick().await;
            loop {
                t.tick().await;
                if tx.send(Wake::Resync).await.is_err() {
                    break;
                }
            }
        });
    }

    let secrets = FileEnvSecrets {
        dir: cfg.secrets_dir.clone(),
    };
    let reconciler = Reconciler::new(nl.clone(), &cfg.interface_prefix);
    let nft = crate::nat::best_nft();
    let mut last_fw: Option<crate::firewall::Applied> = None;
    let mut policy: Option<tabby_policy::compile::Compiled> = None;
    // Bandwidth limits (issue 8): see crate::qos.
    let tc = tabby_dataplane::tc::TcCli::new();
    let mut qos_state = crate::qos::QosState::default();
    let mut view: Option<(StoreView, desired::Snapshot)> = None;
    let mut bgp: Option<BgpState> = None;
    let learned: Arc<Mutex<BTreeMap<IpNet, Vec<IpAddr>>>> = Arc::default();
    let started = Instant::now();
    let mut store_dirty = true;
    // When every BGP peer was first seen Established after start.
    let mut all_up_since: Option<Instant> = None;
    let mut resync = true;
    let mut last_problems: Vec<String> = Vec::new();
    let host_mtu = nl
        .links()
        .await?
        .into_iter()
        .find(|l| l.index == uplink)
        .and_then(|l| l.mtu)
        .unwrap_or(1500);

    loop {
        // Work out what woke us (draining everything queued meanwhile).
        let first = tokio::select! {
            w = wake_rx.recv() => w.unwrap_or(Wake::Stop),
            _ = sigterm.recv() => Wake::Stop,
            _ = sigint.recv() => Wake::Stop,
            _ = tokio::time::sleep(Duration::from_secs(1)), if view.is_none() => Wake::Store,
        };
        let mut wakes = vec![first];
        tokio::time::sleep(Duration::from_millis(2)).await;
        while let Ok(w) = wake_rx.try_recv() {
            wakes.push(w);
        }
        if wakes.iter().any(|w| matches!(w, Wake::Stop)) {
            break;
        }
        for w in &wakes {
            match w {
                Wake::Store => store_dirty = true,
                Wake::Resync => {
                    store_dirty = true;
                    resync = true;
                }
                Wake::Kernel | Wake::Routes | Wake::Stop => {}
            }
        }
        let pass_start = Instant::now();
        if store_dirty {
            match StoreView::load(&client).await {
                Ok(v) => {
                    metrics.set_store_connected(true);
                    store_dirty = false;
                    // Converted once per load, not on every kernel or BGP wake-up.
                    let snap = v.snapshot();
                    match ensure_vxlan_tunnel(&client, &snap, &cfg.node_name).await {
                        Ok(true) => {
                            // The Node changed; its own watch event brings the new view.
                        }
                        Ok(false) => {}
                        Err(e) => warn!(error = %format!("{e:#}"), "VXLAN tunnel address"),
                    }
                    if cfg.policy {
                        policy = compile_policy(&v, &cfg.node_name, policy.take());
                    }
                    view = Some((v, snap));
                }
                Err(e) => {
                    metrics.inc_store_errors();
                    metrics.set_store_connected(false);
                    warn!(error = %format!("{e:#}"), "cannot read the datastore; keeping the current data plane");
                    let tx = wake_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = tx.send(Wake::Store).await;
                    });
                }
            }
        }
        let Some((v, snap)) = &view else { continue };

        // BGP: peers and instance from the store.
        if cfg.bgp {
            let inputs = PeerInputs {
                node_name: &cfg.node_name,
                nodes: &v.nodes,
                bgp_config: v.bgp_config(),
                node_bgp_config: v.bgp_config_named(&format!("node.{}", cfg.node_name)),
                peers: &v.peers,
                filters: &v.filters,
                secrets: &secrets,
            };
            match crate::peers::derive(&inputs) {
                Ok(derived) => {
                    if let Err(e) =
                        sync_bgp(&mut bgp, derived, &cfg, &shared, &learned, &wake_tx).await
                    {
                        warn!(error = %format!("{e:#}"), "BGP configuration");
                    }
                }
                Err(e) => warn!(error = %e, "BGP peers"),
            }
        }

        // Desired state and the kernel.
        let links = reconciler.links().await.unwrap_or_default();
        let kernel = KernelView {
            links: links.clone(),
            uplink: Some(uplink),
        };
        let settings = Settings {
            node: cfg.node_name.clone(),
            ipip_supported,
            host_mtu,
            mtu_override: cfg.mtu,
            bgp_enabled: cfg.bgp,
        };
        if !snap.nodes.iter().any(|n| n.name == cfg.node_name) {
            // Our Node was deleted under us. Programming from a view without it would
            // remove every route; keep the data plane and register again.
            warn!(
                "this node's Node resource is gone; keeping the data plane and registering again"
            );
            if let Err(e) = register_node(&client, &cfg, ipv4).await {
                warn!(error = %format!("{e:#}"), "registering the Node");
            }
            store_dirty = true;
            let tx = wake_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.send(Wake::Store).await;
            });
            continue;
        }
        let learned_now = learned.lock().expect("lock poisoned").clone();
        let mut d: Desired = desired::compute(snap, &settings, &kernel, &learned_now);
        if d.problems != last_problems {
            for p in &d.problems {
                warn!("{p}");
            }
            last_problems = d.problems.clone();
        }
        let workload_ifaces: BTreeSet<u32> = snap
            .workloads
            .iter()
            .filter(|w| w.node == cfg.node_name)
            .filter_map(|w| links.get(&w.interface).copied())
            .collect();
        // Graceful restart: learned routes already in the kernel stay until every peer
        // is back and has had a moment to re-send its table, or the grace runs out.
        if all_up_since.is_none() && all_established(&bgp).await {
            all_up_since = Some(Instant::now());
        }
        let grace = started.elapsed() < cfg.restart_grace
            && all_up_since.is_none_or(|t| t.elapsed() < Duration::from_secs(2));
        if grace {
            let tx = wake_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tx.send(Wake::Kernel).await;
            });
        }
        let mut applied = reconciler.apply(&d, &links, &workload_ifaces, grace).await;
        if d.vxlan.is_some() && !links.contains_key(VXLAN_DEVICE) {
            // The device is new: routes over it can be resolved now.
            let fresh = reconciler.links().await.unwrap_or_default();
            let kernel = KernelView {
                links: fresh.clone(),
                uplink: Some(uplink),
            };
            d = desired::compute(snap, &settings, &kernel, &learned_now);
            let again = reconciler.apply(&d, &fresh, &workload_ifaces, grace).await;
            applied.routes_changed += again.routes_changed;
            applied.routes_installed = again.routes_installed;
            applied.errors = again.errors;
        }
        // Exports.
        if let Some(b) = &mut bgp {
            sync_exports(b, &d.exports).await;
        }
        // natOutgoing and network policy: one table per family, one transaction.
        if cfg.nat || cfg.policy {
            // Someone may have flushed the table: look on resync passes only (each look
            // costs a ruleset fetch).
            if resync && matches!(nft.list_table("ip"), Ok(None)) {
                last_fw = None;
            }
            let nat = cfg.nat.then_some(&d.nat);
            if let Some((batch, full)) =
                crate::firewall::plan_apply(last_fw.as_ref(), nat, policy.as_ref())
            {
                let t = Instant::now();
                match nft.apply_json(&batch) {
                    Ok(()) => {
                        debug!(secs = t.elapsed().as_secs_f64(), full, "nftables applied");
                        last_fw = Some(crate::firewall::Applied {
                            nat: nat.cloned(),
                            policy: policy.clone(),
                        });
                    }
                    Err(e) => {
                        // The kernel state is unknown now: the retry replaces it.
                        last_fw = None;
                        applied.errors.push(format!("nftables: {e}"));
                    }
                }
            }
        }
        // Bandwidth limits (issue 8): tc on the local workloads' interfaces.
        let qos_plan = crate::qos::desired(&v.workloads, &cfg.node_name);
        let qos = crate::qos::sync(
            &tc,
            &mut qos_state,
            &qos_plan,
            &links,
            &cfg.interface_prefix,
            resync,
        );
        metrics.set_bandwidth(qos_state.limited() as u64, qos.changed.len() as u64);
        applied.errors.extend(qos.errors);
        if let Err(e) = write_if_changed(&cfg.state_dir.join("mtu"), &d.mtu.to_string()) {
            applied.errors.push(format!("{e:#}"));
        }
        resync = false;
        let secs = pass_start.elapsed().as_secs_f64();
        metrics.observe_reconcile(secs);
        metrics.set_routes_installed(applied.routes_installed as u64);
        *shared.routes_installed.lock().expect("lock poisoned") = applied.routes_installed as u64;
        if applied.errors.is_empty() {
            *shared.last_reconcile.lock().expect("lock poisoned") = Some(unix_now());
            health.set_ready(true);
        } else {
            metrics.inc_reconcile_errors();
            for e in &applied.errors {
                warn!("{e}");
            }
            // Retry soon.
            let tx = wake_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.send(Wake::Kernel).await;
            });
        }
        if applied.routes_changed + applied.routes_deleted + applied.vxlan_changes > 0 {
            debug!(
                changed = applied.routes_changed,
                deleted = applied.routes_deleted,
                vxlan = applied.vxlan_changes,
                secs,
                "reconciled"
            );
        }
    }
    info!("stopping: routes stay in place, BGP closes for a graceful restart");
    if let Some(b) = bgp {
        let _ = b.handle.shutdown_for_restart().await;
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(())
}

/// Writes `text` to `path` unless it already holds exactly that (atomically, via a
/// temporary file, so the CNI plugin never reads half a number).
fn write_if_changed(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}

async fn connect_and_register(cfg: &AgentConfig, ipv4: IpNet) -> anyhow::Result<Client> {
    let store = tabby_store::open(&cfg.store)
        .await
        .with_context(|| format!("open the datastore {}", cfg.store))?;
    let client = Client::new(store);
    register_node(&client, cfg, ipv4).await?;
    if let Some(p) = &cfg.default_pool
        && ensure_default_pool(&client, p).await?
    {
        info!(cidr = %p.cidr, "created the default IP pool");
    }
    Ok(client)
}

async fn probe_ipip(nl: &dyn Netlink) -> bool {
    if nl.link_by_name("tunl0").await.ok().flatten().is_some() {
        return true;
    }
    match nl.create_ipip("tabbyprobe0").await {
        Ok(()) => {
            if let Ok(Some(l)) = nl.link_by_name("tabbyprobe0").await {
                let _ = nl.delete_link(l.index).await;
            }
            true
        }
        Err(e) => {
            info!(reason = %e, "IPIP is not available; pools with ipipMode are refused");
            false
        }
    }
}

fn spawn_store_watch(client: Client, tx: mpsc::Sender<Wake>, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            let from = match client.store().revision().await {
                Ok(r) => r + 1,
                Err(_) => {
                    metrics.inc_store_errors();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Anything may have changed while we were not watching.
            let _ = tx.send(Wake::Store).await;
            match client.store().watch("/calico/", from).await {
                Ok(mut stream) => {
                    while let Some(ev) = stream.next().await {
                        match ev {
                            Ok(tabby_store::WatchEvent::Compacted { .. }) => break,
                            Ok(_) => {
                                let _ = tx.try_send(Wake::Store);
                            }
                            Err(e) => {
                                metrics.inc_store_errors();
                                warn!(error = %e, "datastore watch failed; re-watching");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    metrics.inc_store_errors();
                    warn!(error = %e, "cannot watch the datastore; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

async fn all_established(bgp: &Option<BgpState>) -> bool {
    match bgp {
        None => true,
        Some(b) => match b.handle.peers().await {
            Ok(p) => p.iter().all(|p| p.state == "Established"),
            Err(_) => false,
        },
    }
}

async fn sync_bgp(
    state: &mut Option<BgpState>,
    derived: DerivedBgp,
    cfg: &AgentConfig,
    shared: &Arc<Shared>,
    learned: &Arc<Mutex<BTreeMap<IpNet, Vec<IpAddr>>>>,
    wake: &mpsc::Sender<Wake>,
) -> anyhow::Result<()> {
    for w in &derived.warnings {
        warn!("{w}");
    }
    let instance = InstanceConfig {
        router_id: cfg.router_id.unwrap_or(derived.router_id),
        asn: derived.asn,
        listen: Some(derived.listen),
        cluster_id: derived.cluster_id,
        hold_time: cfg.bgp_hold_time,
        connect_retry_secs: cfg.bgp_connect_retry,
        idle_hold_secs: cfg.bgp_connect_retry.min(5),
        graceful_restart_time: 120,
    };
    if state.as_ref().is_some_and(|s| s.instance != instance) {
        info!("BGP instance settings changed; restarting the speaker");
        let old = state.take().expect("checked above");
        let _ = old.handle.shutdown().await;
        learned.lock().expect("lock poisoned").clear();
    }
    if state.is_none() {
        let handle = tabby_bgp::start(instance.clone())
            .await
            .context("start the BGP speaker")?;
        let mut routes = handle.subscribe_routes();
        let learned = learned.clone();
        let tx = wake.clone();
        let dump = handle.clone();
        tokio::spawn(async move {
            loop {
                match routes.recv().await {
                    Ok(change) => {
                        {
                            let mut l = learned.lock().expect("lock poisoned");
                            if change.next_hops.is_empty() {
                                l.remove(&change.prefix);
                            } else {
                                l.insert(change.prefix, change.next_hops);
                            }
                        }
                        let _ = tx.try_send(Wake::Routes);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Changes were lost: take the whole table instead.
                        warn!(missed = n, "BGP route events lagged; reloading the table");
                        if let Ok(all) = dump.best_paths().await {
                            let mut l = learned.lock().expect("lock poisoned");
                            *l = all.into_iter().map(|c| (c.prefix, c.next_hops)).collect();
                        }
                        let _ = tx.try_send(Wake::Routes);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        *shared.bgp.lock().expect("lock poisoned") = Some(handle.clone());
        *state = Some(BgpState {
            handle,
            instance,
            peers: BTreeMap::new(),
            exports: BTreeMap::new(),
        });
    }
    let s = state.as_mut().expect("started above");
    let want: BTreeMap<IpAddr, PeerConfig> =
        derived.peers.into_iter().map(|p| (p.address, p)).collect();
    let gone: Vec<IpAddr> = s
        .peers
        .keys()
        .filter(|a| !want.contains_key(a))
        .copied()
        .collect();
    for a in gone {
        if let Err(e) = s.handle.remove_peer(a).await {
            warn!(peer = %a, error = %e, "remove BGP peer");
        }
        s.peers.remove(&a);
    }
    for (a, p) in want {
        match s.peers.get(&a) {
            Some(old) if *old == p => {}
            Some(_) => match s.handle.update_peer(p.clone()).await {
                Ok(()) => {
                    s.peers.insert(a, p);
                }
                Err(e) => warn!(peer = %a, error = %e, "update BGP peer"),
            },
            None => match s.handle.add_peer(p.clone()).await {
                Ok(()) => {
                    info!(peer = %a, kind = %p.type_label, "BGP peer added");
                    s.peers.insert(a, p);
                }
                Err(e) => warn!(peer = %a, error = %e, "add BGP peer"),
            },
        }
    }
    let peers = s.handle.peers().await.unwrap_or_default();
    let up = peers.iter().filter(|p| p.state == "Established").count();
    shared
        .metrics
        .set_bgp_sessions(up as u64, peers.len() as u64);
    Ok(())
}

async fn sync_exports(b: &mut BgpState, want: &BTreeMap<IpNet, Advertisement>) {
    let gone: Vec<IpNet> = b
        .exports
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    if !gone.is_empty() && b.handle.withdraw(gone.clone()).await.is_ok() {
        for g in gone {
            b.exports.remove(&g);
        }
    }
    let mut groups: BTreeMap<&Advertisement, Vec<IpNet>> = BTreeMap::new();
    for (net, adv) in want {
        if b.exports.get(net) != Some(adv) {
            groups.entry(adv).or_default().push(*net);
        }
    }
    for (adv, nets) in groups {
        let attrs = tabby_bgp::api::OriginAttrs {
            communities: adv.communities.clone(),
            large_communities: adv
                .large_communities
                .iter()
                .map(|(a, b, c)| tabby_bgp::packet::attribute::LargeCommunity {
                    global: *a,
                    local1: *b,
                    local2: *c,
                })
                .collect(),
            ..Default::default()
        };
        if b.handle.originate_with(nets.clone(), attrs).await.is_ok() {
            for n in nets {
                b.exports.insert(n, adv.clone());
            }
        }
    }
}

/// Compiles the policy for the local workloads; on a bad model keeps `previous`
/// (enforcement never silently disappears because one resource is wrong).
fn compile_policy(
    v: &StoreView,
    node: &str,
    previous: Option<tabby_policy::compile::Compiled>,
) -> Option<tabby_policy::compile::Compiled> {
    let mut resources = v.workloads.clone();
    resources.extend(v.policy.iter().cloned());
    match crate::firewall::compile_local(&resources, node) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "network policy: keeping the last good rules");
            previous
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabby_dataplane::fake::FakeWorld;

    #[test]
    fn ip_source_parses() {
        assert_eq!("first-found".parse::<IpSource>(), Ok(IpSource::FirstFound));
        assert_eq!(
            "interface=eth0".parse::<IpSource>(),
            Ok(IpSource::Interface("eth0".into()))
        );
        assert_eq!(
            "198.18.0.1/24".parse::<IpSource>(),
            Ok(IpSource::Explicit("198.18.0.1/24".parse().unwrap()))
        );
        assert!("nonsense".parse::<IpSource>().unwrap_err().contains("--ip"));
    }

    #[tokio::test]
    async fn first_found_skips_virtual_interfaces() {
        let w = FakeWorld::new();
        let nl = w.netlink("h");
        let cali = w.add_link("h", "cali123", Some("veth"), 1500);
        let eth = w.add_link("h", "eth0", Some("veth"), 1500);
        nl.set_link(
            cali,
            &tabby_dataplane::LinkAttrs {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        nl.set_link(
            eth,
            &tabby_dataplane::LinkAttrs {
                up: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        nl.add_address(cali, "100.64.0.1/32".parse().unwrap())
            .await
            .unwrap();
        nl.add_address(eth, "198.18.0.7/24".parse().unwrap())
            .await
            .unwrap();
        let (net, idx) = detect_ip(&nl, &IpSource::FirstFound).await.unwrap();
        assert_eq!((net, idx), ("198.18.0.7/24".parse().unwrap(), eth));
        let err = detect_ip(&nl, &IpSource::Explicit("198.18.9.9/24".parse().unwrap()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("198.18.9.9"));
    }
}
