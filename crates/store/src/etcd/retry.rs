//! Which etcd failures may be retried, and how long to wait between tries. Pure logic:
//! it sees only the error text, so that it can be tested without a server.

use std::time::Duration;

/// What a failed request tells us about the server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request never reached a server (connection refused, no leader to propose
    /// to): sending it again is safe, also for writes.
    NotSent(String),
    /// The request may or may not have been applied (connection lost mid-request,
    /// timeout, leader change while committing). Reads may be retried; a write's
    /// outcome is unknown.
    Unknown(String),
    /// The server answered with an error that a retry would not change.
    Permanent(String),
    /// The requested revision was compacted away.
    Compacted(String),
}

impl Failure {
    /// The human-readable cause.
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::NotSent(m) | Failure::Unknown(m) | Failure::Permanent(m) => m,
            Failure::Compacted(m) => m,
        }
    }
}

// gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html), by number
// because etcd-client does not re-export tonic's `Code`.
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const RESOURCE_EXHAUSTED: i32 = 8;
const ABORTED: i32 = 10;
const OUT_OF_RANGE: i32 = 11;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;

/// Texts of failures that happen before a request leaves the client or that etcd
/// returns before proposing it to raft.
const NOT_SENT_MARKERS: &[&str] = &[
    "error trying to connect",
    "tcp connect error",
    "connection refused",
    "dns error",
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "etcdserver: not capable",
];

/// Classifies a gRPC status (`code`, full text including its source chain).
pub(crate) fn classify_status(code: i32, text: &str) -> Failure {
    let lower = text.to_ascii_lowercase();
    let message = text.to_string();
    if lower.contains("required revision has been compacted") {
        return Failure::Compacted(message);
    }
    if NOT_SENT_MARKERS.iter().any(|m| lower.contains(m)) {
        return Failure::NotSent(message);
    }
    match code {
        UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | ABORTED | UNKNOWN | INTERNAL => {
            Failure::Unknown(message)
        }
        RESOURCE_EXHAUSTED => Failure::NotSent(message),
        OUT_OF_RANGE => Failure::Permanent(message),
        _ => Failure::Permanent(message),
    }
}

/// Classifies an error that is not a gRPC status (transport, I/O, client internals).
pub(crate) fn classify_other(text: &str) -> Failure {
    let lower = text.to_ascii_lowercase();
    if NOT_SENT_MARKERS.iter().any(|m| lower.contains(m)) {
        Failure::NotSent(text.to_string())
    } else {
        Failure::Unknown(text.to_string())
    }
}

/// Exponential backoff: 25 ms doubling up to `max`, reset by [`Backoff::reset`].
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        let first = Duration::from_millis(25).min(max);
        Backoff {
            next: first,
            first,
            max,
        }
    }

    /// The pause before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the shortest pause, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_refused_was_not_sent() {
        let f = classify_status(
            UNAVAILABLE,
            "status: Unavailable, message: \"error trying to connect: tcp connect error: Connection refused (os error 111)\"",
        );
        assert!(matches!(f, Failure::NotSent(_)), "{f:?}");
        assert!(matches!(
            classify_status(UNAVAILABLE, "etcdserver: no leader"),
            Failure::NotSent(_)
        ));
        assert!(matches!(
            classify_other("transport error: tcp connect error: Connection refused"),
            Failure::NotSent(_)
        ));
    }

    #[test]
    fn lost_connections_and_timeouts_are_unknown() {
        for (code, text) in [
            (UNAVAILABLE, "etcdserver: leader changed"),
            (
                UNAVAILABLE,
                "error reading a body from connection: connection reset",
            ),
            (DEADLINE_EXCEEDED, "etcdserver: request timed out"),
            (UNKNOWN, "h2 protocol error: stream no longer needed"),
        ] {
            assert!(
                matches!(classify_status(code, text), Failure::Unknown(_)),
                "{text}"
            );
        }
        assert!(matches!(
            classify_other("operation timed out"),
            Failure::Unknown(_)
        ));
    }

    #[test]
    fn server_rejections_are_permanent() {
        assert!(matches!(
            classify_status(3, "etcdserver: key is not provided"),
            Failure::Permanent(_)
        ));
        assert!(matches!(
            classify_status(7, "etcdserver: permission denied"),
            Failure::Permanent(_)
        ));
        assert!(matches!(
            classify_status(
                OUT_OF_RANGE,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            Failure::Compacted(_)
        ));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(150));
        let ds: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(ds, vec![25, 50, 100, 150, 150]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(25));
    }
}
