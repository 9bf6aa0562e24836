//! Address accounting per pool and block (Calico's `GetUtilization`): capacity, in use,
//! reserved (by IP reservations) and available, where available counts addresses that
//! are neither allocated, cooling down nor reserved.

use ipnet::IpNet;

use crate::block::AllocationBlock;
use crate::ipmath;
use crate::pool::PoolInfo;
use crate::reservation::Reservations;

/// Address counts for a pool or block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Addresses in the CIDR.
    pub capacity: u128,
    /// Allocated addresses.
    pub in_use: u128,
    /// Addresses covered by IP reservations.
    pub reserved: u128,
    /// Addresses that can still be handed out automatically.
    pub available: u128,
}

/// One block's usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUtilization {
    /// The block.
    pub cidr: IpNet,
    /// `host:<node>` when affine.
    pub affinity: Option<String>,
    /// Its counts.
    pub usage: Usage,
}

/// One pool's usage and its blocks'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUtilization {
    /// The pool's name.
    pub name: String,
    /// The pool's CIDR as configured.
    pub cidr: IpNet,
    /// The pool's counts.
    pub usage: Usage,
    /// Each stored block of the pool, in address order.
    pub blocks: Vec<BlockUtilization>,
}

struct BlockCounts {
    in_use: u128,
    not_free: u128,
    not_free_reserved: u128,
}

fn block_counts(b: &AllocationBlock, reservations: &Reservations) -> BlockCounts {
    let mut c = BlockCounts {
        in_use: b.in_use() as u128,
        not_free: 0,
        not_free_reserved: 0,
    };
    for (o, a) in b.allocations.iter().enumerate() {
        if a.is_some() {
            c.not_free += 1;
            if reservations.contains(b.ip_at(o)) {
                c.not_free_reserved += 1;
            }
        }
    }
    c
}

fn usage(capacity: u128, in_use: u128, reserved: u128, not_free: u128, overlap: u128) -> Usage {
    Usage {
        capacity,
        in_use,
        reserved,
        // Addresses either not free or reserved, counted once.
        available: capacity
            .saturating_sub(not_free.saturating_add(reserved).saturating_sub(overlap)),
    }
}

/// Usage of each of `pools` from the stored `blocks` (any order, any family).
pub fn compute_utilization(
    pools: &[PoolInfo],
    blocks: &[AllocationBlock],
    reservations: &Reservations,
) -> Vec<PoolUtilization> {
    pools
        .iter()
        .map(|pool| {
            let net = pool.network();
            let mut in_use = 0u128;
            let mut not_free = 0u128;
            let mut overlap = 0u128;
            let mut out_blocks = Vec::new();
            let mut mine: Vec<&AllocationBlock> = blocks
                .iter()
                .filter(|b| pool.contains_net(&b.cidr))
                .collect();
            mine.sort_by_key(|b| ipmath::net_start(&b.cidr));
            for b in mine {
                let c = block_counts(b, reservations);
                in_use += c.in_use;
                not_free += c.not_free;
                overlap += c.not_free_reserved;
                out_blocks.push(BlockUtilization {
                    cidr: b.cidr,
                    affinity: b.affinity.clone(),
                    usage: usage(
                        b.size() as u128,
                        c.in_use,
                        reservations.count_within(&b.cidr),
                        c.not_free,
                        c.not_free_reserved,
                    ),
                });
            }
            PoolUtilization {
                name: pool.name.clone(),
                cidr: pool.cidr,
                usage: usage(
                    ipmath::net_size(&net),
                    in_use,
                    reservations.count_within(&net),
                    not_free,
                    overlap,
                ),
                blocks: out_blocks,
            }
        })
        .collect()
}
