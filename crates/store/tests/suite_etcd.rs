//! The shared datastore suite on the etcd backend: each case on its own fresh
//! single-member etcd (cases check exact store revisions, which are cluster-wide).
//! Needs `/usr/bin/etcd` (Debian `etcd-server`); fails with that hint when it is missing.
#![cfg(feature = "etcd")]

use std::sync::Arc;

use tabby_store::etcd::{EtcdConfig, EtcdStore};
use tabby_store::etcd_harness::EtcdCluster;
use tabby_store::testsuite::Fixture;

/// A new etcd member and a store on it; the member is killed when the fixture drops.
async fn fixture() -> Fixture {
    let cluster = EtcdCluster::start(1)
        .await
        .unwrap_or_else(|e| panic!("cannot run the etcd suite: {e}"));
    let store = EtcdStore::connect(EtcdConfig::new(cluster.endpoints()))
        .await
        .expect("connect");
    let compactor = store.clone();
    Fixture::new(Arc::new(store), "/tabby-suite/")
        .with_compactor(move |revision| {
            let s = compactor.clone();
            async move { s.compact(revision).await }
        })
        .keep_alive(cluster)
}

tabby_store::datastore_suite!(fixture);
