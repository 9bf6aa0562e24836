//! One etcd-client [`Client`] (one gRPC channel) per member, and the health table that
//! picks which member a request goes to: the last one that answered, else the others in
//! turn; a member that timed out or refused is avoided for a growing back-off (so a hung
//! member costs one attempt deadline, not every retry), but is still tried when every
//! member is being avoided.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tokio::sync::{Notify, OnceCell};

use super::classify;
use super::retry::Failure;

/// How long a member is first avoided after a failure; doubled on each further one.
const AVOID_FIRST: Duration = Duration::from_secs(1);
/// Longest a failing member is avoided before it is tried again.
const AVOID_MAX: Duration = Duration::from_secs(16);

/// What is known of one member's health. Pure data: tested without a server.
#[derive(Clone, Debug, Default)]
struct Health {
    /// Failures since the last answer.
    failures: u32,
    /// Not picked before this instant (unless every member is avoided).
    avoid_until: Option<Instant>,
    /// When the member last answered.
    last_answer: Option<Instant>,
}

/// The health of every member and which one requests prefer.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    members: Vec<Health>,
    preferred: usize,
}

impl Table {
    pub(crate) fn new(n: usize) -> Table {
        Table {
            members: vec![Health::default(); n],
            preferred: 0,
        }
    }

    fn avoided(&self, i: usize, now: Instant) -> bool {
        self.members[i].avoid_until.is_some_and(|t| t > now)
    }

    /// Members in the order to try them: the preferred one, then the others in turn;
    /// members being avoided come last, the one whose back-off ends first first.
    pub(crate) fn order(&self, now: Instant) -> Vec<usize> {
        let n = self.members.len();
        let ring = (0..n).map(|k| (self.preferred + k) % n);
        let (mut order, mut avoided): (Vec<usize>, Vec<usize>) =
            ring.partition(|&i| !self.avoided(i, now));
        avoided.sort_by_key(|&i| self.members[i].avoid_until);
        order.extend(avoided);
        order
    }

    /// The first member in [`Table::order`] not yet `tried` in this round.
    pub(crate) fn next_untried(&self, now: Instant, tried: &[bool]) -> Option<usize> {
        self.order(now).into_iter().find(|&i| !tried[i])
    }

    /// Member `i` answered: it becomes the preferred one.
    pub(crate) fn answered(&mut self, i: usize, now: Instant) {
        let h = &mut self.members[i];
        h.failures = 0;
        h.avoid_until = None;
        h.last_answer = Some(now);
        self.preferred = i;
    }

    /// Member `i` timed out or could not be reached: avoid it for a while and move the
    /// preference to the next member.
    pub(crate) fn failed(&mut self, i: usize, now: Instant) {
        let h = &mut self.members[i];
        let avoid = AVOID_FIRST
            .saturating_mul(1 << h.failures.min(8))
            .min(AVOID_MAX);
        h.failures = h.failures.saturating_add(1);
        h.avoid_until = Some(now + avoid);
        h.last_answer = None;
        if self.preferred == i {
            self.preferred = self.order(now)[0];
        }
    }

    /// Whether member `i` answered within `fresh` before `now` (and has not failed since).
    pub(crate) fn answered_within(&self, i: usize, now: Instant, fresh: Duration) -> bool {
        self.members[i]
            .last_answer
            .is_some_and(|t| now.saturating_duration_since(t) <= fresh)
    }

    /// Indices of the members being avoided at `now`.
    pub(crate) fn avoided_members(&self, now: Instant) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.avoided(i, now))
            .collect()
    }
}

/// The members of one store: their addresses, their clients (made on first use, or at
/// connect time when credentials must be checked) and their health.
pub(crate) struct Members {
    /// `http://host:port` or `https://host:port`, one per member.
    urls: Vec<String>,
    /// `host:port`, for messages.
    addresses: Vec<String>,
    options: ConnectOptions,
    clients: Vec<OnceCell<Client>>,
    /// Woken when a member is marked failed, so that watches on it move at once.
    failures: Vec<Notify>,
    /// How many times each member was marked failed, so that a watch that was not
    /// waiting when it happened still notices.
    failure_counts: Vec<AtomicU64>,
    table: Mutex<Table>,
}

