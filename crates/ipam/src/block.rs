//! Allocation blocks, the unit of IPAM: a block-sized CIDR with per-ordinal allocations
//! pointing at shared attribute entries (handle + owner attributes), a FIFO of free
//! ordinals, and sequence numbers that make a stale release detectable. Pure: every
//! method edits the value in memory; `ipam.rs` writes it back with compare-and-swap.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ipmath::{self, IpFamily};
use crate::reservation::Reservations;

/// The largest block IPAM handles, in host bits (Calico's limits are 12: /20 and /116).
pub const MAX_BLOCK_HOST_BITS: u32 = 16;

/// Prefix of a host affinity in a block's `affinity` field.
pub const HOST_AFFINITY_PREFIX: &str = "host:";

/// Metadata shared by the allocations that point at it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    /// The owning handle.
    #[serde(rename = "handle_id", default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// The active owner's attributes (node, pod, namespace, …).
    #[serde(
        rename = "secondary",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attrs: BTreeMap<String, String>,
    /// An alternate owner's attributes (live migration).
    #[serde(
        rename = "alternate",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub alternate: BTreeMap<String, String>,
    /// Set on a released ordinal that is cooling down (RFC 3339).
    #[serde(
        rename = "releasedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub released_at: Option<String>,
}

/// One address to release, optionally guarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseOptions {
    /// The address.
    pub address: IpAddr,
    /// Release only if the allocation has this handle.
    pub handle: Option<String>,
    /// Release only if the allocation was made at this block sequence number.
    pub sequence_number: Option<u64>,
}

impl ReleaseOptions {
    /// Unguarded release of `address`.
    pub fn new(address: IpAddr) -> ReleaseOptions {
        ReleaseOptions {
            address,
            handle: None,
            sequence_number: None,
        }
    }
}

/// Why a block refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "variant fields are described by the #[error] messages"
)]
pub enum BlockError {
    /// The address is outside the block.
    #[error("IP address {ip} is not in block {cidr}")]
    NotInBlock { ip: IpAddr, cidr: IpNet },
    /// The address is taken.
    #[error("IP address {ip} is already assigned in block {cidr}")]
    AlreadyAssigned { ip: IpAddr, cidr: IpNet },
    /// The address was released and its cooldown has not passed.
    #[error("IP address {ip} was released recently and is cooling down in block {cidr}")]
    CoolingDown { ip: IpAddr, cidr: IpNet },
    /// Strict affinity forbids using another host's block.
    #[error(
        "block {cidr} is affine to {affinity}, not host {host}, and strict affinity is enabled"
    )]
    AffinityMismatch {
        cidr: IpNet,
        affinity: String,
        host: String,
    },
    /// A guarded release named a sequence number the allocation does not have.
    #[error(
        "release of {ip} refused: sequence number {given} does not match the allocation's {actual} (the address was released and reassigned since)"
    )]
    BadSequenceNumber { ip: IpAddr, given: u64, actual: u64 },
    /// A guarded release named a handle the allocation does not have.
    #[error(
        "release of {ip} refused: handle {given} does not match the allocation's handle {actual}"
    )]
    BadHandle {
        ip: IpAddr,
        given: String,
        actual: String,
    },
    /// The block cannot be built or is malformed.
    #[error("block {cidr}: {reason}")]
    Invalid { cidr: IpNet, reason: String },
}

/// What [`AllocationBlock::release`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockRelease {
    /// Addresses released.
    pub released: Vec<IpAddr>,
    /// Addresses that were not allocated.
    pub unallocated: Vec<IpAddr>,
    /// Handle → number of its addresses released.
    pub handles: BTreeMap<String, u64>,
}

/// One in-use address of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    /// The address.
    pub ip: IpAddr,
    /// The block it is in.
    pub block: IpNet,
    /// Its handle, if it has one.
    pub handle: Option<String>,
    /// Owner attributes.
    pub attrs: BTreeMap<String, String>,
    /// Block sequence number at allocation time (pass it to a guarded release).
    pub sequence_number: u64,
}

