//! Prometheus metrics and health of the agent: lock-free counters the event loop
//! updates ([`Metrics`], [`Health`]) and a minimal HTTP/1.1 server ([`serve`]) for
//! `GET /metrics` (text exposition format 0.0.4), `/liveness` and `/readiness`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds (seconds) of the reconcile duration histogram buckets.
pub const RECONCILE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The agent's metrics; every method takes `&self` and is safe from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    bgp_established: AtomicU64,
    bgp_total: AtomicU64,
    routes_installed: AtomicU64,
    store_errors: AtomicU64,
    reconcile_errors: AtomicU64,
    store_up: AtomicBool,
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    reconcile_buckets: [AtomicU64; RECONCILE_BUCKETS.len() + 1],
    /// f64 bits of the sum of observed durations.
    reconcile_sum: AtomicU64,
    /// Workload interfaces carrying bandwidth limits (issue 8).
    bandwidth_limited: AtomicU64,
    /// Bandwidth shaping changes made (set, replaced, removed).
    bandwidth_changes: AtomicU64,
    /// Store watch events applied to the local view.
    store_events: AtomicU64,
    /// Resources reported as problems (unreadable, not compiling, refused).
    resource_problems: AtomicU64,
    /// Times the BGP speaker was found dead and restarted.
    bgp_restarts: AtomicU64,
    /// BFD sessions protecting BGP peers: Up or not, by peer.
    bfd_sessions: Mutex<BTreeMap<IpAddr, bool>>,
    /// BFD sessions seen failing (leaving Up other than by AdminDown).
    bfd_downs: AtomicU64,
}

impl Metrics {
    /// Empty metrics (all zero, store down).
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// BGP sessions: how many are Established out of how many configured.
    pub fn set_bgp_sessions(&self, established: u64, total: u64) {
        self.bgp_established.store(established, Ordering::Relaxed);
        self.bgp_total.store(total, Ordering::Relaxed);
    }

    /// Routes the agent has programmed into the kernel.
    pub fn set_routes_installed(&self, n: u64) {
        self.routes_installed.store(n, Ordering::Relaxed);
    }

