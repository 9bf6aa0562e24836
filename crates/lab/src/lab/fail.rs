//! `lab fail` and `lab heal`: cut a node (a dead host: its fabric link down, then its
//! agent killed), only its link, or a whole L2 plane (every port of its bridge down),
//! record that in `lab.json`, and watch the rest of
//! the lab converge around it; `heal` undoes every recorded failure and waits for the
//! lab to be as planned again. What converged means, and the reports, are pure
//! functions; the edges set links, send signals, start agents and ping.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use super::LabError;
use super::check::{self, DeviceRow, Matrix, RouteCounts};
use super::host;
use super::layout::{self, Expected, Layout, plane_bridge, plane_subnet};
use super::state::{FailureKind, FailureRecord, LabState, Phase, STATE_FILE};
use super::up::{WORKLOAD_PREFIX, observe_many, query_all, reachability};

const POLL: Duration = Duration::from_millis(250);
/// How often the background probe pings, milliseconds.
pub const PROBE_INTERVAL_MS: u64 = 50;
/// The probe's output, in the lab's dir (a `.log`, so `down` removes it).
const PROBE_LOG: &str = "probe.log";

/// What `lab fail` is asked to break.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A node (`n2`, `rr1`): a dead host.
    Node(String),
    /// A node's fabric link (`link:n2`); its agent runs on.
    Link(String),
    /// An L2 plane (`plane:1`): every port of its bridge.
    Plane(u32),
}

impl Target {
    /// `NODE`, `link:NODE` or `plane:K`.
    pub fn parse(s: &str) -> Result<Target, LabError> {
        let what = "lab fail";
        match s.split_once(':') {
            None if !s.is_empty() => Ok(Target::Node(s.to_string())),
            Some(("link", node)) if !node.is_empty() => Ok(Target::Link(node.to_string())),
            Some(("plane", k)) => match k.parse::<u32>() {
                Ok(k) if k > 0 => Ok(Target::Plane(k)),
                _ => Err(LabError::invalid(
                    what,
                    format!("{s:?}: give a plane by its number, from 1 (`plane:1`)"),
                )),
            },
            _ => Err(LabError::invalid(
                what,
                format!(
                    "{s:?}: give a node (`n2`, `rr1`), a node's link (`link:n2`) or an L2 plane (`plane:1`)"
                ),
            )),
        }
    }

    /// The name its failure is recorded under: the node, or `plane:K`.
    pub fn node(&self) -> String {
        match self {
            Target::Node(n) | Target::Link(n) => n.clone(),
            Target::Plane(k) => format!("plane:{k}"),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            Target::Node(_) => FailureKind::Node,
            Target::Link(_) => FailureKind::Link,
            Target::Plane(_) => FailureKind::Plane,
        }
    }
}

/// The plane a `plane:K` failure record names.
fn failed_plane(f: &FailureRecord) -> Option<u32> {
    if f.kind != FailureKind::Plane {
        return None;
    }
    f.node.strip_prefix("plane:")?.parse().ok()
}

/// A failure in words: `node: fabric link rr1 down, agent pid 42 killed`.
pub fn describe(f: &FailureRecord) -> String {
    let router_links = f.ports.join(", ");
    match (f.kind, f.killed_pid) {
        // A ToR or spine router: its own links, set down in its namespace.
        (FailureKind::Node, Some(pid)) if !f.ports.is_empty() => {
            format!("router: links {router_links} down, BGP daemon pid {pid} killed")
        }
        (FailureKind::Node | FailureKind::Link, _) if !f.ports.is_empty() => {
            format!("router: links {router_links} down")
        }
        (FailureKind::Node, Some(pid)) => {
            format!("node: fabric link {} down, agent pid {pid} killed", f.link)
        }
        (FailureKind::Node, None) => format!("node: fabric link {} down, no agent ran", f.link),
        (FailureKind::Link, _) => format!("link: fabric link {} down, agent running", f.link),
        (FailureKind::Plane, _) => format!(
            "plane: the {} ports of bridge {} down ({})",
            f.ports.len(),
            f.link,
            abridged(&f.ports)
        ),
    }
}

/// Names joined with `, `; past 8 of them, the first 6, `...` and the last (a plane
/// of a 100-node lab has 101 ports).
fn abridged(names: &[String]) -> String {
    if names.len() <= 8 {
        return names.join(", ");
    }
    format!("{}, ..., {}", names[..6].join(", "), names[names.len() - 1])
}

