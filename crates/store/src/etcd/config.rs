//! How to reach etcd: endpoints, TLS files, credentials and timeouts, read from a store
//! URL plus calicoctl-style environment variables (`TABBY_ETCD_*`, else `ETCD_*`).

use std::path::PathBuf;
use std::time::Duration;

use crate::{Result, StoreError, StoreUrl};

/// Default time to establish a connection to one endpoint.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default budget for one request, retries included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of one attempt on one member (reads, write probes, opening a watch,
/// a watch's liveness check); writes get twice as long.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of keys fetched per page by `list`.
pub const DEFAULT_LIST_PAGE_SIZE: i64 = 500;

/// The variables read by [`EtcdConfig::from_url_and_env`], as `(tabby name, calicoctl name)`:
/// CA bundle, client certificate, client key, user name, password.
pub const ENV_CA_CERT_FILE: (&str, &str) = ("TABBY_ETCD_CA_CERT_FILE", "ETCD_CA_CERT_FILE");
pub const ENV_CERT_FILE: (&str, &str) = ("TABBY_ETCD_CERT_FILE", "ETCD_CERT_FILE");
pub const ENV_KEY_FILE: (&str, &str) = ("TABBY_ETCD_KEY_FILE", "ETCD_KEY_FILE");
pub const ENV_USERNAME: (&str, &str) = ("TABBY_ETCD_USERNAME", "ETCD_USERNAME");
pub const ENV_PASSWORD: (&str, &str) = ("TABBY_ETCD_PASSWORD", "ETCD_PASSWORD");

/// Connection settings for [`super::EtcdStore::connect`].
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member; requests fail over between them.
    pub endpoints: Vec<String>,
    /// Use TLS (`etcds://`). Needs [`EtcdConfig::ca_cert_file`].
    pub tls: bool,
    /// PEM CA bundle that signed the servers' certificates.
    pub ca_cert_file: Option<PathBuf>,
    /// PEM client certificate, with [`EtcdConfig::key_file`], for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of [`EtcdConfig::cert_file`].
    pub key_file: Option<PathBuf>,
    /// etcd user, with [`EtcdConfig::password`].
    pub username: Option<String>,
    /// Password of [`EtcdConfig::username`]; never printed by `Debug`.
    pub password: Option<String>,
    /// Time to open a connection to one endpoint.
    pub dial_timeout: Duration,
    /// Budget for one request including its retries; also bounds how long a failure
    /// takes to be reported.
    pub request_timeout: Duration,
    /// Deadline of one attempt on one member: a member that does not answer within it
    /// is taken for hung, avoided for a back-off, and the request moves to the next
    /// member (a write only if it provably was not sent; see the `etcd` module docs).
    /// Also how long a watch may be silent before its member is asked for a progress
    /// report, and how long the member then has to answer. Writes get twice as long,
    /// compaction (which waits for the history to be gone) the whole request budget.
    pub attempt_timeout: Duration,
    /// Keys per page in `list` (all pages are read at the first page's revision).
    pub list_page_size: i64,
}

impl std::fmt::Debug for EtcdConfig {
    // By hand so that the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("ca_cert_file", &self.ca_cert_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("list_page_size", &self.list_page_size)
            .finish()
    }
}

