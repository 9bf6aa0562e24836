//! `tabbyctl datastore export|import|migrate`: back up a store to one file, restore
//! it, or copy one store into another (SQLite to etcd, etcd to etcd, ...) and check
//! every key. calicoctl's spellings `datastore migrate export` and `datastore migrate
//! import -f FILE` work too. The work is `tabby_client::backup`'s; this is the
//! command line and the messages.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tabby_client::Client;
use tabby_client::backup::{self, ImportMode, ImportReport, Snapshot};
use tabby_store::{Datastore, StoreUrl};

use crate::connect::Connection;

#[derive(clap::Args, Debug)]
pub struct DatastoreArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Write every resource and the IPAM state to one YAML or JSON file (stdout
    /// unless -o), with the source, its revision and the time in a header.
    Export(ExportArgs),
    /// Write an export into the store: an empty store unless --force.
    Import(ImportArgs),
    /// Copy a store into another and check that every key and value matches:
    /// `migrate --from URL --to URL`. `migrate export` and `migrate import -f FILE`
    /// are calicoctl's spellings of export and import.
    Migrate(MigrateArgs),
}

/// The file formats of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FileFormat {
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// File format (default: JSON for a FILE ending in .json, else YAML).
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// The export to read, or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    filename: String,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(clap::Args, Debug)]
struct WriteArgs {
    /// Write into a store that already holds keys: the export's keys are created or
    /// overwritten, the store's other keys stay.
    #[arg(long)]
    force: bool,
    /// With --force, also delete the store's keys the export does not hold, so the
    /// store ends equal to the export.
    #[arg(long, requires = "force")]
    prune: bool,
}

