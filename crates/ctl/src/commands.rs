//! The resource verbs: apply, create, replace, validate, delete, get and patch.
//! Writes check every document first (syntax, schema, defaults, validation, pool
//! overlaps, existence) and write nothing unless all pass.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tabby_api::{Kind, Resource};
use tabby_client::{Applied, Client, ClientError};
use tabby_selector::Selector;

use crate::connect::Connection;
use crate::output::{self, Format, TableContext};

#[derive(clap::Args, Debug)]
pub struct FileArgs {
    /// A YAML or JSON file (several documents allowed), a folder of them, or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    filename: Vec<String>,
    /// With create: leave resources that already exist alone instead of failing.
    #[arg(long)]
    skip_exists: bool,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// KIND and NAME(s), when not deleting from a file.
    args: Vec<String>,
    /// Delete the resources named in this file, folder or stdin (`-`).
    #[arg(short = 'f', long = "filename")]
    filename: Vec<String>,
    /// Namespace of namespaced kinds (default: `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Do not fail for resources that do not exist.
    #[arg(long)]
    skip_not_exists: bool,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// KIND (plural, singular or short, e.g. ippools, ippool, ipp) and optional NAME(s).
    #[arg(required = true)]
    args: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "ps")]
    output: Format,
    /// Namespace of namespaced kinds (default: `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// List namespaced kinds across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only resources whose labels match this Calico selector, e.g. 'rack == "r1"'.
    #[arg(short = 'l', long)]
    selector: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct PatchArgs {
    /// KIND
    kind: String,
    /// NAME
    name: String,
    /// The patch, a JSON object, e.g. '{"spec":{"natOutgoing":true}}'.
    #[arg(short = 'p', long = "patch")]
    patch: String,
    /// Patch type; `merge` (RFC 7386). calicoctl's default `strategic` acts the same on
    /// these resources, which have no keyed lists.
    #[arg(long = "type", default_value = "merge")]
    patch_type: String,
    /// Namespace of namespaced kinds (default: `default`).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Apply,
    Create,
    Replace,
}

impl Verb {
    fn past(self) -> &'static str {
        match self {
            Verb::Apply => "applied",
            Verb::Create => "created",
            Verb::Replace => "replaced",
        }
    }
}

/// Resources read from the inputs, each with where it came from.
struct Input {
    resources: Vec<(Resource, String)>,
}

