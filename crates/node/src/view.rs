//! The agent's local view of the store: one consistent snapshot, then every watch
//! event applied to it, so nothing is re-listed per change. Keys the node never
//! uses (IPAM handles and affinities, IPAM and cluster configuration) are dropped
//! on arrival; other nodes' workload endpoints are kept only as what routing needs
//! (their node and addresses), their policy side goes to the policy engine, which
//! keeps its own compact copy. Hot lookups are indexed: blocks by CIDR and by host,
//! workload addresses to their endpoints, the block sizes in use.
//!
//! Applying an event is pure and returns the [`Change`]s it made, which the agent
//! turns into dirty marks for the subsystems they touch. Stored records are read
//! leniently (a field this version does not know is a warning naming key and
//! field); a record that cannot be read at all is reported and its last good
//! version kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use tabby_api::bgp::BGPConfigurationSpec;
use tabby_api::ippool::EncapMode;
use tabby_api::{Kind, Resource, Spec};
use tabby_dataplane::model::parse_mac;
use tabby_ipam::AllocationBlock;
use tabby_store::{KeyValue, Revision, WatchEvent, keys};

use crate::desired::{
    Advertisement, BlockInfo, NodeInfo, PoolInfo, Snapshot, WorkloadInfo, vxlan_mac_for,
};
use crate::snapshot::{Community, parse_community};

/// The key prefixes the agent snapshots and watches.
pub fn prefixes() -> Vec<String> {
    vec![
        keys::RESOURCES_PREFIX.to_string(),
        keys::ipam_block_prefix(false),
        keys::ipam_block_prefix(true),
    ]
}

/// A consistent snapshot of every key the agent uses (its [`prefixes`], read at one
/// revision), and that revision: a watch from `revision + 1` misses nothing.
pub async fn snapshot(
    store: &dyn tabby_store::Datastore,
) -> tabby_store::Result<(Vec<KeyValue>, Revision)> {
    let prefixes = prefixes();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let listed = store.list_prefixes(&refs).await?;
    let kvs = listed
        .kvs
        .into_iter()
        .filter(|kv| classify(&kv.key) != KeyClass::Unused)
        .collect();
    Ok((kvs, listed.revision))
}

/// What a stored key is to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// A v3 resource the agent reads.
    Resource(Kind),
    /// An IPAM block.
    Block,
    /// Anything else: dropped on arrival.
    Unused,
}

/// The kinds the agent reads (the rest, e.g. IPAMConfiguration, are unused).
const KINDS: [Kind; 14] = [
    Kind::Node,
    Kind::IPPool,
    Kind::BGPConfiguration,
    Kind::BGPPeer,
    Kind::BGPFilter,
    Kind::WorkloadEndpoint,
    Kind::HostEndpoint,
    Kind::NetworkPolicy,
    Kind::GlobalNetworkPolicy,
    Kind::Profile,
    Kind::NetworkSet,
    Kind::GlobalNetworkSet,
    Kind::Tier,
    Kind::FelixConfiguration,
];

/// Classifies a key by its shape alone.
pub fn classify(key: &str) -> KeyClass {
    if let Some((plural, _, _)) = keys::parse_resource_key(key) {
        return match KINDS.iter().find(|k| k.plural() == plural) {
            Some(k) => KeyClass::Resource(*k),
            None => KeyClass::Unused,
        };
    }
    if key.starts_with(&keys::ipam_block_prefix(false))
        || key.starts_with(&keys::ipam_block_prefix(true))
    {
        return KeyClass::Block;
    }
    KeyClass::Unused
}

/// What applying an event changed, for the agent to mark the subsystems it touches.
#[derive(Clone, Debug)]
pub enum Change {
    /// A Node resource changed (any field: peers read labels and BGP settings);
    /// `routing` tells whether what the data plane reads of it changed.
    Node {
        /// Its name.
        name: String,
        /// Whether its [`NodeInfo`] (addresses, tunnel address, MAC) changed.
        routing: bool,
    },
    /// An IP pool changed.
    Pool,
    /// A BGPConfiguration changed.
    BgpConfig,
    /// A BGPPeer or BGPFilter changed.
    BgpPeers,
    /// A block appeared, went or changed host.
    Block {
        /// Its CIDR.
        cidr: IpNet,
        /// The affine host before.
        before: Option<Arc<str>>,
        /// And after.
        after: Option<Arc<str>>,
    },
    /// A workload endpoint changed.
    Workload {
        /// Its addresses before and after (a route may change for each).
        ips: Vec<IpNet>,
        /// It is, or was, on this node.
        local: bool,
        /// Its interface before and after, when local.
        interfaces: Vec<String>,
    },
    /// A resource the policy engine reads was created or updated.
    PolicyPut(Arc<Resource>),
    /// A resource the policy engine reads was deleted.
    PolicyDelete {
        /// Its kind.
        kind: Kind,
        /// Its namespace.
        namespace: Option<String>,
        /// Its name.
        name: String,
    },
}

