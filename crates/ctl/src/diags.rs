//! `tabbyctl node diags`: gathers what a bug report about a node needs into one
//! `.tar.gz`, as `calicoctl node diags` does: the agent's logs, the kernel's links,
//! addresses, routes and rules, the nftables ruleset, the agent's BGP (and BFD) state,
//! whether the datastore answers, and versions. Every collector runs on its own; one
//! that fails leaves its error in its file and in `summary.txt`, never stops the rest.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tabby_api::Kind;
use tabby_node::status;
use tabby_store::StoreUrl;

use crate::connect::Connection;

#[derive(clap::Args, Debug)]
pub struct DiagsArgs {
    /// The archive to write (default: ./tabby-diags-<host>-<UTC time>.tar.gz).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// An agent log file to include (repeatable), for agents not run by systemd.
    #[arg(long = "log-file")]
    log_files: Vec<PathBuf>,
    /// How far back `journalctl` goes, in its `--since` syntax.
    #[arg(long, default_value = "-24h")]
    since: String,
    /// The agent's control socket.
    #[arg(long, env = "TABBY_NODE_SOCKET", default_value = status::DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// Seconds each collector may take before it is recorded as timed out.
    #[arg(long, default_value_t = 20)]
    timeout_secs: u64,
}

/// What one collector produced: the member's text, or why it failed (with whatever
/// partial output it had).
struct Collected {
    member: String,
    result: Result<String, String>,
    took: Duration,
}

/// The archive's members while they are gathered, then their summary.
#[derive(Default)]
pub struct Gathered {
    items: Vec<Collected>,
}

impl Gathered {
    fn push(&mut self, member: &str, took: Duration, result: Result<String, String>) {
        self.items.push(Collected {
            member: member.to_string(),
            result,
            took,
        });
    }

    /// `summary.txt`: one line per member, `ok` or `FAILED` with the reason.
    pub fn summary(&self) -> String {
        let mut s = String::from("# tabbyctl node diags: one line per collector\n");
        for c in &self.items {
            let ms = c.took.as_millis();
            match &c.result {
                Ok(_) => writeln!(s, "{:<22} ok      {ms} ms", c.member),
                Err(e) => writeln!(
                    s,
                    "{:<22} FAILED  {ms} ms  {}",
                    c.member,
                    e.lines().next().unwrap_or("")
                ),
            }
            .expect("writing to a String");
        }
        s
    }

    /// How many collectors failed.
    pub fn failures(&self) -> usize {
        self.items.iter().filter(|c| c.result.is_err()).count()
    }

    /// Writes every member and `summary.txt` into `dir`.
    fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        for c in &self.items {
            let text = match &c.result {
                Ok(t) => t.clone(),
                Err(e) => format!("# collector failed\n{e}\n"),
            };
            let path = dir.join(&c.member);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        let path = dir.join("summary.txt");
        std::fs::write(&path, self.summary())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Runs `argv` and returns its stdout; a missing program, a non-zero exit or a
/// timeout is an error carrying the command, its stderr and any stdout.
pub fn run_command(argv: &[&str], timeout: Duration) -> Result<String, String> {
    let shown = argv.join(" ");
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: cannot run {}: {e}", argv[0]))?;
    // Read the pipes on threads so that a chatty command cannot fill them and stall.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{shown}: waiting: {e}")),
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!(
            "{shown}: {s}\n--- stderr\n{stderr}--- stdout\n{stdout}"
        )),
        None => Err(format!(
            "{shown}: timed out after {} s\n--- stderr\n{stderr}--- stdout\n{stdout}",
            timeout.as_secs()
        )),
    }
}

/// The kernel state collectors: member name and command.
const KERNEL: &[(&str, &[&str])] = &[
    ("ip-link.txt", &["ip", "-d", "link", "show"]),
    ("ip-4-addr.txt", &["ip", "-d", "-4", "addr", "show"]),
    ("ip-6-addr.txt", &["ip", "-d", "-6", "addr", "show"]),
    (
        "ip-4-route.txt",
        &["ip", "-d", "-4", "route", "show", "table", "all"],
    ),
    (
        "ip-6-route.txt",
        &["ip", "-d", "-6", "route", "show", "table", "all"],
    ),
    ("ip-4-rule.txt", &["ip", "-d", "-4", "rule", "show"]),
    ("ip-6-rule.txt", &["ip", "-d", "-6", "rule", "show"]),
    ("nft-ruleset.txt", &["nft", "list", "ruleset"]),
];

