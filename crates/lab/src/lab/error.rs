//! What can go wrong building, inspecting or removing a lab; every variant names the
//! thing involved.

use std::path::PathBuf;

/// A lab error.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An option the lab cannot build.
    #[error("{what}: {reason}")]
    Invalid {
        /// The option, e.g. `--nodes`.
        what: String,
        /// Why.
        reason: String,
    },
    /// Not running as root.
    #[error("the lab needs root (network namespaces, veth links, processes in them)")]
    NotRoot,
    /// Binaries the lab runs are missing.
    #[error("{missing} not found (looked in {looked} and PATH); {hint}")]
    MissingBinary {
        /// The missing programs, comma-separated.
        missing: String,
        /// Where they were looked for.
        looked: String,
        /// How to get them.
        hint: String,
    },
    /// A lab of that name exists already.
    #[error(
        "lab {name:?} exists ({evidence}); remove it first with `tabbyctl lab down --name {name}`"
    )]
    Exists {
        /// The lab.
        name: String,
        /// What shows it exists.
        evidence: String,
    },
    /// No lab of that name.
    #[error("no lab named {name:?} ({path} does not exist)")]
    NoLab {
        /// The lab.
        name: String,
        /// The state file looked for.
        path: PathBuf,
    },
    /// A device name `lab exec` does not know.
    #[error("lab {lab:?} has no node or pod {target:?}; it has {known}")]
    NoTarget {
        /// The lab.
        lab: String,
        /// The name given.
        target: String,
        /// The names it has.
        known: String,
    },
    /// An external command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error (or output).
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The datastore refused or could not be reached.
    #[error("datastore {url}: {reason}")]
    Store {
        /// The store URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A process the lab started exited.
    #[error("{what} exited while the lab was being built; the end of {log}:\n{tail}")]
    Died {
        /// The process, e.g. `agent n1`.
        what: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// Something did not happen in time.
    #[error("{what} within {secs} s: {detail}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline.
        secs: u64,
        /// What was seen instead.
        detail: String,
    },
    /// The CNI plugin failed to add a pod.
    #[error("CNI ADD of pod {pod} on {node} failed: {output}")]
    Cni {
        /// The pod.
        pod: String,
        /// Its node.
        node: String,
        /// The plugin's output.
        output: String,
    },
    /// The planner rejected the lab's figures.
    #[error("the planner rejects the lab's cluster: {0}")]
    Plan(#[from] crate::plan::PlanError),
    /// The state file is unreadable.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Teardown steps that failed (every step is attempted).
    #[error("removing the lab: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<LabError>),
}

impl LabError {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> LabError {
        LabError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
