//! `tabbyctl node status` against an in-process control socket with a fixed report,
//! and without any agent.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tabby_node::status::{PeerRow, ReportFuture, StatusReport, query, serve_control};

fn tabbyctl(args: &[&str], socket: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tabbyctl"));
    cmd.args(args)
        .env_remove("TABBY_NODE_SOCKET")
        .env("TABBY_STORE", "sqlite:///nonexistent/store.db")
        .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml");
    if let Some(s) = socket {
        cmd.env("TABBY_NODE_SOCKET", s);
    }
    cmd.output().unwrap()
}

fn report(since: u64) -> StatusReport {
    StatusReport {
        problems: Vec::new(),
        node: "node-a".into(),
        running: true,
        peers: vec![
            PeerRow {
                address: "198.18.0.2".parse().unwrap(),
                peer_type: "node-to-node mesh".into(),
                state: "Established".into(),
                since,
                info: String::new(),
                bfd: None,
            },
            PeerRow {
                address: "198.18.0.3".parse().unwrap(),
                peer_type: "global".into(),
                state: "Active".into(),
                since,
                info: "connect: Connection refused (os error 111)".into(),
                bfd: None,
            },
        ],
        routes_installed: 4,
        last_reconcile_unix: Some(since),
    }
}

/// Starts a control socket answering with `r` on a runtime of its own thread.
fn start_agent(path: &Path, r: StatusReport) -> tokio::runtime::Runtime {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let p = path.to_path_buf();
    rt.spawn(async move {
        serve_control(&p, move || -> ReportFuture {
            let r = r.clone();
            Box::pin(async move { r })
        })
        .await
    });
    let p = path.to_path_buf();
    rt.block_on(async move {
        for _ in 0..100 {
            if query(&p).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("control socket never answered");
    });
    rt
}

#[test]
fn prints_calicoctl_layout_from_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.ctl");
    // 12:00:00 UTC today, shown as a time of day.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let noon = now / 86_400 * 86_400 + 12 * 3600;
    let _agent = start_agent(&path, report(noon));

    let out = tabbyctl(&["node", "status"], Some(&path));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = "\
Tabby process is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-----------------------------------+
| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |               INFO                |
+--------------+-------------------+-------+----------+-----------------------------------+
| 198.18.0.2   | node-to-node mesh | up    | 12:00:00 | Established                       |
| 198.18.0.3   | global            | start | 12:00:00 | Active Socket: Connection refused |
+--------------+-------------------+-------+----------+-----------------------------------+

IPv6 BGP status
No IPv6 peers found.
";
    // Right around midnight UTC "today" may differ between here and the binary.
    if now / 86_400
        == SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400
    {
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    }

    // --socket overrides the environment; -o json is the report itself.
    let path_s = path.to_str().unwrap();
    let out = tabbyctl(
        &["node", "status", "--socket", path_s, "-o", "json"],
        Some(Path::new("/nonexistent/node.ctl")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: StatusReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, report(noon));
}

#[test]
fn without_an_agent_says_it_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.ctl");
    let out = tabbyctl(&["node", "status"], Some(&path));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("Tabby process is not running.\n"), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach tabby-node at {}: No such file or directory; is tabby-node running?",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn bad_output_format_is_a_usage_error() {
    let out = tabbyctl(&["node", "status", "-o", "yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid value 'yaml'"), "{err}");
}
