//! `tabbyctl ipam split N --cidr C | --name P`: calicoctl's `ipam split`. The pool is
//! replaced by N (a power of two) pools of equal size named `split-<name>-<i>` with the
//! parent's settings. Blocks, affinities and handles are left as they are: every block
//! lies inside one child as long as the children are no smaller than a block, which is
//! the one case refused. Steps: disable the parent (no new blocks from it), create the
//! children, delete the parent; a failure undoes the steps already taken.

use std::io::Write;

use anyhow::{Context, anyhow, bail};
use ipnet::IpNet;
use tabby_api::{Kind, Resource};
use tabby_client::Client;
use tabby_ipam::Ipam;

#[derive(clap::Args, Debug)]
pub struct SplitArgs {
    /// How many pools to make: a power of two, 2 or more.
    #[arg(value_name = "NUMBER")]
    number: u32,
    /// CIDR of the pool to split.
    #[arg(long, value_name = "CIDR")]
    cidr: Option<IpNet>,
    /// Name of the pool to split.
    #[arg(long, visible_alias = "pool", value_name = "POOL")]
    name: Option<String>,
}

/// The CIDRs of `parts` equal children of `cidr`, in address order.
pub fn split_cidr(cidr: IpNet, parts: u32) -> anyhow::Result<Vec<IpNet>> {
    if parts < 2 || !parts.is_power_of_two() {
        bail!("NUMBER {parts}: a pool splits into a power of two pools (2, 4, 8, ...)");
    }
    let extra = parts.trailing_zeros() as u8;
    let prefix = cidr.prefix_len() + extra;
    if prefix > cidr.max_prefix_len() {
        bail!("{cidr} is too small to split into {parts} pools");
    }
    let children: Vec<IpNet> = cidr
        .trunc()
        .subnets(prefix)
        .map_err(|e| anyhow!("{cidr}: {e}"))?
        .collect();
    Ok(children)
}

/// The name of child `i` of `parent`, as calicoctl names it.
fn child_name(parent: &str, i: usize) -> String {
    format!("split-{parent}-{i}")
}

async fn find_pool(client: &Client, args: &SplitArgs) -> anyhow::Result<Resource> {
    let pools = client.list(Kind::IPPool, None).await?;
    let cidr_of = |r: &Resource| r.spec.as_ip_pool().and_then(|s| s.cidr);
    match (&args.name, args.cidr) {
        (None, None) => bail!("ipam split: name the pool with --name POOL or --cidr CIDR"),
        (Some(name), cidr) => {
            let pool = pools
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| anyhow!("--name {name}: no IP pool of that name"))?;
            if let Some(c) = cidr
                && cidr_of(&pool) != Some(c)
            {
                bail!(
                    "--cidr {c}: IP pool {name} has CIDR {}, not {c}",
                    cidr_of(&pool).map_or_else(|| "<none>".to_string(), |p| p.to_string())
                );
            }
            Ok(pool)
        }
        (None, Some(c)) => {
            let known: Vec<String> = pools
                .iter()
                .filter_map(|p| cidr_of(p).map(|c| format!("{} ({c})", p.name())))
                .collect();
            pools
                .into_iter()
                .find(|p| cidr_of(p) == Some(c))
                .ok_or_else(|| {
                    anyhow!(
                        "--cidr {c}: no IP pool has exactly this CIDR; pools: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )
                })
        }
    }
}

/// The children of `parent`: its labels, annotations and spec, a new name and CIDR.
fn children_of(parent: &Resource, cidrs: &[IpNet]) -> Vec<Resource> {
    cidrs
        .iter()
        .enumerate()
        .map(|(i, cidr)| {
            let mut child = Resource::new(Kind::IPPool, &child_name(parent.name(), i), None);
            child.metadata.labels = parent.metadata.labels.clone();
            child.metadata.annotations = parent.metadata.annotations.clone();
            child.spec = parent.spec.clone();
            if let Some(spec) = child.spec.as_ip_pool_mut() {
                spec.cidr = Some(*cidr);
            }
            child
        })
        .collect()
}

/// Sets the pool's `spec.disabled`, returning the stored result.
async fn set_disabled(client: &Client, name: &str, disabled: bool) -> anyhow::Result<Resource> {
    let r = client
        .modify(Kind::IPPool, None, name, |r| {
            if let Some(spec) = r.spec.as_ip_pool_mut() {
                spec.disabled = Some(disabled);
            }
            Ok(())
        })
        .await?;
    Ok(r)
}

