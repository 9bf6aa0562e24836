//! Errors of data plane operations; each names the namespace, link or route so
//! the CNI plugin can pass the message on to a user unchanged.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a data plane operation failed with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object already exists (EEXIST).
    #[error("{what} already exists")]
    Exists {
        /// The object.
        what: String,
    },
    /// The object does not exist (ENOENT, ENODEV, ESRCH).
    #[error("{what} not found")]
    NotFound {
        /// The object.
        what: String,
    },
    /// A network namespace cannot be opened or entered.
    #[error("network namespace {path}: {reason}")]
    Netns {
        /// Its path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The kernel refused a netlink request.
    #[error("{op}: {reason}")]
    Netlink {
        /// The operation, e.g. `add route 100.64.0.5/32 dev cali1`.
        op: String,
        /// The kernel's answer.
        reason: String,
    },
    /// Writing or reading `/proc/sys` failed.
    #[error("sysctl {key}: {reason}")]
    Sysctl {
        /// The key, e.g. `net/ipv4/conf/cali1/proxy_arp`.
        key: String,
        /// Why.
        reason: String,
    },
    /// A link name the kernel would refuse or that belongs to someone else.
    #[error("interface {name:?} {reason}")]
    Collision {
        /// The name.
        name: String,
        /// Where and why.
        reason: String,
    },
    /// The kernel lacks a feature (a link type whose module is missing, ...).
    #[error("the kernel does not support {what}")]
    Unsupported {
        /// The feature and the request that found out, e.g. `ipip links (no ipip
        /// module): create ipip tunl0 in host: Operation not supported`.
        what: String,
    },
    /// Several errors from a teardown that carried on after the first.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True for [`Error::Unsupported`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }

    /// True for [`Error::Exists`].
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }
}
