//! `tabbyctl label KIND NAME key=value... [--overwrite]`, `key-` or `key --remove`:
//! calicoctl's `label` (with kubectl's `key-` spelling for removal). Every change to
//! one resource is a single compare-and-swap write, validated like `apply`.

use std::io::Write;

use anyhow::bail;
use tabby_client::ClientError;

use crate::commands::parse_kind;
use crate::connect::Connection;

#[derive(clap::Args, Debug)]
pub struct LabelArgs {
    /// KIND, as `get` takes it (nodes, node, no, ippools, workloadendpoints, ...).
    kind: String,
    /// NAME of the resource.
    name: String,
    /// `key=value` to set, `key-` to remove, or `key` with --remove.
    #[arg(required = true, value_name = "LABEL")]
    labels: Vec<String>,
    /// Change the value of a label that is already set.
    #[arg(long)]
    overwrite: bool,
    /// Remove the named labels (as `key-` does).
    #[arg(long, conflicts_with = "overwrite")]
    remove: bool,
    /// Namespace of namespaced kinds (default: `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// One requested change.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Set { key: String, value: String },
    Remove { key: String },
}

/// What a change did, for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Set,
    Updated,
    Removed,
}

fn parse_change(arg: &str, remove: bool) -> anyhow::Result<Change> {
    if remove {
        if arg.contains('=') {
            bail!("label {arg:?}: with --remove give only the key");
        }
        let key = arg.strip_suffix('-').unwrap_or(arg);
        return Ok(Change::Remove {
            key: key.to_string(),
        });
    }
    if let Some((key, value)) = arg.split_once('=') {
        if key.is_empty() {
            bail!("label {arg:?}: the key is empty");
        }
        return Ok(Change::Set {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    if let Some(key) = arg.strip_suffix('-')
        && !key.is_empty()
    {
        return Ok(Change::Remove {
            key: key.to_string(),
        });
    }
    bail!("label {arg:?}: expected key=value, key- or key with --remove")
}

/// Applies the changes to a label map, or says why not.
fn apply_changes(
    labels: &mut std::collections::BTreeMap<String, String>,
    changes: &[Change],
    overwrite: bool,
    what: &str,
) -> Result<Vec<Outcome>, String> {
    let mut outcomes = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Change::Set { key, value } => match labels.get(key) {
                Some(old) if old != value && !overwrite => {
                    return Err(format!(
                        "{what}: label {key} is already set (to {old:?}); use --overwrite to change it"
                    ));
                }
                Some(_) => {
                    labels.insert(key.clone(), value.clone());
                    outcomes.push(Outcome::Updated);
                }
                None => {
                    labels.insert(key.clone(), value.clone());
                    outcomes.push(Outcome::Set);
                }
            },
            Change::Remove { key } => {
                if labels.remove(key).is_none() {
                    return Err(format!("{what}: cannot remove label {key}: it is not set"));
                }
                outcomes.push(Outcome::Removed);
            }
        }
    }
    Ok(outcomes)
}

pub async fn run(conn: &Connection, args: &LabelArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind)?;
    let changes = args
        .labels
        .iter()
        .map(|l| parse_change(l, args.remove))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let namespace = if kind.namespaced() {
        Some(args.namespace.as_deref().unwrap_or("default"))
    } else {
        None
    };
    let what = format!("{} {}", args.kind, args.name);
    let client = conn.client().await?;
    let mut outcomes = Vec::new();
    let result = client
        .modify(kind, namespace, &args.name, |r| {
            outcomes = apply_changes(&mut r.metadata.labels, &changes, args.overwrite, &what)
                .map_err(ClientError::Invalid)?;
            Ok(())
        })
        .await;
    match result {
        Ok(_) => {}
        Err(ClientError::NotFound { .. }) => bail!("{what}: resource does not exist"),
        Err(ClientError::Invalid(message)) => bail!("{message}"),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("{what}: labels not changed")));
        }
    }
    for (change, outcome) in changes.iter().zip(&outcomes) {
        let key = match change {
            Change::Set { key, .. } | Change::Remove { key } => key,
        };
        match outcome {
            Outcome::Set => writeln!(out, "Successfully set label {key} on {what}")?,
            Outcome::Updated => writeln!(out, "Successfully updated label {key} on {what}")?,
            Outcome::Removed => writeln!(out, "Successfully removed label {key} from {what}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn parses_every_spelling() {
        assert_eq!(
            parse_change("rack=r1", false).unwrap(),
            Change::Set {
                key: "rack".into(),
                value: "r1".into()
            }
        );
        assert_eq!(
            parse_change("rack=", false).unwrap(),
            Change::Set {
                key: "rack".into(),
                value: String::new()
            }
        );
        for (arg, remove) in [("rack-", false), ("rack", true), ("rack-", true)] {
            assert_eq!(
                parse_change(arg, remove).unwrap(),
                Change::Remove { key: "rack".into() },
                "{arg} {remove}"
            );
        }
        assert!(parse_change("rack", false).is_err());
        assert!(parse_change("=x", false).is_err());
        assert!(parse_change("a=b", true).is_err());
    }

    #[test]
    fn overwrite_and_remove_follow_calicoctl() {
        let mut labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        let set = |k: &str, v: &str| Change::Set {
            key: k.into(),
            value: v.into(),
        };
        let e = apply_changes(&mut labels, &[set("rack", "r2")], false, "nodes n1").unwrap_err();
        assert_eq!(
            e,
            "nodes n1: label rack is already set (to \"r1\"); use --overwrite to change it"
        );
        assert_eq!(
            apply_changes(&mut labels, &[set("rack", "r1")], false, "n").unwrap(),
            [Outcome::Updated],
            "the same value needs no --overwrite"
        );
        assert_eq!(
            apply_changes(
                &mut labels,
                &[set("rack", "r2"), set("zone", "a")],
                true,
                "n"
            )
            .unwrap(),
            [Outcome::Updated, Outcome::Set]
        );
        assert_eq!(labels["rack"], "r2");
        let remove = Change::Remove { key: "zone".into() };
        assert_eq!(
            apply_changes(&mut labels, std::slice::from_ref(&remove), false, "n").unwrap(),
            [Outcome::Removed]
        );
        let e = apply_changes(&mut labels, &[remove], false, "nodes n1").unwrap_err();
        assert_eq!(e, "nodes n1: cannot remove label zone: it is not set");
    }
}
