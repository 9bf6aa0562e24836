//! The IPAM client: every operation reads IPAM keys from the [`Datastore`], decides with
//! the pure core (`block`, `pool`, `random_block`), and writes back with compare-and-swap
//! on the key's `mod_revision`, retrying on fresh data when it loses a race.
//!
//! Write order keeps crashes harmless: a handle is incremented before the block that
//! holds its addresses is written, and decremented only after; an affinity is written
//! `pending` before its block is created. A crash between two writes leaves at most a
//! handle count or affinity that [`Ipam::check`] reports, never an address held twice.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tabby_store::{Datastore, KeyValue, Revision, StoreError};
use tracing::{debug, info, warn};

use crate::affinity::{AffinityInfo, AffinityState, BlockAffinity};
use crate::assignments::{
    AssignIpArgs, AutoAssignArgs, AutoAssignError, AutoAssignResult, IpamAssignments,
};
use crate::block::{AllocationBlock, AllocationInfo, BlockError, ReleaseOptions};
use crate::check::{self, CheckReport};
use crate::config::IpamConfig;
use crate::error::IpamError;
use crate::handle::{self, IpamHandle, TunnelKind, check_key_segment};
use crate::ipmath::{self, IpFamily};
use crate::keys;
use crate::pool::{self, AllowedUse, PoolInfo};
use crate::random_block::{self, RandomBlocks};
use crate::reservation::Reservations;
use crate::source::PoolSource;
use crate::time;
use crate::utilization::{self, PoolUtilization};

/// Tunables of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamOptions {
    /// Compare-and-swap attempts per operation before giving up (Calico: 100).
    pub max_retries: usize,
    /// Release an affine block's affinity (and delete the block) as soon as a release
    /// empties it, so a node holds only blocks it uses. On by default (Tabby's rule);
    /// off gives Calico's behaviour, where empty blocks stay with their node until the
    /// garbage collector ([`Ipam::release_empty_blocks`]) frees them.
    pub release_empty_affine_blocks: bool,
    /// How long an empty block must have been claimed before another node may take it
    /// over when the pool has no free block left (Calico: one minute).
    pub empty_block_reclaim_age: Duration,
    /// Run one host's auto-assigns through this client one at a time (on by default),
    /// as Calico's CNI plugin does with its host-wide lock, so that they do not race
    /// each other for the same block. Correctness never depends on it: every write is
    /// still a compare-and-swap, and clients in other processes are not serialised.
    pub serialise_per_host: bool,
}

impl Default for IpamOptions {
    fn default() -> Self {
        IpamOptions {
            max_retries: 100,
            release_empty_affine_blocks: true,
            empty_block_reclaim_age: Duration::from_secs(60),
            serialise_per_host: true,
        }
    }
}

/// A value read from the store with the revision to compare-and-swap against.
#[derive(Clone, Debug)]
struct Versioned<T> {
    value: T,
    rev: Revision,
}

/// Per-request view of configuration, pools and reservations.
struct Env {
    cfg: IpamConfig,
    pools: Vec<PoolInfo>,
    reservations: Reservations,
}

impl Env {
    fn cooldown_stamp(&self) -> Option<String> {
        (self.cfg.ip_cooldown_seconds > 0).then(|| time::format_rfc3339(time::now_unix()))
    }

    fn enabled_pool_for(&self, cidr: &IpNet) -> Option<&PoolInfo> {
        self.pools
            .iter()
            .filter(|p| p.enabled() && p.contains_net(cidr))
            .max_by_key(|p| p.network().prefix_len())
    }
}

enum Claim {
    Claimed(Versioned<AllocationBlock>),
    Taken,
}

/// Outcome of releasing one block's affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AffinityRelease {
    Released,
    NotOurs,
    NotEmpty,
}

enum FindError {
    NoFreeBlocks,
    BlockLimit,
    AutoAllocateDisabled,
    Failed(IpamError),
}

