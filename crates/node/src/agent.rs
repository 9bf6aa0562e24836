//! The agent's edges: start-up (detect the address, set sysctls, register the
//! Node, create the default pool), the real drivers, and the tasks that turn the
//! store (one snapshot, then a watch), the kernel's notifications, BGP best paths
//! and timers into [`Input`]s for the state machine in [`crate::machine`], which
//! does the work. The store being unreachable never tears anything down: the view
//! is kept, and a watch that lost events (compaction) takes a fresh snapshot that
//! the view diffs against what it holds.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use tabby_api::ippool::{EncapMode, IPPoolSpec};
use tabby_api::node::{NodeAddress, NodeAddressType, NodeBGPSpec, NodeSpec};
use tabby_api::{ASNumber, Kind, Resource, Spec};
use tabby_client::Client;
use tabby_dataplane::{Netlink, NetlinkEvent, RtNetlink, Sysctl};
use tabby_ipam::TunnelKind;
use tabby_store::{Datastore, Revision, StoreError, StoreUrl, WatchEvent};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::desired::VXLAN_DEVICE;
use crate::drivers::{Drivers, Speaker, TabbyBgp};
use crate::machine::{Agent, Input};
use crate::metrics::{Health, Metrics};
use crate::status::{PeerRow, StatusReport};
use crate::view::{KeyClass, classify};

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
    /// `/liveness` fails once the event loop has not turned for this long.
    pub liveness_deadline: Duration,
    /// `/readiness` fails once the store has been unreachable for this long.
    pub store_grace: Duration,
    /// How often the BGP speaker is asked whether it is alive.
    pub speaker_check: Duration,
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
            resync: Duration::from_secs(90),
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
            liveness_deadline: Duration::from_secs(60),
            store_grace: Duration::from_secs(30),
            speaker_check: Duration::from_secs(5),
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

/// Allocates this node's VXLAN tunnel address from `pools` and stores it (with its
/// MAC) on the Node; the Node's watch event brings it back to the view.
pub(crate) async fn allocate_vxlan_tunnel(
    client: &Client,
    node: &str,
    pools: &[String],
) -> anyhow::Result<()> {
    let ipam = tabby_client::ipam::ipam_for(client);
    let ip = ipam
        .ensure_tunnel_address(node, TunnelKind::Vxlan, pools)
        .await
        .context("allocate the VXLAN tunnel address")?;
    let mac = crate::desired::vxlan_mac_for(node);
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
    Ok(())
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
    pub bgp: Mutex<Option<Arc<dyn Speaker>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
    /// Routes installed after the last pass.
    pub routes_installed: Mutex<u64>,
    /// Unix time of the last successful pass.
    pub last_reconcile: Mutex<Option<u64>>,
    /// What the operator must know (skipped resources, refused settings).
    pub problems: Mutex<Vec<String>>,
}