/// Sets the links of failure `f` down (`up` false) or up again.
fn set_failed_links(f: &FailureRecord, up: bool) -> Result<(), LabError> {
    if f.ports.is_empty() {
        return host::set_link(&f.link_ns, &f.link, up);
    }
    // Every port, even past an error, so that a heal is as complete as it can be.
    let mut first = Ok(());
    for p in &f.ports {
        let r = host::set_link(&f.link_ns, p, up);
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// One BGP session as a node reports it, the peer named as the lab's node when it is
/// one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// The peer's node name, else its address.
    pub peer: String,
    /// The FSM state (`Established`, `Active`, ...).
    pub state: String,
    /// Whether the session runs over a failed L2 plane (and so must be down).
    pub on_failed_plane: bool,
}

/// One node as the lab sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Its fabric address (without prefix length).
    pub address: String,
    /// Whether it is a route reflector.
    pub route_reflector: bool,
    /// How it was failed, if it was.
    pub failed: Option<FailureKind>,
    /// Its sessions, `None` when its agent does not answer.
    pub peers: Option<Vec<PeerView>>,
    /// Its proto-80 routes.
    pub routes: RouteCounts,
}

/// Asks every node of `state` for its sessions and reads its routes.
pub(crate) async fn views(state: &LabState) -> Vec<NodeView> {
    // Every address of every node (L2-plane hosts have one per plane); only names
    // and addresses of the layout are used, which do not depend on the root.
    let layout = Layout::new(&state.spec(Path::new("/")));
    let name_of = |addr: &str| {
        state
            .nodes
            .iter()
            .find(|n| strip_len(&n.ip) == addr)
            .map(|n| n.name.clone())
            .or_else(|| {
                layout
                    .nodes
                    .iter()
                    .find(|n| n.legs().any(|l| l.address.addr().to_string() == addr))
                    .map(|n| n.name.clone())
            })
            .or_else(|| {
                layout
                    .routers
                    .iter()
                    .find(|r| r.legs.iter().any(|l| l.address.addr().to_string() == addr))
                    .map(|r| r.name.clone())
            })
            .unwrap_or_else(|| addr.to_string())
    };
    let cut: Vec<ipnet::Ipv4Net> = state
        .failures
        .iter()
        .filter_map(failed_plane)
        .map(plane_subnet)
        .collect();
    let on_cut = |addr: &str| {
        strip_len(addr)
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| cut.iter().any(|c| c.contains(&a)))
    };
    let mut v = Vec::new();
    // All nodes at once: a 100-node lab is polled in well under a second.
    let sockets: Vec<PathBuf> = state.nodes.iter().map(|n| n.socket.clone()).collect();
    let ns: Vec<String> = state.nodes.iter().map(|n| n.ns.clone()).collect();
    let reports = query_all(&sockets).await;
    let all_routes = host::proto80_routes_all(&ns);
    for ((n, report), routes) in state.nodes.iter().zip(reports).zip(all_routes) {
        let routes = routes
            .map(|r| check::count_routes(&r, WORKLOAD_PREFIX))
            .unwrap_or_default();
        v.push(NodeView {
            name: n.name.clone(),
            address: strip_len(&n.ip).to_string(),
            route_reflector: n.route_reflector,
            // A cut plane's reflector is cut off with it.
            failed: state
                .failure(&n.name)
                .map(|f| f.kind)
                .or_else(|| (n.route_reflector && on_cut(&n.ip)).then_some(FailureKind::Plane)),
            peers: report.map(|r| {
                r.peers
                    .iter()
                    .map(|p| PeerView {
                        peer: name_of(&p.address.to_string()),
                        state: p.state.clone(),
                        on_failed_plane: on_cut(&p.address.to_string()),
                    })
                    .collect()
            }),
            routes,
        });
    }
    // The ToR and spine routers, after the nodes (as the planner's figures are).
    for rec in &state.routers {
        let Some(r) = layout.fabric_router(&rec.name) else {
            continue;
        };
        let (observed, sessions) = super::router::observe(rec.daemon, r, &rec.control);
        v.push(NodeView {
            name: rec.name.clone(),
            address: rec.ip.clone(),
            route_reflector: true,
            failed: state.failure(&rec.name).map(|f| f.kind),
            peers: sessions.map(|s| {
                s.into_iter()
                    .map(|p| PeerView {
                        peer: p.peer,
                        state: p.state,
                        on_failed_plane: false,
                    })
                    .collect()
            }),
            routes: observed.routes,
        });
    }
    v
}

fn strip_len(ip: &str) -> &str {
    ip.split('/').next().unwrap_or(ip)
}

