//! Consistency check of the stored IPAM state (`calicoctl ipam check`): allocations whose
//! handle is gone, handles whose counts disagree with the blocks, affinities without
//! blocks or blocks without affinities, malformed or overlapping blocks, and, given the
//! set of live owners, allocations whose owner no longer exists.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ipnet::IpNet;

use crate::affinity::{AffinityInfo, AffinityState};
use crate::block::{AllocationBlock, AllocationInfo};
use crate::handle::IpamHandle;
use crate::ipmath;

/// A handle whose recorded count for a block differs from the block's allocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleMismatch {
    /// The handle.
    pub handle: String,
    /// The block the counts are for.
    pub block: IpNet,
    /// What the handle says.
    pub recorded: u64,
    /// What the block holds for the handle.
    pub actual: u64,
}

/// What is wrong between a block and the affinity keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AffinityProblemKind {
    /// The block names the host but the host's affinity key is missing.
    MissingAffinity,
    /// The affinity key exists but the block does not.
    BlockMissing,
    /// The affinity key exists but the block is affine elsewhere (or to nobody).
    PointsElsewhere {
        /// The block's own `affinity` field.
        block_affinity: Option<String>,
    },
    /// Block and key agree, but the claim never reached `confirmed`.
    NotConfirmed {
        /// The state the affinity is stuck in.
        state: AffinityState,
    },
}

/// An affinity inconsistency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinityProblem {
    /// The host of the affinity or block.
    pub host: String,
    /// The block.
    pub cidr: IpNet,
    /// What is wrong.
    pub kind: AffinityProblemKind,
}

/// The outcome of a check. Empty problem lists mean a consistent store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Blocks looked at.
    pub blocks_checked: usize,
    /// Handles looked at.
    pub handles_checked: usize,
    /// In-use addresses looked at.
    pub allocations_checked: usize,
    /// Allocations that name a handle which does not exist (leaked addresses).
    pub missing_handles: Vec<AllocationInfo>,
    /// Handles that disagree with the blocks (e.g. a count for addresses never written).
    pub handle_mismatches: Vec<HandleMismatch>,
    /// Block/affinity disagreements.
    pub affinity_problems: Vec<AffinityProblem>,
    /// Blocks whose own structure is broken, with what is wrong.
    pub invalid_blocks: Vec<(IpNet, Vec<String>)>,
    /// Pairs of stored blocks that overlap (an address could be handed out twice).
    pub overlapping_blocks: Vec<(IpNet, IpNet)>,
    /// Allocations whose owner the caller said no longer exists.
    pub orphaned: Vec<AllocationInfo>,
}

impl CheckReport {
    /// Number of problems found.
    pub fn problem_count(&self) -> usize {
        self.missing_handles.len()
            + self.handle_mismatches.len()
            + self.affinity_problems.len()
            + self.invalid_blocks.len()
            + self.overlapping_blocks.len()
            + self.orphaned.len()
    }

    /// No problems.
    pub fn is_clean(&self) -> bool {
        self.problem_count() == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Checked {} blocks, {} handles, {} allocations.",
            self.blocks_checked, self.handles_checked, self.allocations_checked
        )?;
        for a in &self.missing_handles {
            writeln!(
                f,
                "  {} in {}: handle {} does not exist (leaked)",
                a.ip,
                a.block,
                a.handle.as_deref().unwrap_or("")
            )?;
        }
        for m in &self.handle_mismatches {
            writeln!(
                f,
                "  handle {} records {} addresses in {} but the block holds {}",
                m.handle, m.recorded, m.block, m.actual
            )?;
        }
        for p in &self.affinity_problems {
            writeln!(f, "  affinity {} {}: {:?}", p.host, p.cidr, p.kind)?;
        }
        for (c, why) in &self.invalid_blocks {
            writeln!(f, "  block {c} is invalid: {}", why.join("; "))?;
        }
        for (a, b) in &self.overlapping_blocks {
            writeln!(f, "  blocks {a} and {b} overlap")?;
        }
        for a in &self.orphaned {
            writeln!(
                f,
                "  {} in {}: owner {} no longer exists",
                a.ip,
                a.block,
                a.handle.as_deref().unwrap_or("(no handle)")
            )?;
        }
        write!(
            f,
            "Check complete; found {} problems.",
            self.problem_count()
        )
    }
}