impl Shared {
    /// Fresh state for node `node`.
    pub fn new(node: &str, metrics: Arc<Metrics>, health: Arc<Health>) -> Shared {
        Shared {
            node: node.to_string(),
            bgp: Mutex::new(None),
            metrics,
            health,
            routes_installed: Mutex::new(0),
            last_reconcile: Mutex::new(None),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// The status report for the control socket.
    pub async fn report(&self) -> StatusReport {
        let bgp = self.bgp.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let peers = match bgp {
            Some(h) => h.peers().await.unwrap_or_default(),
            None => Vec::new(),
        };
        StatusReport {
            node: self.node.clone(),
            running: true,
            peers: peers.iter().map(PeerRow::from_status).collect(),
            routes_installed: *self
                .routes_installed
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            last_reconcile_unix: *self
                .last_reconcile
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            problems: self
                .problems
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the agent until SIGTERM/SIGINT. On SIGTERM routes stay in place and BGP
/// closes without a NOTIFICATION, so peers keep our routes (graceful restart).
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let nl: Arc<dyn Netlink> = Arc::new(RtNetlink::current()?);
    let sysctl = Arc::new(tabby_dataplane::ProcSysctl::current());
    // Signals first, so a SIGTERM during start-up is never the default (fatal) action.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    let (ipv4, uplink) = detect_ip(nl.as_ref(), &cfg.ip).await?;
    info!(node = %cfg.node_name, %ipv4, "starting");
    sysctl
        .set_all(&host_sysctls())
        .context("set the host sysctls")?;
    let ipip_supported = probe_ipip(nl.as_ref()).await;
    let routes_at_start = nl
        .routes(tabby_dataplane::Family::V4)
        .await
        .unwrap_or_default();
    let forwarding_preserved = routes_at_start
        .iter()
        .any(|r| r.protocol == tabby_dataplane::TABBY_ROUTE_PROTOCOL);
    if !routes_at_start.iter().any(|r| r.dst.prefix_len() == 0) {
        warn!(
            "no IPv4 default route: proxy ARP will not answer pods for their 169.254.1.1 gateway until there is one"
        );
    }

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    health.set_deadline(cfg.liveness_deadline);
    health.turned();
    let shared = Arc::new(Shared::new(&cfg.node_name, metrics.clone(), health.clone()));
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
        health.turned();
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

    let host_mtu = nl
        .links()
        .await?
        .into_iter()
        .find(|l| l.index == uplink)
        .and_then(|l| l.mtu)
        .unwrap_or(1500);
    let (tx, mut rx) = mpsc::channel::<Input>(256);
    spawn_store_feed(client.store().clone(), tx.clone());
    match tabby_dataplane::monitor(None) {
        Ok(events) => spawn_kernel_feed(events, cfg.interface_prefix.clone(), tx.clone()),
        Err(e) => warn!(error = %e, "no netlink monitor; relying on the periodic resync"),
    }
    spawn_timer(cfg.resync, tx.clone(), || Input::Resync);
    spawn_timer(Duration::from_secs(1), tx.clone(), || Input::Tick);

    let drivers = Drivers {
        netlink: nl.clone(),
        sysctl,
        nft: Arc::from(crate::nat::best_nft()),
        tc: Arc::new(tabby_dataplane::tc::TcCli::new()),
        bgp: Arc::new(TabbyBgp),
    };
    let restart_grace = cfg.restart_grace;
    let control_socket = cfg.control_socket.clone();
    let mut agent = Agent::new(
        cfg,
        drivers,
        Some(client),
        shared.clone(),
        ipv4,
        uplink,
        ipip_supported,
        host_mtu,
    );
    agent.set_forwarding_preserved(forwarding_preserved);
    let mut speaker: Option<Arc<dyn Speaker>> = None;
    loop {
        let first = tokio::select! {
            i = rx.recv() => i,
            _ = sigterm.recv() => None,
            _ = sigint.recv() => None,
        };
        let Some(first) = first else { break };
        health.turned();
        // Everything queued meanwhile is applied before the work is done once.
        let tick = matches!(first, Input::Tick);
        let mut busy = !tick;
        let mut snapshot = matches!(first, Input::Snapshot { .. });
        agent.step(first);
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(i) => {
                    busy |= !matches!(i, Input::Tick);
                    snapshot |= matches!(i, Input::Snapshot { .. });
                    agent.step(i);
                }
                Err(_) => break,
            }
        }
        if busy || agent.wants_tick() {
            agent.execute().await;
        }
        if snapshot {
            // A snapshot was decoded whole and mostly dropped (the view keeps
            // compact records): give the freed heap back, or RSS stays at the peak.
            tabby_sys::memory::trim_heap();
        }
        // A new speaker: follow its best paths. A replacement for a dead one gets
        // its whole table after the restart grace, dropping what nobody re-sent.
        if let Some(s) = agent.speaker()
            && !speaker.as_ref().is_some_and(|old| Arc::ptr_eq(old, &s))
        {
            let refresh = speaker.is_some().then_some(restart_grace);
            spawn_learned_feed(s.clone(), tx.clone(), refresh);
            spawn_peers_feed(s.clone(), tx.clone());
            speaker = Some(s);
        }
    }
    info!("stopping: routes stay in place, BGP closes for a graceful restart");
    agent.shutdown().await;
    let _ = std::fs::remove_file(&control_socket);
    Ok(())
}

/// Feeds the store to the loop: a consistent snapshot of the agent's prefixes,
/// then one watch from the snapshot's revision, with unused keys dropped here.
/// After a compaction (events lost) a fresh snapshot; after an error the watch
/// resumes from the revision after the last event seen.
fn spawn_store_feed(store: Arc<dyn Datastore>, tx: mpsc::Sender<Input>) {
    tokio::spawn(async move {
        let mut next: Option<Revision> = None;
        let mut backoff = Duration::from_millis(250);
        while !tx.is_closed() {
            let from = match next {
                Some(r) => r,
                None => match crate::view::snapshot(store.as_ref()).await {
                    Ok((kvs, revision)) => {
                        if tx.send(Input::Snapshot { kvs, revision }).await.is_err() {
                            return;
                        }
                        revision + 1
                    }
                    Err(e) => {
                        let _ = tx.send(Input::StoreDown(e.to_string())).await;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            next = Some(from);
            let mut stream = match store.watch("/calico/", from).await {
                Ok(s) => s,
                Err(StoreError::Compacted { .. }) => {
                    next = None;
                    continue;
                }
                Err(e) => {
                    let _ = tx.send(Input::StoreDown(e.to_string())).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            'watch: while let Some(first) = stream.next().await {
                let mut batch: Vec<WatchEvent> = Vec::new();
                let mut item = Some(first);
                while let Some(ev) = item.take() {
                    match ev {
                        Ok(WatchEvent::Compacted { .. }) => {
                            next = None;
                            break 'watch;
                        }
                        Ok(ev) => {
                            next = Some(ev.revision() + 1);
                            let key = match &ev {
                                WatchEvent::Put(kv) => kv.key.as_str(),
                                WatchEvent::Delete { key, .. } => key.as_str(),
                                WatchEvent::Compacted { .. } => "",
                            };
                            if classify(key) != KeyClass::Unused {
                                batch.push(ev);
                            }
                        }
                        Err(e) => {
                            if !batch.is_empty() {
                                let _ = tx.send(Input::Events(std::mem::take(&mut batch))).await;
                            }
                            let _ = tx.send(Input::StoreDown(e.to_string())).await;
                            break 'watch;
                        }
                    }
                    if batch.len() < 1024 {
                        item = stream.next().now_or_never().flatten();
                    }
                }
                if !batch.is_empty() && tx.send(Input::Events(batch)).await.is_err() {
                    return;
                }
            }
            if next.is_some() {
                tokio::time::sleep(backoff).await;
            }
        }
    });
}

/// Feeds the kernel's notifications to the loop, in batches, keeping only what the
/// agent acts on: our routes, our links, neighbour deletions, lost notifications.
fn spawn_kernel_feed(
    mut events: mpsc::Receiver<NetlinkEvent>,
    prefix: String,
    tx: mpsc::Sender<Input>,
) {
    let relevant = move |ev: &NetlinkEvent| match ev {
        // Ours for drift repair; others to know which places we must not take.
        NetlinkEvent::Route { .. } => true,
        NetlinkEvent::Link { name, .. } => name.starts_with(&prefix) || name == VXLAN_DEVICE,
        NetlinkEvent::Neighbour { deleted, .. } => *deleted,
        NetlinkEvent::Lost => true,
        NetlinkEvent::Other => false,
    };
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let mut batch: Vec<NetlinkEvent> = Vec::new();
            if relevant(&ev) {
                batch.push(ev);
            }
            while batch.len() < 4096 {
                match events.try_recv() {
                    Ok(ev) if relevant(&ev) => batch.push(ev),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if !batch.is_empty() && tx.send(Input::Kernel(batch)).await.is_err() {
                break;
            }
        }
    });
}

/// Feeds a speaker's best-path changes to the loop (the whole table after a lag,
/// and after `refresh` when given).
fn spawn_learned_feed(s: Arc<dyn Speaker>, tx: mpsc::Sender<Input>, refresh: Option<Duration>) {
    let mut routes = s.subscribe_routes();
    // Paths learned before the subscription (a session may be up within the pass
    // that started the speaker): the table now, then every change. A replacement
    // for a dead speaker only adds to what the agent kept until `refresh`.
    {
        let (s, tx) = (s.clone(), tx.clone());
        let replace = refresh.is_none();
        tokio::spawn(async move {
            if let Ok(all) = s.best_paths().await {
                let input = if replace {
                    Input::LearnedTable(all)
                } else {
                    Input::Learned(all)
                };
                let _ = tx.send(input).await;
            }
        });
    }
    if let Some(after) = refresh {
        let (s, tx) = (s.clone(), tx.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Ok(all) = s.best_paths().await {
                let _ = tx.send(Input::LearnedTable(all)).await;
            }
        });
    }
    tokio::spawn(async move {
        loop {
            match routes.recv().await {
                Ok(c) => {
                    let mut batch = vec![c];
                    while let Ok(c) = routes.try_recv() {
                        batch.push(c);
                    }
                    if tx.send(Input::Learned(batch)).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "BGP route events lagged; reloading the table");
                    if let Ok(all) = s.best_paths().await
                        && tx.send(Input::LearnedTable(all)).await.is_err()
                    {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// Feeds the sessions' states to the loop: now (sessions may have changed before
/// the subscription), then whenever one changes.
fn spawn_peers_feed(s: Arc<dyn Speaker>, tx: mpsc::Sender<Input>) {
    let mut changes = s.subscribe_peers();
    tokio::spawn(async move {
        if let Ok(peers) = s.peers().await
            && tx.send(Input::Peers(peers)).await.is_err()
        {
            return;
        }
        while let Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) =
            changes.recv().await
        {
            while changes.try_recv().is_ok() {}
            let Ok(peers) = s.peers().await else { break };
            if tx.send(Input::Peers(peers)).await.is_err() {
                break;
            }
        }
    });
}

fn spawn_timer(every: Duration, tx: mpsc::Sender<Input>, input: fn() -> Input) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.tick().await;
        loop {
            t.tick().await;
            if tx.send(input()).await.is_err() {
                break;
            }
        }
    });
}

/// Writes `text` to `path` unless it already holds exactly that (atomically, via a
/// temporary file, so the CNI plugin never reads half a number).
pub(crate) fn write_if_changed(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
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