/// What keeps the live nodes from having converged around the failed ones: each
/// live node's agent answers, has the planner's number of sessions configured, and
/// has every session Established except those with failed nodes or over a failed
/// plane, which must be down.
/// Empty when converged. `expected` is in the order of `views`.
pub fn unsettled(views: &[NodeView], expected: &[Expected]) -> Vec<String> {
    let failed: BTreeSet<&str> = views
        .iter()
        .filter(|v| v.failed.is_some())
        .map(|v| v.name.as_str())
        .collect();
    let mut out = Vec::new();
    for (v, e) in views.iter().zip(expected) {
        if v.failed.is_some() {
            continue;
        }
        let Some(peers) = &v.peers else {
            out.push(format!("{}: the agent does not answer", v.name));
            continue;
        };
        if peers.len() as u64 != e.sessions {
            out.push(format!(
                "{}: {} sessions configured, the planner says {}",
                v.name,
                peers.len(),
                e.sessions
            ));
        }
        for p in peers {
            let up = p.state == "Established";
            let cut = failed.contains(p.peer.as_str()) || p.on_failed_plane;
            if cut && up {
                out.push(format!(
                    "{}: the session with failed {} is still Established",
                    v.name, p.peer
                ));
            } else if !cut && !up {
                out.push(format!(
                    "{}: the session with {} is {}",
                    v.name, p.peer, p.state
                ));
            }
        }
    }
    out
}

/// Every node's sessions: a row per node, failed ones marked, the sessions that are
/// not Established named.
pub fn render_sessions(views: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let state = match v.failed {
                None => "live".to_string(),
                Some(k) => format!("failed ({})", k.name()),
            };
            let (up, down) = match &v.peers {
                None => ("no answer".to_string(), "-".to_string()),
                Some(peers) => {
                    let est = peers.iter().filter(|p| p.state == "Established").count();
                    let down: Vec<String> = peers
                        .iter()
                        .filter(|p| p.state != "Established")
                        .map(|p| format!("{} {}", p.peer, p.state))
                        .collect();
                    (
                        format!("{est}/{}", peers.len()),
                        if down.is_empty() {
                            "-".to_string()
                        } else {
                            down.join(", ")
                        },
                    )
                }
            };
            vec![
                v.name.clone(),
                if v.name.starts_with("tor") {
                    "ToR"
                } else if v.name.starts_with("spine") {
                    "spine"
                } else if v.route_reflector {
                    "RR"
                } else {
                    "node"
                }
                .to_string(),
                state,
                up,
                down,
                v.routes.total().to_string(),
            ]
        })
        .collect();
    check::table(
        &[
            "NODE",
            "ROLE",
            "STATE",
            "SESSIONS UP",
            "NOT ESTABLISHED",
            "PROTO-80 ROUTES",
        ],
        &rows,
    )
}

/// What the background ping saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Echo requests sent.
    pub sent: u64,
    /// Answered (distinct sequence numbers).
    pub received: u64,
    /// The most requests in a row that went unanswered.
    pub worst_run: u64,
}

impl Probe {
    /// Requests lost.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

/// Reads iputils `ping` output: the answered `icmp_seq`s and the summary's
/// `N packets transmitted` (else the highest sequence seen).
pub fn parse_ping(text: &str) -> Probe {
    let mut seqs = BTreeSet::new();
    let mut sent = None;
    for line in text.lines() {
        if line.contains("bytes from")
            && let Some(seq) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.insert(seq);
        }
        if let Some(i) = line.find(" packets transmitted") {
            sent = line[..i].trim().parse::<u64>().ok();
        }
    }
    let sent = sent.unwrap_or_else(|| seqs.last().copied().unwrap_or(0));
    let mut worst = 0;
    let mut prev = 0;
    for &s in seqs.iter().filter(|s| **s <= sent) {
        worst = worst.max(s - prev - 1);
        prev = s;
    }
    worst = worst.max(sent.saturating_sub(prev));
    Probe {
        sent,
        received: seqs.iter().filter(|s| **s <= sent).count() as u64,
        worst_run: worst,
    }
}

/// The probe's line for the report.
pub fn render_probe(from: &str, to: &str, p: &Probe, interval_ms: u64) -> String {
    format!(
        "probe {from} -> {to} (a ping every {interval_ms} ms throughout): {} sent, {} answered, {} lost; longest gap {} in a row (~{} ms)",
        p.sent,
        p.received,
        p.lost(),
        p.worst_run,
        p.worst_run * interval_ms
    )
}

/// What `fail` or `heal` reports.
#[derive(Clone, Debug)]
pub struct ConvergeReport {
    /// The report for stdout.
    pub text: String,
    /// What did not converge; empty when the lab did.
    pub problems: Vec<String>,
}

/// A lab loaded for `fail`, `heal` or `graph`.
pub(crate) struct Loaded {
    pub dir: PathBuf,
    pub state: LabState,
    pub layout: Layout,
    pub expected: Vec<Expected>,
}

