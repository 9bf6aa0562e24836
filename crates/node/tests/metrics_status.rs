//! The metrics/health HTTP server and the control socket over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tabby_node::metrics::{Health, Metrics, serve};
use tabby_node::status::{PeerRow, ReportFuture, StatusError, StatusReport, query, serve_control};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

struct Reply {
    code: u16,
    head: String,
    body: String,
}

/// Sends `raw` and reads the answer until the server closes the connection.
async fn send(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("server closes the connection")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
    .await
}

async fn start_http() -> (SocketAddr, Arc<Metrics>, Arc<Health>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    tokio::spawn(serve(listener, metrics.clone(), health.clone()));
    (addr, metrics, health)
}

#[tokio::test]
async fn metrics_endpoint_reports_what_was_set() {
    let (addr, metrics, _) = start_http().await;
    metrics.set_bgp_sessions(2, 5);
    metrics.set_routes_installed(42);
    metrics.observe_reconcile(0.02);
    metrics.observe_reconcile(3.0);
    metrics.inc_store_errors();
    metrics.inc_reconcile_errors();
    metrics.set_store_connected(true);

    let r = get(addr, "/metrics").await;
    assert_eq!(r.code, 200, "{}", r.head);
    assert!(
        r.head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        r.head
    );
    assert!(r.head.contains("Connection: close"), "{}", r.head);
    assert!(
        r.head
            .contains(&format!("Content-Length: {}", r.body.len())),
        "{}",
        r.head
    );
    for line in [
        "tabby_up 1",
        "tabby_store_up 1",
        "tabby_bgp_sessions_established 2",
        "tabby_bgp_sessions 5",
        "tabby_routes_installed 42",
        "tabby_store_errors_total 1",
        "tabby_reconcile_errors_total 1",
        "tabby_reconcile_duration_seconds_bucket{le=\"0.025\"} 1",
        "tabby_reconcile_duration_seconds_bucket{le=\"5\"} 2",
        "tabby_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
        "tabby_reconcile_duration_seconds_sum 3.02",
        "tabby_reconcile_duration_seconds_count 2",
        "# TYPE tabby_reconcile_duration_seconds histogram",
        "# TYPE tabby_store_errors_total counter",
    ] {
        assert!(r.body.lines().any(|l| l == line), "{line}\n{}", r.body);
    }
    // Every sample belongs to a declared family.
    for l in r.body.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            r.body.contains(&format!("# TYPE {family} ")),
            "{l}\n{}",
            r.body
        );
    }
}

#[tokio::test]
async fn health_endpoints_follow_the_flags() {
    let (addr, _, health) = start_http().await;
    assert_eq!(get(addr, "/readiness").await.code, 503);
    let live = get(addr, "/liveness").await;
    assert_eq!((live.code, live.body.as_str()), (200, "ok\n"));
    health.set_ready(true);
    let ready = get(addr, "/readiness").await;
    assert_eq!((ready.code, ready.body.as_str()), (200, "ok\n"));
    health.set_live(false);
    assert_eq!(get(addr, "/liveness").await.code, 503);
    assert_eq!(get(addr, "/").await.code, 404);
    assert_eq!(get(addr, "/metricsx").await.code, 404);
    let post = send(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(post.code, 405);
}

#[tokio::test]
async fn garbage_does_not_kill_the_server() {
    let (addr, _, _) = start_http().await;
    let junk: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for raw in [
        &b"\x00\xff\xfe\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/9\r\n\r\n",
        b"\r\n\r\n",
        &junk,
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may close before reading it all; that is fine.
        let _ = s.write_all(raw).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        if !buf.is_empty() {
            assert!(buf.starts_with(b"HTTP/1.1 400 "), "{raw:?}");
        }
    }
    // Connect and hang up without a byte; half a request then hang up.
    drop(TcpStream::connect(addr).await.unwrap());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /met").await.unwrap();
    drop(s);
    assert_eq!(get(addr, "/metrics").await.code, 200);
}

fn sample_report() -> StatusReport {
    StatusReport {
        problems: Vec::new(),
        node: "node-a".into(),
        running: true,
        peers: vec![
            PeerRow {
                address: "198.18.0.2".parse().unwrap(),
                peer_type: "node-to-node mesh".into(),
                state: "Established".into(),
                since: 1_700_000_000,
                info: String::new(),
                bfd: None,
            },
            PeerRow {
                address: "2001:db8::2".parse().unwrap(),
                peer_type: "global".into(),
                state: "Active".into(),
                since: 1_700_000_100,
                info: "connect: Connection refused (os error 111)".into(),
                bfd: None,
            },
        ],
        routes_installed: 9,
        last_reconcile_unix: Some(1_700_000_200),
    }
}

#[tokio::test]
async fn control_socket_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/tabby/node.ctl");
    // A stale socket from a crashed agent: a socket file nobody listens on.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let report = sample_report();
    let r = report.clone();
    let server_path = path.clone();
    let server = tokio::spawn(async move {
        serve_control(&server_path, move || -> ReportFuture {
            let r = r.clone();
            Box::pin(async move { r })
        })
        .await
    });
    let got = tabby_node_wait(&path).await;
    assert_eq!(got, report);
    // Several queries, one connection each.
    assert_eq!(query(&path).await.unwrap(), report);

    // A second agent on the same socket is refused, not allowed to steal it.
    let second = serve_control(&path, || -> ReportFuture {
        Box::pin(async { sample_report() })
    });
    let err = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("refused at once")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert_eq!(query(&path).await.unwrap(), report);

    // Unknown commands get a JSON error line.
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(b"reboot\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("unknown command"),
        "{answer}"
    );

    // Stopping the agent removes its socket.
    server.abort();
    assert!(server.await.unwrap_err().is_cancelled());
    assert!(!path.exists());
}

/// Queries until the freshly spawned server answers.
async fn tabby_node_wait(path: &std::path::Path) -> StatusReport {
    for _ in 0..100 {
        match query(path).await {
            Ok(r) => return r,
            Err(StatusError::Unreachable { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("control socket {} never answered", path.display());
}

#[tokio::test]
async fn query_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.ctl");
    let err = query(&path).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach tabby-node at {}: No such file or directory; is tabby-node running?",
            path.display()
        )
    );
    // A socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let err = query(&path).await.unwrap_err().to_string();
    assert!(
        err.contains(": Connection refused; is tabby-node running?"),
        "{err}"
    );
}
