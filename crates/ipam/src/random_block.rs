//! The order in which a host tries a pool's blocks: every block-sized CIDR of the pool
//! exactly once, starting at an index derived from the host name (FNV-32, as Calico
//! seeds it) and wrapping around, so hosts spread over the pool instead of colliding.

use ipnet::IpNet;

use crate::ipmath::{self, IpFamily};

/// 32-bit FNV-1 hash of `s` (Go's `hash/fnv.New32`).
pub fn fnv32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h = h.wrapping_mul(0x0100_0193);
        h ^= u32::from(b);
    }
    h
}

/// SplitMix64: one step of a small, well-mixed generator.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Iterator over the blocks of a pool in a host's order (Calico's `randomBlockGenerator`).
#[derive(Clone, Debug)]
pub struct RandomBlocks {
    family: IpFamily,
    base: u128,
    block_size: u8,
    block_bits: u32,
    count: u128,
    start: u128,
    emitted: u128,
}

/// Why a pool cannot be cut into blocks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "variant fields are described by the #[error] messages"
)]
pub enum BlockLayoutError {
    /// The block size is smaller than the pool or longer than an address.
    #[error("block size /{block_size} is outside /{pool_prefix}..=/{max} for pool {pool}")]
    BlockSizeOutOfRange {
        pool: IpNet,
        block_size: u8,
        pool_prefix: u8,
        max: u8,
    },
    /// The pool has 2^127 or more blocks.
    #[error("pool {pool} has too many /{block_size} blocks to enumerate")]
    TooManyBlocks { pool: IpNet, block_size: u8 },
}

/// Checks that `pool` can be split into `/block_size` blocks.
pub fn check_layout(pool: &IpNet, block_size: u8) -> Result<(), BlockLayoutError> {
    let max = pool.max_prefix_len();
    if block_size < pool.prefix_len() || block_size > max {
        return Err(BlockLayoutError::BlockSizeOutOfRange {
            pool: *pool,
            block_size,
            pool_prefix: pool.prefix_len(),
            max,
        });
    }
    if block_size - pool.prefix_len() >= 127 {
        return Err(BlockLayoutError::TooManyBlocks {
            pool: *pool,
            block_size,
        });
    }
    Ok(())
}

impl RandomBlocks {
    /// The blocks of `pool` (host bits of `pool` are ignored) for `host`. The start index
    /// is random but fixed per host name; for single-address blocks (/32, /128) it is
    /// seeded from the clock instead, as Calico does, so hosts do not race for one address.
    pub fn new(pool: &IpNet, block_size: u8, host: &str) -> Result<RandomBlocks, BlockLayoutError> {
        check_layout(pool, block_size)?;
        let count = 1u128 << (block_size - pool.prefix_len());
        let mut seed = if block_size == pool.max_prefix_len() {
            crate::time::now_unix_nanos()
        } else {
            u64::from(fnv32(host))
        };
        let r = (u128::from(splitmix64(&mut seed)) << 64) | u128::from(splitmix64(&mut seed));
        Self::with_start(pool, block_size, r % count)
    }

    /// The blocks of `pool` starting at block index `start` (mod the block count).
    pub fn with_start(
        pool: &IpNet,
        block_size: u8,
        start: u128,
    ) -> Result<RandomBlocks, BlockLayoutError> {
        check_layout(pool, block_size)?;
        let family = IpFamily::of_net(pool);
        let count = 1u128 << (block_size - pool.prefix_len());
        Ok(RandomBlocks {
            family,
            base: ipmath::net_start(pool),
            block_size,
            block_bits: u32::from(family.bits() - block_size),
            count,
            start: start % count,
            emitted: 0,
        })
    }

    /// How many blocks the pool has.
    pub fn count(&self) -> u128 {
        self.count
    }

    /// The index of the first block yielded.
    pub fn start(&self) -> u128 {
        self.start
    }