/// Routing's compact record of a workload endpoint (of any node).
#[derive(Clone, Debug, PartialEq, Eq)]
struct WepRec {
    node: Arc<str>,
    ips: Vec<IpNet>,
}

/// The local view.
#[derive(Debug, Default)]
pub struct View {
    me: String,
    /// The revision of the last event applied.
    pub revision: Revision,
    /// Revisions of every key held (for diffing a fresh snapshot against the view).
    revs: HashMap<Arc<str>, Revision>,
    nodes: BTreeMap<String, Resource>,
    node_infos: BTreeMap<String, NodeInfo>,
    /// Every node's addresses, counted (two nodes may claim one by mistake).
    node_addrs: HashMap<IpAddr, usize>,
    pools: BTreeMap<String, Resource>,
    pool_infos: BTreeMap<String, PoolInfo>,
    bgp_configs: BTreeMap<String, Resource>,
    bgp_peers: BTreeMap<String, Resource>,
    bgp_filters: BTreeMap<String, Resource>,
    local_weps: BTreeMap<String, Resource>,
    weps: HashMap<Arc<str>, WepRec>,
    wep_ips: BTreeMap<IpNet, Vec<Arc<str>>>,
    /// Block CIDR to its affine host.
    blocks: BTreeMap<IpNet, Option<Arc<str>>>,
    blocks_by_host: HashMap<Arc<str>, BTreeSet<IpNet>>,
    /// How many blocks have each prefix length (to find the block holding an address).
    block_lens: BTreeMap<(bool, u8), usize>,
    /// Node names, interned (endpoints and blocks share them).
    names: HashMap<Arc<str>, ()>,
    /// Records that could not be read: key to the reason (last good version kept).
    problems: BTreeMap<String, String>,
}

impl View {
    /// An empty view for node `me`.
    pub fn new(me: &str) -> View {
        View {
            me: me.to_string(),
            ..View::default()
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some((k, _)) = self.names.get_key_value(s) {
            return k.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone(), ());
        a
    }

    /// The shared copy of a key held (one allocation for the revision table and
    /// the indexes), or a new one.
    fn key(&self, key: &str) -> Arc<str> {
        match self.revs.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.revs.len()
    }

    /// Whether the view holds nothing.
    pub fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Records that could not be read, each naming its key.
    pub fn problems(&self) -> impl Iterator<Item = String> + '_ {
        self.problems.iter().map(|(k, p)| format!("{k}: {p}"))
    }

    /// Applies a fresh snapshot: keys the view holds that the snapshot lacks are
    /// deleted, keys whose revision differs are (re)applied. After a compaction this
    /// turns the new snapshot into just the changes missed.
    pub fn apply_snapshot(&mut self, kvs: &[KeyValue], revision: Revision) -> Vec<Change> {
        let mut out = self.snapshot_gone(kvs);
        for kv in kvs {
            out.extend(self.snapshot_put(kv));
        }
        self.revision = self.revision.max(revision);
        out
    }

    /// The first half of [`View::apply_snapshot`]: deletes the keys the view holds
    /// that `kvs` lacks. Then each key goes through [`View::snapshot_put`] (so a
    /// caller can decode and drop the snapshot a part at a time) and the revision
    /// is raised with [`View::snapshot_done`].
    pub fn snapshot_gone(&mut self, kvs: &[KeyValue]) -> Vec<Change> {
        let mut out = Vec::new();
        let present: BTreeSet<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        let gone: Vec<String> = self
            .revs
            .keys()
            .filter(|k| !present.contains(&***k))
            .map(|k| k.to_string())
            .collect();
        for key in gone {
            out.extend(self.delete(&key));
        }
        out
    }

    /// One key of a snapshot: applied if the view lacks this revision of it.
    pub fn snapshot_put(&mut self, kv: &KeyValue) -> Vec<Change> {
        if self.revs.get(kv.key.as_str()) != Some(&kv.mod_revision) {
            self.put(kv)
        } else {
            Vec::new()
        }
    }

    /// The end of a snapshot read at `revision`.
    pub fn snapshot_done(&mut self, revision: Revision) {
        self.revision = self.revision.max(revision);
    }

