//! The etcd v3 backend: the [`Datastore`] model maps one to one onto etcd's (store-wide
//! revision, per-key `mod_revision`, prefix ranges, watch from a revision). Conditional
//! writes are single transactions; reads are retried across members, writes only when
//! the request provably never reached a server.
//!
//! Failover. Each member has its own gRPC channel (`members`), and every attempt on a
//! member has a deadline, [`EtcdConfig::attempt_timeout`] (1 s by default, twice that
//! for writes), so a member that hangs with its sockets open (stopped, partitioned,
//! swapping) is found out: it is avoided for a growing back-off (1 s up to 16 s) and the
//! request moves on to the next member; the member that answered last is tried first.
//! All of it stays within [`EtcdConfig::request_timeout`]. With one of three members
//! hung, reads, writes and watches go on within about two attempt deadlines.
//!
//! Writes are never sent twice. Every write is a transaction that compares revisions;
//! when an attempt may have reached a server (it timed out, or lost its connection
//! mid-request) the write fails with [`StoreError::Unavailable`] saying "outcome
//! unknown"; the client layer and IPAM pass it on, and the next try (a re-run, the
//! agent's resync, the runtime's CNI retry) reads the key again and redoes its
//! compare-and-swap, which the revision check makes safe. We do not re-read here to
//! decide instead: a stopped member may still forward the write to the leader when it
//! resumes, after any read we make, so no read can prove that the write will not apply.
//! To make such outcomes rare, a write goes only to a member that answered within the
//! last attempt deadline; any other member is first probed with a cheap read, and one
//! that fails the probe is skipped (the write was not sent to it, so moving on is safe).
//!
//! Watches fail over too: see `watch`.

mod config;
mod members;
mod retry;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    GetOptions, Identity, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

pub use config::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DIAL_TIMEOUT, DEFAULT_LIST_PAGE_SIZE, DEFAULT_REQUEST_TIMEOUT,
    ENV_CA_CERT_FILE, ENV_CERT_FILE, ENV_KEY_FILE, ENV_PASSWORD, ENV_USERNAME, EtcdConfig,
};
use members::Members;
use retry::{Backoff, Failure};

use crate::{Datastore, KeyValue, ListResult, Result, Revision, StoreError, WatchStream};

/// Longest pause between two attempts of one request.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How many times `list` and `list_prefixes` start over when their snapshot revision
/// is compacted mid-way.
const LIST_RESTARTS: usize = 3;

/// A [`Datastore`] on an etcd v3 cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// What every request (and every watch stream) needs.
struct Inner {
    config: EtcdConfig,
    /// `etcd://h1:2379,h2:2379`: the `endpoint` of every error.
    url: String,
    members: Members,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// Whether a failed attempt may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idempotence {
    /// Reads: any transient failure is retried.
    Read,
    /// Writes: retried only when the request never reached a server.
    Write,
    /// Compaction: a write that may take long (it waits until the history is
    /// physically gone), so its attempt gets the whole remaining budget.
    Compact,
}

