//! Which datastore `tabbyctl` talks to: `--store`, then `TABBY_STORE`, then the
//! client config file (`/etc/tabby/tabbyctl.yaml`, shaped like calicoctl's
//! `CalicoAPIConfig`), then the embedded default `/var/lib/tabby/store.db`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;
use tabby_client::Client;
use tabby_store::StoreUrl;

/// The client config file, as calicoctl's `CalicoAPIConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiConfigFile {
    api_version: String,
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: serde_json::Value,
    #[serde(default)]
    spec: ApiConfigSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApiConfigSpec {
    /// `sqlite` (default) or `etcdv3`.
    datastore_type: Option<String>,
    sqlite_path: Option<PathBuf>,
    /// Comma-separated, with or without `http(s)://`.
    etcd_endpoints: Option<String>,
    etcd_username: Option<String>,
    etcd_password: Option<String>,
    etcd_key_file: Option<PathBuf>,
    etcd_cert_file: Option<PathBuf>,
    #[serde(rename = "etcdCACertFile")]
    etcd_ca_cert_file: Option<PathBuf>,
}

/// Resolves and opens the datastore on first use.
pub struct Connection {
    flag: Option<String>,
    config_file: PathBuf,
}

impl Connection {
    pub fn new(flag: Option<&str>, config_file: &Path) -> Connection {
        Connection {
            flag: flag.map(str::to_string),
            config_file: config_file.to_path_buf(),
        }
    }

    /// The store URL the flags, environment and config file select.
    pub fn url(&self) -> anyhow::Result<StoreUrl> {
        if let Some(url) = &self.flag {
            return StoreUrl::parse(url).context("--store / TABBY_STORE");
        }
        if self.config_file.exists() {
            return url_from_config_file(&self.config_file);
        }
        Ok(StoreUrl::default())
    }

    pub fn describe(&self) -> anyhow::Result<String> {
        Ok(self.url()?.to_string())
    }

    /// Opens the store and wraps it in a typed client.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let url = self.url()?;
        let store = tabby_store::open(&url)
            .await
            .with_context(|| format!("opening datastore {url}"))?;
        Ok(Client::new(Arc::clone(&store)))
    }
}

fn url_from_config_file(path: &Path) -> anyhow::Result<StoreUrl> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading client config {}", path.display()))?;
    let cfg: ApiConfigFile = serde_saphyr::from_str(&text)
        .with_context(|| format!("client config {}", path.display()))?;
    if cfg.kind != "CalicoAPIConfig" {
        bail!(
            "{}: kind: expected CalicoAPIConfig, found {:?}",
            path.display(),
            cfg.kind
        );
    }
    if !cfg.api_version.starts_with("projectcalico.org/") {
        bail!(
            "{}: apiVersion: expected projectcalico.org/v3, found {:?}",
            path.display(),
            cfg.api_version
        );
    }
    let spec = cfg.spec;
    match spec.datastore_type.as_deref().unwrap_or("sqlite") {
        "sqlite" => Ok(StoreUrl::Sqlite {
            path: spec
                .sqlite_path
                .unwrap_or_else(|| PathBuf::from(tabby_store::url::DEFAULT_SQLITE_PATH)),
        }),
        "etcdv3" | "etcd" => {
            let raw = spec.etcd_endpoints.with_context(|| {
                format!(
                    "{}: spec.etcdEndpoints is required with datastoreType etcdv3",
                    path.display()
                )
            })?;
            let tls = raw.contains("https://");
            let endpoints: Vec<&str> = raw
                .split(',')
                .map(|e| {
                    e.trim()
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                })
                .collect();
            let creds = [
                (
                    "etcdUsername",
                    spec.etcd_username.is_some(),
                    "TABBY_ETCD_USERNAME",
                ),
                (
                    "etcdPassword",
                    spec.etcd_password.is_some(),
                    "TABBY_ETCD_PASSWORD",
                ),
                (
                    "etcdKeyFile",
                    spec.etcd_key_file.is_some(),
                    "TABBY_ETCD_KEY_FILE",
                ),
                (
                    "etcdCertFile",
                    spec.etcd_cert_file.is_some(),
                    "TABBY_ETCD_CERT_FILE",
                ),
                (
                    "etcdCACertFile",
                    spec.etcd_ca_cert_file.is_some(),
                    "TABBY_ETCD_CA_CERT_FILE",
                ),
            ];
            for (field, set, env) in creds {
                if set && std::env::var_os(env).is_none() {
                    bail!(
                        "{}: spec.{field} is not read from the config file yet; set {env} in the environment instead",
                        path.display()
                    );
                }
            }
            let scheme = if tls { "etcds" } else { "etcd" };
            StoreUrl::parse(&format!("{scheme}://{}", endpoints.join(",")))
                .with_context(|| format!("{}: spec.etcdEndpoints", path.display()))
        }
        other => bail!(
            "{}: spec.datastoreType: {other:?} is not supported (use sqlite or etcdv3)",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_and_default_is_sqlite() {
        let c = Connection::new(Some("sqlite:///tmp/a.db"), Path::new("/nonexistent"));
        assert_eq!(c.describe().unwrap(), "sqlite:///tmp/a.db");
        let c = Connection::new(None, Path::new("/nonexistent/tabbyctl.yaml"));
        assert_eq!(c.describe().unwrap(), "sqlite:///var/lib/tabby/store.db");
    }

    #[test]
    fn reads_calico_api_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cfg.yaml");
        std::fs::write(
            &p,
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nmetadata: {}\nspec:\n  datastoreType: sqlite\n  sqlitePath: /tmp/x.db\n",
        )
        .unwrap();
        assert_eq!(
            Connection::new(None, &p).describe().unwrap(),
            "sqlite:///tmp/x.db"
        );
        std::fs::write(
            &p,
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  datastoreType: etcdv3\n  etcdEndpoints: http://127.0.0.1:2379,http://127.0.0.1:22379\n",
        )
        .unwrap();
        assert_eq!(
            Connection::new(None, &p).describe().unwrap(),
            "etcd://127.0.0.1:2379,127.0.0.1:22379"
        );
        std::fs::write(
            &p,
            "apiVersion: projectcalico.org/v3\nkind: CalicoAPIConfig\nspec:\n  datastoreTyp: sqlite\n",
        )
        .unwrap();
        let err = format!("{:#}", Connection::new(None, &p).url().unwrap_err());
        assert!(err.contains("datastoreTyp"), "{err}");
    }
}
