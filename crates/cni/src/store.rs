//! Opening the datastore named by the configuration, with spec errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use tabby_client::Client;
use tabby_store::etcd::ENV_CA_CERT_FILE;
use tabby_store::{Datastore, StoreUrl};

use crate::config::NetConf;
use crate::spec::{CniError, code};

/// Opens the datastore: errors are code 101 and name the URL.
pub async fn open(conf: &NetConf) -> Result<Arc<dyn Datastore>, CniError> {
    let url_s = conf.datastore_url(std::env::var("TABBY_DATASTORE").ok())?;
    let url = StoreUrl::parse(&url_s)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("datastore {url_s:?}: {e}")))?;
    let opened = match &url {
        StoreUrl::Etcd { tls, .. } => {
            let env_ca = [ENV_CA_CERT_FILE.0, ENV_CA_CERT_FILE.1]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
            conf.check_etcd_tls(*tls, env_ca)
                .map_err(|e| e.context(format!("datastore {url}")))?;
            open_etcd(conf, &url).await
        }
        _ => tabby_store::open(&url).await,
    };
    opened.map_err(|e| {
        CniError::new(
            code::DATASTORE,
            format!("cannot open the datastore {url}: {e}"),
        )
    })
}

/// etcd with the configuration's TLS files; the environment's
/// (`TABBY_ETCD_CA_CERT_FILE`, ...) fill in what the configuration leaves out.
async fn open_etcd(
    conf: &NetConf,
    url: &StoreUrl,
) -> Result<Arc<dyn Datastore>, tabby_store::StoreError> {
    use tabby_store::etcd::{ENV_CERT_FILE, ENV_KEY_FILE, EtcdConfig, EtcdStore};
    let from_conf = |name: &str| -> Option<String> {
        let v = if name == ENV_CA_CERT_FILE.0 {
            &conf.etcd_ca_cert_file
        } else if name == ENV_CERT_FILE.0 {
            &conf.etcd_cert_file
        } else if name == ENV_KEY_FILE.0 {
            &conf.etcd_key_file
        } else {
            &None
        };
        v.as_ref().map(|p| p.display().to_string())
    };
    let config = EtcdConfig::from_url_and_vars(url, |name| {
        from_conf(name).or_else(|| std::env::var(name).ok())
    })?;
    Ok(Arc::new(EtcdStore::connect(config).await?))
}

/// A typed client over [`open`]. One invocation opens each datastore once: the main
/// plugin and its in-process IPAM share the handle.
pub async fn client(conf: &NetConf) -> Result<Client, CniError> {
    static OPEN: OnceLock<Mutex<BTreeMap<String, Client>>> = OnceLock::new();
    let url = conf.datastore_url(std::env::var("TABBY_DATASTORE").ok())?;
    let cache = OPEN.get_or_init(Mutex::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&url) {
        return Ok(c.clone());
    }
    let c = Client::new(open(conf).await?);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(url, c.clone());
    Ok(c)
}

/// A datastore failure as a spec error.
pub fn store_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::DATASTORE, format!("{what}: {e}"))
}