impl EtcdStore {
    /// Prepares a client for `config.endpoints`. Connections are opened on first use
    /// (so a store can be created while etcd is down), except that credentials are
    /// checked right away when a user name is configured.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        let url = config.display_url();
        if config.endpoints.is_empty() {
            return Err(StoreError::BadUrl {
                url,
                reason: "no etcd endpoint given".to_string(),
            });
        }
        if let Some(bad) = config
            .endpoints
            .iter()
            .find(|e| e.contains("://") || !e.contains(':'))
        {
            return Err(StoreError::BadUrl {
                url,
                reason: format!(
                    "endpoint {bad:?} must be host:port (the scheme comes from etcd:// or etcds://)"
                ),
            });
        }
        if config.attempt_timeout.is_zero() {
            return Err(StoreError::Backend {
                endpoint: url,
                message: "attempt_timeout must be positive".to_string(),
            });
        }
        if config.list_page_size <= 0 {
            return Err(StoreError::Backend {
                endpoint: url,
                message: format!(
                    "list_page_size must be positive, got {}",
                    config.list_page_size
                ),
            });
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.dial_timeout)
            // Pings find a silently dead member (no RST) so that watches move on.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from the quorum rejects requests (and cancels watches)
            // instead of serving stale data or hanging: we then fail over.
            .with_require_leader(true);
        let scheme = if config.tls { "https" } else { "http" };
        if config.tls {
            options = options.with_tls(tls_options(&config, &url).await?);
        }
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        let members = Members::new(config.endpoints.clone(), scheme, options);
        if config.username.is_some() {
            check_credentials(&members, &url, config.dial_timeout).await?;
        }
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                config,
                url,
                members,
            }),
        })
    }

    /// Opens the store an `etcd://` / `etcds://` URL names, with TLS files and
    /// credentials from the environment ([`EtcdConfig::from_url_and_env`]).
    pub async fn open(url: &crate::StoreUrl) -> Result<EtcdStore> {
        EtcdStore::connect(EtcdConfig::from_url_and_env(url)?).await
    }

    /// Settings the store was opened with.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// Members (`host:port`) that recently timed out or refused and are being avoided
    /// until their back-off ends.
    pub fn avoided_members(&self) -> Vec<String> {
        self.inner.members.avoided()
    }

    /// Compacts etcd's history up to `revision` and waits until it is physically done:
    /// watches from older revisions then get [`crate::WatchEvent::Compacted`].
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner
            .call("compact", Idempotence::Compact, |c| async move {
                let mut kv = c.kv_client();
                kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await
            .map(|_| ())
    }

    /// Every key from `start` up to `end`, a page at a time, read at `revision` (0 =
    /// latest); returns them with the revision they were read at.
    async fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        revision: Revision,
    ) -> Result<(Vec<KeyValue>, Revision), Failure> {
        let (mut kvs, latest, mut more) = self.page(start, end.clone(), revision).await?;
        let revision = if revision > 0 { revision } else { latest };
        while more {
            let Some(last) = kvs.last() else { break };
            // The next page starts right after the last key seen: key + "\0".
            let mut next = last.key.clone().into_bytes();
            next.push(0);
            let (page, _, page_more) = self.page(next, end.clone(), revision).await?;
            kvs.extend(page);
            more = page_more;
        }
        Ok((kvs, revision))
    }

    /// One page of a prefix range: at most `page` keys from `start` up to `end`, read at
    /// `revision` (0 = latest).
    async fn page(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        revision: Revision,
    ) -> Result<(Vec<KeyValue>, Revision, bool), Failure> {
        let limit = self.inner.config.list_page_size;
        self.inner
            .attempt_loop(Idempotence::Read, |c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let mut kv = c.kv_client();
                    let options = GetOptions::new()
                        .with_range(end)
                        .with_limit(limit)
                        .with_revision(revision);
                    let mut resp = kv.get(start, Some(options)).await?;
                    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                    let more = resp.more();
                    let kvs = resp.take_kvs().iter().map(convert_kv).collect();
                    Ok((kvs, rev, more))
                }
            })
            .await
    }

    /// Runs a write transaction and tells whether its comparisons held.
    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        self.inner
            .call(what, Idempotence::Write, |c| {
                let txn = txn.clone();
                async move {
                    let mut kv = c.kv_client();
                    kv.txn(txn).await
                }
            })
            .await
    }
}

impl Inner {
    /// Runs `op` until it succeeds, fails for good, or the request timeout is spent,
    /// moving to the next member after each failure: every member once per round, with
    /// a pause between rounds.
    async fn attempt_loop<T, F, Fut>(&self, kind: Idempotence, mut op: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut backoff = Backoff::new(MAX_RETRY_DELAY);
        let mut tried = vec![false; self.members.len()];
        let mut last = None;
        loop {
            let now = Instant::now();
            let out_of_time = || {
                last.clone().unwrap_or_else(|| {
                    Failure::Unknown(format!(
                        "no answer within {:?}",
                        self.config.request_timeout
                    ))
                })
            };
            if now >= deadline {
                return Err(out_of_time());
            }
            let Some(i) = self.members.next_untried(&tried) else {
                let delay = backoff.next_delay();
                if now + delay >= deadline {
                    return Err(out_of_time());
                }
                tokio::time::sleep(delay).await;
                tried.fill(false);
                continue;
            };
            tried[i] = true;
            let failure = match self.attempt(i, kind, deadline, &mut op).await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let retry = match &failure {
                Failure::NotSent(_) => true,
                Failure::Unknown(_) => kind == Idempotence::Read,
                Failure::Permanent(_) | Failure::Compacted(_) => false,
            };
            if !retry {
                return Err(failure);
            }
            tracing::debug!(
                member = self.members.address(i),
                error = failure.message(),
                "etcd request failed, trying the next member"
            );
            last = Some(failure);
        }
    }