impl From<IpamError> for FindError {
    fn from(e: IpamError) -> Self {
        FindError::Failed(e)
    }
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, IpamError> {
    serde_json::from_slice(&kv.value).map_err(|e| IpamError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(v).map_err(|e| IpamError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn store_race(e: &StoreError) -> bool {
    e.is_conflict() || matches!(e, StoreError::NotFound { .. })
}

static JITTER: AtomicU64 = AtomicU64::new(0);

/// The IPAM client. Cheap to clone; clones share the store and pool source. Its methods
/// must run on a Tokio runtime with the time driver enabled (retries back off with
/// `tokio::time::sleep`).
#[derive(Clone, Debug)]
pub struct Ipam {
    store: Arc<dyn Datastore>,
    source: Arc<dyn PoolSource>,
    options: IpamOptions,
    /// One lock per host: a host's auto-assigns in this process run one at a time, as
    /// Calico's CNI plugin serialises them with its host-wide IPAM lock. Without it a
    /// node's concurrent allocations all race for the same block and lose CAS rounds.
    host_locks:
        Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Ipam {
    /// A client over `store`, reading pools, node labels and reservations from `source`.
    pub fn new(store: Arc<dyn Datastore>, source: Arc<dyn PoolSource>) -> Ipam {
        Ipam {
            store,
            source,
            options: IpamOptions::default(),
            host_locks: Arc::default(),
        }
    }

    /// The lock of `host`'s auto-assigns (see the `host_locks` field).
    fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .host_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(host.to_string()).or_default())
    }

    /// Replaces the options (builder style).
    pub fn with_options(mut self, options: IpamOptions) -> Ipam {
        self.options = options;
        self
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// The pool source.
    pub fn source(&self) -> &Arc<dyn PoolSource> {
        &self.source
    }

    fn retries(&self) -> usize {
        self.options.max_retries.max(1)
    }

    fn gave_up(&self, op: impl Into<String>) -> IpamError {
        IpamError::TooManyRetries {
            op: op.into(),
            tries: self.retries(),
        }
    }

    /// Waits a little before retrying a lost compare-and-swap: a yield at first, then a
    /// random pause of up to 2^attempt ms (at most 50 ms) so racers spread out.
    async fn backoff(&self, attempt: usize) {
        if attempt == 0 {
            tokio::task::yield_now().await;
            return;
        }
        let mut seed = time::now_unix_nanos() ^ JITTER.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        let max_ms = (1u64 << attempt.min(6)).min(50);
        let ms = random_block::splitmix64(&mut seed) % (max_ms + 1);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    // ---- environment ------------------------------------------------------------------

    async fn load_env(&self) -> Result<Env, IpamError> {
        let cfg = self.ipam_config().await?;
        let mut pools = self
            .source
            .pools()
            .await
            .map_err(|source| IpamError::Source {
                what: "IP pools",
                source,
            })?;
        pools.retain(|p| match p.validate() {
            Ok(()) => true,
            Err(e) => {
                warn!(pool = %p.name, error = %e, "ignoring unusable IP pool");
                false
            }
        });
        let reservations =
            Reservations::new(self.source.reservations().await.map_err(|source| {
                IpamError::Source {
                    what: "IP reservations",
                    source,
                }
            })?);
        Ok(Env {
            cfg,
            pools,
            reservations,
        })
    }

    async fn node_labels(&self, host: &str) -> Result<BTreeMap<String, String>, IpamError> {
        self.source
            .node_labels(host)
            .await
            .map_err(|source| IpamError::Source {
                what: "node labels",
                source,
            })
    }

    // ---- config -----------------------------------------------------------------------

    /// The IPAM configuration: the pool source's when it holds one
    /// ([`PoolSource::ipam_config`]), else the stored key, else Calico's defaults.
    pub async fn ipam_config(&self) -> Result<IpamConfig, IpamError> {
        let from_source = self
            .source
            .ipam_config()
            .await
            .map_err(|source| IpamError::Source {
                what: "IPAM configuration",
                source,
            })?;
        if let Some(cfg) = from_source {
            return Ok(cfg);
        }
        match self.store.get(&keys::config_key()).await? {
            None => Ok(IpamConfig::default()),
            Some(kv) => decode(&kv),
        }
    }

    /// Validates and stores the IPAM configuration (in the pool source when it holds
    /// the configuration, else in IPAM's own key).
    pub async fn set_ipam_config(&self, cfg: &IpamConfig) -> Result<(), IpamError> {
        cfg.validate()?;
        let stored =
            self.source
                .set_ipam_config(cfg)
                .await
                .map_err(|source| IpamError::Source {
                    what: "IPAM configuration",
                    source,
                })?;
        if stored {
            return Ok(());
        }
        let key = keys::config_key();
        let bytes = encode(&key, cfg)?;
        for attempt in 0..self.retries() {
            let res = match self.store.get(&key).await? {
                None => self.store.create(&key, &bytes).await,
                Some(kv) => self.store.update(&key, &bytes, kv.mod_revision).await,
            };
            match res {
                Ok(_) => return Ok(()),
                Err(e) if store_race(&e) => self.backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.gave_up("set IPAM config"))
    }

    // ---- blocks -----------------------------------------------------------------------

    async fn read_block(
        &self,
        cidr: &IpNet,
    ) -> Result<Option<Versioned<AllocationBlock>>, IpamError> {
        let key = keys::block_key(cidr);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let value: AllocationBlock = decode(&kv)?;
        if value.deleted {
            // Soft-deleted by a Kubernetes-style backend: finish the deletion.
            let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
            return Ok(None);
        }
        Ok(Some(Versioned {
            value,
            rev: kv.mod_revision,
        }))
    }

    async fn list_blocks_raw(
        &self,
        family: IpFamily,
    ) -> Result<Vec<Versioned<AllocationBlock>>, IpamError> {
        let list = self.store.list(&keys::block_prefix(family)).await?;
        let mut out = Vec::with_capacity(list.kvs.len());
        for kv in &list.kvs {
            let value: AllocationBlock = decode(kv)?;
            if !value.deleted {
                out.push(Versioned {
                    value,
                    rev: kv.mod_revision,
                });
            }
        }
        Ok(out)
    }

    /// Writes a block back (compare-and-swap), bumping its sequence number.
    async fn write_block(&self, b: &mut Versioned<AllocationBlock>) -> Result<(), IpamError> {
        let key = keys::block_key(&b.value.cidr);
        b.value.sequence_number = b.value.sequence_number.wrapping_add(1);
        let bytes = encode(&key, &b.value)?;
        b.rev = self.store.update(&key, &bytes, b.rev).await?;
        Ok(())
    }

    async fn create_block(
        &self,
        value: AllocationBlock,
    ) -> Result<Versioned<AllocationBlock>, IpamError> {
        let key = keys::block_key(&value.cidr);
        let rev = self.store.create(&key, &encode(&key, &value)?).await?;
        Ok(Versioned { value, rev })
    }

    async fn delete_block(&self, b: &Versioned<AllocationBlock>) -> Result<(), IpamError> {
        self.store
            .delete(&keys::block_key(&b.value.cidr), Some(b.rev))
            .await?;
        Ok(())
    }

    /// The stored block containing `ip`: the pool's block if the pool is known, else a
    /// scan of every block of the family.
    async fn find_block_for_ip(
        &self,
        ip: IpAddr,
        pools: &[PoolInfo],
    ) -> Result<Option<Versioned<AllocationBlock>>, IpamError> {
        if let Some(p) = pool::pool_for_ip(pools, ip)
            && let Some(b) = self.read_block(&p.block_for(ip)).await?
        {
            return Ok(Some(b));
        }
        Ok(self
            .list_blocks_raw(IpFamily::of_addr(&ip))
            .await?
            .into_iter()
            .find(|b| b.value.cidr.contains(&ip)))
    }

    // ---- affinities -------------------------------------------------------------------

    async fn read_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
    ) -> Result<Option<Versioned<BlockAffinity>>, IpamError> {
        let key = keys::affinity_key(host, cidr);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let value = BlockAffinity::from_bytes(&kv.value).map_err(|e| IpamError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        if value.deleted {
            let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
            return Ok(None);
        }
        Ok(Some(Versioned {
            value,
            rev: kv.mod_revision,
        }))
    }

    async fn create_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
        state: AffinityState,
    ) -> Result<Versioned<BlockAffinity>, IpamError> {
        let key = keys::affinity_key(host, cidr);
        let value = BlockAffinity::new(state);
        let rev = self.store.create(&key, &encode(&key, &value)?).await?;
        Ok(Versioned { value, rev })
    }

    async fn set_affinity_state(
        &self,
        host: &str,
        cidr: &IpNet,
        current: &Versioned<BlockAffinity>,
        state: AffinityState,
    ) -> Result<Versioned<BlockAffinity>, IpamError> {
        let key = keys::affinity_key(host, cidr);
        let value = BlockAffinity::new(state);
        let rev = self
            .store
            .update(&key, &encode(&key, &value)?, current.rev)
            .await?;
        Ok(Versioned { value, rev })
    }

    async fn delete_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
        rev: Revision,
    ) -> Result<(), IpamError> {
        self.store
            .delete(&keys::affinity_key(host, cidr), Some(rev))
            .await?;
        Ok(())
    }

    /// Deletes whatever affinity `host` has for `cidr` (used when it turned out stale).
    async fn drop_affinity(&self, host: &str, cidr: &IpNet) {
        match self.read_affinity(host, cidr).await {
            Ok(Some(a)) => {
                if let Err(e) = self.delete_affinity(host, cidr, a.rev).await {
                    debug!(host, %cidr, error = %e, "could not delete stale affinity");
                }
            }
            Ok(None) => {}
            Err(e) => debug!(host, %cidr, error = %e, "could not read stale affinity"),
        }
    }

    async fn list_host_affinities(
        &self,
        host: &str,
        family: IpFamily,
    ) -> Result<Vec<(IpNet, Versioned<BlockAffinity>)>, IpamError> {
        let list = self
            .store
            .list(&keys::host_affinity_prefix(host, family))
            .await?;
        let mut out = Vec::new();
        for kv in &list.kvs {
            let Some((h, cidr)) = keys::parse_affinity_key(&kv.key) else {
                continue;
            };
            if h != host {
                continue;
            }
            let value = BlockAffinity::from_bytes(&kv.value).map_err(|e| IpamError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
            if !value.deleted {
                out.push((
                    cidr,
                    Versioned {
                        value,
                        rev: kv.mod_revision,
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Moves `host`'s affinity for `cidr` to `confirmed`, creating it if it vanished.
    async fn confirm_affinity(&self, host: &str, cidr: &IpNet) -> Result<(), IpamError> {
        for attempt in 0..self.retries() {
            let res = match self.read_affinity(host, cidr).await? {
                Some(a) if a.value.state == AffinityState::Confirmed => return Ok(()),
                Some(a) => self
                    .set_affinity_state(host, cidr, &a, AffinityState::Confirmed)
                    .await
                    .map(drop),
                None => self
                    .create_affinity(host, cidr, AffinityState::Confirmed)
                    .await
                    .map(drop),
            };
            match res {
                Ok(()) => return Ok(()),
                Err(e) if e.is_race() => self.backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(self.gave_up(format!("confirm affinity of {cidr} to {host}")))
    }

    /// Two-phase claim of `cidr` for `host`: affinity `pending`, create the block affine
    /// to `host`, affinity `confirmed`. If someone else's block is there, our pending
    /// affinity is removed and the result is [`Claim::Taken`]. Races surface as errors
    /// for which `is_race()` holds.
    async fn claim_block(&self, host: &str, cidr: &IpNet) -> Result<Claim, IpamError> {
        match self
            .create_affinity(host, cidr, AffinityState::Pending)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_race() => {}
            Err(e) => return Err(e),
        }
        let block = AllocationBlock::new_for_host(
            *cidr,
            host,
            time::format_rfc3339(time::now_unix()),
            time::now_unix_nanos(),
        )?;
        match self.create_block(block).await {
            Ok(b) => {
                self.confirm_affinity(host, cidr).await?;
                info!(host, %cidr, "claimed block");
                Ok(Claim::Claimed(b))
            }
            Err(e) if e.is_race() => match self.read_block(cidr).await? {
                Some(b) if b.value.is_affine_to(host) => {
                    self.confirm_affinity(host, cidr).await?;
                    Ok(Claim::Claimed(b))
                }
                Some(_) => {
                    self.drop_affinity(host, cidr).await;
                    Ok(Claim::Taken)
                }
                None => Err(IpamError::race(&keys::block_key(cidr))),
            },
            Err(e) => Err(e),
        }
    }

    /// The block behind one of `host`'s affinities. Recreates a missing block, removes an
    /// affinity whose block belongs elsewhere (`None`), and confirms unconfirmed ones after
    /// rewriting the block so a concurrent release of it fails its compare-and-swap.
    async fn block_from_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
        aff: &Versioned<BlockAffinity>,
    ) -> Result<Option<Versioned<AllocationBlock>>, IpamError> {
        match self.read_block(cidr).await? {
            None if aff.value.state == AffinityState::PendingDeletion => {
                let _ = self.delete_affinity(host, cidr, aff.rev).await;
                Ok(None)
            }
            None => match self.claim_block(host, cidr).await? {
                Claim::Claimed(b) => Ok(Some(b)),
                Claim::Taken => Ok(None),
            },
            Some(b) if !b.value.is_affine_to(host) => {
                debug!(host, %cidr, affinity = ?b.value.affinity, "affinity is stale, deleting it");
                let _ = self.delete_affinity(host, cidr, aff.rev).await;
                Ok(None)
            }
            Some(mut b) => {
                if aff.value.state != AffinityState::Confirmed {
                    self.write_block(&mut b).await?;
                    self.confirm_affinity(host, cidr).await?;
                }
                Ok(Some(b))
            }
        }
    }

    /// Releases `host`'s affinity for one block: affinity `pendingDeletion`, then delete
    /// the block if empty or clear its affinity, then delete the affinity. With
    /// `must_be_empty`, a block holding addresses is left alone.
    async fn release_block_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
        must_be_empty: bool,
    ) -> Result<AffinityRelease, IpamError> {
        for attempt in 0..self.retries() {
            let aff = self.read_affinity(host, cidr).await?;
            let Some(mut block) = self.read_block(cidr).await? else {
                let Some(a) = aff else {
                    return Ok(AffinityRelease::NotOurs);
                };
                if let Err(e) = self.delete_affinity(host, cidr, a.rev).await {
                    if e.is_race() {
                        self.backoff(attempt).await;
                        continue;
                    }
                    return Err(e);
                }
                return Ok(AffinityRelease::Released);
            };
            if !block.value.is_affine_to(host) {
                if let Some(a) = aff {
                    let _ = self.delete_affinity(host, cidr, a.rev).await;
                }
                return Ok(AffinityRelease::NotOurs);
            }
            if must_be_empty && !block.value.is_empty() {
                if let Some(a) = &aff
                    && a.value.state == AffinityState::PendingDeletion
                {
                    let _ = self
                        .set_affinity_state(host, cidr, a, AffinityState::Confirmed)
                        .await;
                }
                return Ok(AffinityRelease::NotEmpty);
            }
            let marked = match &aff {
                Some(a) => match self
                    .set_affinity_state(host, cidr, a, AffinityState::PendingDeletion)
                    .await
                {
                    Ok(m) => Some(m),
                    Err(e) if e.is_race() => {
                        self.backoff(attempt).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let res = if block.value.is_empty() {
                self.delete_block(&block).await
            } else {
                block.value.affinity = None;
                block.value.affinity_claim_time = None;
                self.write_block(&mut block).await
            };
            if let Err(e) = res {
                // Undo the mark so the owner keeps using the block, then retry.
                if let Some(m) = &marked {
                    let _ = self
                        .set_affinity_state(host, cidr, m, AffinityState::Confirmed)
                        .await;
                }
                if e.is_race() {
                    self.backoff(attempt).await;
                    continue;
                }
                return Err(e);
            }
            if let Some(m) = marked
                && let Err(e) = self.delete_affinity(host, cidr, m.rev).await
            {
                warn!(host, %cidr, error = %e, "block released but its affinity could not be deleted");
            }
            info!(host, %cidr, "released block affinity");
            return Ok(AffinityRelease::Released);
        }
        Err(self.gave_up(format!("release affinity of {cidr} for {host}")))
    }

    // ---- handles ----------------------------------------------------------------------

    async fn read_handle(&self, handle: &str) -> Result<Option<Versioned<IpamHandle>>, IpamError> {
        let key = keys::handle_key(handle);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let mut value: IpamHandle = decode(&kv)?;
        if value.deleted {
            let _ = self.store.delete(&key, Some(kv.mod_revision)).await;
            return Ok(None);
        }
        if value.handle_id.is_empty() {
            value.handle_id = handle.to_owned();
        }
        Ok(Some(Versioned {
            value,
            rev: kv.mod_revision,
        }))
    }

    async fn increment_handle(&self, handle: &str, block: &IpNet, n: u64) -> Result<(), IpamError> {
        let key = keys::handle_key(handle);
        for attempt in 0..self.retries() {
            let res = match self.read_handle(handle).await? {
                None => {
                    let mut h = IpamHandle::new(handle);
                    h.increment(block, n);
                    self.store.create(&key, &encode(&key, &h)?).await
                }
                Some(mut h) => {
                    h.value.increment(block, n);
                    self.store
                        .update(&key, &encode(&key, &h.value)?, h.rev)
                        .await
                }
            };
            match res {
                Ok(_) => return Ok(()),
                Err(e) if store_race(&e) => self.backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.gave_up(format!("increment handle {handle}")))
    }

    async fn decrement_handle(&self, handle: &str, block: &IpNet, n: u64) -> Result<(), IpamError> {
        let key = keys::handle_key(handle);
        for attempt in 0..self.retries() {
            let Some(mut h) = self.read_handle(handle).await? else {
                return Ok(());
            };
            h.value.decrement(block, n);
            let res = if h.value.is_empty() {
                self.store.delete(&key, Some(h.rev)).await.map(drop)
            } else {
                self.store
                    .update(&key, &encode(&key, &h.value)?, h.rev)
                    .await
                    .map(drop)
            };
            match res {
                Ok(()) => return Ok(()),
                Err(e) if store_race(&e) => self.backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.gave_up(format!("decrement handle {handle}")))
    }

    async fn decrement_handle_logged(&self, handle: &str, block: &IpNet, n: u64) {
        if let Err(e) = self.decrement_handle(handle, block, n).await {
            warn!(handle, %block, error = %e, "could not decrement handle (check will report it)");
        }
    }

    // ---- auto-assign ------------------------------------------------------------------

    /// Assigns `num_v4` IPv4 and `num_v6` IPv6 addresses on `hostname` (Calico's
    /// `AutoAssign`). Fewer than requested is not an error: see
    /// [`IpamAssignments::partial_fulfillment_error`]. The block limit and bad requests are
    /// errors, carrying what was assigned before them.
    pub async fn auto_assign(
        &self,
        args: &AutoAssignArgs,
    ) -> Result<AutoAssignResult, AutoAssignError> {
        check_key_segment("hostname", &args.hostname).map_err(AutoAssignError::bare)?;
        if let Some(h) = &args.handle {
            check_key_segment("handle", h).map_err(AutoAssignError::bare)?;
        }
        let host_lock = self.host_lock(&args.hostname);
        let _serialised = if self.options.serialise_per_host {
            Some(host_lock.lock().await)
        } else {
            None
        };
        let env = self.load_env().await.map_err(AutoAssignError::bare)?;
        let node_labels = self
            .node_labels(&args.hostname)
            .await
            .map_err(AutoAssignError::bare)?;
        let mut out = AutoAssignResult::default();
        if args.num_v4 > 0 {
            match self
                .auto_assign_family(
                    IpFamily::V4,
                    args.num_v4,
                    &args.ipv4_pools,
                    args,
                    &env,
                    &node_labels,
                )
                .await
            {
                Ok(ia) => out.v4 = Some(ia),
                Err((partial, error)) => {
                    return Err(AutoAssignError {
                        error,
                        v4: partial,
                        v6: None,
                    });
                }
            }
        }
        if args.num_v6 > 0 {
            match self
                .auto_assign_family(
                    IpFamily::V6,
                    args.num_v6,
                    &args.ipv6_pools,
                    args,
                    &env,
                    &node_labels,
                )
                .await
            {
                Ok(ia) => out.v6 = Some(ia),
                Err((partial, error)) => {
                    return Err(AutoAssignError {
                        error,
                        v4: out.v4,
                        v6: partial,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn auto_assign_family(
        &self,
        family: IpFamily,
        num: usize,
        requested: &[String],
        args: &AutoAssignArgs,
        env: &Env,
        node_labels: &BTreeMap<String, String>,
    ) -> Result<IpamAssignments, (Option<IpamAssignments>, IpamError)> {
        let host = args.hostname.as_str();
        let det = pool::determine_pools(
            &env.pools,
            requested,
            family,
            node_labels,
            args.namespace_labels.as_ref(),
        )
        .map_err(|e| (None, e))?;
        if det.selected.is_empty() {
            return Err((
                None,
                IpamError::NoPoolsForNode {
                    host: host.to_owned(),
                    family,
                },
            ));
        }
        let usable = pool::filter_by_use(&det.selected, args.intended_use);
        if usable.is_empty() {
            return Err((
                None,
                IpamError::NoQualifiedPool {
                    family,
                    intended_use: args.intended_use,
                },
            ));
        }

        let affinities = self
            .list_host_affinities(host, family)
            .await
            .map_err(|e| (None, e))?;
        let mut affine = VecDeque::new();
        for (cidr, _) in affinities {
            if usable.iter().any(|p| p.contains_net(&cidr)) {
                affine.push_back(cidr);
                continue;
            }
            // Free empty blocks of pools that no longer serve this node.
            let keep = match env.enabled_pool_for(&cidr) {
                Some(p) => p.selects_node(node_labels).unwrap_or(true),
                None => false,
            };
            if !keep {
                match self.release_block_affinity(host, &cidr, true).await {
                    Ok(r) => {
                        debug!(host, %cidr, outcome = ?r, "block of a pool no longer serving the node")
                    }
                    Err(e) => warn!(host, %cidr, error = %e, "could not release stale block"),
                }
            }
        }

        let mut ia = IpamAssignments::new(family, num);
        let cap = env.cfg.effective_max_blocks(args.max_blocks_per_host);
        let strict = env.cfg.strict_affinity;
        let mut owned = affine.len() as u32;
        let mut allow_new_claim = true;
        let mut idle_rounds = 0usize;
        let handle = args.handle.as_deref();

        while ia.ips.len() < num {
            let rem = num - ia.ips.len();
            if owned >= cap {
                allow_new_claim = false;
            }
            match self
                .find_or_claim_block(&mut affine, allow_new_claim, host, &usable, env)
                .await
            {
                Ok((block, newly_claimed)) => {
                    if newly_claimed {
                        owned += 1;
                    }
                    match self
                        .assign_from_block(block, rem, handle, &args.attrs, host, strict, env)
                        .await
                    {
                        Ok(ips) if ips.is_empty() => {
                            idle_rounds += 1;
                            if idle_rounds > self.retries() {
                                let e = self.gave_up(format!("auto-assign on {host}"));
                                return Err((Some(ia), e));
                            }
                        }
                        Ok(ips) => {
                            idle_rounds = 0;
                            ia.ips.extend(ips);
                        }
                        Err(e) => return Err((Some(ia), e)),
                    }
                }
                Err(FindError::NoFreeBlocks) => {
                    if strict {
                        ia.add_msg("No more free affine blocks and strict affinity enabled");
                    }
                    break;
                }
                Err(FindError::AutoAllocateDisabled) => {
                    ia.add_msg(
                        "No more free affine blocks and automatic block allocation is disabled",
                    );
                    break;
                }
                Err(FindError::BlockLimit) => {
                    ia.add_msg(format!(
                        "Need to allocate an IPAM block but could not - limit of {cap} blocks reached for this node"
                    ));
                    return Err((
                        Some(ia),
                        IpamError::BlockLimit {
                            host: host.to_owned(),
                            limit: cap,
                        },
                    ));
                }
                Err(FindError::Failed(e)) => return Err((Some(ia), e)),
            }
        }

        if !strict && ia.ips.len() < num {
            // Last resort: borrow from any block of the pools, walking them in this
            // host's order.
            let blocks = match self.list_blocks_raw(family).await {
                Ok(b) => b,
                Err(e) => return Err((Some(ia), e)),
            };
            let mut exhausted = Vec::new();
            for p in &usable {
                if ia.ips.len() >= num {
                    break;
                }
                let Ok(generator) = RandomBlocks::new(&p.network(), p.block_size, host) else {
                    continue;
                };
                let mut candidates: Vec<(u128, &Versioned<AllocationBlock>)> = blocks
                    .iter()
                    .filter_map(|b| generator.position_of(&b.value.cidr).map(|pos| (pos, b)))
                    .collect();
                candidates.sort_by_key(|(pos, _)| *pos);
                for (_, b) in candidates {
                    if ia.ips.len() >= num {
                        break;
                    }
                    if env.reservations.covers(&b.value.cidr) {
                        continue;
                    }
                    let rem = num - ia.ips.len();
                    match self
                        .assign_from_block(b.clone(), rem, handle, &args.attrs, host, false, env)
                        .await
                    {
                        Ok(ips) => ia.ips.extend(ips),
                        Err(e) => {
                            warn!(host, block = %b.value.cidr, error = %e, "could not borrow from block")
                        }
                    }
                }
                if ia.ips.len() < num {
                    exhausted.push(p.cidr.to_string());
                }
            }
            if !exhausted.is_empty() {
                ia.add_msg(format!(
                    "No IPs available in pools: [{}]",
                    exhausted.join(" ")
                ));
            }
        }
        info!(host, assigned = ia.ips.len(), requested = num, %family, "auto-assigned addresses");
        Ok(ia)
    }

    /// The next block to allocate from: one of the host's affine blocks with room, else a
    /// newly claimed one.
    async fn find_or_claim_block(
        &self,
        affine: &mut VecDeque<IpNet>,
        allow_new_claim: bool,
        host: &str,
        pools: &[&PoolInfo],
        env: &Env,
    ) -> Result<(Versioned<AllocationBlock>, bool), FindError> {
        while let Some(cidr) = affine.pop_front() {
            if env.reservations.covers(&cidr) {
                continue;
            }
            for attempt in 0..self.retries() {
                let Some(aff) = self.read_affinity(host, &cidr).await? else {
                    break;
                };
                match self.block_from_affinity(host, &cidr, &aff).await {
                    Ok(Some(mut b)) => {
                        b.value
                            .gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
                        if b.value.num_free(&env.reservations) >= 1 {
                            // Another request may still fit: look at this block again later.
                            affine.push_front(cidr);
                            return Ok((b, false));
                        }
                        break;
                    }
                    Ok(None) => break,
                    Err(e) if e.is_race() => self.backoff(attempt).await,
                    Err(e) => {
                        warn!(host, %cidr, error = %e, "could not use affine block, trying the next");
                        break;
                    }
                }
            }
        }

        if !allow_new_claim {
            return Err(FindError::BlockLimit);
        }
        if !env.cfg.auto_allocate_blocks {
            return Err(FindError::AutoAllocateDisabled);
        }
        for attempt in 0..self.retries() {
            let Some(cidr) = self.find_usable_block(host, pools, env).await? else {
                return Err(FindError::NoFreeBlocks);
            };
            match self.claim_block(host, &cidr).await {
                Ok(Claim::Claimed(mut b)) => {
                    b.value
                        .gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
                    if b.value.num_free(&env.reservations) >= 1 {
                        affine.push_front(cidr);
                        return Ok((b, true));
                    }
                }
                Ok(Claim::Taken) => {
                    debug!(host, %cidr, "block taken by another host, trying another")
                }
                Err(e) if e.is_race() => self.backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FindError::Failed(
            self.gave_up(format!("claim a block for {host}")),
        ))
    }

    /// A block CIDR `host` can claim: the first in the host's order of each pool with no
    /// block (and overlapping none), or an affine block with room (another process on
    /// the host claimed it meanwhile). If none, an empty block another host claimed long
    /// enough ago is taken back from it.
    async fn find_usable_block(
        &self,
        host: &str,
        pools: &[&PoolInfo],
        env: &Env,
    ) -> Result<Option<IpNet>, IpamError> {
        let Some(family) = pools.first().map(|p| p.family()) else {
            return Ok(None);
        };
        let blocks = self.list_blocks_raw(family).await?;
        let by_cidr: BTreeMap<IpNet, &Versioned<AllocationBlock>> =
            blocks.iter().map(|b| (b.value.cidr, b)).collect();
        // Existing blocks as start → end, to spot overlaps with differently sized blocks.
        let spans: BTreeMap<u128, u128> = blocks
            .iter()
            .map(|b| {
                (
                    ipmath::net_start(&b.value.cidr),
                    ipmath::net_end(&b.value.cidr),
                )
            })
            .collect();
        let overlaps = |cidr: &IpNet| {
            let (s, e) = (ipmath::net_start(cidr), ipmath::net_end(cidr));
            spans
                .range(..=e)
                .next_back()
                .is_some_and(|(_, &end)| end >= s)
        };
        for p in pools {
            let Ok(generator) = RandomBlocks::new(&p.network(), p.block_size, host) else {
                continue;
            };
            for cidr in generator {
                if env.reservations.covers(&cidr) {
                    continue;
                }
                match by_cidr.get(&cidr) {
                    None if !overlaps(&cidr) => return Ok(Some(cidr)),
                    None => {}
                    Some(b) => {
                        let mut b = b.value.clone();
                        b.gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
                        if b.is_affine_to(host) && b.num_free(&env.reservations) > 0 {
                            return Ok(Some(cidr));
                        }
                    }
                }
            }
        }

        let min_age = self.options.empty_block_reclaim_age.as_secs() as i64;
        let now = time::now_unix();
        for p in pools {
            let Ok(generator) = RandomBlocks::new(&p.network(), p.block_size, host) else {
                continue;
            };
            let mut candidates: Vec<(u128, &Versioned<AllocationBlock>)> = blocks
                .iter()
                .filter_map(|b| generator.position_of(&b.value.cidr).map(|pos| (pos, b)))
                .collect();
            candidates.sort_by_key(|(pos, _)| *pos);
            for (_, b) in candidates {
                let Some(owner) = b.value.host_affinity() else {
                    continue;
                };
                let claimed_at = b
                    .value
                    .affinity_claim_time
                    .as_deref()
                    .and_then(time::parse_rfc3339)
                    .unwrap_or(i64::MIN);
                if owner == host
                    || !b.value.is_empty()
                    || claimed_at.saturating_add(min_age) > now
                    || env.reservations.covers(&b.value.cidr)
                {
                    continue;
                }
                let owner = owner.to_owned();
                if let Ok(AffinityRelease::Released) = self
                    .release_block_affinity(&owner, &b.value.cidr, true)
                    .await
                {
                    info!(host, from = %owner, block = %b.value.cidr, "reclaimed empty block from another host");
                    return Ok(Some(b.value.cidr));
                }
            }
        }
        Ok(None)
    }

    /// Takes up to `num` addresses from `block`, retrying on fresh data when the write
    /// loses a race. Returns no addresses when the block is full, gone, or (with
    /// `affinity_check`) no longer affine to `host`.
    #[allow(clippy::too_many_arguments)]
    async fn assign_from_block(
        &self,
        mut block: Versioned<AllocationBlock>,
        num: usize,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
        host: &str,
        affinity_check: bool,
        env: &Env,
    ) -> Result<Vec<IpNet>, IpamError> {
        let cidr = block.value.cidr;
        // Addresses the handle already counts for this block on behalf of this call. On a
        // lost race the count is kept and only adjusted on the next attempt: the handle may
        // over-count while the block write is pending, never under-count.
        let mut counted = 0u64;
        let result = async {
            for attempt in 0..self.retries() {
                block
                    .value
                    .gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
                let ips = match block.value.auto_assign(
                    num,
                    handle,
                    attrs,
                    host,
                    affinity_check,
                    &env.reservations,
                ) {
                    Ok(ips) => ips,
                    Err(BlockError::AffinityMismatch { .. }) => return Ok(Vec::new()),
                    Err(e) => return Err(e.into()),
                };
                if ips.is_empty() {
                    return Ok(ips);
                }
                let n = ips.len() as u64;
                if let Some(h) = handle
                    && n > counted
                {
                    self.increment_handle(h, &cidr, n - counted).await?;
                    counted = n;
                }
                match self.write_block(&mut block).await {
                    Ok(()) => {
                        debug!(host, block = %cidr, count = n, "assigned addresses");
                        if let Some(h) = handle
                            && counted > n
                        {
                            self.decrement_handle_logged(h, &cidr, counted - n).await;
                        }
                        counted = 0;
                        return Ok(ips);
                    }
                    Err(e) if e.is_race() => {
                        self.backoff(attempt).await;
                        match self.read_block(&cidr).await? {
                            Some(b) => block = b,
                            None => return Ok(Vec::new()),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(self.gave_up(format!("assign from block {cidr}")))
        }
        .await;
        if let Some(h) = handle
            && counted > 0
        {
            self.decrement_handle_logged(h, &cidr, counted).await;
        }
        result
    }

    // ---- assign a given address -----------------------------------------------------------

    /// Assigns a specific address (Calico's `AssignIP`, the `ipAddrs` annotation), claiming
    /// its block for `hostname` if nobody has. Returns it with the block's prefix length.
    pub async fn assign_ip(&self, args: &AssignIpArgs) -> Result<IpNet, IpamError> {
        check_key_segment("hostname", &args.hostname)?;
        if let Some(h) = &args.handle {
            check_key_segment("handle", h)?;
        }
        let env = self.load_env().await?;
        let ip = args.ip;
        let pool = match pool::pool_for_ip(&env.pools, ip) {
            None => return Err(IpamError::NotInPool { ip }),
            Some(p) if !p.enabled() => {
                return Err(IpamError::PoolDisabled {
                    ip,
                    pool: p.name.clone(),
                    cidr: p.cidr,
                });
            }
            Some(p) => p,
        };
        let host = args.hostname.as_str();
        let handle = args.handle.as_deref();
        for attempt in 0..self.retries() {
            let mut block = match self
                .find_block_for_ip(ip, std::slice::from_ref(pool))
                .await?
            {
                Some(b) => b,
                None => match self.claim_block(host, &pool.block_for(ip)).await {
                    Ok(Claim::Claimed(b)) => b,
                    Ok(Claim::Taken) => {
                        self.backoff(attempt).await;
                        continue;
                    }
                    Err(e) if e.is_race() => {
                        self.backoff(attempt).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let cidr = block.value.cidr;
            block
                .value
                .gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
            let net = block
                .value
                .assign(ip, handle, &args.attrs, host, env.cfg.strict_affinity)?;
            if let Some(h) = handle {
                self.increment_handle(h, &cidr, 1).await?;
            }
            match self.write_block(&mut block).await {
                Ok(()) => {
                    info!(host, %ip, "assigned address");
                    return Ok(net);
                }
                Err(e) => {
                    if let Some(h) = handle {
                        self.decrement_handle_logged(h, &cidr, 1).await;
                    }
                    if !e.is_race() {
                        return Err(e);
                    }
                    self.backoff(attempt).await;
                }
            }
        }
        Err(self.gave_up(format!("assign {ip}")))
    }

    /// Makes sure `node` has a tunnel address of `kind` (handle `<kind>-tunnel-addr-<node>`,
    /// intended use Tunnel), assigning one from `pools` (names or CIDRs; empty = any that
    /// selects the node) if it has none. Returns the address.
    pub async fn ensure_tunnel_address(
        &self,
        node: &str,
        kind: TunnelKind,
        pools: &[String],
    ) -> Result<IpAddr, IpamError> {
        let handle = kind.handle(node);
        if let Some(ip) = self.ips_by_handle(&handle).await?.into_iter().next() {
            return Ok(ip);
        }
        let mut args = AutoAssignArgs::new(node, 0, 0).with_handle(handle);
        args.intended_use = AllowedUse::Tunnel;
        args.attrs.insert(handle::attrs::NODE.into(), node.into());
        args.attrs
            .insert(handle::attrs::TYPE.into(), kind.attribute_type().into());
        if kind.is_ipv6() {
            args.num_v6 = 1;
            args.ipv6_pools = pools.to_vec();
        } else {
            args.num_v4 = 1;
            args.ipv4_pools = pools.to_vec();
        }
        let res = self.auto_assign(&args).await.map_err(|e| e.error)?;
        let ia = if kind.is_ipv6() { res.v6 } else { res.v4 };
        let ia = ia.expect("one address of the family was requested");
        match ia.ips.first() {
            Some(net) => Ok(net.addr()),
            None => Err(IpamError::Exhausted(
                ia.partial_fulfillment_error()
                    .expect("nothing was assigned, so fulfilment is partial"),
            )),
        }
    }

    // ---- release ----------------------------------------------------------------------

    /// Releases addresses (Calico's `ReleaseIPs`). Returns those that were not allocated.
    /// A guarded release whose handle or sequence number no longer matches fails with an
    /// error for which [`IpamError::is_release_conflict`] holds; nothing in that address's
    /// block is released, other blocks are.
    pub async fn release_ips(&self, opts: &[ReleaseOptions]) -> Result<Vec<IpAddr>, IpamError> {
        for o in opts {
            if let Some(h) = &o.handle {
                check_key_segment("handle", h)?;
            }
        }
        let env = self.load_env().await?;
        let mut unallocated = Vec::new();
        let mut by_block: BTreeMap<IpNet, Vec<ReleaseOptions>> = BTreeMap::new();
        let mut listed: BTreeMap<IpFamily, Vec<IpNet>> = BTreeMap::new();
        for o in opts {
            let ip = o.address;
            let cidr = match pool::pool_for_ip(&env.pools, ip) {
                Some(p) => Some(p.block_for(ip)),
                None => {
                    let family = IpFamily::of_addr(&ip);
                    if let std::collections::btree_map::Entry::Vacant(slot) = listed.entry(family) {
                        let blocks = self.list_blocks_raw(family).await?;
                        slot.insert(blocks.into_iter().map(|b| b.value.cidr).collect());
                    }
                    listed[&family].iter().find(|c| c.contains(&ip)).copied()
                }
            };
            match cidr {
                Some(c) => by_block.entry(c).or_default().push(o.clone()),
                None => unallocated.push(ip),
            }
        }

        let mut first_error = None;
        for (cidr, opts) in by_block {
            match self.release_from_block(&cidr, &opts, &env).await {
                Ok(mut u) => unallocated.append(&mut u),
                Err(e) => {
                    warn!(block = %cidr, error = %e, "release failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(unallocated),
        }
    }

    async fn release_from_block(
        &self,
        cidr: &IpNet,
        opts: &[ReleaseOptions],
        env: &Env,
    ) -> Result<Vec<IpAddr>, IpamError> {
        for attempt in 0..self.retries() {
            let block = match self.read_block(cidr).await? {
                Some(b) => b,
                None => match self.find_block_for_ip(opts[0].address, &[]).await? {
                    // A block of another size holds the address (pool recreated).
                    Some(b) if b.value.cidr != *cidr => b,
                    _ => return Ok(opts.iter().map(|o| o.address).collect()),
                },
            };
            let mut block = block;
            block
                .value
                .gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
            let stamp = env.cooldown_stamp();
            let r = block.value.release(opts, stamp.as_deref())?;
            if r.released.is_empty() {
                return Ok(r.unallocated);
            }
            let res = if block.value.is_empty() && block.value.affinity.is_none() {
                self.delete_block(&block).await
            } else {
                self.write_block(&mut block).await
            };
            match res {
                Ok(()) => {}
                Err(e) if e.is_race() => {
                    self.backoff(attempt).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            for (h, n) in &r.handles {
                self.decrement_handle_logged(h, &block.value.cidr, *n).await;
            }
            info!(block = %block.value.cidr, released = r.released.len(), "released addresses");
            self.ensure_consistent_affinity(&block.value, env).await;
            return Ok(r.unallocated);
        }
        Err(self.gave_up(format!("release from block {cidr}")))
    }

    /// Releases every address of `handle` and deletes the handle (Calico's
    /// `ReleaseByHandle`). Returns the released addresses; an unknown handle releases none.
    pub async fn release_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        check_key_segment("handle", handle)?;
        let env = self.load_env().await?;
        let mut released = Vec::new();
        for attempt in 0..self.retries() {
            let Some(h) = self.read_handle(handle).await? else {
                return Ok(released);
            };
            for cidr_s in h.value.block.keys() {
                let Ok(cidr) = cidr_s.parse::<IpNet>() else {
                    warn!(handle, block = %cidr_s, "handle names an unparsable block");
                    continue;
                };
                released.extend(self.release_handle_in_block(handle, &cidr, &env).await?);
            }
            match self
                .store
                .delete(&keys::handle_key(handle), Some(h.rev))
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => return Ok(released),
                // The handle changed (a concurrent assign with it): go round again.
                Err(e) if e.is_conflict() => self.backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.gave_up(format!("release handle {handle}")))
    }

    async fn release_handle_in_block(
        &self,
        handle: &str,
        cidr: &IpNet,
        env: &Env,
    ) -> Result<Vec<IpAddr>, IpamError> {
        for attempt in 0..self.retries() {
            let Some(mut block) = self.read_block(cidr).await? else {
                return Ok(Vec::new());
            };
            block
                .value
                .gc_cooldown(time::now_unix(), env.cfg.ip_cooldown_seconds);
            let stamp = env.cooldown_stamp();
            let ips = block.value.release_by_handle(handle, stamp.as_deref());
            if ips.is_empty() {
                return Ok(ips);
            }
            let res = if block.value.is_empty() && block.value.affinity.is_none() {
                self.delete_block(&block).await
            } else {
                self.write_block(&mut block).await
            };
            match res {
                Ok(()) => {
                    self.ensure_consistent_affinity(&block.value, env).await;
                    return Ok(ips);
                }
                Err(e) if e.is_race() => self.backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(self.gave_up(format!("release handle {handle} in block {cidr}")))
    }

    /// After a release: an empty affine block whose pool is gone, disabled or no longer
    /// selects its node (or any empty affine block, with `release_empty_affine_blocks`)
    /// loses its affinity and is deleted. Best effort: failures are logged.
    async fn ensure_consistent_affinity(&self, block: &AllocationBlock, env: &Env) {
        if !block.is_empty() {
            return;
        }
        let Some(host) = block.host_affinity() else {
            return;
        };
        let release = if self.options.release_empty_affine_blocks {
            true
        } else {
            match env.enabled_pool_for(&block.cidr) {
                None => true,
                Some(p) => match self.node_labels(host).await {
                    Ok(labels) => !p.selects_node(&labels).unwrap_or(true),
                    Err(_) => false,
                },
            }
        };
        if release {
            match self.release_block_affinity(host, &block.cidr, true).await {
                Ok(r) => debug!(host, block = %block.cidr, outcome = ?r, "released empty block"),
                Err(e) => {
                    warn!(host, block = %block.cidr, error = %e, "could not release empty block")
                }
            }
        }
    }

    // ---- affinity management ------------------------------------------------------------

    fn pool_for_cidr<'a>(&self, env: &'a Env, cidr: &IpNet) -> Result<&'a PoolInfo, IpamError> {
        let pool = env
            .pools
            .iter()
            .filter(|p| p.enabled() && p.contains(cidr.network()))
            .max_by_key(|p| p.network().prefix_len())
            .ok_or(IpamError::CidrNotInPool { cidr: *cidr })?;
        if cidr.prefix_len() > pool.block_size {
            return Err(IpamError::CidrTooSmall { cidr: *cidr });
        }
        let count = random_block::block_count(&cidr.trunc(), pool.block_size);
        if count > 65_536 {
            return Err(IpamError::InvalidArgument(format!(
                "{cidr} spans {count} blocks of /{}; claim at most 65536 at once",
                pool.block_size
            )));
        }
        Ok(pool)
    }

    /// Claims every block of `cidr` for `host` (Calico's `ClaimAffinity`). Returns the
    /// blocks claimed (or already ours) and those held by someone else.
    pub async fn claim_affinity(
        &self,
        cidr: IpNet,
        host: &str,
    ) -> Result<(Vec<IpNet>, Vec<IpNet>), IpamError> {
        check_key_segment("hostname", host)?;
        let env = self.load_env().await?;
        let pool = self.pool_for_cidr(&env, &cidr)?;
        let existing = self.list_blocks_raw(pool.family()).await?;
        let mut claimed = Vec::new();
        let mut failed = Vec::new();
        for block in random_block::blocks_within(&cidr, &pool.network(), pool.block_size) {
            // A block of another size over this range belongs to someone already.
            if existing.iter().any(|b| {
                b.value.cidr != block
                    && (b.value.cidr.contains(&block.network())
                        || block.contains(&b.value.cidr.network()))
            }) {
                failed.push(block);
                continue;
            }
            let mut done = false;
            for attempt in 0..self.retries() {
                match self.claim_block(host, &block).await {
                    Ok(Claim::Claimed(_)) => {
                        claimed.push(block);
                        done = true;
                        break;
                    }
                    Ok(Claim::Taken) => {
                        failed.push(block);
                        done = true;
                        break;
                    }
                    Err(e) if e.is_race() => self.backoff(attempt).await,
                    Err(e) => return Err(e),
                }
            }
            if !done {
                return Err(self.gave_up(format!("claim {block} for {host}")));
            }
        }
        Ok((claimed, failed))
    }

    /// Releases `host`'s affinity for every block of `cidr` (Calico's `ReleaseAffinity`).
    /// Blocks affine elsewhere are skipped; with `must_be_empty`, so are blocks in use.
    /// Returns the blocks released.
    pub async fn release_affinity(
        &self,
        cidr: IpNet,
        host: &str,
        must_be_empty: bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        check_key_segment("hostname", host)?;
        let env = self.load_env().await?;
        let pool = self.pool_for_cidr(&env, &cidr)?;
        let mut released = Vec::new();
        for block in random_block::blocks_within(&cidr, &pool.network(), pool.block_size) {
            if self
                .release_block_affinity(host, &block, must_be_empty)
                .await?
                == AffinityRelease::Released
            {
                released.push(block);
            }
        }
        Ok(released)
    }

    /// Releases every affinity of `host` (e.g. when the node is deleted). Returns the
    /// blocks released.
    pub async fn release_host_affinities(
        &self,
        host: &str,
        must_be_empty: bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        check_key_segment("hostname", host)?;
        let mut released = Vec::new();
        for family in IpFamily::both() {
            for (cidr, _) in self.list_host_affinities(host, family).await? {
                if self
                    .release_block_affinity(host, &cidr, must_be_empty)
                    .await?
                    == AffinityRelease::Released
                {
                    released.push(cidr);
                }
            }
        }
        Ok(released)
    }

    /// Garbage collection of empty blocks: releases the affinity of, and deletes, every
    /// empty affine block (of `host` only, if given). Returns the blocks freed.
    pub async fn release_empty_blocks(&self, host: Option<&str>) -> Result<Vec<IpNet>, IpamError> {
        let mut freed = Vec::new();
        for family in IpFamily::both() {
            for b in self.list_blocks_raw(family).await? {
                let Some(owner) = b.value.host_affinity() else {
                    continue;
                };
                if !b.value.is_empty() || host.is_some_and(|h| h != owner) {
                    continue;
                }
                let owner = owner.to_owned();
                if self
                    .release_block_affinity(&owner, &b.value.cidr, true)
                    .await?
                    == AffinityRelease::Released
                {
                    freed.push(b.value.cidr);
                }
            }
        }
        Ok(freed)
    }

    // ---- queries ----------------------------------------------------------------------

    /// Every stored block of `family` (both when `None`), in key order.
    pub async fn list_blocks(
        &self,
        family: Option<IpFamily>,
    ) -> Result<Vec<AllocationBlock>, IpamError> {
        let families: Vec<IpFamily> = match family {
            Some(f) => vec![f],
            None => IpFamily::both().to_vec(),
        };
        let mut out = Vec::new();
        for f in families {
            out.extend(self.list_blocks_raw(f).await?.into_iter().map(|b| b.value));
        }
        Ok(out)
    }

    /// Every stored handle.
    pub async fn list_handles(&self) -> Result<Vec<IpamHandle>, IpamError> {
        let list = self.store.list(&keys::handle_prefix()).await?;
        let mut out = Vec::new();
        for kv in &list.kvs {
            let mut h: IpamHandle = decode(kv)?;
            if h.deleted {
                continue;
            }
            if h.handle_id.is_empty()
                && let Some(id) = keys::parse_handle_key(&kv.key)
            {
                h.handle_id = id.to_owned();
            }
            out.push(h);
        }
        Ok(out)
    }

    /// Every affinity (of `host` only, if given).
    pub async fn list_affinities(
        &self,
        host: Option<&str>,
    ) -> Result<Vec<AffinityInfo>, IpamError> {
        let prefix = match host {
            Some(h) => tabby_store::keys::ipam_host_prefix(h),
            None => keys::affinity_root(),
        };
        let list = self.store.list(&prefix).await?;
        Self::parse_affinities(&list.kvs, host)
    }

    fn parse_affinities(
        kvs: &[KeyValue],
        host: Option<&str>,
    ) -> Result<Vec<AffinityInfo>, IpamError> {
        let mut out = Vec::new();
        for kv in kvs {
            let Some((h, cidr)) = keys::parse_affinity_key(&kv.key) else {
                continue;
            };
            if host.is_some_and(|want| want != h) {
                continue;
            }
            let a = BlockAffinity::from_bytes(&kv.value).map_err(|e| IpamError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
            if !a.deleted {
                out.push(AffinityInfo {
                    host: h,
                    cidr,
                    state: a.state,
                });
            }
        }
        Ok(out)
    }

    /// The addresses `handle` holds.
    pub async fn ips_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        check_key_segment("handle", handle)?;
        let Some(h) = self.read_handle(handle).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for cidr_s in h.value.block.keys() {
            let Ok(cidr) = cidr_s.parse::<IpNet>() else {
                continue;
            };
            if let Some(b) = self.read_block(&cidr).await? {
                out.extend(
                    b.value
                        .allocations()
                        .into_iter()
                        .filter(|a| a.handle.as_deref() == Some(handle))
                        .map(|a| a.ip),
                );
            }
        }
        Ok(out)
    }

    /// The allocation of `ip` (handle, attributes, sequence number), or `None` if it is
    /// not assigned (Calico's `GetAssignmentAttributes`).
    pub async fn get_assignment_attributes(
        &self,
        ip: IpAddr,
    ) -> Result<Option<AllocationInfo>, IpamError> {
        let env = self.load_env().await?;
        Ok(self
            .find_block_for_ip(ip, &env.pools)
            .await?
            .and_then(|b| b.value.allocation(ip)))
    }

    /// Usage of the pools named in `pools` (names or CIDRs; all pools when empty).
    pub async fn get_utilization(
        &self,
        pools: &[String],
    ) -> Result<Vec<PoolUtilization>, IpamError> {
        let env = self.load_env().await?;
        let selected: Vec<PoolInfo> = env
            .pools
            .iter()
            .filter(|p| pools.is_empty() || pools.iter().any(|r| p.is_named(r)))
            .cloned()
            .collect();
        let blocks = self.list_blocks(None).await?;
        Ok(utilization::compute_utilization(
            &selected,
            &blocks,
            &env.reservations,
        ))
    }

    // ---- check ------------------------------------------------------------------------

    async fn snapshot(
        &self,
    ) -> Result<(Vec<AllocationBlock>, Vec<IpamHandle>, Vec<AffinityInfo>), IpamError> {
        // One list of the whole IPAM tree reads every key at the same revision.
        let list = self.store.list(tabby_store::keys::IPAM_PREFIX).await?;
        let mut blocks = Vec::new();
        let mut handles = Vec::new();
        let mut affinity_kvs = Vec::new();
        for kv in list.kvs {
            if keys::parse_block_key(&kv.key).is_some() {
                let b: AllocationBlock = decode(&kv)?;
                if !b.deleted {
                    blocks.push(b);
                }
            } else if let Some(id) = keys::parse_handle_key(&kv.key) {
                let mut h: IpamHandle = decode(&kv)?;
                if h.handle_id.is_empty() {
                    h.handle_id = id.to_owned();
                }
                if !h.deleted {
                    handles.push(h);
                }
            } else if kv.key.starts_with(&keys::affinity_root()) {
                affinity_kvs.push(kv);
            }
        }
        let affinities = Self::parse_affinities(&affinity_kvs, None)?;
        Ok((blocks, handles, affinities))
    }

    /// Checks the stored IPAM state for leaks and inconsistencies.
    pub async fn check(&self) -> Result<CheckReport, IpamError> {
        let (blocks, handles, affinities) = self.snapshot().await?;
        Ok(check::check_state(&blocks, &handles, &affinities))
    }

    /// As [`Ipam::check`], also listing allocations whose owner is not live according
    /// to `is_live` (the caller knows which pods, nodes and tunnels exist).
    pub async fn check_with_owners(
        &self,
        is_live: impl Fn(&AllocationInfo) -> bool,
    ) -> Result<CheckReport, IpamError> {
        let (blocks, handles, affinities) = self.snapshot().await?;
        let mut report = check::check_state(&blocks, &handles, &affinities);
        report.orphaned = check::find_orphans(&blocks, is_live);
        Ok(report)
    }
}
