//! `tabbyctl node status`: the agent answers on a Unix control socket with a
//! [`StatusReport`] (one JSON line per `status\n` request), and [`render_table`]
//! prints it in `calicoctl node status`'s layout (BIRD's state words, go-pretty boxes),
//! with a BFD section after the BGP tables when some peer is protected by BFD.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Where the agent listens and `tabbyctl node status` connects by default.
pub const DEFAULT_CONTROL_SOCKET: &str = "/var/run/tabby/node.ctl";

/// What the agent reports about itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatusReport {
    /// The node name.
    pub node: String,
    /// Whether the agent is running (false while it shuts down).
    pub running: bool,
    /// BGP peers, IPv4 and IPv6.
    pub peers: Vec<PeerRow>,
    /// Routes programmed into the kernel.
    pub routes_installed: u64,
    /// Unix time (seconds) of the last successful reconcile.
    pub last_reconcile_unix: Option<u64>,
    /// What the agent skipped or could not do, each naming the resource or object
    /// (a record it cannot read, a policy that does not compile, a refused pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// One BGP peer as reported.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PeerRow {
    /// Peer address.
    pub address: IpAddr,
    /// "node-to-node mesh", "node specific", "global".
    pub peer_type: String,
    /// BGP FSM state name (`Idle` .. `Established`).
    pub state: String,
    /// Unix time (seconds) of the last state change.
    pub since: u64,
    /// Last error or extra information from the speaker.
    pub info: String,
    /// The BFD session protecting this peer, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdRow>,
}

/// The BFD side of one peer as reported.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BfdRow {
    /// `Up`, `Down`, `Init` or `AdminDown`.
    pub state: String,
    /// Configured intervals: `300ms/300ms x3` (min TX / min RX x multiplier).
    pub intervals: String,
    /// Times BFD failed while protecting this peer.
    pub downs: u64,
    /// Why BFD cannot run for this peer, if it cannot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl PeerRow {
    /// From the speaker's peer status.
    pub fn from_status(s: &tabby_bgp::PeerStatus) -> PeerRow {
        PeerRow {
            address: s.address,
            peer_type: s.type_label.clone(),
            state: s.state.clone(),
            since: s.since,
            info: s.info.clone(),
            bfd: s.bfd.as_ref().map(|b| BfdRow {
                state: b.state.clone(),
                intervals: b.intervals(),
                downs: b.downs,
                error: b.error.clone(),
            }),
        }
    }

    /// The STATE column: BIRD's protocol state (`up` once Established, `start`
    /// while connecting, `down` for anything else such as a disabled peer).
    pub fn bird_state(&self) -> &'static str {
        match self.state.as_str() {
            "Established" => "up",
            "Idle" | "Connect" | "Active" | "OpenSent" | "OpenConfirm" => "start",
            _ => "down",
        }
    }

    /// The INFO column as BIRD words it: `Established`, or the FSM state followed
    /// by the last error (`Active Socket: Connection refused`).
    pub fn bird_info(&self) -> String {
        if self.state == "Established" {
            return "Established".to_string();
        }
        let reason = bird_reason(&self.info);
        if reason.is_empty() {
            self.state.clone()
        } else {
            format!("{} {reason}", self.state)
        }
    }
}

/// The speaker's last-error text in BIRD's words: `Socket: ...` for connection
/// errors, `Received: ...` / `Error: ...` for NOTIFICATIONs; OS error numbers dropped.
fn bird_reason(info: &str) -> String {
    let info = strip_os_error(info.trim());
    if let Some(rest) = info.strip_prefix("connect: ") {
        format!("Socket: {rest}")
    } else if info == "connection closed by peer" {
        "Socket: Connection closed".to_string()
    } else if let Some(rest) = info.strip_prefix("received NOTIFICATION ") {
        format!("Received: {rest}")
    } else if let Some(rest) = info.strip_prefix("sent NOTIFICATION: ") {
        format!("Error: {rest}")
    } else {
        info.to_string()
    }
}

/// `No such file or directory (os error 2)` -> `No such file or directory`.
fn strip_os_error(s: &str) -> &str {
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => &s[..i],
        _ => s,
    }
}

/// The report as `calicoctl node status` prints it, with SINCE relative to now.
pub fn render_table(r: &StatusReport) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    render_table_at(r, now)
}