/// Checks one consistent snapshot of blocks, handles and affinities.
pub fn check_state(
    blocks: &[AllocationBlock],
    handles: &[IpamHandle],
    affinities: &[AffinityInfo],
) -> CheckReport {
    let mut r = CheckReport {
        blocks_checked: blocks.len(),
        handles_checked: handles.len(),
        ..CheckReport::default()
    };
    let handle_map: BTreeMap<&str, &IpamHandle> =
        handles.iter().map(|h| (h.handle_id.as_str(), h)).collect();

    // Per block, per handle: how many addresses the block holds.
    let mut actual: BTreeMap<(String, IpNet), u64> = BTreeMap::new();
    for b in blocks {
        let problems = b.problems();
        if !problems.is_empty() {
            r.invalid_blocks.push((b.cidr, problems));
        }
        for a in b.allocations() {
            r.allocations_checked += 1;
            if let Some(h) = &a.handle {
                *actual.entry((h.clone(), b.cidr)).or_insert(0) += 1;
                if !handle_map.contains_key(h.as_str()) {
                    r.missing_handles.push(a);
                }
            }
        }
    }
    for h in handles {
        for (cidr, &recorded) in &h.block {
            let Ok(net) = cidr.parse::<IpNet>() else {
                r.handle_mismatches.push(HandleMismatch {
                    handle: h.handle_id.clone(),
                    block: IpNet::default(),
                    recorded,
                    actual: 0,
                });
                continue;
            };
            let got = actual
                .get(&(h.handle_id.clone(), net))
                .copied()
                .unwrap_or(0);
            if got != recorded {
                r.handle_mismatches.push(HandleMismatch {
                    handle: h.handle_id.clone(),
                    block: net,
                    recorded,
                    actual: got,
                });
            }
        }
    }
    for ((h, net), &got) in &actual {
        if let Some(handle) = handle_map.get(h.as_str())
            && !handle.block.contains_key(&net.to_string())
        {
            r.handle_mismatches.push(HandleMismatch {
                handle: h.clone(),
                block: *net,
                recorded: 0,
                actual: got,
            });
        }
    }

    let block_map: BTreeMap<IpNet, &AllocationBlock> = blocks.iter().map(|b| (b.cidr, b)).collect();
    let aff_set: BTreeSet<(&str, IpNet)> = affinities
        .iter()
        .map(|a| (a.host.as_str(), a.cidr))
        .collect();
    for a in affinities {
        let kind = match block_map.get(&a.cidr) {
            None => Some(AffinityProblemKind::BlockMissing),
            Some(b) if !b.is_affine_to(&a.host) => Some(AffinityProblemKind::PointsElsewhere {
                block_affinity: b.affinity.clone(),
            }),
            Some(_) if a.state != AffinityState::Confirmed => {
                Some(AffinityProblemKind::NotConfirmed { state: a.state })
            }
            Some(_) => None,
        };
        if let Some(kind) = kind {
            r.affinity_problems.push(AffinityProblem {
                host: a.host.clone(),
                cidr: a.cidr,
                kind,
            });
        }
    }
    for b in blocks {
        if let Some(host) = b.host_affinity()
            && !aff_set.contains(&(host, b.cidr))
        {
            r.affinity_problems.push(AffinityProblem {
                host: host.to_owned(),
                cidr: b.cidr,
                kind: AffinityProblemKind::MissingAffinity,
            });
        }
    }

    let mut sorted: Vec<&AllocationBlock> = blocks.iter().collect();
    sorted.sort_by_key(|b| {
        (
            ipmath::IpFamily::of_net(&b.cidr),
            ipmath::net_start(&b.cidr),
        )
    });
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.family() == b.family() && ipmath::net_start(&b.cidr) <= ipmath::net_end(&a.cidr) {
            r.overlapping_blocks.push((a.cidr, b.cidr));
        }
    }
    r
}

/// Allocations whose owner is not live according to `is_live` (the caller knows which
/// pods, nodes and tunnels exist). Allocations without a handle are passed too.
pub fn find_orphans(
    blocks: &[AllocationBlock],
    is_live: impl Fn(&AllocationInfo) -> bool,
) -> Vec<AllocationInfo> {
    blocks
        .iter()
        .flat_map(AllocationBlock::allocations)
        .filter(|a| !is_live(a))
        .collect()
}
