//! The etcd v3 backend: the [`Datastore`] model maps one to one onto etcd's (store-wide
//! revision, per-key `mod_revision`, prefix ranges, watch from a revision). Conditional
//! writes are single transactions; reads are retried across members, writes only when
//! the request provably never reached a server.

mod config;
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
    DEFAULT_DIAL_TIMEOUT, DEFAULT_LIST_PAGE_SIZE, DEFAULT_REQUEST_TIMEOUT, ENV_CA_CERT_FILE,
    ENV_CERT_FILE, ENV_KEY_FILE, ENV_PASSWORD, ENV_USERNAME, EtcdConfig,
};
use retry::{Backoff, Failure};

use crate::{Datastore, KeyValue, ListResult, Result, Revision, StoreError, WatchStream};

/// Longest pause between two attempts of one request.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How many times `list` starts over when its snapshot revision is compacted mid-way.
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
    client: Client,
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
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        // Without credentials this opens nothing; with them it authenticates, which
        // needs a member: bound it by the dial timeout.
        let connecting = Client::connect(endpoints, Some(options));
        let client = match tokio::time::timeout(config.dial_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let failure = classify(&e);
                return Err(match failure {
                    Failure::Permanent(m) => StoreError::Backend {
                        endpoint: url,
                        message: format!("connecting: {m}"),
                    },
                    other => StoreError::Unavailable {
                        endpoint: url,
                        message: format!("connecting: {}", other.message()),
                    },
                });
            }
            Err(_) => {
                return Err(StoreError::Unavailable {
                    endpoint: url,
                    message: format!(
                        "authenticating: no member answered within {:?}",
                        config.dial_timeout
                    ),
                });
            }
        };
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                config,
                url,
                client,
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

    /// Compacts etcd's history up to `revision` and waits until it is physically done:
    /// watches from older revisions then get [`crate::WatchEvent::Compacted`].
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner
            .call("compact", Idempotence::Write, |c| async move {
                let mut kv = c.kv_client();
                kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await
            .map(|_| ())
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
    /// Runs `op` until it succeeds, fails for good, or the request timeout is spent.
    async fn attempt_loop<T, F, Fut>(&self, kind: Idempotence, mut op: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut backoff = Backoff::new(MAX_RETRY_DELAY);
        let read_attempt = read_attempt_timeout(self.config.request_timeout);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // A read may be sent again, so one hung member (stopped, partitioned) must
            // not eat the whole budget: give each read attempt a slice of it. A write
            // attempt that times out has an unknown outcome and is never re-sent, so it
            // gets all the time there is.
            let attempt = match kind {
                Idempotence::Read => remaining.min(read_attempt),
                Idempotence::Write => remaining,
            };
            let failure = match tokio::time::timeout(attempt, op(self.client.clone())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Unknown("timed out".to_string()),
            };
            let retry = match &failure {
                Failure::NotSent(_) => true,
                Failure::Unknown(_) => kind == Idempotence::Read,
                Failure::Permanent(_) | Failure::Compacted(_) => false,
            };
            let delay = backoff.next_delay();
            if !retry || Instant::now() + delay >= deadline {
                return Err(failure);
            }
            tracing::debug!(endpoint = %self.url, error = failure.message(), "etcd request failed, retrying");
            tokio::time::sleep(delay).await;
        }
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
            Failure::Unknown(m) if kind == Idempotence::Write => StoreError::Unavailable {
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
        let what = format!("list {prefix}");
        let (first_key, end) = prefix_range(prefix.as_bytes());
        let mut restarts = 0;
        'snapshot: loop {
            let (mut kvs, revision, mut more) = self
                .page(first_key.clone(), end.clone(), 0)
                .await
                .map_err(|f| self.inner.error(&what, Idempotence::Read, f))?;
            while more {
                let Some(last) = kvs.last() else { break };
                // The next page starts right after the last key seen: key + "\0".
                let mut start = last.key.clone().into_bytes();
                start.push(0);
                match self.page(start, end.clone(), revision).await {
                    Ok((page, _, page_more)) => {
                        kvs.extend(page);
                        more = page_more;
                    }
                    // Compacted between two pages: the snapshot is gone, take a new one.
                    Err(Failure::Compacted(_)) if restarts < LIST_RESTARTS => {
                        restarts += 1;
                        continue 'snapshot;
                    }
                    Err(f) => return Err(self.inner.error(&what, Idempotence::Read, f)),
                }
            }
            return Ok(ListResult { kvs, revision });
        }
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

/// The time one read attempt may take: a third of the request budget, at least one
/// second (a busy but healthy cluster still answers), at most the budget.
fn read_attempt_timeout(budget: Duration) -> Duration {
    (budget / 3).max(Duration::from_secs(1)).min(budget)
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

    #[test]
    fn read_attempts_get_a_slice_of_the_budget() {
        let s = Duration::from_secs;
        assert_eq!(read_attempt_timeout(s(9)), s(3));
        assert_eq!(read_attempt_timeout(s(2)), s(1));
        assert_eq!(
            read_attempt_timeout(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
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
