//! Polling helpers: real daemons converge in their own time, so tests wait
//! for a condition with a deadline instead of sleeping a fixed amount.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `cond` until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Polls `f` until it yields `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_for`], but a timeout becomes [`Error::Timeout`] naming `what`.
pub fn expect_within<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> Result<T> {
    wait_for(timeout, f).ok_or_else(|| Error::Timeout {
        what: what.to_string(),
        secs: timeout.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_times_out() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(2), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        assert!(!wait_until(Duration::from_millis(150), || false));
        let e = expect_within::<()>("nothing", Duration::from_millis(10), || None).unwrap_err();
        assert!(e.to_string().contains("nothing"), "{e}");
    }
}
