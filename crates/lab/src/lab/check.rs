//! The lab's checks as data: routes counted from `ip -j route show proto 80`, the
//! planner's figures next to what every device shows, and the pod-to-pod
//! reachability matrix, each with its rendering for the summary.

use serde_json::Value;

use super::layout::Expected;
use super::spec::MatrixMode;
use crate::plan::Role;

/// A device's proto-80 routes, split as the planner splits them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    /// Routes to blocks (own blackholes, remote blocks) and borrowed /32s.
    pub routes: u64,
    /// Device routes to the node's own pods (over `cali*` interfaces).
    pub pod_routes: u64,
}

impl RouteCounts {
    /// Every proto-80 route.
    pub fn total(&self) -> u64 {
        self.routes + self.pod_routes
    }
}

/// Counts `ip -j route show proto 80` output: routes out of an interface starting with
/// `workload_prefix` are pod routes, the rest block routes.
pub fn count_routes(routes: &Value, workload_prefix: &str) -> RouteCounts {
    let mut c = RouteCounts::default();
    for r in routes.as_array().into_iter().flatten() {
        let to_pod = r["dev"]
            .as_str()
            .is_some_and(|d| d.starts_with(workload_prefix));
        if to_pod {
            c.pod_routes += 1;
        } else {
            c.routes += 1;
        }
    }
    c
}

/// What one device shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Whether its agent answered on the control socket.
    pub agent: bool,
    /// BGP sessions Established.
    pub established: u64,
    /// BGP sessions configured.
    pub peers: u64,
    /// Its proto-80 routes.
    pub routes: RouteCounts,
}

/// One device's row: the lab's view and the planner's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRow {
    /// Node name.
    pub name: String,
    /// Its fabric address.
    pub address: String,
    /// What the planner predicts.
    pub expected: Expected,
    /// What the device shows.
    pub observed: Observed,
}

impl DeviceRow {
    /// Whether sessions and routes are what the planner predicted.
    pub fn matches(&self) -> bool {
        let (e, o) = (&self.expected, &self.observed);
        o.established == e.sessions
            && o.peers == e.sessions
            && o.routes.routes == e.routes
            && o.routes.pod_routes == e.pod_routes
    }

    /// What differs from the plan, in words.
    pub fn differences(&self) -> Vec<String> {
        let (e, o) = (&self.expected, &self.observed);
        let mut v = Vec::new();
        if o.established != e.sessions || o.peers != e.sessions {
            v.push(format!(
                "{}: {} sessions Established of {} configured, the planner says {}",
                self.name, o.established, o.peers, e.sessions
            ));
        }
        if o.routes.routes != e.routes {
            v.push(format!(
                "{}: {} block routes, the planner says {}",
                self.name, o.routes.routes, e.routes
            ));
        }
        if o.routes.pod_routes != e.pod_routes {
            v.push(format!(
                "{}: {} pod routes, the planner says {}",
                self.name, o.routes.pod_routes, e.pod_routes
            ));
        }
        v
    }
}

fn role_label(r: Role) -> &'static str {
    match r {
        Role::RouteReflector => "RR",
        other => other.label(),
    }
}

/// Lays rows out in columns: the widest cell plus three spaces, a blank line after.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i + 1 < n {
                out.extend(std::iter::repeat_n(' ', w + 3 - cell.chars().count()));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The nodes as the lab sees them: agent, sessions, proto-80 routes (for ToR and
/// spine routers: the routes their daemon installed). `agents` adds to the AGENT cell
/// of each row (e.g. its pid, or a router's daemons and pids).
pub fn render_nodes(rows: &[DeviceRow], agents: &[String]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let o = &r.observed;
            let mut agent = if o.agent { "running" } else { "down" }.to_string();
            if let Some(extra) = agents.get(i) {
                agent.push_str(&format!(" ({extra})"));
            }
            vec![
                r.name.clone(),
                role_label(r.expected.role).to_string(),
                r.address.clone(),
                agent,
                format!("{}/{}", o.established, o.peers),
                o.routes.total().to_string(),
                o.routes.routes.to_string(),
                o.routes.pod_routes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ROLE",
            "ADDRESS",
            "AGENT",
            "SESSIONS UP",
            "PROTO-80 ROUTES",
            "BLOCK ROUTES",
            "POD ROUTES",
        ],
        &body,
    )
}