    /// Where `block` comes in this order (0 = first), or `None` if it is not one of the
    /// pool's blocks. Used to visit existing blocks in generator order without walking
    /// the whole pool.
    pub fn position_of(&self, block: &IpNet) -> Option<u128> {
        if IpFamily::of_net(block) != self.family || block.prefix_len() != self.block_size {
            return None;
        }
        let start = ipmath::net_start(block);
        if start < self.base {
            return None;
        }
        let index = (start - self.base) >> self.block_bits;
        if index >= self.count {
            return None;
        }
        Some((index + self.count - self.start) % self.count)
    }

    fn block_at(&self, index: u128) -> IpNet {
        ipmath::make_net(
            self.base + (index << self.block_bits),
            self.block_size,
            self.family,
        )
    }
}

impl Iterator for RandomBlocks {
    type Item = IpNet;

    fn next(&mut self) -> Option<IpNet> {
        if self.emitted >= self.count {
            return None;
        }
        let index = (self.start + self.emitted) % self.count;
        self.emitted += 1;
        Some(self.block_at(index))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.emitted;
        match usize::try_from(left) {
            Ok(n) => (n, Some(n)),
            Err(_) => (usize::MAX, None),
        }
    }
}

/// The block-sized subnets of `cidr` that lie inside `pool`, in address order
/// (Calico's `blockGenerator`, used by `ClaimAffinity`).
pub(crate) fn blocks_within(cidr: &IpNet, pool: &IpNet, block_size: u8) -> Vec<IpNet> {
    let cidr = cidr.trunc();
    let Ok(subnets) = cidr.subnets(block_size) else {
        return Vec::new();
    };
    subnets.filter(|b| ipmath::net_within(b, pool)).collect()
}

/// The number of `/block_size` blocks in `cidr` (saturating).
pub(crate) fn block_count(cidr: &IpNet, block_size: u8) -> u128 {
    let diff = u32::from(block_size.saturating_sub(cidr.prefix_len()));
    if diff >= 128 {
        u128::MAX
    } else {
        1u128 << diff
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn fnv_vectors() {
        assert_eq!(fnv32(""), 0x811c_9dc5);
        assert_eq!(fnv32("a"), 0x050c_5d7e);
    }

    #[test]
    fn covers_pool_once_from_any_start() {
        let pool: IpNet = "10.10.0.0/24".parse().unwrap();
        for host in ["a", "host-b", "node-17"] {
            let g = RandomBlocks::new(&pool, 26, host).unwrap();
            let same = RandomBlocks::new(&pool, 26, host).unwrap();
            assert_eq!(
                g.start(),
                same.start(),
                "start is a function of the host name"
            );
            let order: Vec<IpNet> = g.clone().collect();
            assert_eq!(order.len(), 4);
            let set: BTreeSet<_> = order.iter().collect();
            assert_eq!(set.len(), 4);
            for (i, b) in order.iter().enumerate() {
                assert_eq!(g.position_of(b), Some(i as u128));
            }
        }
        let g = RandomBlocks::with_start(&pool, 26, 3).unwrap();
        let v: Vec<String> = g.map(|n| n.to_string()).collect();
        assert_eq!(
            v,
            [
                "10.10.0.192/26",
                "10.10.0.0/26",
                "10.10.0.64/26",
                "10.10.0.128/26"
            ]
        );
    }

    #[test]
    fn rejects_bad_layouts() {
        let pool: IpNet = "10.0.0.0/24".parse().unwrap();
        assert!(RandomBlocks::new(&pool, 23, "h").is_err());
        assert!(RandomBlocks::new(&pool, 33, "h").is_err());
        let pool: IpNet = "::/0".parse().unwrap();
        assert!(RandomBlocks::new(&pool, 128, "h").is_err());
    }

    #[test]
    fn blocks_inside_a_cidr() {
        let pool: IpNet = "10.0.0.0/24".parse().unwrap();
        let cidr: IpNet = "10.0.0.0/25".parse().unwrap();
        let v: Vec<String> = blocks_within(&cidr, &pool, 26)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(v, ["10.0.0.0/26", "10.0.0.64/26"]);
        let big: IpNet = "10.0.0.0/23".parse().unwrap();
        assert_eq!(blocks_within(&big, &pool, 26).len(), 4);
        assert_eq!(block_count(&big, 26), 8);
    }
}