    /// Applies one watch event.
    pub fn apply(&mut self, ev: &WatchEvent) -> Vec<Change> {
        self.revision = self.revision.max(ev.revision());
        match ev {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, .. } => self.delete(key),
            WatchEvent::Compacted { .. } => Vec::new(),
        }
    }

    fn put(&mut self, kv: &KeyValue) -> Vec<Change> {
        match classify(&kv.key) {
            KeyClass::Unused => Vec::new(),
            KeyClass::Block => match serde_json::from_slice::<AllocationBlock>(&kv.value) {
                Ok(b) => {
                    self.problems.remove(&kv.key);
                    let key = self.key(&kv.key);
                    self.revs.insert(key, kv.mod_revision);
                    let host = if b.deleted {
                        None
                    } else {
                        b.host_affinity().map(|h| self.intern(h))
                    };
                    if b.deleted {
                        self.remove_block(b.cidr).into_iter().collect()
                    } else {
                        self.set_block(b.cidr, host).into_iter().collect()
                    }
                }
                Err(e) => {
                    self.problems
                        .insert(kv.key.clone(), format!("unreadable IPAM block: {e}"));
                    Vec::new()
                }
            },
            KeyClass::Resource(kind) => {
                let decoded = serde_json::from_slice::<serde_json::Value>(&kv.value)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        tabby_api::load::from_json_value_lenient(v, &kv.key)
                            .map_err(|e| e.to_string())
                    });
                match decoded {
                    Ok((mut r, ignored)) => {
                        if ignored.is_empty() {
                            self.problems.remove(&kv.key);
                        } else {
                            let fields: Vec<String> =
                                ignored.iter().filter_map(|p| p.path.clone()).collect();
                            let text = format!(
                                "fields unknown to this version ignored: {}",
                                fields.join(", ")
                            );
                            if self.problems.get(&kv.key) != Some(&text) {
                                tracing::warn!(key = %kv.key, "{text}");
                            }
                            self.problems.insert(kv.key.clone(), text);
                        }
                        if r.kind() != kind {
                            self.problems.insert(
                                kv.key.clone(),
                                format!("holds a {} where a {kind} belongs", r.kind()),
                            );
                            return Vec::new();
                        }
                        r.set_resource_version(Some(kv.mod_revision.to_string()));
                        let key = self.key(&kv.key);
                        self.revs.insert(key, kv.mod_revision);
                        self.put_resource(&kv.key, r)
                    }
                    Err(e) => {
                        if self.problems.get(&kv.key) != Some(&e) {
                            tracing::warn!(key = %kv.key, error = %e, "unreadable record; keeping its last good version");
                        }
                        self.problems.insert(kv.key.clone(), e);
                        Vec::new()
                    }
                }
            }
        }
    }

    fn delete(&mut self, key: &str) -> Vec<Change> {
        self.problems.remove(key);
        if self.revs.remove(key).is_none() {
            return Vec::new();
        }
        match classify(key) {
            KeyClass::Unused => Vec::new(),
            KeyClass::Block => {
                let cidr = key
                    .rsplit('/')
                    .next()
                    .and_then(keys::key_part_to_cidr)
                    .and_then(|c| c.parse::<IpNet>().ok());
                match cidr {
                    Some(c) => self.remove_block(c).into_iter().collect(),
                    None => Vec::new(),
                }
            }
            KeyClass::Resource(kind) => {
                let Some((_, ns, name)) = keys::parse_resource_key(key) else {
                    return Vec::new();
                };
                self.delete_resource(key, kind, ns, name)
            }
        }
    }

    fn set_block(&mut self, cidr: IpNet, host: Option<Arc<str>>) -> Option<Change> {
        let before = match self.blocks.insert(cidr, host.clone()) {
            Some(old) if old == host => return None,
            Some(old) => old,
            None => {
                *self
                    .block_lens
                    .entry((cidr.addr().is_ipv4(), cidr.prefix_len()))
                    .or_default() += 1;
                None
            }
        };
        if let Some(h) = &before
            && let Some(set) = self.blocks_by_host.get_mut(h)
        {
            set.remove(&cidr);
            if set.is_empty() {
                self.blocks_by_host.remove(h);
            }
        }
        if let Some(h) = &host {
            self.blocks_by_host
                .entry(h.clone())
                .or_default()
                .insert(cidr);
        }
        Some(Change::Block {
            cidr,
            before,
            after: host,
        })
    }

    fn remove_block(&mut self, cidr: IpNet) -> Option<Change> {
        let before = self.blocks.remove(&cidr)?;
        let len = (cidr.addr().is_ipv4(), cidr.prefix_len());
        if let Some(n) = self.block_lens.get_mut(&len) {
            *n -= 1;
            if *n == 0 {
                self.block_lens.remove(&len);
            }
        }
        if let Some(h) = &before
            && let Some(set) = self.blocks_by_host.get_mut(h)
        {
            set.remove(&cidr);
            if set.is_empty() {
                self.blocks_by_host.remove(h);
            }
        }
        Some(Change::Block {
            cidr,
            before,
            after: None,
        })
    }

    fn put_resource(&mut self, key: &str, r: Resource) -> Vec<Change> {
        let name = r.name().to_string();
        match &r.spec {
            Spec::Node(_) => {
                let info = node_info(&r);
                let routing = self.node_infos.get(&name) != Some(&info);
                self.count_addrs(&info, 1);
                if let Some(old) = self.node_infos.insert(name.clone(), info) {
                    self.count_addrs(&old, -1);
                }
                self.nodes.insert(name.clone(), r);
                vec![Change::Node { name, routing }]
            }
            Spec::IPPool(_) => {
                match pool_info(&r) {
                    Some(p) => {
                        self.pool_infos.insert(name.clone(), p);
                    }
                    None => {
                        self.pool_infos.remove(&name);
                    }
                }
                self.pools.insert(name, r);
                vec![Change::Pool]
            }
            Spec::BGPConfiguration(_) => {
                self.bgp_configs.insert(name, r);
                vec![Change::BgpConfig]
            }
            Spec::BGPPeer(_) => {
                self.bgp_peers.insert(name, r);
                vec![Change::BgpPeers]
            }
            Spec::BGPFilter(_) => {
                self.bgp_filters.insert(name, r);
                vec![Change::BgpPeers]
            }
            Spec::WorkloadEndpoint(w) => {
                let node = w.node.clone().unwrap_or_default();
                // Routing reads endpoints with a node and an interface only.
                let rec = (!node.is_empty() && w.interface_name.is_some()).then(|| WepRec {
                    node: self.intern(&node),
                    ips: w.ip_networks.iter().map(host_net).collect(),
                });
                let local = node == self.me;
                let iface = w.interface_name.clone();
                let mut interfaces: Vec<String> = iface.into_iter().collect();
                let old_local = self.local_weps.get(key).cloned();
                if let Some(old) = &old_local
                    && let Some(i) = old
                        .spec
                        .as_workload_endpoint()
                        .and_then(|w| w.interface_name.clone())
                {
                    interfaces.push(i);
                }
                let mut ips = self.set_wep(key, rec);
                let was_local = old_local.is_some();
                let r = Arc::new(r);
                if local {
                    self.local_weps.insert(key.to_string(), (*r).clone());
                } else {
                    self.local_weps.remove(key);
                }
                ips.sort();
                ips.dedup();
                vec![
                    Change::Workload {
                        ips,
                        local: local || was_local,
                        interfaces,
                    },
                    Change::PolicyPut(r),
                ]
            }
            _ => vec![Change::PolicyPut(Arc::new(r))],
        }
    }

    fn delete_resource(
        &mut self,
        key: &str,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
    ) -> Vec<Change> {
        let policy = Change::PolicyDelete {
            kind,
            namespace: ns.map(str::to_string),
            name: name.to_string(),
        };
        match kind {
            Kind::Node => {
                self.nodes.remove(name);
                let old = self.node_infos.remove(name);
                if let Some(o) = &old {
                    self.count_addrs(o, -1);
                }
                let routing = old.is_some();
                vec![Change::Node {
                    name: name.to_string(),
                    routing,
                }]
            }
            Kind::IPPool => {
                self.pools.remove(name);
                self.pool_infos.remove(name);
                vec![Change::Pool]
            }
            Kind::BGPConfiguration => {
                self.bgp_configs.remove(name);
                vec![Change::BgpConfig]
            }
            Kind::BGPPeer => {
                self.bgp_peers.remove(name);
                vec![Change::BgpPeers]
            }
            Kind::BGPFilter => {
                self.bgp_filters.remove(name);
                vec![Change::BgpPeers]
            }
            Kind::WorkloadEndpoint => {
                let old = self.local_weps.remove(key);
                let interfaces = old
                    .as_ref()
                    .and_then(|o| o.spec.as_workload_endpoint())
                    .and_then(|w| w.interface_name.clone())
                    .into_iter()
                    .collect();
                let ips = self.set_wep(key, None);
                vec![
                    Change::Workload {
                        ips,
                        local: old.is_some(),
                        interfaces,
                    },
                    policy,
                ]
            }
            _ => vec![policy],
        }
    }

    fn count_addrs(&mut self, n: &NodeInfo, delta: isize) {
        for a in [n.ipv4, n.ipv6].into_iter().flatten().map(|a| a.addr()) {
            let c = self.node_addrs.entry(a).or_default();
            *c = c.saturating_add_signed(delta);
            if *c == 0 {
                self.node_addrs.remove(&a);
            }
        }
    }

    /// Whether `a` is a node address of the cluster.
    pub fn is_node_address(&self, a: IpAddr) -> bool {
        self.node_addrs.contains_key(&a)
    }

    /// Replaces a workload's routing record; returns the addresses before and after.
    fn set_wep(&mut self, key: &str, rec: Option<WepRec>) -> Vec<IpNet> {
        let shared = self.key(key);
        let old = match &rec {
            Some(r) => self.weps.insert(shared.clone(), r.clone()),
            None => self.weps.remove(key),
        };
        let mut touched = Vec::new();
        if let Some(o) = &old {
            for ip in &o.ips {
                if let Some(v) = self.wep_ips.get_mut(ip) {
                    v.retain(|k| &**k != key);
                    if v.is_empty() {
                        self.wep_ips.remove(ip);
                    }
                }
                touched.push(*ip);
            }
        }
        if let Some(r) = &rec {
            for ip in &r.ips {
                let v = self.wep_ips.entry(*ip).or_default();
                if !v.iter().any(|k| &**k == key) {
                    v.push(shared.clone());
                    v.sort();
                }
                touched.push(*ip);
            }
        }
        touched
    }

    // ---- Lookups -------------------------------------------------------------

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Every Node resource, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Resource> {
        self.nodes.values()
    }

    /// A node's routing view.
    pub fn node_info(&self, name: &str) -> Option<&NodeInfo> {
        self.node_infos.get(name)
    }

    /// Every node's routing view.
    pub fn node_infos(&self) -> impl Iterator<Item = &NodeInfo> {
        self.node_infos.values()
    }

    /// Every pool's routing settings, by name.
    pub fn pool_infos(&self) -> Vec<PoolInfo> {
        self.pool_infos.values().cloned().collect()
    }

    /// The IP pools.
    pub fn pools(&self) -> impl Iterator<Item = &Resource> {
        self.pools.values()
    }

    /// BGPPeers.
    pub fn bgp_peers(&self) -> impl Iterator<Item = &Resource> {
        self.bgp_peers.values()
    }

    /// BGPFilters.
    pub fn bgp_filters(&self) -> impl Iterator<Item = &Resource> {
        self.bgp_filters.values()
    }

    /// A BGPConfiguration by name.
    pub fn bgp_config_named(&self, name: &str) -> Option<&BGPConfigurationSpec> {
        self.bgp_configs.get(name).and_then(|r| match &r.spec {
            Spec::BGPConfiguration(s) => Some(s),
            _ => None,
        })
    }

    /// The `default` BGPConfiguration.
    pub fn bgp_config(&self) -> Option<&BGPConfigurationSpec> {
        self.bgp_config_named("default")
    }

    /// The annotations of the `default` BGPConfiguration.
    pub fn bgp_config_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.bgp_configs
            .get("default")
            .map(|r| &r.metadata.annotations)
    }

    /// This node's workload endpoints, by key.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Resource> {
        self.local_weps.values()
    }

    /// The host-side interface of the local workload endpoint stored at `key`.
    pub fn local_interface(&self, key: &str) -> Option<&str> {
        self.local_weps
            .get(key)?
            .spec
            .as_workload_endpoint()?
            .interface_name
            .as_deref()
    }

    /// The local workload endpoint with this host-side interface.
    pub fn local_workload_on(&self, iface: &str) -> Option<&Resource> {
        self.local_weps.values().find(|r| {
            r.spec
                .as_workload_endpoint()
                .and_then(|w| w.interface_name.as_deref())
                == Some(iface)
        })
    }

    /// The affine host of a block with exactly this CIDR (`Some(None)`: unaffine).
    pub fn block(&self, cidr: &IpNet) -> Option<Option<&str>> {
        self.blocks.get(cidr).map(|h| h.as_deref())
    }

    /// Every block with its host.
    pub fn blocks(&self) -> impl Iterator<Item = (&IpNet, Option<&str>)> {
        self.blocks.iter().map(|(c, h)| (c, h.as_deref()))
    }

    /// The blocks affine to `host`.
    pub fn blocks_of(&self, host: &str) -> impl Iterator<Item = &IpNet> {
        self.blocks_by_host.get(host).into_iter().flatten()
    }

    /// Whether `ip` is inside a block affine to `node`.
    pub fn affine_to(&self, ip: &IpNet, node: &str) -> bool {
        self.block_lens.keys().any(|(v4, len)| {
            *v4 == ip.addr().is_ipv4()
                && *len <= ip.prefix_len()
                && IpNet::new(ip.addr(), *len).is_ok_and(|b| {
                    self.blocks
                        .get(&b.trunc())
                        .is_some_and(|h| h.as_deref() == Some(node))
                })
        })
    }

    /// The workload endpoints holding address `ip` (host prefix), as (key, node),
    /// in key order.
    pub fn workloads_at(&self, ip: &IpNet) -> Vec<(&str, &str)> {
        self.wep_ips
            .get(ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.weps.get(k).map(|w| (&**k, &*w.node)))
            .collect()
    }

    /// Workload addresses inside `net`.
    pub fn workload_ips_in(&self, net: &IpNet) -> Vec<IpNet> {
        let first = host_net(&IpNet::new(net.network(), net.prefix_len()).unwrap_or(*net));
        let last = host_net(&IpNet::new(net.broadcast(), net.max_prefix_len()).unwrap_or(*net));
        self.wep_ips.range(first..=last).map(|(k, _)| *k).collect()
    }

    /// Workload addresses of the endpoints on `node`.
    pub fn workload_ips_of(&self, node: &str) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self
            .weps
            .values()
            .filter(|w| &*w.node == node)
            .flat_map(|w| w.ips.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Every workload address.
    pub fn workload_ips(&self) -> impl Iterator<Item = &IpNet> {
        self.wep_ips.keys()
    }

    /// The BGP service CIDRs and `prefixAdvertisements` (with community values
    /// resolved) of the `default` BGPConfiguration.
    pub fn advertisement_settings(&self) -> (Vec<IpNet>, Vec<(IpNet, Advertisement)>) {
        let mut cidrs = Vec::new();
        let mut communities = Vec::new();
        if let Some(cfg) = self.bgp_config() {
            for b in cfg
                .service_cluster_ips
                .iter()
                .chain(&cfg.service_external_ips)
            {
                if let Some(c) = b.cidr {
                    cidrs.push(c);
                }
            }
            for pa in &cfg.prefix_advertisements {
                let Some(cidr) = pa.cidr else { continue };
                let mut adv = Advertisement::default();
                for c in &pa.communities {
                    let value = cfg
                        .communities
                        .iter()
                        .find(|n| &n.name == c)
                        .map(|n| n.value.as_str())
                        .unwrap_or(c.as_str());
                    match parse_community(value) {
                        Some(Community::Standard(v)) => adv.communities.push(v),
                        Some(Community::Large(a, b, c)) => adv.large_communities.push((a, b, c)),
                        None => {}
                    }
                }
                communities.push((cidr, adv));
            }
        }
        (cidrs, communities)
    }

    /// The whole view as the plain [`Snapshot`] the full desired-state computation
    /// takes (the oracle incremental results are tested against, and the input of
    /// the rare full recomputations).
    pub fn snapshot(&self) -> Snapshot {
        let (service_cidrs, prefix_communities) = self.advertisement_settings();
        let mut workloads: Vec<WorkloadInfo> = self
            .weps
            .iter()
            .map(|(key, w)| WorkloadInfo {
                id: key.to_string(),
                node: w.node.to_string(),
                interface: self
                    .local_weps
                    .get(&**key)
                    .and_then(|r| r.spec.as_workload_endpoint())
                    .and_then(|w| w.interface_name.clone())
                    .unwrap_or_default(),
                ips: w.ips.clone(),
            })
            .collect();
        workloads.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            nodes: self.node_infos.values().cloned().collect(),
            pools: self.pool_infos.values().cloned().collect(),
            blocks: self
                .blocks
                .iter()
                .map(|(c, h)| BlockInfo {
                    cidr: *c,
                    host: h.as_deref().map(str::to_string),
                })
                .collect(),
            workloads,
            service_cidrs,
            prefix_communities,
        }
    }
}