    /// Records the duration of one reconcile pass; negative and NaN values are
    /// counted as 0.
    pub fn observe_reconcile(&self, secs: f64) {
        let secs = if secs.is_nan() || secs < 0.0 {
            0.0
        } else {
            secs
        };
        let i = RECONCILE_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(RECONCILE_BUCKETS.len());
        self.reconcile_buckets[i].fetch_add(1, Ordering::Relaxed);
        // fetch_update only fails when the closure returns None, which it never does.
        let _ = self
            .reconcile_sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + secs).to_bits())
            });
    }

    /// Counts a failed datastore operation.
    pub fn inc_store_errors(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed reconcile pass.
    pub fn inc_reconcile_errors(&self) {
        self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the datastore is reachable.
    pub fn set_store_connected(&self, up: bool) {
        self.store_up.store(up, Ordering::Relaxed);
    }

    /// Bandwidth limits: interfaces limited now, and changes made in the last pass.
    pub fn set_bandwidth(&self, limited: u64, changes: u64) {
        self.bandwidth_limited.store(limited, Ordering::Relaxed);
        self.bandwidth_changes.fetch_add(changes, Ordering::Relaxed);
    }

    /// Counts store events applied to the view.
    pub fn add_store_events(&self, n: u64) {
        self.store_events.fetch_add(n, Ordering::Relaxed);
    }

    /// Resources currently reported as problems.
    pub fn set_resource_problems(&self, n: u64) {
        self.resource_problems.store(n, Ordering::Relaxed);
    }

    /// Counts a restart of a dead BGP speaker.
    pub fn inc_bgp_restarts(&self) {
        self.bgp_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The BFD sessions protecting BGP peers, each Up or not (replaces the
    /// previous set).
    pub fn set_bfd_sessions(&self, sessions: impl IntoIterator<Item = (IpAddr, bool)>) {
        let mut m = self.bfd_sessions.lock().unwrap_or_else(|p| p.into_inner());
        *m = sessions.into_iter().collect();
    }

    /// Counts BFD sessions seen failing.
    pub fn add_bfd_downs(&self, n: u64) {
        self.bfd_downs.fetch_add(n, Ordering::Relaxed);
    }

    /// Established BGP sessions (as last set).
    pub fn bgp_sessions_established(&self) -> u64 {
        self.bgp_established.load(Ordering::Relaxed)
    }

    /// Routes installed (as last set).
    pub fn routes_installed(&self) -> u64 {
        self.routes_installed.load(Ordering::Relaxed)
    }

    /// All metrics in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut s,
            "tabby_up",
            "Whether the agent is running (always 1).",
            "gauge",
            1,
        );
        gauge(
            &mut s,
            "tabby_store_up",
            "Whether the datastore is reachable (1) or not (0).",
            "gauge",
            u64::from(self.store_up.load(Ordering::Relaxed)),
        );
        gauge(
            &mut s,
            "tabby_bgp_sessions_established",
            "BGP sessions in state Established.",
            "gauge",
            load(&self.bgp_established),
        );
        gauge(
            &mut s,
            "tabby_bgp_sessions",
            "BGP sessions configured.",
            "gauge",
            load(&self.bgp_total),
        );
        gauge(
            &mut s,
            "tabby_routes_installed",
            "Routes the agent has programmed into the kernel.",
            "gauge",
            load(&self.routes_installed),
        );
        gauge(
            &mut s,
            "tabby_store_errors_total",
            "Failed datastore operations.",
            "counter",
            load(&self.store_errors),
        );
        gauge(
            &mut s,
            "tabby_reconcile_errors_total",
            "Failed reconcile passes.",
            "counter",
            load(&self.reconcile_errors),
        );
        gauge(
            &mut s,
            "tabby_bandwidth_limited_interfaces",
            "Workload interfaces carrying bandwidth limits.",
            "gauge",
            load(&self.bandwidth_limited),
        );
        gauge(
            &mut s,
            "tabby_bandwidth_changes_total",
            "Bandwidth shaping changes made (set, replaced or removed).",
            "counter",
            load(&self.bandwidth_changes),
        );

        gauge(
            &mut s,
            "tabby_store_events_total",
            "Datastore watch events applied to the agent's view.",
            "counter",
            load(&self.store_events),
        );
        gauge(
            &mut s,
            "tabby_resource_problems",
            "Stored resources skipped or kept at their last good version (unreadable, not compiling).",
            "gauge",
            load(&self.resource_problems),
        );
        gauge(
            &mut s,
            "tabby_bgp_speaker_restarts_total",
            "Times the BGP speaker was found dead and started again.",
            "counter",
            load(&self.bgp_restarts),
        );

        let name = "tabby_bfd_session_up";
        let _ = writeln!(
            s,
            "# HELP {name} Whether the BFD session protecting a BGP peer is Up (1) or not (0).\n# TYPE {name} gauge"
        );
        for (peer, up) in self
            .bfd_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(s, "{name}{{peer=\"{peer}\"}} {}", u8::from(*up));
        }
        gauge(
            &mut s,
            "tabby_bfd_down_events_total",
            "BFD sessions protecting BGP peers seen failing (each takes its BGP session down).",
            "counter",
            load(&self.bfd_downs),
        );

        let name = "tabby_reconcile_duration_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Duration of reconcile passes.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bucket) in self.reconcile_buckets.iter().enumerate() {
            cumulative += load(bucket);
            let le = RECONCILE_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = f64::from_bits(load(&self.reconcile_sum));
        let _ = writeln!(s, "{name}_sum {sum}");
        let _ = writeln!(s, "{name}_count {cumulative}");
        s
    }
}