fn read_source(name: &str) -> anyhow::Result<Vec<(String, String)>> {
    if name == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(vec![("<stdin>".to_string(), text)]);
    }
    let path = Path::new(name);
    let meta = std::fs::metadata(path).with_context(|| format!("{name}: cannot read"))?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{name}: cannot list folder"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{name}: folder has no .yaml, .yml or .json files");
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("{}: cannot read", f.display()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

fn load_inputs(names: &[String]) -> anyhow::Result<Input> {
    let mut resources = Vec::new();
    for name in names {
        for (source, text) in read_source(name)? {
            let docs =
                tabby_api::load::parse_documents(&text, &source).map_err(|e| anyhow!("{e}"))?;
            resources.extend(docs.into_iter().map(|r| (r, source.clone())));
        }
    }
    if resources.is_empty() {
        bail!("no resources found in {}", names.join(", "));
    }
    Ok(Input { resources })
}

fn describe(r: &Resource) -> String {
    match r.namespace() {
        Some(ns) if r.kind().namespaced() => format!("{} \"{ns}/{}\"", r.kind(), r.name()),
        _ => format!("{} {:?}", r.kind(), r.name()),
    }
}

/// Defaults and validation that need no store, plus overlap among the new pools.
fn check_offline(input: &mut Input) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for (r, source) in &mut input.resources {
        if r.kind().namespaced() && r.namespace().is_none() {
            r.metadata.namespace = Some("default".to_string());
        }
        r.apply_defaults();
        if let Err(e) = r.validate() {
            errors.push(format!("{source}: {e}"));
        }
    }
    let pools: Vec<&(Resource, String)> = input
        .resources
        .iter()
        .filter(|(r, _)| r.kind() == Kind::IPPool)
        .collect();
    for (i, (pool, source)) in pools.iter().enumerate() {
        let others: Vec<Resource> = pools[..i]
            .iter()
            .filter(|(p, _)| p.name() != pool.name())
            .map(|(p, _)| p.clone())
            .collect();
        if let Err(e) = tabby_api::validate_pool_overlaps(pool, &others) {
            errors.push(format!("{source}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} invalid resource(s), nothing was written:\n  {}",
            errors.len(),
            errors.join("\n  ")
        )
    }
}

fn summary(verb: &str, resources: &[&Resource]) -> String {
    let kinds: std::collections::BTreeSet<Kind> = resources.iter().map(|r| r.kind()).collect();
    match kinds.iter().next() {
        Some(kind) if kinds.len() == 1 => {
            format!(
                "Successfully {verb} {} '{kind}' resource(s)",
                resources.len()
            )
        }
        _ => format!("Successfully {verb} {} resource(s)", resources.len()),
    }
}

/// apply / create / replace from files.
pub async fn write_files(
    conn: &Connection,
    args: &FileArgs,
    verb: Verb,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut input = load_inputs(&args.filename)?;
    check_offline(&mut input)?;
    let client = conn.client().await?;

    // Every check against the store comes before the first write.
    let mut errors = Vec::new();
    let mut skip = vec![false; input.resources.len()];
    for (i, (r, source)) in input.resources.iter().enumerate() {
        let existing = client.get(r.kind(), r.namespace(), r.name()).await?;
        match (verb, &existing) {
            (Verb::Create, Some(_)) if args.skip_exists => skip[i] = true,
            (Verb::Create, Some(_)) => {
                errors.push(format!("{source}: {} already exists", describe(r)))
            }
            (Verb::Replace, None) => {
                errors.push(format!("{source}: {} does not exist", describe(r)))
            }
            _ => {}
        }
        if !skip[i] {
            let mut probe = r.clone();
            if let Err(e) = client.prepare(&mut probe, existing.as_ref()).await {
                errors.push(format!("{source}: {e}"));
            }
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} resource(s) cannot be {}, nothing was written:\n  {}",
            errors.len(),
            verb.past(),
            errors.join("\n  ")
        );
    }

    let total = input.resources.len();
    let mut done: Vec<&Resource> = Vec::new();
    for (i, (r, source)) in input.resources.iter().enumerate() {
        if skip[i] {
            done.push(r);
            continue;
        }
        let result = match verb {
            Verb::Apply => client.apply(r.clone()).await.map(|(_, how)| how),
            Verb::Create => client.create(r.clone()).await.map(|_| Applied::Created),
            Verb::Replace => client.replace(r.clone()).await.map(|_| Applied::Updated),
        };
        if let Err(e) = result {
            if done.is_empty() {
                bail!("{source}: {e}");
            }
            bail!(
                "Partial success: {} the first {} out of {total} resources:\n{}\n{source}: {e}",
                verb.past(),
                done.len(),
                done.iter()
                    .map(|r| format!("  {}", describe(r)))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        done.push(r);
    }
    writeln!(out, "{}", summary(verb.past(), &done))?;
    Ok(())
}

/// validate: every check that needs no store.
pub fn validate_files(args: &FileArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut input = load_inputs(&args.filename)?;
    check_offline(&mut input)?;
    let all: Vec<&Resource> = input.resources.iter().map(|(r, _)| r).collect();
    writeln!(out, "{}", summary("validated", &all))?;
    Ok(())
}

pub(crate) fn parse_kind(name: &str) -> anyhow::Result<Kind> {
    Kind::from_cli_name(name).ok_or_else(|| {
        let known: Vec<String> = Kind::all().iter().map(|k| k.plural().to_string()).collect();
        anyhow!(
            "unknown resource type {name:?}; known types: {}",
            known.join(", ")
        )
    })
}

pub async fn delete(
    conn: &Connection,
    args: &DeleteArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let targets: Vec<(Kind, Option<String>, String)> = if !args.filename.is_empty() {
        if !args.args.is_empty() {
            bail!("give either -f FILE or KIND NAME..., not both");
        }
        load_inputs(&args.filename)?
            .resources
            .into_iter()
            .map(|(r, _)| {
                (
                    r.kind(),
                    r.namespace().map(str::to_string),
                    r.name().to_string(),
                )
            })
            .collect()
    } else {
        let Some((kind, names)) = args.args.split_first() else {
            bail!("delete needs -f FILE or KIND NAME...");
        };
        if names.is_empty() {
            bail!("delete {kind}: name the resource(s) to delete");
        }
        let kind = parse_kind(kind)?;
        names
            .iter()
            .map(|n| (kind, args.namespace.clone(), n.clone()))
            .collect()
    };
    let client = conn.client().await?;
    let mut deleted = Vec::new();
    for (kind, ns, name) in &targets {
        match client.delete(*kind, ns.as_deref(), name, None).await {
            Ok(r) => deleted.push(r),
            Err(ClientError::NotFound { .. }) if args.skip_not_exists => {}
            Err(e) => {
                if !deleted.is_empty() {
                    let refs: Vec<&Resource> = deleted.iter().collect();
                    writeln!(out, "{}", summary("deleted", &refs))?;
                }
                return Err(e.into());
            }
        }
    }
    let refs: Vec<&Resource> = deleted.iter().collect();
    writeln!(out, "{}", summary("deleted", &refs))?;
    Ok(())
}

async fn table_context(client: &Client, all_namespaces: bool) -> anyhow::Result<TableContext> {
    let global_as = match client.get(Kind::BGPConfiguration, None, "default").await? {
        Some(r) => r
            .spec
            .as_bgp_configuration()
            .map(|s| s.effective_as_number())
            .unwrap_or(tabby_api::DEFAULT_AS_NUMBER),
        None => tabby_api::DEFAULT_AS_NUMBER,
    };
    Ok(TableContext {
        global_as,
        all_namespaces,
    })
}

pub async fn get(conn: &Connection, args: &GetArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (kind, names) = args
        .args
        .split_first()
        .ok_or_else(|| anyhow!("get needs a resource type"))?;
    let kind = parse_kind(kind)?;
    let selector = match &args.selector {
        Some(s) => Some(Selector::parse(s).map_err(|e| anyhow!("-l/--selector: {e}"))?),
        None => None,
    };
    if args.all_namespaces && !names.is_empty() {
        bail!("-A/--all-namespaces cannot be combined with resource names");
    }
    let client = conn.client().await?;
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.as_deref().unwrap_or("default"))
    };
    let mut resources = Vec::new();
    if names.is_empty() {
        resources = client.list(kind, namespace).await?;
    } else {
        for name in names {
            match client.get(kind, namespace, name).await? {
                Some(r) => resources.push(r),
                None => bail!("resource does not exist: {kind}({name})"),
            }
        }
    }
    if let Some(sel) = &selector {
        resources.retain(|r| sel.matches(r.labels()));
    }
    let ctx = table_context(&client, args.all_namespaces).await?;
    // A single named resource prints as itself; otherwise as a list.
    output::print(out, kind, &resources, args.output, &ctx)
}

pub async fn patch(conn: &Connection, args: &PatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind)?;
    if !matches!(args.patch_type.as_str(), "merge" | "strategic") {
        bail!(
            "--type {}: only merge (RFC 7386) patches are supported",
            args.patch_type
        );
    }
    let patch: serde_json::Value = serde_json::from_str(&args.patch)
        .map_err(|e| anyhow!("-p/--patch: not valid JSON: {e}"))?;
    if !patch.is_object() {
        bail!("-p/--patch: a merge patch must be a JSON object");
    }
    let client = conn.client().await?;
    let patched = client
        .patch(kind, args.namespace.as_deref(), &args.name, &patch)
        .await?;
    writeln!(out, "{}", summary("patched", &[&patched]))?;
    Ok(())
}