    /// One attempt of `op` on member `i`, recording in the health table whether the
    /// member answered.
    async fn attempt<T, F, Fut>(
        &self,
        i: usize,
        kind: Idempotence,
        until: Instant,
        op: &mut F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let remaining = || until.saturating_duration_since(Instant::now());
        let read_deadline = self.config.attempt_timeout.min(remaining());
        let result = async {
            let client = self.members.client(i, read_deadline).await?;
            let deadline = match kind {
                Idempotence::Read => read_deadline,
                Idempotence::Write | Idempotence::Compact => {
                    if !self.members.answered_within(i, self.config.attempt_timeout) {
                        // Not heard of lately: make sure it answers before trusting it
                        // with a write whose outcome would otherwise be unknown.
                        match probe(&client, read_deadline).await {
                            // A refusal (say, no read permission on the probe key) is
                            // an answer too.
                            Ok(_) | Err(Failure::Permanent(_) | Failure::Compacted(_)) => {}
                            Err(f) => {
                                return Err(Failure::NotSent(format!("probe: {}", f.message())));
                            }
                        }
                    }
                    if kind == Idempotence::Compact {
                        remaining()
                    } else {
                        (2 * self.config.attempt_timeout).min(remaining())
                    }
                }
            };
            match tokio::time::timeout(deadline, op(client)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(classify(&e)),
                Err(_) => Err(Failure::Unknown(format!(
                    "{}: no answer within {deadline:?}",
                    self.members.address(i)
                ))),
            }
        }
        .await;
        match &result {
            // The member answered, if only with a refusal.
            Ok(_) | Err(Failure::Permanent(_) | Failure::Compacted(_)) => self.members.answered(i),
            Err(Failure::NotSent(_) | Failure::Unknown(_)) => self.members.failed(i),
        }
        result
    }

    /// [`Inner::attempt_loop`] with the failure turned into a [`StoreError`] naming
    /// the endpoints and the operation.
    async fn call<T, F, Fut>(&self, what: &str, kind: Idempotence, op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt_loop(kind, op)
            .await
            .map_err(|f| self.error(what, kind, f))
    }

    fn error(&self, what: &str, kind: Idempotence, failure: Failure) -> StoreError {
        let endpoint = self.url.clone();
        let timeout = self.config.request_timeout;
        match failure {
            Failure::NotSent(m) => StoreError::Unavailable {
                endpoint,
                message: format!("{what}: no etcd member reachable within {timeout:?}: {m}"),
            },
            Failure::Unknown(m) if kind != Idempotence::Read => StoreError::Unavailable {
                endpoint,
                message: format!(
                    "{what}: outcome unknown (the write may or may not have been applied; \
                     read the key again): {m}"
                ),
            },
            Failure::Unknown(m) => StoreError::Unavailable {
                endpoint,
                message: format!("{what}: no answer from etcd within {timeout:?}: {m}"),
            },
            Failure::Permanent(m) | Failure::Compacted(m) => StoreError::Backend {
                endpoint,
                message: format!("{what}: {m}"),
            },
        }
    }
}

#[async_trait]
impl Datastore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let what = format!("get {key}");
        self.inner
            .call(&what, Idempotence::Read, |c| async move {
                let mut kv = c.kv_client();
                let resp = kv.get(key, None).await?;
                Ok(resp.kvs().first().map(convert_kv))
            })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<ListResult> {
        self.list_prefixes(&[prefix]).await
    }

    async fn list_prefixes(&self, prefixes: &[&str]) -> Result<ListResult> {
        let ranges: Vec<_> = crate::prefixes::disjoint(prefixes)
            .iter()
            .map(|p| prefix_range(p.as_bytes()))
            .collect();
        if ranges.is_empty() {
            let revision = self.revision().await?;
            return Ok(ListResult {
                kvs: Vec::new(),
                revision,
            });
        }
        snapshot(&ranges, LIST_RESTARTS, |start, end, revision| {
            self.range(start, end, revision)
        })
        .await
        .map_err(|f| {
            let what = format!("list {}", prefixes.join(", "));
            self.inner.error(&what, Idempotence::Read, f)
        })
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision> {
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(&format!("create {key}"), txn).await?;
        if resp.succeeded() {
            return Ok(header_revision(&resp));
        }
        Err(StoreError::AlreadyExists {
            key: key.to_string(),
        })
    }

    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision> {
        // `version > 0` keeps `expected == 0` from creating an absent key.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, expected),
                Compare::version(key, CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(&format!("update {key}"), txn).await?;
        if resp.succeeded() {
            return Ok(header_revision(&resp));
        }
        Err(compare_failed(key, expected, &resp))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let mut compares = vec![Compare::version(key, CompareOp::Greater, 0)];
        if let Some(rev) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, rev));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(&format!("delete {key}"), txn).await?;
        if !resp.succeeded() {
            return Err(compare_failed(key, expected.unwrap_or_default(), &resp));
        }
        let prev = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(convert_kv),
            _ => None,
        });
        prev.ok_or_else(|| StoreError::Backend {
            endpoint: self.inner.url.clone(),
            message: format!("delete {key}: etcd returned no previous value"),
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        // "From now on" is pinned to a revision so that a resumed stream knows where
        // it stands.
        let start = if from <= 0 {
            self.revision().await? + 1
        } else {
            from
        };
        Ok(watch::resuming(self.inner.clone(), prefix, start))
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner
            .call("read revision", Idempotence::Read, |c| async move {
                let mut kv = c.kv_client();
                // A count of one (absent) key: the cheapest linearizable request that
                // carries the store revision.
                let resp = kv
                    .get(vec![0u8], Some(GetOptions::new().with_count_only()))
                    .await?;
                Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
            })
            .await
    }

    fn endpoint(&self) -> String {
        self.inner.url.clone()
    }
}

