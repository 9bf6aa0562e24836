//! Opening the datastore named by the configuration, with spec errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use tabby_client::Client;
use tabby_store::{Datastore, StoreUrl};

use crate::config::NetConf;
use crate::spec::{CniError, code};

/// Opens the datastore: errors are code 101 and name the URL.
pub async fn open(conf: &NetConf) -> Result<Arc<dyn Datastore>, CniError> {
    let url_s = conf.datastore_url(std::env::var("TABBY_DATASTORE").ok())?;
    let url = StoreUrl::parse(&url_s)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("datastore {url_s:?}: {e}")))?;
    tabby_store::open(&url).await.map_err(|e| {
        CniError::new(
            code::DATASTORE,
            format!("cannot open the datastore {url}: {e}"),
        )
    })
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