/// Liveness and readiness: a live flag (true from the start), a ready flag (false
/// until the first successful reconcile is reported) and when that last happened.
/// With a deadline set, liveness also fails once the event loop has not turned
/// within it (a loop stuck in a driver call is not alive, whatever the flag says).
#[derive(Debug)]
pub struct Health {
    live: AtomicBool,
    ready: AtomicBool,
    last_reconcile: Mutex<Option<(Instant, SystemTime)>>,
    last_turn: Mutex<Option<Instant>>,
    deadline: Mutex<Option<Duration>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            live: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            last_reconcile: Mutex::new(None),
            last_turn: Mutex::new(None),
            deadline: Mutex::new(None),
        }
    }
}

impl Health {
    /// Live, not ready, never reconciled.
    pub fn new() -> Health {
        Health::default()
    }

    /// Sets readiness (`/readiness` answers 200 only when ready).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the agent is ready.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets liveness (`/liveness` answers 503 once this is false).
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// Whether the agent is live: the flag, and the loop turned within the deadline.
    pub fn live(&self) -> bool {
        if !self.live.load(Ordering::Relaxed) {
            return false;
        }
        let deadline = *self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        let last = *self.last_turn.lock().unwrap_or_else(|p| p.into_inner());
        match (deadline, last) {
            (Some(d), Some(t)) => t.elapsed() <= d,
            _ => true,
        }
    }

    /// Liveness fails once the loop has not turned for `deadline`.
    pub fn set_deadline(&self, deadline: Duration) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
    }

    /// Records that the event loop turned now.
    pub fn turned(&self) {
        *self.last_turn.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Records a successful reconcile now.
    pub fn record_reconcile(&self) {
        let mut last = self
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *last = Some((Instant::now(), SystemTime::now()));
    }

    fn last(&self) -> Option<(Instant, SystemTime)> {
        *self
            .last_reconcile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Time since the last successful reconcile.
    pub fn since_last_reconcile(&self) -> Option<Duration> {
        self.last().map(|(at, _)| at.elapsed())
    }

    /// Unix time (seconds) of the last successful reconcile.
    pub fn last_reconcile_unix(&self) -> Option<u64> {
        self.last()
            .map(|(_, t)| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }
}

/// Longest request head read, and how long a client may take to send it.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves metrics and health on `listener` until the task is dropped: one request
/// per connection, answered with `Connection: close`. Only accept errors that are
/// not about a single connection end the server.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &metrics, &health).await {
                tracing::debug!(%peer, error = %e, "metrics: connection failed");
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO)
    )
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let response = respond(&head, metrics, health);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Reads until the end of the request head, the size limit or EOF.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(buf)
}

/// The whole HTTP response for a request head.
fn respond(head: &[u8], metrics: &Metrics, health: &Health) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return response(400, "text/plain; charset=utf-8", "bad request\n", false);
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return response(400, "text/plain; charset=utf-8", "bad request\n", false);
    }
    let head_only = method == "HEAD";
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let known = matches!(path, "/metrics" | "/liveness" | "/readiness");
    if !known {
        return response(404, "text/plain; charset=utf-8", "not found\n", head_only);
    }
    if method != "GET" && !head_only {
        return response(
            405,
            "text/plain; charset=utf-8",
            "method not allowed\n",
            false,
        );
    }
    match path {
        "/metrics" => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
            head_only,
        ),
        "/liveness" => health_response(health.live(), head_only),
        _ => health_response(health.ready(), head_only),
    }
}

fn health_response(ok: bool, head_only: bool) -> Vec<u8> {
    if ok {
        response(200, "text/plain; charset=utf-8", "ok\n", head_only)
    } else {
        response(503, "text/plain; charset=utf-8", "not ready\n", head_only)
    }
}