impl EtcdConfig {
    /// Plain-text settings with default timeouts for `endpoints` (`host:port`).
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: false,
            ca_cert_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
        }
    }

    /// Settings from an `etcd://` / `etcds://` URL and the process environment.
    pub fn from_url_and_env(url: &StoreUrl) -> Result<EtcdConfig> {
        EtcdConfig::from_url_and_vars(url, |name| std::env::var(name).ok())
    }

    /// Like [`EtcdConfig::from_url_and_env`] with the variables looked up by `var`
    /// (kept apart from the environment so that it can be tested).
    pub fn from_url_and_vars(
        url: &StoreUrl,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<EtcdConfig> {
        let StoreUrl::Etcd { endpoints, tls } = url else {
            return Err(StoreError::BadUrl {
                url: url.to_string(),
                reason: "not an etcd:// or etcds:// URL".to_string(),
            });
        };
        // The Tabby name wins; calicoctl's name is accepted so that an existing
        // calicoctl environment works unchanged. Empty means unset, as in calicoctl.
        let get = |names: (&'static str, &'static str)| -> Option<(String, &'static str)> {
            [names.0, names.1]
                .into_iter()
                .find_map(|n| var(n).filter(|v| !v.is_empty()).map(|v| (v, n)))
        };
        let mut config = EtcdConfig::new(endpoints.iter().cloned());
        config.tls = *tls;
        let ca = get(ENV_CA_CERT_FILE);
        let cert = get(ENV_CERT_FILE);
        let key = get(ENV_KEY_FILE);
        let user = get(ENV_USERNAME);
        let password = get(ENV_PASSWORD);
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_string(),
            reason,
        };
        if let (false, Some((_, name))) = (*tls, ca.as_ref().or(cert.as_ref()).or(key.as_ref())) {
            return Err(bad(format!(
                "{name} is set but the URL is plain etcd://; use etcds:// for TLS"
            )));
        }
        match (&cert, &key) {
            (Some((_, name)), None) => {
                return Err(bad(format!(
                    "{name} is set without a key file ({} or {})",
                    ENV_KEY_FILE.0, ENV_KEY_FILE.1
                )));
            }
            (None, Some((_, name))) => {
                return Err(bad(format!(
                    "{name} is set without a certificate file ({} or {})",
                    ENV_CERT_FILE.0, ENV_CERT_FILE.1
                )));
            }
            _ => {}
        }
        if *tls && ca.is_none() {
            return Err(bad(format!(
                "etcds:// needs the CA certificate that signed the etcd servers: set {} (or {})",
                ENV_CA_CERT_FILE.0, ENV_CA_CERT_FILE.1
            )));
        }
        match (&user, &password) {
            (Some((_, name)), None) => {
                return Err(bad(format!(
                    "{name} is set without a password ({} or {})",
                    ENV_PASSWORD.0, ENV_PASSWORD.1
                )));
            }
            (None, Some((_, name))) => {
                return Err(bad(format!(
                    "{name} is set without a user name ({} or {})",
                    ENV_USERNAME.0, ENV_USERNAME.1
                )));
            }
            _ => {}
        }
        config.ca_cert_file = ca.map(|(v, _)| PathBuf::from(v));
        config.cert_file = cert.map(|(v, _)| PathBuf::from(v));
        config.key_file = key.map(|(v, _)| PathBuf::from(v));
        config.username = user.map(|(v, _)| v);
        config.password = password.map(|(v, _)| v);
        Ok(config)
    }

    /// The endpoints as one URL, e.g. `etcd://127.0.0.1:2379,127.0.0.1:22379`: the
    /// `endpoint` of every error this backend reports.
    pub fn display_url(&self) -> String {
        StoreUrl::Etcd {
            endpoints: self.endpoints.clone(),
            tls: self.tls,
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn url(s: &str) -> StoreUrl {
        StoreUrl::parse(s).unwrap()
    }

    #[test]
    fn plain_url_without_variables() {
        let c = EtcdConfig::from_url_and_vars(&url("etcd://h1:2379,h2:2379"), vars(&[])).unwrap();
        assert_eq!(c.endpoints, vec!["h1:2379", "h2:2379"]);
        assert!(!c.tls);
        assert_eq!(c.ca_cert_file, None);
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(c.display_url(), "etcd://h1:2379,h2:2379");
    }

    #[test]
    fn tabby_variables_win_over_calicoctl_ones() {
        let c = EtcdConfig::from_url_and_vars(
            &url("etcds://h1:2379"),
            vars(&[
                ("TABBY_ETCD_CA_CERT_FILE", "/t/ca.pem"),
                ("ETCD_CA_CERT_FILE", "/c/ca.pem"),
                ("ETCD_CERT_FILE", "/c/cert.pem"),
                ("ETCD_KEY_FILE", "/c/key.pem"),
                ("ETCD_USERNAME", "calico"),
                ("TABBY_ETCD_PASSWORD", "s3cret"),
            ]),
        )
        .unwrap();
        assert!(c.tls);
        assert_eq!(c.ca_cert_file, Some(PathBuf::from("/t/ca.pem")));
        assert_eq!(c.cert_file, Some(PathBuf::from("/c/cert.pem")));
        assert_eq!(c.key_file, Some(PathBuf::from("/c/key.pem")));
        assert_eq!(c.username.as_deref(), Some("calico"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.display_url(), "etcds://h1:2379");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "password leaked: {c:?}"
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let c = EtcdConfig::from_url_and_vars(
            &url("etcd://h1:2379"),
            vars(&[("TABBY_ETCD_CA_CERT_FILE", ""), ("ETCD_USERNAME", "")]),
        )
        .unwrap();
        assert_eq!(c.ca_cert_file, None);
        assert_eq!(c.username, None);
    }

    #[test]
    fn inconsistent_settings_name_the_variable() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (
                "etcd://h:1",
                &[("ETCD_CA_CERT_FILE", "/ca")],
                "ETCD_CA_CERT_FILE is set but the URL is plain etcd://",
            ),
            (
                "etcds://h:1",
                &[],
                "set TABBY_ETCD_CA_CERT_FILE (or ETCD_CA_CERT_FILE)",
            ),
            (
                "etcds://h:1",
                &[("ETCD_CA_CERT_FILE", "/ca"), ("TABBY_ETCD_CERT_FILE", "/c")],
                "TABBY_ETCD_CERT_FILE is set without a key file",
            ),
            (
                "etcds://h:1",
                &[("ETCD_CA_CERT_FILE", "/ca"), ("ETCD_KEY_FILE", "/k")],
                "ETCD_KEY_FILE is set without a certificate file",
            ),
            (
                "etcd://h:1",
                &[("TABBY_ETCD_USERNAME", "u")],
                "TABBY_ETCD_USERNAME is set without a password",
            ),
            (
                "etcd://h:1",
                &[("ETCD_PASSWORD", "p")],
                "ETCD_PASSWORD is set without a user name",
            ),
        ];
        for (u, env, want) in cases {
            let err = EtcdConfig::from_url_and_vars(&url(u), vars(env))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{u} {env:?}: {err}");
        }
    }

    #[test]
    fn sqlite_url_is_rejected() {
        let err = EtcdConfig::from_url_and_vars(&url("sqlite:///tmp/x.db"), vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an etcd"), "{err}");
    }
}