/// Reads `ranges` (disjoint, in key order) as one snapshot with `read(start, end, at)`:
/// the first at the latest revision R (`at` = 0), every later one at R, as etcd's
/// range-at-revision keeps it. When R is compacted away before the last read, starts
/// over from a newer revision, at most `restarts` times.
async fn snapshot<F, Fut>(
    ranges: &[(Vec<u8>, Vec<u8>)],
    restarts: usize,
    mut read: F,
) -> Result<ListResult, Failure>
where
    F: FnMut(Vec<u8>, Vec<u8>, Revision) -> Fut,
    Fut: Future<Output = Result<(Vec<KeyValue>, Revision), Failure>>,
{
    let mut restarted = 0;
    'snapshot: loop {
        let mut revision = 0;
        let mut kvs = Vec::new();
        for (start, end) in ranges {
            match read(start.clone(), end.clone(), revision).await {
                Ok((range, at)) => {
                    revision = at;
                    kvs.extend(range);
                }
                Err(Failure::Compacted(_)) if restarted < restarts => {
                    restarted += 1;
                    continue 'snapshot;
                }
                Err(f) => return Err(f),
            }
        }
        return Ok(ListResult { kvs, revision });
    }
}

/// A cheap linearizable read (the count of one absent key) that carries the store
/// revision, bounded by `deadline`.
async fn probe(client: &Client, deadline: Duration) -> Result<Revision, Failure> {
    let mut kv = client.kv_client();
    let counting = kv.get(vec![0u8], Some(GetOptions::new().with_count_only()));
    match tokio::time::timeout(deadline, counting).await {
        Ok(Ok(resp)) => Ok(resp.header().map(|h| h.revision()).unwrap_or_default()),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Failure::Unknown(format!("no answer within {deadline:?}"))),
    }
}

/// With credentials configured, authenticates against the members in turn until one
/// accepts (the others authenticate on first use), so that a wrong password is
/// reported at once. Bounded by the dial timeout overall.
async fn check_credentials(members: &Members, url: &str, dial_timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + dial_timeout;
    let mut last = String::new();
    for i in 0..members.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match members.client(i, remaining).await {
            Ok(_) => {
                members.answered(i);
                return Ok(());
            }
            Err(Failure::Permanent(m)) => {
                return Err(StoreError::Backend {
                    endpoint: url.to_string(),
                    message: format!("connecting: {m}"),
                });
            }
            Err(other) => {
                members.failed(i);
                last = format!("{}: {}", members.address(i), other.message());
            }
        }
    }
    Err(StoreError::Unavailable {
        endpoint: url.to_string(),
        message: format!("authenticating: no member answered within {dial_timeout:?}: {last}"),
    })
}

/// Builds rustls settings from the configured PEM files, naming a file that cannot be read.
async fn tls_options(config: &EtcdConfig, url: &str) -> Result<TlsOptions> {
    async fn read(path: &std::path::Path, what: &str, url: &str) -> Result<Vec<u8>> {
        tokio::fs::read(path)
            .await
            .map_err(|e| StoreError::Backend {
                endpoint: url.to_string(),
                message: format!("reading {what} {}: {e}", path.display()),
            })
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_cert_file {
        tls = tls.ca_certificate(Certificate::from_pem(
            read(ca, "CA certificate", url).await?,
        ));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        let cert = read(cert, "client certificate", url).await?;
        let key = read(key, "client key", url).await?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// The error for a transaction whose `or_else` branch ran (a `get` of the key).
fn compare_failed(key: &str, expected: Revision, resp: &TxnResponse) -> StoreError {
    let current = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
        _ => None,
    });
    match current {
        Some(actual) => StoreError::Conflict {
            key: key.to_string(),
            expected,
            actual,
        },
        None => StoreError::NotFound {
            key: key.to_string(),
        },
    }
}

fn header_revision(resp: &TxnResponse) -> Revision {
    resp.header().map(|h| h.revision()).unwrap_or_default()
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        // Tabby only writes UTF-8 keys; anything else is shown, not dropped.
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The `[start, end)` range holding every key that starts with `prefix`. The empty
/// prefix is the whole key space (`"\0"` to `"\0"` in etcd's range convention).
pub(crate) fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    // All 0xff: no key is greater, so range to the end of the key space.
    (prefix.to_vec(), vec![0])
}

/// Classifies any etcd client error, reading the whole source chain.
fn classify(e: &etcd_client::Error) -> Failure {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = format!("{:?}: {}", status.code(), status.message());
            append_sources(&mut text, status);
            retry::classify_status(status.code() as i32, &text)
        }
        other => {
            let mut text = other.to_string();
            append_sources(&mut text, other);
            retry::classify_other(&text)
        }
    }
}