/// An allocation block in Calico's stored JSON shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationBlock {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// `host:<node>` (or `virtual:<name>`) when affine, else `None`.
    #[serde(default)]
    pub affinity: Option<String>,
    /// When the affinity was claimed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_claim_time: Option<String>,
    /// Per ordinal: `None` (free) or an index into `attributes`.
    #[serde(default)]
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals in the order they will be handed out.
    #[serde(default)]
    pub unallocated: Vec<usize>,
    /// Shared attribute entries.
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Soft-delete marker (Kubernetes backends); readers treat `true` as absent.
    #[serde(default)]
    pub deleted: bool,
    /// Bumped on every write.
    #[serde(default)]
    pub sequence_number: u64,
    /// Ordinal (as a string) → sequence number when it was allocated.
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// Deprecated, kept for shape compatibility; the config's value is used.
    #[serde(rename = "strictAffinity", default)]
    pub deprecated_strict_affinity: bool,
}

impl AllocationBlock {
    /// An empty, unaffine block whose free list is every ordinal in order.
    pub fn new(cidr: IpNet, sequence_number: u64) -> Result<AllocationBlock, BlockError> {
        let cidr = cidr.trunc();
        let bits = ipmath::host_bits(&cidr);
        if bits > MAX_BLOCK_HOST_BITS {
            return Err(BlockError::Invalid {
                cidr,
                reason: format!(
                    "blocks larger than {MAX_BLOCK_HOST_BITS} host bits are not supported"
                ),
            });
        }
        let n = 1usize << bits;
        Ok(AllocationBlock {
            cidr,
            affinity: None,
            affinity_claim_time: None,
            allocations: vec![None; n],
            unallocated: (0..n).collect(),
            attributes: Vec::new(),
            deleted: false,
            sequence_number,
            sequence_number_for_allocation: BTreeMap::new(),
            deprecated_strict_affinity: false,
        })
    }

    /// A new block affine to `host`, claimed at `claim_time` (RFC 3339).
    pub fn new_for_host(
        cidr: IpNet,
        host: &str,
        claim_time: String,
        sequence_number: u64,
    ) -> Result<AllocationBlock, BlockError> {
        let mut b = AllocationBlock::new(cidr, sequence_number)?;
        b.affinity = Some(format!("{HOST_AFFINITY_PREFIX}{host}"));
        b.affinity_claim_time = Some(claim_time);
        Ok(b)
    }