/// The planner's figures next to the lab's, per device, and a verdict line.
pub fn render_comparison(rows: &[DeviceRow], plan_command: &str) -> String {
    let pair = |lab: u64, plan: u64| format!("{lab}/{plan}");
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (e, o) = (&r.expected, &r.observed);
            vec![
                r.name.clone(),
                role_label(e.role).to_string(),
                pair(o.established, e.sessions),
                pair(o.routes.routes, e.routes),
                pair(o.routes.pod_routes, e.pod_routes),
                if r.matches() { "✓" } else { "✗" }.to_string(),
            ]
        })
        .collect();
    let mut out = format!("Planner check (lab/plan), against `{plan_command}`:\n");
    out.push_str(&table(
        &["NODE", "ROLE", "SESSIONS", "ROUTES", "POD ROUTES", "MATCH"],
        &body,
    ));
    let diffs: Vec<String> = rows.iter().flat_map(DeviceRow::differences).collect();
    if diffs.is_empty() {
        out.push_str("planner check: ok, every device matches the plan\n");
    } else {
        out.push_str(&format!(
            "planner check: FAILED, {} difference(s):\n",
            diffs.len()
        ));
        for d in diffs {
            out.push_str(&format!("  {d}\n"));
        }
    }
    out
}

/// Most failed pairs a sampled matrix lists.
const SAMPLE_FAILURES_SHOWN: usize = 20;

/// Which pod reached which: `ok[from][to]`, the diagonal unused. Pods in `down` are
/// on failed nodes: a pair with one of them is expected to fail and is no failure.
/// With `mode` a sample (or none), only the pairs it names were pinged; the others
/// are neither successes nor failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// Pod names, in order.
    pub pods: Vec<String>,
    /// Results.
    pub ok: Vec<Vec<bool>>,
    /// Per pod, whether it is on a failed node (empty: none is).
    pub down: Vec<bool>,
    /// Which pairs were pinged.
    pub mode: MatrixMode,
}

impl Matrix {
    fn is_down(&self, i: usize) -> bool {
        self.down.get(i).copied().unwrap_or(false)
    }

    fn expected_down(&self, i: usize, j: usize) -> bool {
        self.is_down(i) || self.is_down(j)
    }

    /// Per offset `(j - i) mod n`, whether pairs that far apart were pinged.
    fn tested_offsets(&self) -> Vec<bool> {
        let n = self.pods.len();
        let mut t = vec![false; n];
        for d in self.mode.offsets(n) {
            t[d] = true;
        }
        t
    }

    /// The tested pairs `(i, j)`.
    pub fn tested(&self) -> Vec<(usize, usize)> {
        let n = self.pods.len();
        let t = self.tested_offsets();
        let mut v = Vec::new();
        for i in 0..n {
            for j in 0..n {
                if t[(j + n - i) % n] {
                    v.push((i, j));
                }
            }
        }
        v
    }

    /// Pairs tested.
    pub fn pairs(&self) -> usize {
        self.tested().len()
    }

    /// Tested pairs between pods on nodes that did not fail.
    pub fn live_pairs(&self) -> usize {
        self.tested()
            .into_iter()
            .filter(|&(i, j)| !self.expected_down(i, j))
            .count()
    }