/// The store key of a workload endpoint resource.
pub fn wep_key(r: &Resource) -> String {
    tabby_client::key_of(Kind::WorkloadEndpoint, r.namespace(), r.name())
}

/// An address as its host prefix (/32, /128).
pub fn host_net(n: &IpNet) -> IpNet {
    IpNet::new(n.addr(), n.max_prefix_len()).expect("max prefix is valid")
}

/// What the data plane reads of a Node.
pub fn node_info(r: &Resource) -> NodeInfo {
    let (bgp, tunnel, mac) = match &r.spec {
        Spec::Node(n) => (
            n.bgp.clone().unwrap_or_default(),
            n.ipv4_vxlan_tunnel_addr
                .as_deref()
                .and_then(|a| a.parse::<Ipv4Addr>().ok()),
            n.vxlan_tunnel_mac_addr.as_deref().and_then(parse_mac),
        ),
        _ => Default::default(),
    };
    NodeInfo {
        name: r.name().to_string(),
        ipv4: bgp.ipv4_net(),
        ipv6: bgp.ipv6_net(),
        vxlan_tunnel_ip: tunnel,
        vxlan_mac: mac.unwrap_or_else(|| vxlan_mac_for(r.name())),
    }
}

/// What routing reads of an IP pool (`None` without a CIDR).
pub fn pool_info(r: &Resource) -> Option<PoolInfo> {
    let Spec::IPPool(p) = &r.spec else {
        return None;
    };
    Some(PoolInfo {
        name: r.name().to_string(),
        cidr: p.cidr?,
        ipip: p.ipip_mode.unwrap_or(EncapMode::Never),
        vxlan: p.vxlan_mode.unwrap_or(EncapMode::Never),
        nat_outgoing: p.nat_outgoing.unwrap_or(false),
        disabled: p.disabled.unwrap_or(false),
        disable_bgp_export: p.disable_bgp_export.unwrap_or(false),
    })
}

