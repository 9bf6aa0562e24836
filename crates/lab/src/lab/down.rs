//! `lab down`: stops the lab's processes (by pid from `lab.json`, checked against
//! `/proc` first), deletes every namespace named `tl-<name>-*` (with whatever still
//! runs in it, even when `lab.json` is missing or partial) and removes the state dir.
//! Removing a lab that is not there is a no-op.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::host;
use super::progress::Progress;
use super::state::{LabState, STATE_FILE};
use super::{LabError, netns_prefix};

/// Above this many namespaces `down` reports its progress.
const BIG_LAB_NAMESPACES: usize = 50;

/// What `down` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    /// Processes stopped, as `agent n1 (pid 123)`.
    pub processes: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// The state dir, if it was removed.
    pub dir: Option<PathBuf>,
}

impl DownReport {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.namespaces.is_empty() && self.dir.is_none()
    }

    /// One line for the user.
    pub fn render(&self, name: &str) -> String {
        if self.is_empty() {
            return format!("lab {name:?}: nothing to remove\n");
        }
        let mut s = format!(
            "lab {name:?} removed: {} process(es), {} namespace(s)",
            self.processes.len(),
            self.namespaces.len()
        );
        if let Some(d) = &self.dir {
            s.push_str(&format!(", {}", d.display()));
        }
        s.push('\n');
        s
    }
}

/// Removes lab `name` whose state lives in `<root>/<name>`. Every step is attempted;
/// the errors of all of them are returned together.
pub fn down(name: &str, root: &Path) -> Result<DownReport, LabError> {
    down_with(name, root, &mut |_: &str| {})
}

/// [`down`], saying how far it got on `progress` (a large lab has hundreds of
/// namespaces to delete).
pub fn down_with(
    name: &str,
    root: &Path,
    progress: &mut dyn Progress,
) -> Result<DownReport, LabError> {
    super::spec::check_name(name)?;
    if !tabby_testnet::is_root() {
        return Err(LabError::NotRoot);
    }
    let dir = root.join(name);
    let mut report = DownReport::default();
    let mut errors = Vec::new();

    // Processes by pid: SIGTERM, a short grace, then SIGKILL.
    let state = LabState::load(&dir).ok();
    let live: Vec<_> = state
        .iter()
        .flat_map(|s| &s.processes)
        .filter(|p| host::alive(p.pid, &p.program))
        .collect();
    for p in &live {
        host::signal(p.pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while live.iter().any(|p| host::alive(p.pid, &p.program)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &live {
        if host::alive(p.pid, &p.program) {
            host::signal(p.pid, Signal::SIGKILL);
        }
        report.processes.push(format!("{} (pid {})", p.what, p.pid));
    }

    // Namespaces by prefix, several at a time; whatever runs in them is killed
    // first. The sweep after it catches any the parallel pass missed.
    let listed = host::lab_namespaces(name).unwrap_or_default();
    let total = listed.len();
    // Only a large lab takes long enough to be worth a progress bar.
    let big = total > BIG_LAB_NAMESPACES;
    if big {
        progress.step(&format!("deleting {total} namespaces"));
    }
    let deleted = host::parallel(
        &listed,
        host::WORKERS,
        |ns| delete_netns(ns).then(|| ns.clone()),
        |done| {
            if big {
                progress.tick("namespaces", done, total);
            }
        },
    );
    report.namespaces = deleted.into_iter().flatten().collect();
    match tabby_testnet::cleanup_stale(&netns_prefix(name)) {
        Ok(deleted) => report.namespaces.extend(deleted),
        Err(e) => errors.push(LabError::invalid(
            format!("deleting namespaces {}*", netns_prefix(name)),
            e.to_string(),
        )),
    }

    // The state dir, only when it is recognisably the lab's.
    if dir.exists() {
        if is_lab_dir(&dir) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => report.dir = Some(dir),
                Err(e) => errors.push(LabError::io(format!("removing {}", dir.display()), e)),
            }
        } else {
            errors.push(LabError::invalid(
                "state dir",
                format!(
                    "not removing {}: it holds files a lab does not make, so it may not be a lab's",
                    dir.display()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(LabError::Teardown(errors))
    }
}

/// Kills what runs in namespace `ns`, then deletes it; whether it is gone.
fn delete_netns(ns: &str) -> bool {
    if let Ok(out) = host::ip(&["netns", "pids", ns]) {
        for pid in out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            host::signal(pid, Signal::SIGKILL);
        }
    }
    host::ip(&["netns", "del", ns]).is_ok()
}

/// Whether `dir` holds only what a lab makes (so that removing it cannot take anything
/// else with it, even when `lab.json` is gone): the state file, the store, logs,
/// control sockets, etcd's data, the agents' state dirs (`n1`, `rr1`) and the
/// routers' dirs (`tor1`, `spine1`).
fn is_lab_dir(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .all(|e| lab_file(&e.file_name().to_string_lossy()))
}

fn lab_file(name: &str) -> bool {
    let node_dir = |n: &str| {
        ["n", "rr", "tor", "spine"].iter().any(|p| {
            n.strip_prefix(p)
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    matches!(
        name,
        STATE_FILE | "lab.json.tmp" | "store.db" | "store.db-shm" | "store.db-wal" | "etcd-data"
    ) || name.ends_with(".log")
        || name.ends_with(".ctl")
        || node_dir(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_dirs_are_removed() {
        for ok in [
            "lab.json",
            "store.db-wal",
            "agent-n1.log",
            "n1.ctl",
            "n12",
            "rr2",
            "tor1",
            "spine2",
            "bird-tor1.log",
            "etcd-data",
        ] {
            assert!(lab_file(ok), "{ok}");
        }
        for bad in ["etc", "n", "rr", "n1x", "passwd", "bin"] {
            assert!(!lab_file(bad), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("store.db"), "").unwrap();
        std::fs::create_dir(d.path().join("n1")).unwrap();
        assert!(is_lab_dir(d.path()));
        std::fs::write(d.path().join("notes.txt"), "").unwrap();
        assert!(!is_lab_dir(d.path()));
    }

    #[test]
    fn reports() {
        assert_eq!(
            DownReport::default().render("x"),
            "lab \"x\": nothing to remove\n"
        );
        let r = DownReport {
            processes: vec!["agent n1 (pid 7)".into()],
            namespaces: vec!["tl-x-fab".into(), "tl-x-n1".into()],
            dir: Some("/run/tabby-lab/x".into()),
        };
        assert_eq!(
            r.render("x"),
            "lab \"x\" removed: 1 process(es), 2 namespace(s), /run/tabby-lab/x\n"
        );
    }
}