impl Members {
    pub(crate) fn new(addresses: Vec<String>, scheme: &str, options: ConnectOptions) -> Members {
        let n = addresses.len();
        Members {
            urls: addresses
                .iter()
                .map(|a| format!("{scheme}://{a}"))
                .collect(),
            clients: (0..n).map(|_| OnceCell::new()).collect(),
            failures: (0..n).map(|_| Notify::new()).collect(),
            failure_counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            addresses,
            options,
            table: Mutex::new(Table::new(n)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    pub(crate) fn address(&self, i: usize) -> &str {
        &self.addresses[i]
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table is plain data updated in one step: a panic elsewhere cannot leave
        // it half-written, so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_untried(&self, tried: &[bool]) -> Option<usize> {
        self.table().next_untried(Instant::now(), tried)
    }

    /// The member a new watch should use first.
    pub(crate) fn preferred(&self) -> usize {
        self.table().order(Instant::now())[0]
    }

    pub(crate) fn answered(&self, i: usize) {
        self.table().answered(i, Instant::now());
    }

    pub(crate) fn failed(&self, i: usize) {
        self.table().failed(i, Instant::now());
        self.failure_counts[i].fetch_add(1, Ordering::SeqCst);
        self.failures[i].notify_waiters();
        tracing::debug!(member = %self.addresses[i], "etcd member failed; avoiding it for a while");
    }

    /// How many times member `i` has been marked failed.
    pub(crate) fn failure_count(&self, i: usize) -> u64 {
        self.failure_counts[i].load(Ordering::SeqCst)
    }

    /// Notified whenever member `i` is marked failed.
    pub(crate) fn failure_signal(&self, i: usize) -> &Notify {
        &self.failures[i]
    }

    pub(crate) fn answered_within(&self, i: usize, fresh: Duration) -> bool {
        self.table().answered_within(i, Instant::now(), fresh)
    }

    pub(crate) fn avoided(&self) -> Vec<String> {
        self.table()
            .avoided_members(Instant::now())
            .into_iter()
            .map(|i| self.addresses[i].clone())
            .collect()
    }

    /// The client of member `i`, made on first use. With credentials, making it
    /// authenticates against that member, so it is bounded by `timeout`; a member that
    /// does not answer in time is reported as [`Failure::NotSent`] (nothing else was sent).
    pub(crate) async fn client(&self, i: usize, timeout: Duration) -> Result<Client, Failure> {
        let connecting = self.clients[i].get_or_try_init(|| async {
            Client::connect([self.urls[i].as_str()], Some(self.options.clone()))
                .await
                .map_err(|e| classify(&e))
        });
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(client)) => Ok(client.clone()),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::NotSent(format!(
                "{}: no answer while connecting within {timeout:?}",
                self.addresses[i]
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_member_that_answered_is_preferred() {
        let now = Instant::now();
        let mut t = Table::new(3);
        assert_eq!(t.order(now), vec![0, 1, 2]);
        t.answered(2, now);
        assert_eq!(t.order(now), vec![2, 0, 1]);
        assert!(t.answered_within(2, now + Duration::from_millis(300), Duration::from_secs(1)));
        assert!(!t.answered_within(2, now + Duration::from_secs(2), Duration::from_secs(1)));
        assert!(!t.answered_within(0, now, Duration::from_secs(1)));
    }

    #[test]
    fn a_failed_member_is_avoided_for_a_growing_back_off() {
        let now = Instant::now();
        let mut t = Table::new(3);
        t.failed(0, now);
        assert_eq!(t.order(now), vec![1, 2, 0], "moved to the end");
        assert_eq!(t.avoided_members(now), vec![0]);
        // Back in turn once its back-off is over, but no longer preferred.
        let later = now + AVOID_FIRST + Duration::from_millis(1);
        assert_eq!(t.order(later), vec![1, 2, 0]);
        assert!(t.avoided_members(later).is_empty());
        // A second failure doubles the back-off.
        t.failed(0, later);
        assert_eq!(t.avoided_members(later + AVOID_FIRST), vec![0]);
        assert!(t.avoided_members(later + 2 * AVOID_FIRST).is_empty());
        // Many failures are capped.
        for _ in 0..20 {
            t.failed(0, later);
        }
        assert!(t.avoided_members(later + AVOID_MAX).is_empty());
        // An answer clears it all.
        t.answered(0, later);
        assert_eq!(t.order(later), vec![0, 1, 2]);
    }

    #[test]
    fn when_every_member_is_avoided_the_soonest_back_comes_first() {
        let now = Instant::now();
        let mut t = Table::new(3);
        t.failed(1, now);
        t.failed(1, now);
        t.failed(2, now);
        t.failed(0, now + Duration::from_millis(10));
        assert_eq!(t.order(now), vec![2, 0, 1]);
        let mut tried = vec![false; 3];
        let mut seen = Vec::new();
        while let Some(i) = t.next_untried(now, &tried) {
            tried[i] = true;
            seen.push(i);
        }
        assert_eq!(
            seen,
            vec![2, 0, 1],
            "every member is still tried once per round"
        );
    }
}
