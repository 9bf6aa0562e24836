//! `tabbyctl ipam release --from-report report.json...`: releases what `ipam check -o
//! report.json` found leaked, as calicoctl does, but only what is still leaked now.
//! With several reports only what every report calls leaked (with the same handle and
//! sequence number) counts, so reports taken some time apart rule out addresses in the
//! middle of being assigned. Each address is checked again against the store before it
//! goes (still allocated to the same handle at the same sequence number, still without
//! an endpoint or node) and released with that handle and sequence number as a guard;
//! a leaked handle is deleted only if no block refers to it and its revision is the
//! one the report saw.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use tabby_client::Client;
use tabby_ipam::{Ipam, ReleaseOptions};
use tabby_store::StoreError;

use super::InUse;

/// The parts of a check report that releasing reads (calicoctl's field names).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    version: String,
    allocations: BTreeMap<String, Vec<ReportAllocation>>,
    #[serde(default)]
    leaked_handles: Vec<ReportHandle>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportAllocation {
    ip: IpAddr,
    #[serde(default)]
    handle: Option<String>,
    #[serde(default)]
    sequence_number: Option<u64>,
    in_use: bool,
}

#[derive(Debug, Deserialize)]
struct ReportHandle {
    #[serde(rename = "ID")]
    id: String,
    /// The handle key's revision when the report was written (a string, as calicoctl
    /// writes it); absent in older reports.
    #[serde(default)]
    revision: Option<String>,
}

/// A leaked allocation as the reports describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leak {
    ip: IpAddr,
    handle: Option<String>,
    sequence_number: Option<u64>,
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--from-report {}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "--from-report {}: not an IPAM report from `tabbyctl ipam check -o FILE`",
            path.display()
        )
    })
}

/// Leaks every report agrees on, and leaked handles every report lists with the same
/// revision (the revision of the last report that gives one).
fn merge(reports: &[Report]) -> (Vec<Leak>, BTreeMap<String, Option<String>>) {
    let mut leaks: Option<BTreeMap<IpAddr, Leak>> = None;
    let mut handles: Option<BTreeMap<String, Option<String>>> = None;
    for report in reports {
        let mut these = BTreeMap::new();
        for a in report.allocations.values().flatten().filter(|a| !a.in_use) {
            let leak = Leak {
                ip: a.ip,
                handle: a.handle.clone(),
                sequence_number: a.sequence_number,
            };
            if leaks.as_ref().is_none_or(|l| l.get(&a.ip) == Some(&leak)) {
                these.insert(a.ip, leak);
            }
        }
        leaks = Some(these);
        let mut these = BTreeMap::new();
        for h in &report.leaked_handles {
            let keep = match handles.as_ref().map(|m| m.get(&h.id)) {
                // The first report: every leaked handle.
                None => Some(h.revision.clone()),
                // Not leaked in an earlier report.
                Some(None) => None,
                // Leaked before: only if it has not changed (when both reports say).
                Some(Some(before)) => match (before, &h.revision) {
                    (Some(a), Some(b)) if a != b => None,
                    (a, b) => Some(b.clone().or_else(|| a.clone())),
                },
            };
            if let Some(revision) = keep {
                these.insert(h.id.clone(), revision);
            }
        }
        handles = Some(these);
    }
    (
        leaks.unwrap_or_default().into_values().collect(),
        handles.unwrap_or_default(),
    )
}