fn timed(f: impl FnOnce() -> Result<String, String>) -> (Duration, Result<String, String>) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// `versions.txt`: tabbyctl, the kernel, nft and ip. A tool that cannot say its
/// version is noted in the file and fails the collector, after the others are written.
fn versions(timeout: Duration) -> Result<String, String> {
    let mut s = format!("tabbyctl v{}\n", env!("CARGO_PKG_VERSION"));
    let mut failed = Vec::new();
    for (what, argv) in [
        ("kernel", &["uname", "-srvm"][..]),
        ("nft", &["nft", "--version"][..]),
        ("ip", &["ip", "-V"][..]),
    ] {
        match run_command(argv, timeout) {
            Ok(out) => {
                let _ = writeln!(s, "{what}: {}", out.trim());
            }
            Err(e) => {
                let _ = writeln!(s, "{what}: unknown ({})", e.lines().next().unwrap_or(""));
                failed.push(what);
            }
        }
    }
    if failed.is_empty() {
        Ok(s)
    } else {
        Err(format!("no version for {}\n{s}", failed.join(", ")))
    }
}

/// `agent-logs.txt`: the given log files and the journal of the `tabby-node` and
/// `tabby-bgpd` units. It fails when a given file cannot be read, or when there is
/// neither a file nor a journal.
fn agent_logs(args: &DiagsArgs, timeout: Duration) -> Result<String, String> {
    let mut s = String::new();
    let mut unreadable = Vec::new();
    for f in &args.log_files {
        match std::fs::read(f) {
            Ok(bytes) => {
                let _ = writeln!(s, "=== {}", f.display());
                s.push_str(&String::from_utf8_lossy(&bytes));
            }
            Err(e) => unreadable.push(format!("{}: {e}", f.display())),
        }
    }
    let argv = [
        "journalctl",
        "-u",
        "tabby-node",
        "-u",
        "tabby-bgpd",
        "--no-pager",
        "--since",
        &args.since,
    ];
    let journal = run_command(&argv, timeout);
    match &journal {
        Ok(out) => {
            let _ = writeln!(s, "=== {}", argv.join(" "));
            s.push_str(out);
        }
        Err(e) => {
            let _ = writeln!(s, "=== no journal\n{e}");
        }
    }
    if !unreadable.is_empty() {
        return Err(format!("cannot read {}\n{s}", unreadable.join(", ")));
    }
    let journal_empty = match &journal {
        Ok(out) => out.trim().is_empty() || out.trim() == "-- No entries --",
        Err(_) => true,
    };
    if journal_empty && args.log_files.is_empty() {
        return Err(format!(
            "no agent logs: nothing in the journal for tabby-node, and no --log-file given\n{s}"
        ));
    }
    Ok(s)
}

/// `node-status.txt` and `.json`: the agent's report, as `tabbyctl node status`.
async fn node_status(socket: &Path, timeout: Duration) -> Result<status::StatusReport, String> {
    match tokio::time::timeout(timeout, status::query(socket)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!(
            "the agent at {} did not answer: {e}",
            socket.display()
        )),
        Err(_) => Err(format!("the agent at {} timed out", socket.display())),
    }
}