pub(crate) fn load(name: &str, root: &Path) -> Result<Loaded, LabError> {
    super::spec::check_name(name)?;
    let dir = root.join(name);
    if !dir.join(STATE_FILE).exists() {
        return Err(LabError::NoLab {
            name: name.to_string(),
            path: dir.join(STATE_FILE),
        });
    }
    let state = LabState::load(&dir)?;
    let spec = state.spec(root);
    let layout = Layout::new(&spec);
    let (_, expected) = layout::expected(&spec, &layout)?;
    Ok(Loaded {
        dir,
        state,
        layout,
        expected,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Per pod, whether it is on a failed node.
fn down_pods(state: &LabState) -> Vec<bool> {
    // A failed ToR takes its rack's nodes off the network with it.
    let layout = Layout::new(&state.spec(Path::new("/")));
    let tor_failed = |node: &str| {
        layout
            .node(node)
            .and_then(|n| n.rack)
            .is_some_and(|r| state.failure(&format!("tor{r}")).is_some())
    };
    state
        .pods
        .iter()
        .map(|p| state.failure(&p.node).is_some() || tor_failed(&p.node))
        .collect()
}

/// The background ping between two pods on different live nodes, if there are two.
struct Running {
    from: String,
    to: String,
    child: Child,
    log: PathBuf,
}

fn start_probe(state: &LabState, dir: &Path) -> Option<Running> {
    let down = down_pods(state);
    let live: Vec<_> = state
        .pods
        .iter()
        .zip(&down)
        .filter(|(_, d)| !**d)
        .map(|(p, _)| p)
        .collect();
    let from = live.first()?;
    let to = live.iter().find(|p| p.node != from.node)?;
    let log = dir.join(PROBE_LOG);
    let child = host::spawn_ping(&from.ns, &to.ip, PROBE_INTERVAL_MS, &log).ok()?;
    Some(Running {
        from: from.name.clone(),
        to: to.name.clone(),
        child,
        log,
    })
}

fn stop_probe(mut r: Running) -> String {
    host::signal(r.child.id(), Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(3);
    while matches!(r.child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if matches!(r.child.try_wait(), Ok(None)) {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    let text = std::fs::read_to_string(&r.log).unwrap_or_default();
    let _ = std::fs::remove_file(&r.log);
    render_probe(&r.from, &r.to, &parse_ping(&text), PROBE_INTERVAL_MS)
}

/// Pings every pair until every pair that should reach does, or `deadline`.
async fn reach_until(state: &LabState, deadline: Instant) -> Matrix {
    let down = down_pods(state);
    loop {
        let pods = state.pods.clone();
        let d = down.clone();
        let mode = state.matrix;
        let m = tokio::task::spawn_blocking(move || reachability(&pods, &d, mode))
            .await
            .expect("the ping threads do not panic");
        if m.failures().is_empty() || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn reach_line(m: &Matrix, since: Duration) -> String {
    let failed = m.failures().len();
    if failed == 0 {
        format!(
            "every remaining pod pair reachable: {} of {} (checked {} after the change)",
            m.live_pairs(),
            m.live_pairs(),
            secs(since)
        )
    } else {
        format!(
            "{failed} of {} remaining pod pairs UNREACHABLE ({} after the change)",
            m.live_pairs(),
            secs(since)
        )
    }
}

/// `lab fail TARGET`: breaks it, then waits up to `timeout` for the live nodes to
/// converge around it and for every pair of pods on live nodes to reach each other,
/// and reports how long that took, with a ping between two live pods throughout.
pub async fn fail(
    name: &str,
    root: &Path,
    target: &str,
    timeout: Duration,
) -> Result<ConvergeReport, LabError> {
    let target = Target::parse(target)?;
    if !tabby_testnet::is_root() {
        return Err(LabError::NotRoot);
    }
    let Loaded {
        dir,
        mut state,
        layout,
        expected,
    } = load(name, root)?;
    if state.phase == Phase::Building {
        return Err(LabError::invalid(
            "lab fail",
            format!("lab {name:?} is still being built (or its `up` crashed)"),
        ));
    }
    let key = target.node();
    let node = key.as_str();
    if let Some(f) = state.failure(node) {
        return Err(LabError::invalid(
            "lab fail",
            format!(
                "{node} is failed already ({}); `tabbyctl lab heal --name {name}` first",
                describe(f)
            ),
        ));
    }
    let (record, agent) = match &target {
        Target::Plane(k) => (plane_record(name, &state, &layout, *k)?, None),
        _ => node_record(name, &state, &layout, &target)?,
    };
    // Recorded first: `heal` undoes a `fail` that stops half-way.
    state.failures.push(record.clone());
    state.save(&dir)?;

    let probe = start_probe(&state, &dir);
    if probe.is_some() {
        // A few answers before the cut, so that a lost first one is not the failure's.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    // A dead host says nothing: the link goes first, so the agent's death sends no
    // FIN and the peers notice by their hold timer.
    let cut = set_failed_links(&record, false);
    if let (Ok(()), Some(pid), Some(a)) = (&cut, record.killed_pid, &agent) {
        host::signal(pid, Signal::SIGKILL);
        let gone = Instant::now() + Duration::from_secs(5);
        while host::alive(pid, &a.program) && Instant::now() < gone {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let Err(e) = cut {
        if let Some(p) = probe {
            stop_probe(p);
        }
        return Err(e);
    }

    let mut problems = Vec::new();
    let mut last;
    loop {
        last = views(&state).await;
        let left = unsettled(&last, &expected);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "BGP did not converge within {} s: {}",
                timeout.as_secs(),
                left.join("; ")
            ));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let settled = t0.elapsed();
    let matrix = reach_until(&state, deadline).await;
    let reached = t0.elapsed();
    let probe_line = probe.map(stop_probe);
    for (a, b) in matrix.failures() {
        problems.push(format!("{a} cannot reach {b}"));
    }

    let mut out = format!("lab {name:?}: failed {node} ({})\n", describe(&record));
    if problems.iter().all(|p| !p.starts_with("BGP")) {
        let down = match &target {
            Target::Node(_) => format!("sessions with {node} down"),
            Target::Link(_) => format!("sessions with {node} down (it is cut off)"),
            Target::Plane(k) => {
                format!("sessions over plane {k} down (its reflector rr{k} is cut off)")
            }
        };
        out.push_str(&format!(
            "BGP converged {} after the failure: {down}, every other session Established\n",
            secs(settled)
        ));
    }
    out.push_str(&reach_line(&matrix, reached));
    out.push('\n');
    if let Some(l) = probe_line {
        out.push_str(&l);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&render_sessions(&last));
    out.push('\n');
    out.push_str(&matrix.render());
    out.push_str(&format!("\nundo with `tabbyctl lab heal --name {name}`\n"));
    Ok(ConvergeReport {
        text: out,
        problems,
    })
}

/// The record of cutting node `target` (a node or its link), and its agent.
fn node_record(
    name: &str,
    state: &LabState,
    layout: &Layout,
    target: &Target,
) -> Result<(FailureRecord, Option<super::state::ProcessRecord>), LabError> {
    let node = target.node();
    if let Some(r) = layout.fabric_router(&node) {
        return Ok(router_record(state, layout, r, target));
    }
    let Some(lnode) = layout.node(&node) else {
        return Err(LabError::NoTarget {
            lab: name.to_string(),
            target: node.to_string(),
            known: state
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .chain(layout.routers.iter().map(|r| r.name.clone()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let agent = state.agent(&node).cloned();
    let record = FailureRecord {
        node: node.to_string(),
        kind: target.kind(),
        link_ns: layout.fabric_ns.clone(),
        link: lnode.leg.port.clone(),
        ports: Vec::new(),
        killed_pid: match target.kind() {
            FailureKind::Node => agent
                .as_ref()
                .filter(|a| host::alive(a.pid, &a.program))
                .map(|a| a.pid),
            FailureKind::Link | FailureKind::Plane => None,
        },
        at_unix_ms: now_ms(),
    };
    Ok((record, agent))
}

/// The record of cutting a ToR or spine router: every one of its links set down from
/// inside its namespace (so that the bridge ports and the spines' ends lose carrier)
/// and, for a dead router, its BGP daemon (`bird`, or FRR's `bgpd`) killed.
fn router_record(
    state: &LabState,
    layout: &Layout,
    r: &super::fabric::FabricRouter,
    target: &Target,
) -> (FailureRecord, Option<super::state::ProcessRecord>) {
    let mut ports: Vec<String> = r.legs.iter().map(|l| l.ifname.clone()).collect();
    for l in &layout.links {
        if l.tor_ns == r.ns {
            ports.push(l.tor_if.clone());
        } else if l.spine_ns == r.ns {
            ports.push(l.spine_if.clone());
        }
    }
    let daemon = state
        .processes
        .iter()
        .find(|p| p.what == format!("bird {}", r.name) || p.what == format!("bgpd {}", r.name))
        .cloned();
    let record = FailureRecord {
        node: r.name.clone(),
        kind: target.kind(),
        link_ns: r.ns.clone(),
        link: ports.first().cloned().unwrap_or_default(),
        ports,
        killed_pid: match target.kind() {
            FailureKind::Node => daemon
                .as_ref()
                .filter(|d| host::alive(d.pid, &d.program))
                .map(|d| d.pid),
            FailureKind::Link | FailureKind::Plane => None,
        },
        at_unix_ms: now_ms(),
    };
    (record, daemon)
}

/// The record of cutting plane `k`: every port of its bridge.
fn plane_record(
    name: &str,
    state: &LabState,
    layout: &Layout,
    k: u32,
) -> Result<FailureRecord, LabError> {
    if layout.planes == 0 {
        return Err(LabError::invalid(
            "lab fail",
            format!(
                "plane:{k}: lab {name:?} has no L2 planes (its topology is {}, one fabric); fail a node (`n2`, `rr1`) or a link (`link:n2`), or build `--topology l2-planes`",
                state.topology
            ),
        ));
    }
    if k > layout.planes {
        return Err(LabError::invalid(
            "lab fail",
            format!("plane:{k}: lab {name:?} has planes 1..={}", layout.planes),
        ));
    }
    let bridge = plane_bridge(k);
    Ok(FailureRecord {
        node: format!("plane:{k}"),
        kind: FailureKind::Plane,
        link_ns: layout.fabric_ns.clone(),
        ports: layout
            .nodes
            .iter()
            .flat_map(|n| n.legs())
            .filter(|l| l.bridge == bridge)
            .map(|l| l.port.clone())
            .collect(),
        link: bridge,
        killed_pid: None,
        at_unix_ms: now_ms(),
    })
}

/// `lab heal`: undoes every recorded failure (links up, killed agents started again
/// with their command lines), then waits up to `timeout` for every session and route
/// to be as planned and every pod pair to reach, and reports how long that took.
pub async fn heal(name: &str, root: &Path, timeout: Duration) -> Result<ConvergeReport, LabError> {
    if !tabby_testnet::is_root() {
        return Err(LabError::NotRoot);
    }
    let Loaded {
        dir,
        mut state,
        layout,
        expected,
    } = load(name, root)?;
    if state.failures.is_empty() {
        return Ok(ConvergeReport {
            text: format!("lab {name:?}: nothing to heal\n"),
            problems: Vec::new(),
        });
    }
    let t0 = Instant::now();
    let mut done = Vec::new();
    let mut children: Vec<(String, Child, PathBuf)> = Vec::new();
    while let Some(f) = state.failures.last().cloned() {
        set_failed_links(&f, true)?;
        let mut what = if f.ports.is_empty() {
            format!("{}: fabric link {} up", f.node, f.link)
        } else if f.kind != FailureKind::Plane {
            format!("{}: links {} up", f.node, f.ports.join(", "))
        } else {
            format!(
                "{}: the {} ports of bridge {} up",
                f.node,
                f.ports.len(),
                f.link
            )
        };
        if f.kind == FailureKind::Node
            && let Some(i) = state
                .processes
                .iter()
                .position(|p| p.what == format!("agent {}", f.node) || Some(p.pid) == f.killed_pid)
            && !host::alive(state.processes[i].pid, &state.processes[i].program)
        {
            let p = &state.processes[i];
            let argv = if p.argv.is_empty() {
                // A lab from before argv was recorded: its layout says the same.
                let bin = host::find_binaries(
                    &["tabby-node"],
                    "build it with `cargo build -p tabby-node`",
                )?;
                let lnode = layout.node(&f.node).expect("failed nodes are the lab's");
                let mut v = vec![bin[0].display().to_string()];
                v.extend(layout.agent_args(lnode));
                v
            } else {
                p.argv.clone()
            };
            let child = host::spawn(&p.ns, Path::new(&argv[0]), &argv[1..], &p.log)?;
            let who = if p.what.starts_with("agent ") {
                "agent"
            } else {
                p.program.as_str()
            };
            what.push_str(&format!(", {who} started again (pid {})", child.id()));
            let log = p.log.clone();
            let p = &mut state.processes[i];
            p.pid = child.id();
            p.argv = argv;
            children.push((p.what.clone(), child, log));
        }
        state.failures.pop();
        state.save(&dir)?;
        done.push(what);
    }
    done.reverse();

    let deadline = t0 + timeout;
    let mut problems = Vec::new();
    let mut rows: Vec<DeviceRow>;
    loop {
        for (what, child, log) in &mut children {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(LabError::Died {
                    what: what.clone(),
                    log: log.clone(),
                    tail: host::tail(log, 20),
                });
            }
        }
        let sockets: Vec<PathBuf> = state.nodes.iter().map(|n| n.socket.clone()).collect();
        let ns: Vec<String> = state.nodes.iter().map(|n| n.ns.clone()).collect();
        let observed = observe_many(&ns, &sockets).await;
        rows = state
            .nodes
            .iter()
            .zip(&expected)
            .zip(observed)
            .map(|((n, e), observed)| DeviceRow {
                name: n.name.clone(),
                address: n.ip.clone(),
                expected: e.clone(),
                observed,
            })
            .collect();
        let router_expected = expected.get(state.nodes.len()..).unwrap_or_default();
        for (rec, e) in state.routers.iter().zip(router_expected) {
            if let Some(r) = layout.fabric_router(&rec.name) {
                rows.push(DeviceRow {
                    name: rec.name.clone(),
                    address: rec.ip.clone(),
                    expected: e.clone(),
                    observed: super::router::observe(rec.daemon, r, &rec.control).0,
                });
            }
        }
        if rows.iter().all(DeviceRow::matches) {
            break;
        }
        if Instant::now() > deadline {
            problems.extend(rows.iter().flat_map(DeviceRow::differences));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let settled = t0.elapsed();
    let matrix = reach_until(&state, deadline).await;
    let reached = t0.elapsed();
    for (a, b) in matrix.failures() {
        problems.push(format!("{a} cannot reach {b}"));
    }
    state.phase = if problems.is_empty() {
        Phase::Up
    } else {
        Phase::Failed
    };
    state.save(&dir)?;

    let mut out = format!("lab {name:?} healed:\n");
    for d in &done {
        out.push_str(&format!("  {d}\n"));
    }
    if rows.iter().all(DeviceRow::matches) {
        out.push_str(&format!(
            "every session Established and every route as planned {} after the heal\n",
            secs(settled)
        ));
    }
    let failed = matrix.failures().len();
    if failed == 0 {
        out.push_str(&format!(
            "every pod pair reachable: {} of {} ({} after the heal)\n",
            matrix.pairs(),
            matrix.pairs(),
            secs(reached)
        ));
    } else {
        out.push_str(&format!(
            "{failed} of {} pod pairs UNREACHABLE ({} after the heal)\n",
            matrix.pairs(),
            secs(reached)
        ));
    }
    out.push('\n');
    out.push_str(&check::render_nodes(&rows, &[]));
    out.push('\n');
    out.push_str(&check::render_comparison(
        &rows,
        &layout::plan_command(&state.spec(root)),
    ));
    out.push('\n');
    out.push_str(&matrix.render());
    Ok(ConvergeReport {
        text: out,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_port_lists_abridged() {
        let few: Vec<String> = (1..=3).map(|i| format!("n{i}p1")).collect();
        assert_eq!(abridged(&few), "n1p1, n2p1, n3p1");
        let many: Vec<String> = (1..=101).map(|i| format!("n{i}p1")).collect();
        assert_eq!(
            abridged(&many),
            "n1p1, n2p1, n3p1, n4p1, n5p1, n6p1, ..., n101p1"
        );
    }
    use crate::plan::Role;

    #[test]
    fn a_router_failure_cuts_every_link() {
        let mut spec = crate::lab::LabSpec::new("t", Path::new("/x"));
        spec.topology = crate::lab::Topology::AsPerRackL3Spine;
        spec.nodes = 4;
        spec.spines = 2;
        let layout = Layout::new(&spec);
        let mut state = LabState::new(&spec, "sqlite:///x/t/store.db");
        state.processes.push(super::super::state::ProcessRecord {
            what: "bird tor2".into(),
            pid: u32::MAX,
            program: "bird".into(),
            ns: "tl-t-tor2".into(),
            log: "/x/t/bird-tor2.log".into(),
            argv: Vec::new(),
        });
        let tor2 = layout.fabric_router("tor2").unwrap();
        let (f, daemon) = router_record(&state, &layout, tor2, &Target::Node("tor2".into()));
        assert_eq!(f.link_ns, "tl-t-tor2");
        assert_eq!(f.ports, ["eth0", "sp1", "sp2"]);
        assert_eq!(daemon.unwrap().what, "bird tor2");
        assert_eq!(f.killed_pid, None, "the daemon does not run");
        assert_eq!(describe(&f), "router: links eth0, sp1, sp2 down");
        let spine1 = layout.fabric_router("spine1").unwrap();
        let (f, _) = router_record(&state, &layout, spine1, &Target::Link("spine1".into()));
        assert_eq!(f.ports, ["tor1", "tor2"]);
        assert_eq!(f.kind, FailureKind::Link);
        let f = FailureRecord {
            killed_pid: Some(7),
            kind: FailureKind::Node,
            ..f
        };
        assert_eq!(
            describe(&f),
            "router: links tor1, tor2 down, BGP daemon pid 7 killed"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("rr1").unwrap(), Target::Node("rr1".into()));
        assert_eq!(Target::parse("link:n2").unwrap(), Target::Link("n2".into()));
        assert_eq!(Target::parse("link:n2").unwrap().kind(), FailureKind::Link);
        for bad in ["", "link:", "cable:n1"] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("link:n2"), "{bad:?}: {e}");
        }
        assert_eq!(Target::parse("plane:2").unwrap(), Target::Plane(2));
        assert_eq!(Target::parse("plane:2").unwrap().node(), "plane:2");
        for bad in ["plane:", "plane:0", "plane:x"] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains("plane:1"), "{bad:?}: {e}");
        }
    }

    fn view(name: &str, failed: Option<FailureKind>, peers: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: name.into(),
            address: "198.18.0.1".into(),
            route_reflector: name.starts_with("rr"),
            failed,
            peers: Some(
                peers
                    .iter()
                    .map(|(p, s)| PeerView {
                        peer: p.to_string(),
                        state: s.to_string(),
                        on_failed_plane: false,
                    })
                    .collect(),
            ),
            routes: RouteCounts::default(),
        }
    }

    fn exp(sessions: u64) -> Expected {
        Expected {
            role: Role::Node,
            sessions,
            routes: 0,
            pod_routes: 0,
        }
    }

    #[test]
    fn convergence_around_a_failed_reflector() {
        let e = [exp(3), exp(3), exp(2), exp(2)];
        let mut v = vec![
            NodeView {
                peers: None,
                ..view("rr1", Some(FailureKind::Node), &[])
            },
            view(
                "rr2",
                None,
                &[
                    ("rr1", "Established"),
                    ("n1", "Established"),
                    ("n2", "Established"),
                ],
            ),
            view(
                "n1",
                None,
                &[("rr1", "Established"), ("rr2", "Established")],
            ),
            view("n2", None, &[("rr1", "Active"), ("rr2", "Established")]),
        ];
        assert_eq!(
            unsettled(&v, &e),
            [
                "rr2: the session with failed rr1 is still Established",
                "n1: the session with failed rr1 is still Established"
            ]
        );
        v[1].peers.as_mut().unwrap()[0].state = "Connect".into();
        v[2].peers.as_mut().unwrap()[0].state = "Idle".into();
        assert!(unsettled(&v, &e).is_empty());
        v[3].peers.as_mut().unwrap()[1].state = "OpenSent".into();
        v[2].peers = None;
        assert_eq!(
            unsettled(&v, &e),
            [
                "n1: the agent does not answer",
                "n2: the session with rr2 is OpenSent"
            ]
        );
        let table = render_sessions(&v);
        assert!(table.starts_with("NODE   ROLE   STATE"), "{table}");
        assert!(table.contains("failed (node)   no answer"), "{table}");
        assert!(table.contains("rr1 Active, rr2 OpenSent"), "{table}");
    }

    #[test]
    fn ping_output() {
        let text = "PING 100.64.0.66 (100.64.0.66) 56(84) bytes of data.
64 bytes from 100.64.0.66: icmp_seq=1 ttl=62 time=0.1 ms
64 bytes from 100.64.0.66: icmp_seq=2 ttl=62 time=0.1 ms
From 100.64.0.1 icmp_seq=3 Destination Host Unreachable
64 bytes from 100.64.0.66: icmp_seq=6 ttl=62 time=0.1 ms
64 bytes from 100.64.0.66: icmp_seq=6 ttl=62 time=0.1 ms (DUP!)
64 bytes from 100.64.0.66: icmp_seq=7 ttl=62 time=0.1 ms

--- 100.64.0.66 ping statistics ---
8 packets transmitted, 4 received, +1 duplicates, 50% packet loss, time 350ms
";
        let p = parse_ping(text);
        assert_eq!(
            p,
            Probe {
                sent: 8,
                received: 4,
                worst_run: 3
            }
        );
        assert_eq!(p.lost(), 4);
        assert_eq!(
            render_probe("n1-1", "n2-1", &p, 50),
            "probe n1-1 -> n2-1 (a ping every 50 ms throughout): 8 sent, 4 answered, 4 lost; longest gap 3 in a row (~150 ms)"
        );
        // Killed before its summary: the highest sequence seen is what was sent.
        let p = parse_ping("64 bytes from x: icmp_seq=2 ttl=1 time=1 ms\n");
        assert_eq!((p.sent, p.received, p.worst_run), (2, 1, 1));
        assert_eq!(parse_ping("").sent, 0);
    }

    #[test]
    fn failures_described() {
        let mut f = FailureRecord {
            node: "rr1".into(),
            kind: FailureKind::Node,
            link_ns: "tl-x-fab".into(),
            link: "rr1".into(),
            ports: Vec::new(),
            killed_pid: Some(42),
            at_unix_ms: 0,
        };
        assert_eq!(
            describe(&f),
            "node: fabric link rr1 down, agent pid 42 killed"
        );
        f.kind = FailureKind::Link;
        assert_eq!(describe(&f), "link: fabric link rr1 down, agent running");
    }
}