/// [`render_table`] with "now" given (Unix seconds), for reproducible output.
pub fn render_table_at(r: &StatusReport, now_unix: u64) -> String {
    let mut out = String::new();
    out.push_str(if r.running {
        "Tabby process is running.\n"
    } else {
        "Tabby process is not running.\n"
    });
    for (label, v4) in [("4", true), ("6", false)] {
        out.push_str(&format!("\nIPv{label} BGP status\n"));
        let rows: Vec<Vec<String>> = r
            .peers
            .iter()
            .filter(|p| p.address.is_ipv4() == v4)
            .map(|p| {
                vec![
                    p.address.to_string(),
                    p.peer_type.clone(),
                    p.bird_state().to_string(),
                    format_since(p.since, now_unix),
                    p.bird_info(),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str(&format!("No IPv{label} peers found.\n"));
        } else {
            out.push_str(&box_table(
                &["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
                &rows,
            ));
        }
    }
    let bfd: Vec<Vec<String>> = r
        .peers
        .iter()
        .filter_map(|p| {
            p.bfd.as_ref().map(|b| {
                let state = if b.error.is_empty() {
                    b.state.clone()
                } else {
                    format!("{} ({})", b.state, b.error)
                };
                vec![
                    p.address.to_string(),
                    state,
                    b.intervals.clone(),
                    b.downs.to_string(),
                ]
            })
        })
        .collect();
    if !bfd.is_empty() {
        out.push_str("\nBFD status\n");
        out.push_str(&box_table(
            &["PEER ADDRESS", "BFD STATE", "INTERVALS", "DOWNS"],
            &bfd,
        ));
    }
    if !r.problems.is_empty() {
        out.push_str("\nProblems\n");
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

/// `HH:MM:SS` (UTC) when `since` is on the same UTC day as `now`, else `YYYY-MM-DD`,
/// as BIRD prints protocol times.
pub fn format_since(since: u64, now_unix: u64) -> String {
    // `YYYY-MM-DDTHH:MM:SSZ`: the date or the time of day.
    let stamp = tabby_client::time::rfc3339(since);
    if since / 86_400 == now_unix / 86_400 {
        stamp[11..19].to_string()
    } else {
        stamp[..10].to_string()
    }
}

/// A go-pretty default-style box: `+---+` rules, one space of padding, centred
/// headers (extra space on the right), left-aligned data.
fn box_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = rule.clone();
    for (h, w) in header.iter().zip(&widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            "| {}{h}{} ",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    out.push_str("|\n");
    out.push_str(&rule);
    for row in rows {
        for (cell, w) in row.iter().zip(&widths) {
            let pad = w - cell.chars().count();
            out.push_str(&format!("| {cell}{} ", " ".repeat(pad)));
        }
        out.push_str("|\n");
    }
    out.push_str(&rule);
    out
}

/// Errors of querying the agent.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing listens on the socket.
    #[error("cannot reach tabby-node at {path}: {reason}; is tabby-node running?")]
    Unreachable {
        /// The control socket.
        path: PathBuf,
        /// Why the connection failed.
        reason: String,
    },
    /// The exchange failed after connecting.
    #[error("talking to tabby-node at {path}: {reason}")]
    Io {
        /// The control socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The agent answered something we cannot read.
    #[error("tabby-node at {path} sent an unreadable answer: {reason}")]
    Protocol {
        /// The control socket.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("tabby-node at {path}: {message}")]
    Agent {
        /// The control socket.
        path: PathBuf,
        /// The agent's message.
        message: String,
    },
}

/// The future a report callback returns.
pub type ReportFuture = BoxFuture<'static, StatusReport>;

/// Longest request line the control socket reads.
const MAX_LINE: u64 = 1024;
/// How long either side waits for the other.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the control socket at `path` until the future is dropped (which removes
/// the socket file): removes a stale socket file first (but refuses if another
/// agent still answers on it), creates the directory, and answers each `status\n`
/// with one JSON line from `report`.
pub async fn serve_control(
    path: &Path,
    report: impl Fn() -> ReportFuture + Send + Sync + 'static,
) -> std::io::Result<()> {
    let listener = bind_control(path).await?;
    let _socket_file = SocketFile(path.to_path_buf());
    let report = std::sync::Arc::new(report);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let report = report.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(CONTROL_TIMEOUT, answer(stream, &*report)).await;
            match answer {
                Ok(Err(e)) => tracing::debug!(error = %e, "control socket: request failed"),
                Err(_) => tracing::debug!("control socket: client timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Removes the socket file when the server future is dropped (agent shutdown).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn bind_control(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another tabby-node already answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    // The report names peers and addresses: root (and the owning group) only.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

async fn answer(
    stream: UnixStream,
    report: &(dyn Fn() -> ReportFuture + Send + Sync),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE))
        .read_line(&mut line)
        .await?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&report().await).map_err(std::io::Error::other)?,
        other => serde_json::json!({
            "error": format!("unknown command {other:?}; the only command is \"status\"")
        })
        .to_string(),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    write.shutdown().await
}

/// Asks the agent listening at `path` for its status.
pub async fn query(path: &Path) -> Result<StatusReport, StatusError> {
    let io_err = |e: std::io::Error| StatusError::Io {
        path: path.to_path_buf(),
        reason: strip_os_error(&e.to_string()).to_string(),
    };
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| StatusError::Unreachable {
            path: path.to_path_buf(),
            reason: strip_os_error(&e.to_string()).to_string(),
        })?;
    let exchange = async {
        stream.write_all(b"status\n").await?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(CONTROL_TIMEOUT, exchange)
        .await
        .map_err(|_| StatusError::Io {
            path: path.to_path_buf(),
            reason: format!("no answer within {} s", CONTROL_TIMEOUT.as_secs()),
        })?
        .map_err(io_err)?;
    if line.trim().is_empty() {
        return Err(StatusError::Protocol {
            path: path.to_path_buf(),
            reason: "empty answer".into(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| StatusError::Protocol {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if let Some(message) = value.get("error").and_then(|m| m.as_str()) {
        return Err(StatusError::Agent {
            path: path.to_path_buf(),
            message: message.to_string(),
        });
    }
    serde_json::from_value(value).map_err(|e| StatusError::Protocol {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2015-12-07 23:30:04 UTC, the time in the calicoctl docs sample.
    const SAMPLE_SINCE: u64 = 1_449_531_004;

    fn row(address: &str, state: &str, info: &str) -> PeerRow {
        PeerRow {
            address: address.parse().unwrap(),
            peer_type: "node-to-node mesh".into(),
            state: state.into(),
            since: SAMPLE_SINCE,
            info: info.into(),
            bfd: None,
        }
    }

    fn report(peers: Vec<PeerRow>) -> StatusReport {
        StatusReport {
            problems: Vec::new(),
            node: "node1".into(),
            running: true,
            peers,
            routes_installed: 3,
            last_reconcile_unix: Some(SAMPLE_SINCE),
        }
    }

    #[test]
    fn golden_calicoctl_docs_sample() {
        // calico.md section 5, with "Calico" -> "Tabby".
        let expected = "\
Tabby process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
+--------------+-------------------+-------+----------+-------------+
| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
No IPv6 peers found.
";
        let r = report(vec![row("172.17.8.102", "Established", "")]);
        assert_eq!(render_table_at(&r, SAMPLE_SINCE + 60), expected);
    }

    #[test]
    fn bfd_section_after_the_bgp_tables() {
        let mut up = row("198.18.0.2", "Established", "");
        up.bfd = Some(BfdRow {
            state: "Up".into(),
            intervals: "300ms/300ms x3".into(),
            downs: 0,
            error: String::new(),
        });
        let mut down = row(
            "198.18.0.3",
            "Idle",
            "BFD session down: control detection time expired",
        );
        down.bfd = Some(BfdRow {
            state: "Down".into(),
            intervals: "100ms/100ms x5".into(),
            downs: 2,
            error: String::new(),
        });
        let plain = row("198.18.0.4", "Established", "");
        let r = report(vec![up, down, plain]);
        let out = render_table_at(&r, SAMPLE_SINCE + 60);
        let expected = "\
BFD status
+--------------+-----------+----------------+-------+
| PEER ADDRESS | BFD STATE |   INTERVALS    | DOWNS |
+--------------+-----------+----------------+-------+
| 198.18.0.2   | Up        | 300ms/300ms x3 | 0     |
| 198.18.0.3   | Down      | 100ms/100ms x5 | 2     |
+--------------+-----------+----------------+-------+
";
        assert!(out.ends_with(expected), "{out}");
        assert!(
            out.contains("| 198.18.0.3   | node-to-node mesh | start | 23:30:04 | Idle BFD session down: control detection time expired |"),
            "{out}"
        );
        // Without BFD anywhere, no section (calicoctl's layout as it is).
        let r = report(vec![row("198.18.0.2", "Established", "")]);
        assert!(!render_table_at(&r, SAMPLE_SINCE).contains("BFD"));
        // The report carries it through JSON.
        let r = report(vec![row("198.18.0.2", "Established", "")]);
        let j = serde_json::to_string(&r).unwrap();
        assert!(!j.contains("bfd"), "{j}");
    }

    #[test]
    fn failing_and_ipv6_peers() {
        let mut v6 = row(
            "2001:db8::2",
            "Idle",
            "received NOTIFICATION 6/2 (administrative shutdown)",
        );
        v6.peer_type = "global".into();
        let r = report(vec![
            row(
                "198.18.0.2",
                "Active",
                "connect: Connection refused (os error 111)",
            ),
            row("198.18.0.3", "Established", "ignored"),
            v6,
        ]);
        let expected = "\
Tabby process is running.

IPv4 BGP status
+--------------+-------------------+-------+------------+-----------------------------------+
| PEER ADDRESS |     PEER TYPE     | STATE |   SINCE    |               INFO                |
+--------------+-------------------+-------+------------+-----------------------------------+
| 198.18.0.2   | node-to-node mesh | start | 2015-12-07 | Active Socket: Connection refused |
| 198.18.0.3   | node-to-node mesh | up    | 2015-12-07 | Established                       |
+--------------+-------------------+-------+------------+-----------------------------------+

IPv6 BGP status
+--------------+-----------+-------+------------+----------------------------------------------+
| PEER ADDRESS | PEER TYPE | STATE |   SINCE    |                     INFO                     |
+--------------+-----------+-------+------------+----------------------------------------------+
| 2001:db8::2  | global    | start | 2015-12-07 | Idle Received: 6/2 (administrative shutdown) |
+--------------+-----------+-------+------------+----------------------------------------------+
";
        assert_eq!(render_table_at(&r, SAMPLE_SINCE + 86_400), expected);
    }

    #[test]
    fn no_peers_at_all() {
        let mut r = report(vec![]);
        r.running = false;
        assert_eq!(
            render_table_at(&r, 0),
            "Tabby process is not running.\n\nIPv4 BGP status\nNo IPv4 peers found.\n\n\
             IPv6 BGP status\nNo IPv6 peers found.\n"
        );
    }

    #[test]
    fn since_is_time_today_else_date() {
        assert_eq!(format_since(SAMPLE_SINCE, SAMPLE_SINCE), "23:30:04");
        assert_eq!(
            format_since(SAMPLE_SINCE, SAMPLE_SINCE + 3600),
            "2015-12-07"
        );
        assert_eq!(format_since(0, 86_399), "00:00:00");
        assert_eq!(format_since(951_782_400, 2_000_000_000), "2000-02-29");
        assert_eq!(format_since(0, 86_400), "1970-01-01");
    }

    #[test]
    fn bird_words() {
        assert_eq!(row("198.18.0.2", "Connect", "").bird_info(), "Connect");
        assert_eq!(
            row("198.18.0.2", "Active", "connection closed by peer").bird_info(),
            "Active Socket: Connection closed"
        );
        assert_eq!(
            row(
                "198.18.0.2",
                "Idle",
                "sent NOTIFICATION: hold timer expired"
            )
            .bird_info(),
            "Idle Error: hold timer expired"
        );
        assert_eq!(row("198.18.0.2", "Disabled", "").bird_state(), "down");
        let s = tabby_bgp::PeerStatus {
            address: "198.18.0.9".parse().unwrap(),
            type_label: "node specific".into(),
            state: "OpenSent".into(),
            since: 5,
            info: "x".into(),
            bfd: None,
        };
        let r = PeerRow::from_status(&s);
        assert_eq!(
            (
                r.peer_type.as_str(),
                r.state.as_str(),
                r.since,
                r.info.as_str()
            ),
            ("node specific", "OpenSent", 5, "x")
        );
        assert_eq!(r.bird_state(), "start");
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        assert_eq!(
            strip_os_error("No such file or directory (os error 2)"),
            "No such file or directory"
        );
        assert_eq!(strip_os_error("plain"), "plain");
    }
}