pub async fn release_from_reports(
    client: &Client,
    ipam: &Ipam,
    files: &[PathBuf],
    force: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let ours = format!("v{}", env!("CARGO_PKG_VERSION"));
    let mut reports = Vec::new();
    for f in files {
        let r = read_report(f)?;
        if r.version != ours {
            if !force {
                bail!(
                    "--from-report {}: written by tabbyctl {}, this is {ours}; run `tabbyctl ipam check -o FILE` again, or add --force",
                    f.display(),
                    r.version
                );
            }
            writeln!(
                out,
                "WARNING: {} was written by tabbyctl {}; going on because of --force",
                f.display(),
                r.version
            )?;
        }
        reports.push(r);
    }
    let (leaks, leaked_handles) = merge(&reports);

    // What is true now.
    let in_use = InUse::load(client).await?;
    let blocks = ipam.list_blocks(None).await?;
    let current: BTreeMap<IpAddr, tabby_ipam::AllocationInfo> = blocks
        .iter()
        .flat_map(|b| b.allocations())
        .map(|a| (a.ip, a))
        .collect();
    let referenced: BTreeSet<String> = current.values().filter_map(|a| a.handle.clone()).collect();

    let mut errors = 0usize;
    if leaks.is_empty() {
        writeln!(out, "Report didn't contain any leaked IPs to clean up.")?;
    } else {
        writeln!(out, "Releasing {} old IPs...", leaks.len())?;
        let (mut released, mut gone, mut kept) = (0usize, 0usize, 0usize);
        for leak in &leaks {
            let Some(now) = current.get(&leak.ip) else {
                gone += 1;
                continue;
            };
            let same = now.handle == leak.handle
                && leak
                    .sequence_number
                    .is_none_or(|s| s == now.sequence_number);
            if !same || !in_use.owners(now).is_empty() {
                kept += 1;
                continue;
            }
            let guard = ReleaseOptions {
                address: leak.ip,
                handle: leak.handle.clone(),
                sequence_number: Some(now.sequence_number),
            };
            match ipam.release_ips(&[guard]).await {
                Ok(unallocated) if unallocated.is_empty() => released += 1,
                Ok(_) => gone += 1,
                Err(e) if e.is_release_conflict() => kept += 1,
                Err(e) => {
                    errors += 1;
                    writeln!(out, "Releasing {} failed: {e}", leak.ip)?;
                }
            }
        }
        writeln!(out, "Released {released} IPs successfully")?;
        if gone > 0 {
            writeln!(
                out,
                "{gone} addresses marked as leaked in the report had already been cleaned up."
            )?;
        }
        if kept > 0 {
            writeln!(
                out,
                "{kept} addresses marked as leaked are in use again or were reassigned since the report; left alone."
            )?;
        }
    }

    if leaked_handles.is_empty() {
        writeln!(out, "Report didn't contain any handles to clean up.")?;
    } else {
        writeln!(out, "Deleting {} handles...", leaked_handles.len())?;
        let (mut deleted, mut skipped) = (0usize, 0usize);
        for (id, revision) in &leaked_handles {
            let key = tabby_ipam::keys::handle_key(id);
            let Some(kv) = client.store().get(&key).await? else {
                skipped += 1;
                continue;
            };
            let expected = revision.as_deref().and_then(|r| r.parse::<i64>().ok());
            if referenced.contains(id) || expected.is_some_and(|r| r != kv.mod_revision) {
                skipped += 1;
                continue;
            }
            match client.store().delete(&key, Some(kv.mod_revision)).await {
                Ok(_) => deleted += 1,
                Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => skipped += 1,
                Err(e) => {
                    errors += 1;
                    writeln!(out, "Deleting handle {id} failed: {e}")?;
                }
            }
        }
        writeln!(
            out,
            "Released {deleted} handles; {skipped} skipped; {errors} errors."
        )?;
    }
    if errors > 0 {
        bail!("{errors} releases failed; run `tabbyctl ipam check` again to see what is left");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(version: &str, leaks: &[(&str, &str, u64)], handles: &[(&str, &str)]) -> Report {
        let allocations = leaks
            .iter()
            .map(|(ip, h, seq)| {
                (
                    ip.to_string(),
                    vec![ReportAllocation {
                        ip: ip.parse().unwrap(),
                        handle: Some(h.to_string()),
                        sequence_number: Some(*seq),
                        in_use: false,
                    }],
                )
            })
            .collect();
        Report {
            version: version.into(),
            allocations,
            leaked_handles: handles
                .iter()
                .map(|(id, rev)| ReportHandle {
                    id: id.to_string(),
                    revision: Some(rev.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn reports_merge_to_what_they_all_call_leaked() {
        let first = report(
            "v1",
            &[
                ("10.0.0.1", "a", 1),
                ("10.0.0.2", "b", 2),
                ("10.0.0.3", "c", 3),
            ],
            &[("h1", "5"), ("h2", "6")],
        );
        let second = report(
            "v1",
            // 10.0.0.2 was reassigned (new sequence number); 10.0.0.3 is in use now.
            &[("10.0.0.1", "a", 1), ("10.0.0.2", "b", 9)],
            &[("h1", "5"), ("h2", "7")],
        );
        let (leaks, handles) = merge(&[first, second]);
        assert_eq!(
            leaks.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(),
            ["10.0.0.1"]
        );
        assert_eq!(
            handles,
            BTreeMap::from([("h1".to_string(), Some("5".to_string()))])
        );
        let one = report("v1", &[("10.0.0.1", "a", 1)], &[]);
        let (leaks, handles) = merge(&[one]);
        assert_eq!(leaks.len(), 1);
        assert!(handles.is_empty());
    }

    #[test]
    fn reads_the_check_report_shape() {
        let text = r#"{"version":"v0.1.0","clusterGUID":"","datastoreLocked":false,
            "clusterInformationRevision":"12","clusterType":"tabby",
            "allocations":{"10.0.0.5":[{"ip":"10.0.0.5","sequenceNumber":7,"inUse":false,
              "owners":[],"handle":"k8s-pod-network.x","node":"n1"}]},
            "leakedHandles":[{"ID":"old","revision":"4"},{"ID":"older"}],"problems":2}"#;
        let r: Report = serde_json::from_str(text).unwrap();
        assert_eq!(r.allocations["10.0.0.5"][0].sequence_number, Some(7));
        assert_eq!(r.leaked_handles[1].revision, None);
    }
}