    /// Pairs that failed, as (from, to) names; pairs with a pod on a failed node do
    /// not count.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.tested()
            .into_iter()
            .filter(|&(i, j)| !self.ok[i][j] && !self.expected_down(i, j))
            .map(|(i, j)| (self.pods[i].clone(), self.pods[j].clone()))
            .collect()
    }

    /// Tested pairs with a pod on a failed node that did not reach each other.
    pub fn expected_failures(&self) -> usize {
        self.tested()
            .into_iter()
            .filter(|&(i, j)| !self.ok[i][j] && self.expected_down(i, j))
            .count()
    }

    /// How the pairs were chosen, for the summary's heading.
    fn how(&self) -> String {
        match self.mode {
            MatrixMode::Full => "one ping per pair".to_string(),
            MatrixMode::Sample(k) => format!(
                "sampled (--matrix sample:{k}): one ping from each pod to {} others, of {} pairs",
                self.mode.offsets(self.pods.len()).len(),
                self.pods.len() * self.pods.len().saturating_sub(1)
            ),
            MatrixMode::None => "not tested (--matrix none)".to_string(),
        }
    }

    /// The grid: a row per source pod, a column per destination; `·` marks a pair
    /// that failed because a pod of it is on a failed node. A sampled matrix lists
    /// its failed pairs instead of the grid, in which most cells would be empty.
    pub fn render(&self) -> String {
        let failed = self.failures().len();
        if self.mode == MatrixMode::None {
            return format!(
                "Reachability: {} ({} pods; sessions and routes are checked)\n",
                self.how(),
                self.pods.len()
            );
        }
        let mut out = if self.down.iter().any(|d| *d) {
            let live = self.live_pairs();
            let down_pods: Vec<&str> = self
                .pods
                .iter()
                .enumerate()
                .filter(|(i, _)| self.is_down(*i))
                .map(|(_, p)| p.as_str())
                .collect();
            format!(
                "Reachability ({}, {} pairs; {live} between pods on live nodes: {} ✓, {failed} ✗; pods on failed nodes: {}, {} pair(s) · unreachable as expected):\n",
                self.how(),
                self.pairs(),
                live - failed,
                down_pods.join(", "),
                self.expected_failures()
            )
        } else {
            format!(
                "Reachability ({}, {} pairs: {} ✓, {failed} ✗):\n",
                self.how(),
                self.pairs(),
                self.pairs() - failed
            )
        };
        if let MatrixMode::Sample(_) = self.mode {
            let failures = self.failures();
            for (a, b) in failures.iter().take(SAMPLE_FAILURES_SHOWN) {
                out.push_str(&format!("  ✗ {a} -> {b}\n"));
            }
            if failures.len() > SAMPLE_FAILURES_SHOWN {
                out.push_str(&format!(
                    "  ... and {} more\n",
                    failures.len() - SAMPLE_FAILURES_SHOWN
                ));
            }
            return out;
        }
        let mut header = vec!["FROM \\ TO"];
        header.extend(self.pods.iter().map(String::as_str));
        let body: Vec<Vec<String>> = self
            .ok
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut cells = vec![self.pods[i].clone()];
                cells.extend(row.iter().enumerate().map(|(j, ok)| {
                    if i == j {
                        "-"
                    } else if *ok {
                        "✓"
                    } else if self.expected_down(i, j) {
                        "·"
                    } else {
                        "✗"
                    }
                    .to_string()
                }));
                cells
            })
            .collect();
        out.push_str(&table(&header, &body));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_counted_as_the_planner_does() {
        let routes: Value = serde_json::from_str(
            r#"[
            {"type":"blackhole","dst":"100.64.0.0/26","protocol":"80","flags":[]},
            {"dst":"100.64.0.64/26","gateway":"198.18.0.2","dev":"eth0","protocol":"80","flags":[]},
            {"dst":"100.64.0.128/26","gateway":"100.64.0.193","dev":"vxlan.calico","protocol":"80","flags":["onlink"]},
            {"dst":"100.64.0.1","dev":"cali1234567890a","protocol":"80","scope":"link","flags":[]},
            {"dst":"100.64.0.2","dev":"cali1234567890b","protocol":"80","scope":"link","flags":[]}
        ]"#,
        )
        .unwrap();
        let c = count_routes(&routes, "cali");
        assert_eq!(
            c,
            RouteCounts {
                routes: 3,
                pod_routes: 2
            }
        );
        assert_eq!(c.total(), 5);
        assert_eq!(count_routes(&Value::Null, "cali"), RouteCounts::default());
    }

    fn row(name: &str, role: Role, sessions: u64, established: u64, routes: u64) -> DeviceRow {
        DeviceRow {
            name: name.into(),
            address: "198.18.0.1/24".into(),
            expected: Expected {
                role,
                sessions,
                routes: 3,
                pod_routes: if role == Role::Node { 2 } else { 0 },
            },
            observed: Observed {
                agent: true,
                established,
                peers: sessions,
                routes: RouteCounts {
                    routes,
                    pod_routes: if role == Role::Node { 2 } else { 0 },
                },
            },
        }
    }

    #[test]
    fn comparison_verdicts() {
        let good = vec![
            row("rr1", Role::RouteReflector, 3, 3, 3),
            row("n1", Role::Node, 2, 2, 3),
        ];
        let text = render_comparison(&good, "tabbyctl plan --model route-reflector");
        assert!(text.contains("planner check: ok"), "{text}");
        assert!(text.contains("rr1    RR     3/3"), "{text}");
        let bad = vec![row("n1", Role::Node, 2, 1, 2)];
        assert!(!bad[0].matches());
        let text = render_comparison(&bad, "x");
        assert!(text.contains("FAILED, 2 difference(s)"), "{text}");
        assert!(
            text.contains("n1: 1 sessions Established of 2 configured, the planner says 2"),
            "{text}"
        );
        assert!(
            text.contains("n1: 2 block routes, the planner says 3"),
            "{text}"
        );
        let nodes = render_nodes(&good, &[]);
        assert!(nodes.starts_with("NODE   ROLE   ADDRESS"), "{nodes}");
        assert!(nodes.contains("running   3/3"), "{nodes}");
    }

    #[test]
    fn matrix_grid() {
        let m = Matrix {
            pods: vec!["n1-1".into(), "n2-1".into(), "n3-1".into()],
            ok: vec![
                vec![false, true, true],
                vec![true, false, false],
                vec![true, true, false],
            ],
            down: Vec::new(),
            mode: MatrixMode::Full,
        };
        assert_eq!(m.pairs(), 6);
        assert_eq!(m.failures(), [("n2-1".to_string(), "n3-1".to_string())]);
        let text = m.render();
        assert_eq!(
            text,
            "Reachability (one ping per pair, 6 pairs: 5 ✓, 1 ✗):
FROM \\ TO   n1-1   n2-1   n3-1
n1-1        -      ✓      ✓
n2-1        ✓      -      ✗
n3-1        ✓      ✓      -
"
        );
        // n3-1 on a failed node: its pairs are expected to fail.
        let m = Matrix {
            ok: vec![
                vec![false, true, false],
                vec![true, false, false],
                vec![false, false, false],
            ],
            down: vec![false, false, true],
            ..m
        };
        assert_eq!(m.live_pairs(), 2);
        assert!(m.failures().is_empty());
        assert_eq!(m.expected_failures(), 4);
        assert_eq!(
            m.render(),
            "Reachability (one ping per pair, 6 pairs; 2 between pods on live nodes: 2 ✓, 0 ✗; pods on failed nodes: n3-1, 4 pair(s) · unreachable as expected):
FROM \\ TO   n1-1   n2-1   n3-1
n1-1        -      ✓      ·
n2-1        ✓      -      ·
n3-1        ·      ·      -
"
        );
    }

    #[test]
    fn sampled_matrix() {
        let pods: Vec<String> = (1..=5).map(|i| format!("n{i}-1")).collect();
        let mut ok = vec![vec![true; 5]; 5];
        // n2-1 -> n3-1 (offset 1) is sampled and fails; n1-1 -> n3-1 (offset 2) is
        // not sampled, so its false is no failure.
        ok[1][2] = false;
        ok[0][2] = false;
        let m = Matrix {
            pods,
            ok,
            down: Vec::new(),
            mode: MatrixMode::Sample(2),
        };
        // Offsets 1 and 3 of 4: 2 pairs per pod.
        assert_eq!(m.pairs(), 10);
        assert!(m.tested().contains(&(4, 0)) && m.tested().contains(&(0, 3)));
        assert!(!m.tested().contains(&(0, 2)));
        assert_eq!(m.failures(), [("n2-1".to_string(), "n3-1".to_string())]);
        assert_eq!(
            m.render(),
            "Reachability (sampled (--matrix sample:2): one ping from each pod to 2 others, of 20 pairs, 10 pairs: 9 ✓, 1 ✗):\n  ✗ n2-1 -> n3-1\n"
        );
        let none = Matrix {
            mode: MatrixMode::None,
            ..m
        };
        assert_eq!(none.pairs(), 0);
        assert!(none.failures().is_empty());
        assert!(none.render().contains("not tested (--matrix none)"));
    }
}