impl WriteArgs {
    fn mode(&self) -> ImportMode {
        match (self.force, self.prune) {
            (false, _) => ImportMode::IntoEmpty,
            (true, false) => ImportMode::Merge,
            (true, true) => ImportMode::Replace,
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct MigrateArgs {
    #[command(subcommand)]
    action: Option<MigrateAction>,
    /// The store to copy (default: the one --store, TABBY_STORE or the config file
    /// selects).
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    /// The store to copy into, e.g. etcd://10.0.0.1:2379,10.0.0.2:2379.
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(clap::Subcommand, Debug)]
enum MigrateAction {
    /// Same as `datastore export`.
    Export(ExportArgs),
    /// Same as `datastore import`.
    Import(ImportArgs),
}

fn exported_by() -> String {
    format!("tabbyctl v{}", env!("CARGO_PKG_VERSION"))
}

pub async fn run(
    conn: &Connection,
    args: &DatastoreArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match &args.action {
        Action::Export(a)
        | Action::Migrate(MigrateArgs {
            action: Some(MigrateAction::Export(a)),
            ..
        }) => export(conn, a, out).await,
        Action::Import(a)
        | Action::Migrate(MigrateArgs {
            action: Some(MigrateAction::Import(a)),
            ..
        }) => import(conn, a, out).await,
        Action::Migrate(a) => migrate(conn, a, out).await,
    }
}

async fn export(conn: &Connection, args: &ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    require_existing(&conn.url()?, "--store")?;
    let client = conn.client().await?;
    let snapshot = backup::export(client.store().as_ref(), &exported_by()).await?;
    let json = match args.format {
        Some(f) => f == FileFormat::Json,
        None => args
            .output
            .as_deref()
            .is_some_and(|p| p.extension().is_some_and(|e| e == "json")),
    };
    let text = if json {
        snapshot.to_json()?
    } else {
        snapshot.to_yaml()?
    };
    let summary = format!(
        "Exported {} keys ({}) from {} at revision {}",
        snapshot.entries.len(),
        snapshot.counts(),
        snapshot.header.source,
        snapshot.header.revision
    );
    match &args.output {
        Some(path) => {
            write_atomically(path, text.as_bytes())?;
            writeln!(out, "{summary} to {}.", path.display())?;
        }
        None => {
            // The export is the program output; the summary goes with the logs.
            out.write_all(text.as_bytes())?;
            eprintln!("{summary}.");
        }
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same folder, so an interrupted
/// export never leaves a truncated file under the name.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("-o {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("-o {}: cannot write", path.display()));
    }
    Ok(())
}

fn read_file(name: &str) -> anyhow::Result<(String, String)> {
    if name == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(("<stdin>".to_string(), text));
    }
    let text = std::fs::read_to_string(name).with_context(|| format!("{name}: cannot read"))?;
    Ok((name.to_string(), text))
}

fn describe(report: &ImportReport) -> String {
    let mut parts = vec![format!("{} created", report.created)];
    if report.updated > 0 {
        parts.push(format!("{} overwritten", report.updated));
    }
    if report.unchanged > 0 {
        parts.push(format!("{} already equal", report.unchanged));
    }
    if report.deleted > 0 {
        parts.push(format!("{} deleted", report.deleted));
    }
    parts.join(", ")
}

/// Writes the snapshot, then reads the target back and compares every key.
async fn write_and_verify(
    target: &dyn Datastore,
    snapshot: &Snapshot,
    mode: ImportMode,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let report = backup::import(target, snapshot, mode).await?;
    writeln!(
        out,
        "Wrote {} keys ({}) to {}: {}.",
        snapshot.entries.len(),
        snapshot.counts(),
        target.endpoint(),
        describe(&report)
    )?;
    let exact = mode != ImportMode::Merge;
    let differences = backup::verify(target, snapshot, exact).await?;
    if !differences.is_empty() {
        let shown: Vec<String> = differences
            .iter()
            .take(20)
            .map(ToString::to_string)
            .collect();
        bail!(
            "{} keys on {} differ from what was written (another writer?):\n  {}{}",
            differences.len(),
            target.endpoint(),
            shown.join("\n  "),
            if differences.len() > shown.len() {
                "\n  ..."
            } else {
                ""
            }
        );
    }
    writeln!(
        out,
        "Verified: every key and value on {} matches{}.",
        target.endpoint(),
        if exact {
            ", and it holds nothing else"
        } else {
            ""
        }
    )?;
    Ok(())
}

async fn import(conn: &Connection, args: &ImportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (name, text) = read_file(&args.filename)?;
    let snapshot = Snapshot::parse(&text, &name)?;
    writeln!(
        out,
        "Read {name}: {} keys ({}) exported from {} at revision {} on {}.",
        snapshot.entries.len(),
        snapshot.counts(),
        snapshot.header.source,
        snapshot.header.revision,
        snapshot.header.exported_at
    )?;
    let client = conn.client().await?;
    write_and_verify(client.store().as_ref(), &snapshot, args.write.mode(), out).await
}

async fn open(url: &str, flag: &str) -> anyhow::Result<Arc<dyn Datastore>> {
    let url = StoreUrl::parse(url).with_context(|| flag.to_string())?;
    tabby_store::open(&url)
        .await
        .with_context(|| format!("{flag}: opening datastore {url}"))
}

/// Refuses a SQLite source that does not exist (opening would create an empty one,
/// and a typo would then export or copy nothing).
fn require_existing(url: &StoreUrl, flag: &str) -> anyhow::Result<()> {
    if let StoreUrl::Sqlite { path } = url
        && !path.exists()
    {
        bail!("{flag} {url}: {} does not exist", path.display());
    }
    Ok(())
}

/// Structural IPAM problems in a store (leaks need the endpoints, which a copy
/// carries over unchanged).
async fn ipam_problems(store: &Arc<dyn Datastore>) -> anyhow::Result<usize> {
    let client = Client::new(Arc::clone(store));
    let report = tabby_client::ipam::ipam_for(&client).check().await?;
    Ok(report.problem_count())
}

async fn migrate(conn: &Connection, args: &MigrateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(to) = &args.to else {
        bail!(
            "datastore migrate: give the target with --to URL (or use `migrate export` / `migrate import -f FILE`)"
        );
    };
    let (source, from) = match &args.from {
        Some(url) => {
            require_existing(&StoreUrl::parse(url).context("--from")?, "--from")?;
            (open(url, "--from").await?, url.clone())
        }
        None => {
            require_existing(&conn.url()?, "--from (the configured store)")?;
            (Arc::clone(conn.client().await?.store()), conn.describe()?)
        }
    };
    let target = open(to, "--to").await?;
    if source.endpoint() == target.endpoint() {
        bail!("--from and --to are the same store ({})", source.endpoint());
    }
    let snapshot = backup::export(source.as_ref(), &exported_by()).await?;
    if snapshot.entries.is_empty() {
        bail!("{from} holds no keys under /calico/: nothing to migrate");
    }
    writeln!(
        out,
        "Read {} keys ({}) from {} at revision {}.",
        snapshot.entries.len(),
        snapshot.counts(),
        snapshot.header.source,
        snapshot.header.revision
    )?;
    // What import would refuse, refuse before writing anything.
    let mut problems = Vec::new();
    for (i, e) in snapshot.entries.iter().enumerate() {
        if let Err(message) = backup::check_entry(e) {
            problems.push(format!("[{i}] {}: {message}", e.key));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} stored values cannot be copied as they are, nothing was written:\n  {}\nExport with `tabbyctl datastore export -o FILE`, fix FILE and import it.",
            problems.len(),
            problems.join("\n  ")
        );
    }
    write_and_verify(target.as_ref(), &snapshot, args.write.mode(), out).await?;

    // Writers on the source since the copy make the target stale.
    let now = backup::export(source.as_ref(), &exported_by()).await?;
    if now.header.revision != snapshot.header.revision {
        let changed = backup::verify(target.as_ref(), &now, true).await?;
        if !changed.is_empty() {
            bail!(
                "{} changed while it was copied (revision {} then, {} now): {} keys differ, e.g. {}. Stop the agents and CNI plugins writing to it and run `tabbyctl datastore migrate --from {from} --to {to} --force --prune` to bring the target up to date.",
                snapshot.header.source,
                snapshot.header.revision,
                now.header.revision,
                changed.len(),
                changed[0],
            );
        }
    }
    let (before, after) = (ipam_problems(&source).await?, ipam_problems(&target).await?);
    writeln!(
        out,
        "IPAM check on {}: {after} problems ({before} on the source).",
        target.endpoint()
    )?;
    if after > before {
        bail!(
            "the target has more IPAM problems than the source; run `tabbyctl --store {to} ipam check --show-problem-ips`"
        );
    }
    Ok(())
}
