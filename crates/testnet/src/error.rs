//! Errors of the test-network toolkit. Every variant names the command,
//! namespace, field or file involved so a failing test explains itself.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while building or querying a test network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started (binary missing, not root, ...).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status as text.
        status: String,
        /// Trimmed standard error (or standard output when stderr was empty).
        stderr: String,
    },
    /// An argument was rejected before anything was run.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which argument or field.
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Output of a daemon or tool did not have the expected shape.
    #[error("cannot parse output of `{cmd}`: {reason}")]
    Parse {
        /// The command whose output was parsed.
        cmd: String,
        /// What was unexpected.
        reason: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {secs:.1}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        secs: f64,
    },
    /// A socket or system call made for a test failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The requested feature is not offered by this daemon.
    #[error("{daemon} does not support {feature}")]
    Unsupported {
        /// Daemon name.
        daemon: &'static str,
        /// Feature name.
        feature: String,
    },
    /// Several cleanup steps failed; all were attempted.
    #[error("cleanup failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Cleanup(Vec<Error>),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