fn response(code: u16, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_help_and_type() {
        let m = Metrics::new();
        m.set_bgp_sessions(2, 3);
        m.set_routes_installed(7);
        m.inc_store_errors();
        m.inc_reconcile_errors();
        m.inc_reconcile_errors();
        m.set_store_connected(true);
        m.set_bandwidth(1, 2);
        m.set_bandwidth(1, 1);
        let s = m.render();
        for (name, kind, value) in [
            ("tabby_up", "gauge", "1"),
            ("tabby_store_up", "gauge", "1"),
            ("tabby_bgp_sessions_established", "gauge", "2"),
            ("tabby_bgp_sessions", "gauge", "3"),
            ("tabby_routes_installed", "gauge", "7"),
            ("tabby_store_errors_total", "counter", "1"),
            ("tabby_reconcile_errors_total", "counter", "2"),
            ("tabby_bandwidth_limited_interfaces", "gauge", "1"),
            ("tabby_bandwidth_changes_total", "counter", "3"),
        ] {
            assert!(s.contains(&format!("# HELP {name} ")), "{name}\n{s}");
            assert!(
                s.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}\n{s}"
            );
            assert!(s.contains(&format!("\n{name} {value}\n")), "{name}\n{s}");
        }
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn bfd_sessions_by_peer_and_down_events() {
        let m = Metrics::new();
        let s = m.render();
        assert!(s.contains("# TYPE tabby_bfd_session_up gauge\n"), "{s}");
        assert!(s.contains("\ntabby_bfd_down_events_total 0\n"), "{s}");
        m.set_bfd_sessions([
            ("198.18.0.3".parse().unwrap(), false),
            ("198.18.0.2".parse().unwrap(), true),
        ]);
        m.add_bfd_downs(2);
        let s = m.render();
        assert!(
            s.contains(
                "tabby_bfd_session_up{peer=\"198.18.0.2\"} 1\ntabby_bfd_session_up{peer=\"198.18.0.3\"} 0\n"
            ),
            "{s}"
        );
        assert!(s.contains("\ntabby_bfd_down_events_total 2\n"), "{s}");
        m.set_bfd_sessions([]);
        assert!(!m.render().contains("tabby_bfd_session_up{"));
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        m.observe_reconcile(0.0005);
        m.observe_reconcile(0.003);
        m.observe_reconcile(0.003);
        m.observe_reconcile(42.0);
        m.observe_reconcile(f64::NAN);
        let s = m.render();
        let n = "tabby_reconcile_duration_seconds";
        assert!(s.contains(&format!("# TYPE {n} histogram\n")), "{s}");
        assert!(
            s.contains(&format!("{n}_bucket{{le=\"0.001\"}} 2\n")),
            "{s}"
        );
        assert!(
            s.contains(&format!("{n}_bucket{{le=\"0.0025\"}} 2\n")),
            "{s}"
        );
        assert!(
            s.contains(&format!("{n}_bucket{{le=\"0.005\"}} 4\n")),
            "{s}"
        );
        assert!(s.contains(&format!("{n}_bucket{{le=\"10\"}} 4\n")), "{s}");
        assert!(s.contains(&format!("{n}_bucket{{le=\"+Inf\"}} 5\n")), "{s}");
        assert!(s.contains(&format!("{n}_count 5\n")), "{s}");
        let sum: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{n}_sum ")))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 42.0065).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn health_flags_and_last_reconcile() {
        let h = Health::new();
        assert!(h.live());
        assert!(!h.ready());
        assert_eq!(h.last_reconcile_unix(), None);
        h.set_ready(true);
        h.set_live(false);
        h.record_reconcile();
        assert!(h.ready());
        assert!(!h.live());
        assert!(h.last_reconcile_unix().unwrap() > 1_600_000_000);
        assert!(h.since_last_reconcile().unwrap() < Duration::from_secs(5));
    }

    #[test]
    fn responses_for_requests() {
        let m = Metrics::new();
        let h = Health::new();
        let text = |req: &[u8]| String::from_utf8(respond(req, &m, &h)).unwrap();
        assert!(text(b"GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text(b"GET /readiness HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 503 "));
        assert!(text(b"GET /liveness?x=1 HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nok\n"));
        assert!(text(b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(text(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(text(b"HEAD /liveness HTTP/1.1\r\n\r\n").ends_with("\r\n\r\n"));
        for garbage in [
            &b""[..],
            b"\xff\xfe\x00",
            b"GET",
            b"GET / SPDY/3\r\n\r\n",
            b"a b c d\n\n",
        ] {
            assert!(text(garbage).starts_with("HTTP/1.1 400 "), "{garbage:?}");
        }
    }
}