/// The node addresses of the cluster (for routing sanity checks).
pub fn node_addresses(view: &View) -> BTreeSet<IpAddr> {
    view.node_infos()
        .flat_map(|n| [n.ipv4, n.ipv6])
        .flatten()
        .map(|n| n.addr())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: serde_json::Value, rev: Revision) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn wep(ns: &str, name: &str, node: &str, ip: &str, rev: Revision) -> KeyValue {
        kv(
            &tabby_client::key_of(Kind::WorkloadEndpoint, Some(ns), name),
            serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"node": node, "interfaceName": format!("cali{name}"), "ipNetworks": [ip]}}),
            rev,
        )
    }

    fn block(cidr: &str, host: Option<&str>, rev: Revision) -> KeyValue {
        let net: IpNet = cidr.parse().unwrap();
        let mut b = AllocationBlock::new(net, 0).unwrap();
        b.affinity = host.map(|h| format!("host:{h}"));
        kv(
            &keys::ipam_block_key(cidr, false),
            serde_json::to_value(&b).unwrap(),
            rev,
        )
    }

    #[test]
    fn view_converts_to_snapshot() {
        let docs = r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec:
  bgp: {ipv4Address: 198.18.0.1/24}
  ipv4VXLANTunnelAddr: 100.64.0.1
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: p}
spec: {cidr: 100.64.0.0/16, vxlanMode: Always, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  serviceClusterIPs: [{cidr: 198.19.0.0/24}]
  communities: [{name: tag, value: "65000:7"}]
  prefixAdvertisements: [{cidr: 100.64.0.0/16, communities: [tag, "1:2:3"]}]
"#;
        let mut v = View::new("n1");
        for (i, r) in tabby_api::load::parse_documents(docs, "t.yaml")
            .unwrap()
            .into_iter()
            .enumerate()
        {
            let key = tabby_client::key_of(r.kind(), r.namespace(), r.name());
            v.apply(&WatchEvent::Put(kv(&key, r.to_json_value(), i as i64 + 1)));
        }
        let s = v.snapshot();
        assert_eq!(
            s.nodes[0].vxlan_tunnel_ip,
            Some("100.64.0.1".parse().unwrap())
        );
        assert_eq!(s.nodes[0].vxlan_mac, vxlan_mac_for("n1"));
        assert_eq!(s.pools[0].vxlan, EncapMode::Always);
        assert!(s.pools[0].nat_outgoing);
        assert_eq!(
            s.service_cidrs,
            vec!["198.19.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            s.prefix_communities[0].1.communities,
            vec![(65000 << 16) | 7]
        );
        assert_eq!(s.prefix_communities[0].1.large_communities, vec![(1, 2, 3)]);
    }

    #[test]
    fn keys_are_classified_and_unused_ones_dropped() {
        let mut v = View::new("n1");
        assert_eq!(
            classify(&keys::ipam_handle_key("h")),
            KeyClass::Unused,
            "handles are dropped"
        );
        let changes = v.apply(&WatchEvent::Put(kv(
            &keys::ipam_handle_key("h"),
            serde_json::json!({}),
            1,
        )));
        assert!(changes.is_empty());
        assert!(v.is_empty());
        assert_eq!(
            classify(&tabby_client::key_of(Kind::IPPool, None, "p")),
            KeyClass::Resource(Kind::IPPool)
        );
        assert_eq!(
            classify(&tabby_client::key_of(
                Kind::IPAMConfiguration,
                None,
                "default"
            )),
            KeyClass::Unused
        );
    }

    #[test]
    fn indexes_follow_puts_and_deletes() {
        let mut v = View::new("n1");
        v.apply(&WatchEvent::Put(block("100.64.0.0/26", Some("n2"), 1)));
        v.apply(&WatchEvent::Put(block("100.64.0.64/26", Some("n1"), 2)));
        v.apply(&WatchEvent::Put(wep("a", "p1", "n2", "100.64.0.5/32", 3)));
        // Borrowed: n3's pod in n2's block.
        v.apply(&WatchEvent::Put(wep("a", "p2", "n3", "100.64.0.6/32", 4)));
        let ip = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(v.affine_to(&ip("100.64.0.5/32"), "n2"));
        assert!(!v.affine_to(&ip("100.64.0.6/32"), "n3"));
        assert_eq!(
            v.workload_ips_in(&ip("100.64.0.0/26")),
            vec![ip("100.64.0.5/32"), ip("100.64.0.6/32")]
        );
        assert_eq!(v.blocks_of("n1").count(), 1);
        // The block moves to n3: the change names both hosts.
        let ch = v.apply(&WatchEvent::Put(block("100.64.0.0/26", Some("n3"), 5)));
        assert!(
            matches!(&ch[0], Change::Block { before: Some(b), after: Some(a), .. } if &**b == "n2" && &**a == "n3")
        );
        assert_eq!(v.blocks_of("n2").count(), 0);
        assert!(v.affine_to(&ip("100.64.0.6/32"), "n3"));
        // Delete by key.
        v.apply(&WatchEvent::Delete {
            key: tabby_client::key_of(Kind::WorkloadEndpoint, Some("a"), "p2"),
            revision: 6,
            prev: None,
        });
        assert!(v.workloads_at(&ip("100.64.0.6/32")).is_empty());
        v.apply(&WatchEvent::Delete {
            key: keys::ipam_block_key("100.64.0.0/26", false),
            revision: 7,
            prev: None,
        });
        assert!(!v.affine_to(&ip("100.64.0.5/32"), "n3"));
        assert_eq!(v.revision, 7);
    }

    #[test]
    fn a_fresh_snapshot_becomes_the_changes_missed() {
        let mut v = View::new("n1");
        v.apply_snapshot(
            &[
                wep("a", "p1", "n2", "100.64.0.5/32", 3),
                wep("a", "p2", "n2", "100.64.0.6/32", 4),
            ],
            4,
        );
        // p1 unchanged, p2 gone, p3 new.
        let changes = v.apply_snapshot(
            &[
                wep("a", "p1", "n2", "100.64.0.5/32", 3),
                wep("a", "p3", "n1", "100.64.0.7/32", 9),
            ],
            9,
        );
        let deleted = changes
            .iter()
            .any(|c| matches!(c, Change::PolicyDelete { name, .. } if name == "p2"));
        let added = changes
            .iter()
            .any(|c| matches!(c, Change::PolicyPut(r) if r.name() == "p3"));
        let touched_p1 = changes
            .iter()
            .any(|c| matches!(c, Change::PolicyPut(r) if r.name() == "p1"));
        assert!(deleted && added && !touched_p1, "{changes:?}");
        assert_eq!(v.local_workloads().count(), 1);
        assert_eq!(v.revision, 9);
    }

    #[test]
    fn unreadable_records_are_reported_and_the_last_good_version_kept() {
        let mut v = View::new("n1");
        let key = tabby_client::key_of(Kind::IPPool, None, "p");
        let good = serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "100.64.0.0/16", "futureField": 1}});
        v.apply(&WatchEvent::Put(kv(&key, good, 1)));
        assert_eq!(v.pool_infos().len(), 1, "unknown fields are read leniently");
        assert!(v.problems().any(|p| p.contains("spec.futureField")));
        let bad = serde_json::json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": 7}});
        let ch = v.apply(&WatchEvent::Put(kv(&key, bad, 2)));
        assert!(ch.is_empty());
        assert_eq!(v.pool_infos()[0].cidr, "100.64.0.0/16".parse().unwrap());
        assert!(
            v.problems().any(|p| p.contains("spec.cidr")),
            "{:?}",
            v.problems().collect::<Vec<_>>()
        );
    }
}