    /// IPv4 or IPv6.
    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.cidr)
    }

    /// Number of addresses.
    pub fn size(&self) -> usize {
        self.allocations.len()
    }

    /// The host the block is affine to, if any.
    pub fn host_affinity(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix(HOST_AFFINITY_PREFIX)
    }

    /// Whether the block is affine to `host`.
    pub fn is_affine_to(&self, host: &str) -> bool {
        self.host_affinity() == Some(host)
    }

    /// The ordinal of `ip`, if it is in the block.
    pub fn ordinal_of(&self, ip: IpAddr) -> Option<usize> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let off = ipmath::to_u128(ip) - ipmath::net_start(&self.cidr);
        usize::try_from(off).ok().filter(|&o| o < self.size())
    }

    /// The address at `ordinal`.
    pub fn ip_at(&self, ordinal: usize) -> IpAddr {
        ipmath::from_u128(
            ipmath::net_start(&self.cidr) + ordinal as u128,
            self.family(),
        )
    }

    fn net_at(&self, ordinal: usize) -> IpNet {
        IpNet::new(self.ip_at(ordinal), self.cidr.prefix_len()).expect("block prefix is valid")
    }

    fn live_attr(&self, ordinal: usize) -> Option<&AllocationAttribute> {
        let idx = (*self.allocations.get(ordinal)?)?;
        self.attributes.get(idx).filter(|a| a.released_at.is_none())
    }

    fn cooling(&self, ordinal: usize) -> bool {
        matches!(self.allocations.get(ordinal), Some(Some(idx))
            if self.attributes.get(*idx).is_some_and(|a| a.released_at.is_some()))
    }

    /// No ordinal is allocated or cooling down.
    pub fn is_empty(&self) -> bool {
        self.allocations.iter().all(Option::is_none)
    }

    /// Number of in-use addresses (not counting cooling-down ones).
    pub fn in_use(&self) -> usize {
        (0..self.size())
            .filter(|&o| self.live_attr(o).is_some())
            .count()
    }

    /// Free ordinals that are not reserved.
    pub fn num_free(&self, reservations: &Reservations) -> usize {
        if reservations.is_empty() {
            return self.unallocated.len();
        }
        self.unallocated
            .iter()
            .filter(|&&o| !reservations.contains(self.ip_at(o)))
            .count()
    }

    /// The sequence number an ordinal was allocated at (0 for data that predates them).
    pub fn sequence_number_for(&self, ordinal: usize) -> u64 {
        self.sequence_number_for_allocation
            .get(&ordinal.to_string())
            .copied()
            .unwrap_or(0)
    }

    /// The in-use allocations, in ordinal order.
    pub fn allocations(&self) -> Vec<AllocationInfo> {
        (0..self.size())
            .filter_map(|o| {
                self.live_attr(o).map(|a| AllocationInfo {
                    ip: self.ip_at(o),
                    block: self.cidr,
                    handle: a.handle_id.clone(),
                    attrs: a.attrs.clone(),
                    sequence_number: self.sequence_number_for(o),
                })
            })
            .collect()
    }

    /// The allocation of `ip`, if it is in use.
    pub fn allocation(&self, ip: IpAddr) -> Option<AllocationInfo> {
        let o = self.ordinal_of(ip)?;
        let a = self.live_attr(o)?;
        Some(AllocationInfo {
            ip,
            block: self.cidr,
            handle: a.handle_id.clone(),
            attrs: a.attrs.clone(),
            sequence_number: self.sequence_number_for(o),
        })
    }

    /// Returns cooled-down ordinals (released more than `cooldown_secs` before `now`) to
    /// the tail of the free list, oldest release first. With a zero cooldown every
    /// cooling ordinal is freed. Returns whether anything changed.
    pub fn gc_cooldown(&mut self, now: i64, cooldown_secs: u64) -> bool {
        let mut expired: Vec<(i64, usize)> = Vec::new();
        for o in 0..self.size() {
            let Some(Some(idx)) = self.allocations.get(o) else {
                continue;
            };
            let Some(at) = self
                .attributes
                .get(*idx)
                .and_then(|a| a.released_at.as_deref())
            else {
                continue;
            };
            let released = crate::time::parse_rfc3339(at).unwrap_or(i64::MIN);
            if cooldown_secs == 0 || released.saturating_add(cooldown_secs as i64) <= now {
                expired.push((released, o));
            }
        }
        if expired.is_empty() {
            return false;
        }
        expired.sort();
        for (_, o) in expired {
            self.allocations[o] = None;
            self.unallocated.push(o);
        }
        self.compact_attributes();
        true
    }

    fn find_or_add_attr(
        &mut self,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
    ) -> usize {
        let want = AllocationAttribute {
            handle_id: handle.map(str::to_owned),
            attrs: attrs.clone(),
            ..AllocationAttribute::default()
        };
        if let Some(i) = self.attributes.iter().position(|a| *a == want) {
            return i;
        }
        self.attributes.push(want);
        self.attributes.len() - 1
    }

    /// Drops attribute entries nothing points at and renumbers the rest.
    fn compact_attributes(&mut self) {
        let mut used = vec![false; self.attributes.len()];
        for i in self.allocations.iter().flatten() {
            if let Some(u) = used.get_mut(*i) {
                *u = true;
            }
        }
        if used.iter().all(|u| *u) {
            return;
        }
        let mut remap = vec![usize::MAX; self.attributes.len()];
        let mut kept = Vec::new();
        for (i, a) in std::mem::take(&mut self.attributes).into_iter().enumerate() {
            if used[i] {
                remap[i] = kept.len();
                kept.push(a);
            }
        }
        self.attributes = kept;
        for a in self.allocations.iter_mut().flatten() {
            *a = remap[*a];
        }
    }

    fn check_affinity(&self, host: &str) -> Result<(), BlockError> {
        if self.is_affine_to(host) {
            return Ok(());
        }
        Err(BlockError::AffinityMismatch {
            cidr: self.cidr,
            affinity: self.affinity.clone().unwrap_or_else(|| "no host".into()),
            host: host.to_owned(),
        })
    }

    fn mark_allocated(&mut self, ordinal: usize, attr: usize) {
        self.allocations[ordinal] = Some(attr);
        self.sequence_number_for_allocation
            .insert(ordinal.to_string(), self.sequence_number);
    }

    /// Takes up to `num` free, non-reserved ordinals from the head of the free list
    /// (reserved ones stay where they are) for `handle`. With `affinity_check`, the block
    /// must be affine to `host`. Returns the addresses with the block's prefix length.
    pub fn auto_assign(
        &mut self,
        num: usize,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
        host: &str,
        affinity_check: bool,
        reservations: &Reservations,
    ) -> Result<Vec<IpNet>, BlockError> {
        if affinity_check {
            self.check_affinity(host)?;
        }
        let mut chosen = Vec::new();
        let mut rest = Vec::with_capacity(self.unallocated.len());
        for &o in &self.unallocated {
            if chosen.len() < num && !reservations.contains(self.ip_at(o)) {
                chosen.push(o);
            } else {
                rest.push(o);
            }
        }
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        self.unallocated = rest;
        let attr = self.find_or_add_attr(handle, attrs);
        for &o in &chosen {
            self.mark_allocated(o, attr);
        }
        Ok(chosen.into_iter().map(|o| self.net_at(o)).collect())
    }

    /// Assigns the specific address `ip`. With `strict_affinity`, the block must be
    /// affine to `host`.
    pub fn assign(
        &mut self,
        ip: IpAddr,
        handle: Option<&str>,
        attrs: &BTreeMap<String, String>,
        host: &str,
        strict_affinity: bool,
    ) -> Result<IpNet, BlockError> {
        if strict_affinity {
            self.check_affinity(host)?;
        }
        let o = self.ordinal_of(ip).ok_or(BlockError::NotInBlock {
            ip,
            cidr: self.cidr,
        })?;
        if self.cooling(o) {
            return Err(BlockError::CoolingDown {
                ip,
                cidr: self.cidr,
            });
        }
        if self.allocations[o].is_some() {
            return Err(BlockError::AlreadyAssigned {
                ip,
                cidr: self.cidr,
            });
        }
        self.unallocated.retain(|&u| u != o);
        let attr = self.find_or_add_attr(handle, attrs);
        self.mark_allocated(o, attr);
        Ok(self.net_at(o))
    }

    fn free_ordinal(&mut self, o: usize, released_at: Option<&str>) {
        self.sequence_number_for_allocation.remove(&o.to_string());
        match released_at {
            Some(at) => {
                self.attributes.push(AllocationAttribute {
                    released_at: Some(at.to_owned()),
                    ..AllocationAttribute::default()
                });
                self.allocations[o] = Some(self.attributes.len() - 1);
            }
            None => {
                self.allocations[o] = None;
                self.unallocated.push(o);
            }
        }
    }

    /// Releases addresses. A guarded release whose sequence number or handle does not
    /// match fails the whole call and changes nothing. `released_at` (RFC 3339) puts the
    /// freed ordinals into cooldown instead of straight back on the free list.
    pub fn release(
        &mut self,
        opts: &[ReleaseOptions],
        released_at: Option<&str>,
    ) -> Result<BlockRelease, BlockError> {
        let mut work = self.clone();
        let mut out = BlockRelease::default();
        for opt in opts {
            let ip = opt.address;
            let Some(o) = work.ordinal_of(ip) else {
                out.unallocated.push(ip);
                continue;
            };
            let Some(attr) = work.live_attr(o).cloned() else {
                out.unallocated.push(ip);
                continue;
            };
            if let Some(given) = opt.sequence_number {
                let actual = work.sequence_number_for(o);
                if given != actual {
                    return Err(BlockError::BadSequenceNumber { ip, given, actual });
                }
            }
            if let Some(given) = &opt.handle
                && attr.handle_id.as_deref() != Some(given.as_str())
            {
                return Err(BlockError::BadHandle {
                    ip,
                    given: given.clone(),
                    actual: attr.handle_id.unwrap_or_else(|| "(none)".into()),
                });
            }
            if let Some(h) = attr.handle_id {
                *out.handles.entry(h).or_insert(0) += 1;
            }
            work.free_ordinal(o, released_at);
            out.released.push(ip);
        }
        work.compact_attributes();
        *self = work;
        Ok(out)
    }

    /// Releases every address of `handle`; returns them.
    pub fn release_by_handle(&mut self, handle: &str, released_at: Option<&str>) -> Vec<IpAddr> {
        let ords: Vec<usize> = (0..self.size())
            .filter(|&o| {
                self.live_attr(o)
                    .is_some_and(|a| a.handle_id.as_deref() == Some(handle))
            })
            .collect();
        for &o in &ords {
            self.free_ordinal(o, released_at);
        }
        self.compact_attributes();
        ords.into_iter().map(|o| self.ip_at(o)).collect()
    }

    /// Internal consistency problems (empty when the block is well formed).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.cidr != self.cidr.trunc() {
            p.push(format!("CIDR {} has host bits set", self.cidr));
        }
        let expected = 1u128 << ipmath::host_bits(&self.cidr).min(127);
        if self.size() as u128 != expected {
            p.push(format!(
                "{} allocation slots for {} addresses",
                self.size(),
                expected
            ));
        }
        let mut seen = vec![0u8; self.size()];
        for &o in &self.unallocated {
            match seen.get_mut(o) {
                Some(s) => *s += 1,
                None => p.push(format!("free ordinal {o} is outside the block")),
            }
        }
        for (o, a) in self.allocations.iter().enumerate() {
            match a {
                Some(idx) if *idx >= self.attributes.len() => {
                    p.push(format!("ordinal {o} points at missing attribute {idx}"));
                }
                Some(_) if seen[o] > 0 => {
                    p.push(format!("ordinal {o} is both allocated and free"));
                }
                None if seen[o] == 0 => {
                    p.push(format!("ordinal {o} is neither allocated nor free"))
                }
                None if seen[o] > 1 => p.push(format!("ordinal {o} is free {} times", seen[o])),
                _ => {}
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> BTreeMap<String, String> {
        BTreeMap::from([("node".to_string(), "h1".to_string())])
    }

    fn block() -> AllocationBlock {
        AllocationBlock::new_for_host("10.0.0.0/30".parse().unwrap(), "h1", "t".into(), 7).unwrap()
    }

    #[test]
    fn fifo_and_shared_attributes() {
        let mut b = block();
        let none = Reservations::default();
        let ips = b
            .auto_assign(2, Some("a"), &attrs(), "h1", true, &none)
            .unwrap();
        assert_eq!(
            ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["10.0.0.0/30", "10.0.0.1/30"]
        );
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(b.unallocated, [2, 3]);
        let r = b
            .release(&[ReleaseOptions::new("10.0.0.0".parse().unwrap())], None)
            .unwrap();
        assert_eq!(r.handles["a"], 1);
        assert_eq!(b.unallocated, [2, 3, 0], "released ordinals go to the tail");
        assert_eq!(b.sequence_number_for(1), 7);
        assert!(b.problems().is_empty());
    }

    #[test]
    fn reserved_ordinals_stay_put() {
        let mut b = block();
        let res = Reservations::new(["10.0.0.0/31".parse().unwrap()]);
        assert_eq!(b.num_free(&res), 2);
        let ips = b.auto_assign(4, None, &attrs(), "h1", true, &res).unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(b.unallocated, [0, 1]);
    }

    #[test]
    fn strict_and_duplicates() {
        let mut b = block();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(matches!(
            b.assign(ip, None, &attrs(), "other", true),
            Err(BlockError::AffinityMismatch { .. })
        ));
        b.assign(ip, Some("x"), &attrs(), "other", false).unwrap();
        assert!(matches!(
            b.assign(ip, None, &attrs(), "h1", false),
            Err(BlockError::AlreadyAssigned { .. })
        ));
        assert!(
            b.auto_assign(1, None, &attrs(), "other", true, &Reservations::default())
                .is_err()
        );
    }

    #[test]
    fn guarded_release_changes_nothing_on_mismatch() {
        let mut b = block();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        b.assign(ip, Some("x"), &attrs(), "h1", false).unwrap();
        let before = b.clone();
        let bad_seq = ReleaseOptions {
            sequence_number: Some(8),
            ..ReleaseOptions::new(ip)
        };
        assert!(matches!(
            b.release(&[bad_seq], None),
            Err(BlockError::BadSequenceNumber { .. })
        ));
        let bad_handle = ReleaseOptions {
            handle: Some("y".into()),
            ..ReleaseOptions::new(ip)
        };
        assert!(matches!(
            b.release(&[bad_handle], None),
            Err(BlockError::BadHandle { .. })
        ));
        assert_eq!(b, before);
        let ok = ReleaseOptions {
            handle: Some("x".into()),
            sequence_number: Some(7),
            address: ip,
        };
        assert_eq!(b.release(&[ok], None).unwrap().released, [ip]);
        assert!(b.is_empty());
    }

    #[test]
    fn cooldown() {
        let mut b = block();
        let ip: IpAddr = "10.0.0.0".parse().unwrap();
        b.assign(ip, Some("x"), &attrs(), "h1", false).unwrap();
        b.release(&[ReleaseOptions::new(ip)], Some("2024-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(b.in_use(), 0);
        assert!(!b.is_empty());
        assert!(matches!(
            b.assign(ip, None, &attrs(), "h1", false),
            Err(BlockError::CoolingDown { .. })
        ));
        let t0 = crate::time::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        assert!(!b.gc_cooldown(t0 + 10, 60));
        assert!(b.gc_cooldown(t0 + 60, 60));
        assert_eq!(b.unallocated.last(), Some(&0));
        assert!(b.is_empty());
        assert!(b.attributes.is_empty());
        assert!(b.problems().is_empty());
    }

    #[test]
    fn json_shape() {
        let mut b = block();
        b.assign(
            "10.0.0.1".parse().unwrap(),
            Some("h"),
            &attrs(),
            "h1",
            false,
        )
        .unwrap();
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["cidr"], "10.0.0.0/30");
        assert_eq!(v["affinity"], "host:h1");
        assert_eq!(v["allocations"], serde_json::json!([null, 0, null, null]));
        assert_eq!(v["unallocated"], serde_json::json!([0, 2, 3]));
        assert_eq!(v["attributes"][0]["handle_id"], "h");
        assert_eq!(v["attributes"][0]["secondary"]["node"], "h1");
        assert_eq!(v["sequenceNumber"], 7);
        assert_eq!(v["sequenceNumberForAllocation"]["1"], 7);
        assert_eq!(v["deleted"], false);
        let back: AllocationBlock = serde_json::from_value(v).unwrap();
        assert_eq!(back, b);
    }
}
