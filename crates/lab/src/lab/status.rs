//! `lab status`: for every node whether its agent runs (pid and control socket), its
//! BGP sessions and proto-80 routes (for ToR and spine routers: their daemons, their
//! sessions and the routes they installed), the planner check as `up` makes it, and the pods.

use std::path::Path;

use super::LabError;
use super::check::{self, DeviceRow};
use super::host;
use super::layout::{self, Layout};
use super::state::{LabState, STATE_FILE};
use super::up::observe_many;

/// What `status` found.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// The report for stdout.
    pub text: String,
    /// Whether every agent runs.
    pub agents_running: bool,
}

/// The status of lab `name` in `<root>/<name>`.
pub async fn status(name: &str, root: &Path) -> Result<StatusReport, LabError> {
    super::spec::check_name(name)?;
    let dir = root.join(name);
    if !dir.join(STATE_FILE).exists() {
        let ns = host::lab_namespaces(name).unwrap_or_default();
        if ns.is_empty() {
            return Err(LabError::NoLab {
                name: name.to_string(),
                path: dir.join(STATE_FILE),
            });
        }
        return Err(LabError::State {
            path: dir.join(STATE_FILE),
            reason: format!(
                "missing, but namespaces of the lab exist ({}); remove them with `tabbyctl lab down --name {name}`",
                ns.join(", ")
            ),
        });
    }
    let state = LabState::load(&dir)?;
    let spec = state.spec(root);
    let layout = Layout::new(&spec);

    let mut rows = Vec::new();
    let mut agents = Vec::new();
    let mut all_running = !state.nodes.is_empty();
    let expected = layout::expected(&spec, &layout).ok().map(|(_, e)| e);
    let ns: Vec<String> = state.nodes.iter().map(|n| n.ns.clone()).collect();
    let sockets: Vec<std::path::PathBuf> = state.nodes.iter().map(|n| n.socket.clone()).collect();
    let all = observe_many(&ns, &sockets).await;
    for ((i, node), observed) in state.nodes.iter().enumerate().zip(all) {
        let pid = state
            .agent(&node.name)
            .map(|p| (p.pid, host::alive(p.pid, &p.program)));
        let running = matches!(pid, Some((_, true))) && observed.agent;
        all_running &= running;
        agents.push(match pid {
            Some((pid, true)) => format!("pid {pid}"),
            Some((pid, false)) => format!("pid {pid} gone"),
            None => "never started".to_string(),
        });
        if let Some(e) = expected.as_ref().and_then(|e| e.get(i)) {
            rows.push(DeviceRow {
                name: node.name.clone(),
                address: node.ip.clone(),
                expected: e.clone(),
                observed,
            });
        }
    }
    for (i, rec) in state.routers.iter().enumerate() {
        let Some(r) = layout.fabric_router(&rec.name) else {
            continue;
        };
        let (observed, _) = super::router::observe(rec.daemon, r, &rec.control);
        let pids: Vec<String> = state
            .processes
            .iter()
            .filter(|p| p.what.ends_with(&format!(" {}", rec.name)))
            .map(|p| {
                let alive = host::alive(p.pid, &p.program);
                all_running &= alive;
                format!(
                    "{} pid {}{}",
                    p.program,
                    p.pid,
                    if alive { "" } else { " gone" }
                )
            })
            .collect();
        all_running &= observed.agent;
        agents.push(pids.join(", "));
        if let Some(e) = expected.as_ref().and_then(|e| e.get(state.nodes.len() + i)) {
            rows.push(DeviceRow {
                name: rec.name.clone(),
                address: rec.ip.clone(),
                expected: e.clone(),
                observed,
            });
        }
    }
    let mut out = format!(
        "Lab {name:?} ({}): topology {}, encap {}, store {} ({}); state in {}\n\n",
        state.phase.name(),
        state.topology,
        state.encap,
        state.store,
        state.store_url,
        dir.display()
    );
    for f in &state.failures {
        out.push_str(&format!(
            "failed by `lab fail`: {} ({}); undo with `tabbyctl lab heal --name {name}`\n",
            f.node,
            super::fail::describe(f)
        ));
    }
    if !state.failures.is_empty() {
        out.push('\n');
    }
    out.push_str(&check::render_nodes(&rows, &agents));
    out.push('\n');
    if rows.len() == state.nodes.len() + state.routers.len() {
        out.push_str(&check::render_comparison(
            &rows,
            &layout::plan_command(&spec),
        ));
        out.push('\n');
    }
    let pods: Vec<Vec<String>> = state
        .pods
        .iter()
        .map(|p| vec![p.name.clone(), p.node.clone(), p.ip.clone(), p.ns.clone()])
        .collect();
    out.push_str(&check::table(
        &["POD", "NODE", "ADDRESS", "NAMESPACE"],
        &pods,
    ));
    Ok(StatusReport {
        text: out,
        agents_running: all_running,
    })
}