fn append_sources(text: &mut String, e: &dyn std::error::Error) {
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_rejects_bad_settings_without_touching_the_network() {
        let err = EtcdStore::connect(EtcdConfig::new(["http://h:2379"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"http://h:2379\" must be host:port"), "{err}");
        let err = EtcdStore::connect(EtcdConfig::new(Vec::<String>::new()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no etcd endpoint"), "{err}");
        let mut zero_page = EtcdConfig::new(["h:2379"]);
        zero_page.list_page_size = 0;
        let err = EtcdStore::connect(zero_page).await.unwrap_err().to_string();
        assert!(err.contains("list_page_size must be positive"), "{err}");
        // Without credentials nothing is dialled: a store can be made while etcd is down.
        let s = EtcdStore::connect(EtcdConfig::new(["127.0.0.1:1"]))
            .await
            .unwrap();
        assert_eq!(s.endpoint(), "etcd://127.0.0.1:1");
    }

    fn pair(key: &str, rev: Revision) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    /// A store whose revision moves on by 10 between any two reads, and whose history
    /// is compacted past each snapshot `compactions` times: the snapshot starts over
    /// and reads every later range at its first range's revision.
    #[tokio::test]
    async fn snapshot_reads_later_ranges_at_the_first_revision_and_restarts_when_compacted() {
        let ranges = vec![
            prefix_range(b"/a/"),
            prefix_range(b"/b/"),
            prefix_range(b"/c/"),
        ];
        for (compactions, restarts, ok) in [(0, 3, true), (2, 3, true), (3, 3, true), (4, 3, false)]
        {
            let calls = std::cell::RefCell::new(Vec::new());
            let latest = std::cell::Cell::new(100);
            let compacted = std::cell::Cell::new(0);
            let result = snapshot(&ranges, restarts, |start, _end, at| {
                calls.borrow_mut().push((start.clone(), at));
                latest.set(latest.get() + 10);
                let outcome = if at == 0 {
                    Ok((vec![pair("/a/1", 1)], latest.get()))
                } else if compacted.get() < compactions {
                    compacted.set(compacted.get() + 1);
                    Err(Failure::Compacted(
                        "required revision has been compacted".into(),
                    ))
                } else {
                    let key = format!("{}1", String::from_utf8_lossy(&start));
                    Ok((vec![pair(&key, 1)], at))
                };
                async move { outcome }
            })
            .await;
            let calls = calls.into_inner();
            // Each attempt: the first range at 0, then the next ones at its revision.
            let first_at = |attempt: usize| 110 + 20 * attempt as Revision;
            if ok {
                let result = result.unwrap();
                let r = first_at(compactions);
                assert_eq!(result.revision, r, "{compactions} compactions");
                let keys: Vec<&str> = result.kvs.iter().map(|kv| kv.key.as_str()).collect();
                assert_eq!(keys, ["/a/1", "/b/1", "/c/1"]);
                let tail: Vec<(Vec<u8>, Revision)> = calls[calls.len() - 3..].to_vec();
                assert_eq!(
                    tail,
                    vec![
                        (b"/a/".to_vec(), 0),
                        (b"/b/".to_vec(), r),
                        (b"/c/".to_vec(), r)
                    ]
                );
                assert_eq!(calls.len(), 3 + 2 * compactions);
            } else {
                assert!(matches!(result, Err(Failure::Compacted(_))), "{result:?}");
                assert_eq!(
                    calls.len(),
                    2 * (restarts + 1),
                    "gives up after {restarts} restarts"
                );
            }
        }
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(
            prefix_range(b"/calico/"),
            (b"/calico/".to_vec(), b"/calico0".to_vec())
        );
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }
}