pub async fn run(
    client: &Client,
    ipam: &Ipam,
    args: &SplitArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let parent = find_pool(client, args).await?;
    let name = parent.name().to_string();
    let spec = parent
        .spec
        .as_ip_pool()
        .ok_or_else(|| anyhow!("IP pool {name} is not an IPPool"))?;
    let cidr = spec
        .cidr
        .ok_or_else(|| anyhow!("IP pool {name}: spec.cidr is not set"))?;
    let block_size = spec.effective_block_size();
    let was_disabled = spec.is_disabled();
    let cidrs = split_cidr(cidr, args.number)?;
    let child_prefix = i32::from(cidrs[0].prefix_len());

    // Blocks already handed out must each fall inside one child.
    let blocks: Vec<_> = ipam
        .list_blocks(None)
        .await?
        .into_iter()
        .filter(|b| cidr.contains(&b.cidr))
        .collect();
    if child_prefix > block_size {
        let most = 1u32 << (block_size - i32::from(cidr.prefix_len())).clamp(0, 31);
        let advice = if most < 2 {
            "it is one block and cannot be split".to_string()
        } else {
            format!("split it into at most {most}")
        };
        bail!(
            "IP pool {name} ({cidr}) has blockSize {block_size}: splitting it into {} gives /{child_prefix} pools, smaller than a block{}; {advice}",
            args.number,
            if blocks.is_empty() {
                String::new()
            } else {
                format!(" ({} blocks are in use)", blocks.len())
            }
        );
    }
    let children = children_of(&parent, &cidrs);
    for child in &children {
        if client
            .get(Kind::IPPool, None, child.name())
            .await?
            .is_some()
        {
            bail!(
                "IP pool {} already exists; rename or delete it before splitting {name}",
                child.name()
            );
        }
        let mut probe = child.clone();
        client
            .prepare_allowing_overlap(&mut probe, None, &[&name])
            .await
            .with_context(|| format!("IP pool {name} cannot be split"))?;
    }

    // 1. No new blocks from the parent while the children appear.
    let disabled = if was_disabled {
        parent.clone()
    } else {
        set_disabled(client, &name, true)
            .await
            .with_context(|| format!("disabling IP pool {name}"))?
    };
    // 2. The children, each overlapping only the parent.
    let mut created: Vec<String> = Vec::new();
    let mut failure = None;
    for child in &children {
        match client
            .create_allowing_overlap(child.clone(), &[&name])
            .await
        {
            Ok(c) => created.push(c.name().to_string()),
            Err(e) => {
                failure = Some(anyhow!(e).context(format!("creating IP pool {}", child.name())));
                break;
            }
        }
    }
    // 3. The parent goes, if nobody changed it meanwhile.
    if failure.is_none()
        && let Err(e) = client
            .delete(Kind::IPPool, None, &name, disabled.resource_version())
            .await
    {
        failure = Some(anyhow!(e).context(format!("deleting IP pool {name}")));
    }
    if let Some(e) = failure {
        let mut undo_errors = Vec::new();
        for c in created.iter().rev() {
            if let Err(u) = client.delete(Kind::IPPool, None, c, None).await {
                undo_errors.push(format!("deleting {c}: {u}"));
            }
        }
        if !was_disabled && let Err(u) = set_disabled(client, &name, false).await {
            undo_errors.push(format!("re-enabling {name}: {u}"));
        }
        if undo_errors.is_empty() {
            return Err(e.context(format!(
                "IP pool {name} was not split; the steps taken were undone"
            )));
        }
        return Err(e.context(format!(
            "IP pool {name} was not split, and undoing failed ({}); check `tabbyctl get ippools`",
            undo_errors.join("; ")
        )));
    }

    writeln!(
        out,
        "IP pool {name} was split into {} smaller pools; its {} blocks stay as they are.",
        children.len(),
        blocks.len()
    )?;
    for (child, cidr) in children.iter().zip(&cidrs) {
        writeln!(out, "Created {} with CIDR {cidr}.", child.name())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_powers_of_two() {
        let c: IpNet = "10.0.0.0/16".parse().unwrap();
        let four = split_cidr(c, 4).unwrap();
        let want: Vec<IpNet> = [
            "10.0.0.0/18",
            "10.0.64.0/18",
            "10.0.128.0/18",
            "10.0.192.0/18",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(four, want);
        let v6: IpNet = "fd00::/120".parse().unwrap();
        assert_eq!(
            split_cidr(v6, 2).unwrap()[1],
            "fd00::80/121".parse::<IpNet>().unwrap()
        );
        for bad in [0, 1, 3, 6] {
            assert!(split_cidr(c, bad).is_err(), "{bad}");
        }
        let tiny: IpNet = "10.0.0.0/31".parse().unwrap();
        assert!(split_cidr(tiny, 4).is_err());
        assert_eq!(child_name("pods", 3), "split-pods-3");
    }
}