/// `datastore.txt`: which store, and a list of nodes and pools with its time.
async fn store_check(conn: &Connection, timeout: Duration) -> Result<String, String> {
    let url = conn.url().map_err(|e| format!("datastore: {e:#}"))?;
    let mut s = format!("datastore: {url}\n");
    if let StoreUrl::Sqlite { path } = &url
        && !path.exists()
    {
        // Opening would create an empty store; a diagnostic must change nothing.
        return Err(format!(
            "{} does not exist (not opened: that would create an empty store)\n{s}",
            path.display()
        ));
    }
    let started = Instant::now();
    let work = async {
        let client = conn.client().await?;
        let _ = writeln!(s, "opened in {} ms", started.elapsed().as_millis());
        for kind in [Kind::Node, Kind::IPPool] {
            let t = Instant::now();
            let items = client.list(kind, None).await?;
            let names: Vec<&str> = items.iter().map(|r| r.metadata.name.as_str()).collect();
            let _ = writeln!(
                s,
                "list {}: {} in {} ms: {}",
                kind.plural(),
                items.len(),
                t.elapsed().as_millis(),
                names.join(" ")
            );
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(format!(
            "{e:#} (after {} ms)\n{s}",
            started.elapsed().as_millis()
        )),
        Err(_) => Err(format!("timed out after {} s\n{s}", timeout.as_secs())),
    }
}

/// Runs every collector.
async fn gather(conn: &Connection, args: &DiagsArgs) -> Gathered {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let mut g = Gathered::default();

    let (took, r) = timed(|| versions(timeout));
    g.push("versions.txt", took, r);
    let (took, r) = timed(|| agent_logs(args, timeout));
    g.push("agent-logs.txt", took, r);
    for (member, argv) in KERNEL {
        let (took, r) = timed(|| run_command(argv, timeout));
        g.push(member, took, r);
    }

    let t = Instant::now();
    let report = node_status(&args.socket, timeout).await;
    let took = t.elapsed();
    let (table, json) = match report {
        Ok(r) => (
            Ok(status::render_table(&r)),
            serde_json::to_string_pretty(&r)
                .map(|j| j + "\n")
                .map_err(|e| e.to_string()),
        ),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    g.push("node-status.txt", took, table);
    g.push("node-status.json", took, json);

    let t = Instant::now();
    let r = store_check(conn, timeout).await;
    g.push("datastore.txt", t.elapsed(), r);
    g
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "host".to_string())
}

/// `YYYYMMDDTHHMMSSZ` for the default archive name.
fn stamp(unix: u64) -> String {
    let rfc = tabby_client::time::rfc3339(unix);
    rfc.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

pub async fn run(conn: &Connection, args: &DiagsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stem = format!("tabby-diags-{}-{}", host_name(), stamp(now));
    let archive = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.tar.gz")));

    let g = gather(conn, args).await;
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = work.path().join(&stem);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    g.write_to(&dir)?;

    let archive_abs = if archive.is_absolute() {
        archive.clone()
    } else {
        std::env::current_dir()
            .context("the current directory")?
            .join(&archive)
    };
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive_abs)
        .arg("-C")
        .arg(work.path())
        .arg(&stem)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("tar could not write {}: {status}", archive.display());
    }
    eprint!("{}", g.summary());
    if g.failures() > 0 {
        eprintln!(
            "{} of {} collectors failed; their errors are in the archive",
            g.failures(),
            g.items.len()
        );
    }
    writeln!(out, "Diagnostics written to {}", archive.display())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_recorded_not_fatal() {
        let mut g = Gathered::default();
        g.push(
            "a.txt",
            Duration::ZERO,
            run_command(&["sh", "-c", "echo hi"], Duration::from_secs(5)),
        );
        g.push(
            "b.txt",
            Duration::ZERO,
            run_command(&["/nonexistent/tool", "x"], Duration::from_secs(5)),
        );
        g.push(
            "c.txt",
            Duration::ZERO,
            run_command(
                &["sh", "-c", "echo oops >&2; exit 3"],
                Duration::from_secs(5),
            ),
        );
        g.push(
            "d.txt",
            Duration::ZERO,
            run_command(&["sleep", "5"], Duration::from_millis(100)),
        );
        assert_eq!(g.failures(), 3);
        let s = g.summary();
        assert!(s.contains("a.txt                  ok"), "{s}");
        assert!(s.contains("b.txt                  FAILED"), "{s}");
        assert!(s.contains("cannot run /nonexistent/tool"), "{s}");
        assert!(s.contains("exit status: 3"), "{s}");
        assert!(s.contains("timed out"), "{s}");
        let dir = tempfile::tempdir().unwrap();
        g.write_to(dir.path()).unwrap();
        let c = std::fs::read_to_string(dir.path().join("c.txt")).unwrap();
        assert!(
            c.starts_with("# collector failed") && c.contains("oops"),
            "{c}"
        );
    }

    #[test]
    fn stamp_is_compact_utc() {
        assert_eq!(stamp(0), "19700101T000000Z");
    }
}
