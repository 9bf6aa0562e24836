//! The etcd backend against one real etcd member: the datastore semantics (CAS, paging,
//! watch), compaction, TLS and password authentication, and failing cleanly then
//! recovering when the member goes away.
//! Needs `/usr/bin/etcd` (Debian `etcd-server`); fails with that hint when it is missing.
#![cfg(feature = "etcd")]

use std::time::{Duration, Instant};

use futures::StreamExt;
use tabby_store::etcd::{EtcdConfig, EtcdStore};
use tabby_store::etcd_harness::{ClusterOptions, EtcdCluster};
use tabby_store::{Datastore, StoreError, WatchEvent, WatchStream};

async fn cluster(size: usize) -> EtcdCluster {
    match EtcdCluster::start(size).await {
        Ok(c) => c,
        Err(e) => panic!("cannot run the etcd tests: {e}"),
    }
}

async fn store(cluster: &EtcdCluster, request_timeout: Duration, page: i64) -> EtcdStore {
    let mut config = EtcdConfig::new(cluster.endpoints());
    config.request_timeout = request_timeout;
    config.list_page_size = page;
    EtcdStore::connect(config).await.expect("connect")
}

/// The next event, failing the test after 10 s of silence.
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(ev))) => ev,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_semantics_on_a_real_member() {
    let etcd = cluster(1).await;
    let s = store(&etcd, Duration::from_secs(5), 500).await;
    let key = "/calico/resources/v3/projectcalico.org/ippools/pool1";

    assert_eq!(s.get(key).await.unwrap(), None);
    let r1 = s.create(key, b"{\"v\":1}").await.unwrap();
    let kv = s.get(key).await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"{\"v\":1}"[..], r1, r1)
    );
    assert!(matches!(
        s.create(key, b"x").await,
        Err(StoreError::AlreadyExists { key: k }) if k == key
    ));

    let r2 = s.update(key, b"{\"v\":2}", r1).await.unwrap();
    assert!(r2 > r1);
    match s.update(key, b"lost", r1).await {
        Err(StoreError::Conflict {
            key: k,
            expected,
            actual,
        }) => assert_eq!((k.as_str(), expected, actual), (key, r1, r2)),
        other => panic!("stale update must conflict: {other:?}"),
    }
    assert!(matches!(
        s.update("/calico/absent", b"x", 0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update("/calico/absent", b"x", r2).await,
        Err(StoreError::NotFound { .. })
    ));

    assert!(matches!(
        s.delete(key, Some(r1)).await,
        Err(StoreError::Conflict { actual, .. }) if actual == r2
    ));
    let deleted = s.delete(key, Some(r2)).await.unwrap();
    assert_eq!(
        (deleted.value.as_slice(), deleted.mod_revision),
        (&b"{\"v\":2}"[..], r2)
    );
    assert!(matches!(
        s.delete(key, None).await,
        Err(StoreError::NotFound { .. })
    ));
    let r3 = s.create(key, b"again").await.unwrap();
    assert_eq!(s.delete(key, None).await.unwrap().create_revision, r3);
    assert!(
        s.revision().await.unwrap() > r3,
        "the delete is a revision too"
    );
    assert!(
        s.endpoint().starts_with("etcd://127.0.0.1:"),
        "{}",
        s.endpoint()
    );
}

#[tokio::test]
async fn list_pages_form_one_snapshot() {
    let etcd = cluster(1).await;
    // Pages of 3 keys so that every list below takes several requests.
    let s = store(&etcd, Duration::from_secs(5), 3).await;
    for i in 0..10 {
        s.create(&format!("/l/a/{i:02}"), format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    s.create("/l/b/outside", b"x").await.unwrap();
    s.create("/l/a", b"not under /l/a/").await.unwrap();
    let list = s.list("/l/a/").await.unwrap();
    let keys: Vec<&str> = list.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("/l/a/{i:02}")).collect();
    assert_eq!(keys, want);
    assert_eq!(list.revision, s.revision().await.unwrap());
    assert_eq!(s.list("/none/").await.unwrap().kvs, vec![]);
    assert_eq!(
        s.list("").await.unwrap().kvs.len(),
        12,
        "empty prefix = all keys"
    );

    // A writer keeps adding keys while we list: each list must be exactly the keys
    // that existed at its revision, although its pages were read at different times.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                s.create(&format!("/l/w/{i:03}"), b"w").await.unwrap();
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() {
        let list = s.list("/l/w/").await.unwrap();
        let n = list.kvs.len();
        for (i, kv) in list.kvs.iter().enumerate() {
            assert_eq!(kv.key, format!("/l/w/{i:03}"), "gap in a listed snapshot");
            assert!(kv.mod_revision <= list.revision);
        }
        if n < 60 {
            // The next key did not exist yet at the snapshot's revision.
            let next = s.get(&format!("/l/w/{n:03}")).await.unwrap();
            if let Some(next) = next {
                assert!(next.create_revision > list.revision, "list missed {next:?}");
            }
        }
        checked += 1;
    }
    writer.await.unwrap();
    assert!(checked > 0);
    assert_eq!(s.list("/l/w/").await.unwrap().kvs.len(), 60);
}

#[tokio::test]
async fn watch_delivers_puts_and_deletes_in_order() {
    let etcd = cluster(1).await;
    let s = store(&etcd, Duration::from_secs(5), 500).await;
    let r1 = s.create("/w/x/a", b"1").await.unwrap();
    // From now on: the earlier create is not replayed.
    let mut now = s.watch("/w/x/", 0).await.unwrap();
    let r2 = s.update("/w/x/a", b"2", r1).await.unwrap();
    s.create("/w/y/other-prefix", b"-").await.unwrap();
    let deleted = s.delete("/w/x/a", None).await.unwrap();
    assert_eq!(deleted.mod_revision, r2, "delete returns the last value");
    let WatchEvent::Put(kv) = next_event(&mut now).await else {
        panic!("expected a put")
    };
    assert_eq!(
        (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
        ("/w/x/a", &b"2"[..], r2)
    );
    match next_event(&mut now).await {
        WatchEvent::Delete {
            key,
            revision,
            prev,
        } => {
            assert_eq!(key, "/w/x/a");
            assert!(revision > r2);
            assert_eq!(prev.expect("prev_kv").value, b"2");
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    // From a past revision: the whole history of the prefix, in order.
    let mut past = s.watch("/w/x/", r1).await.unwrap();
    let revs: Vec<i64> = [
        next_event(&mut past).await,
        next_event(&mut past).await,
        next_event(&mut past).await,
    ]
    .iter()
    .map(WatchEvent::revision)
    .collect();
    assert_eq!(revs[..2], [r1, r2]);
    assert!(revs[2] > r2);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_reports_compacted() {
    let etcd = cluster(1).await;
    let s = store(&etcd, Duration::from_secs(5), 500).await;
    let mut rev = s.create("/c/k", b"0").await.unwrap();
    let first = rev;
    for i in 1..5 {
        rev = s
            .update("/c/k", format!("{i}").as_bytes(), rev)
            .await
            .unwrap();
    }
    s.compact(rev).await.unwrap();
    let mut w = s.watch("/c/", first).await.unwrap();
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Compacted {
            compact_revision: rev
        }
    );
    let end = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "stream must end after Compacted: {end:?}"
    );
    // From the compaction revision on, history is still there.
    let mut ok = s.watch("/c/", rev).await.unwrap();
    assert_eq!(next_event(&mut ok).await.revision(), rev);
}

#[tokio::test]
async fn idle_watch_resumes_past_a_compaction_of_other_keys() {
    let options = ClusterOptions {
        progress_notify_interval: Some(Duration::from_millis(200)),
        ..ClusterOptions::default()
    };
    let mut etcd = EtcdCluster::start_with(1, options)
        .await
        .unwrap_or_else(|e| panic!("cannot run the etcd tests: {e}"));
    let s = store(&etcd, Duration::from_secs(5), 500).await;
    let mut quiet = s.watch("/quiet/", 0).await.unwrap();
    // The consumer waits on the stream the whole time, as a real watcher does (an
    // unpolled stream does not read its progress notifications).
    let first = tokio::spawn(async move { next_event(&mut quiet).await });
    let mut rev = s.create("/busy/k", b"0").await.unwrap();
    for i in 1..20 {
        rev = s
            .update("/busy/k", format!("{i}").as_bytes(), rev)
            .await
            .unwrap();
    }
    // Progress notifications tell the idle watch that nothing under /quiet/ happened
    // up to here, so it can resume past the compaction instead of reporting it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.compact(rev).await.unwrap();
    etcd.restart(0).await.unwrap();
    let r = s.create("/quiet/k", b"q").await.unwrap();
    match first.await.unwrap() {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), ("/quiet/k", r)),
        other => panic!("expected the put, got {other:?}"),
    }
}

#[tokio::test]
async fn member_down_fails_within_the_timeout_then_recovers() {
    let mut etcd = cluster(1).await;
    let timeout = Duration::from_secs(2);
    let s = store(&etcd, timeout, 500).await;
    let rev = s.create("/d/k", b"0").await.unwrap();
    let mut w = s.watch("/d/", rev + 1).await.unwrap();
    etcd.kill(0).unwrap();

    for what in ["get", "update"] {
        let started = Instant::now();
        let err = match what {
            "get" => s.get("/d/k").await.map(|_| ()),
            _ => s.update("/d/k", b"1", rev).await.map(|_| ()),
        }
        .expect_err("etcd is down");
        let elapsed = started.elapsed();
        assert!(
            elapsed < timeout + Duration::from_secs(1),
            "{what} took {elapsed:?}"
        );
        let StoreError::Unavailable { endpoint, message } = &err else {
            panic!("{what}: expected Unavailable, got {err:?}");
        };
        assert_eq!(endpoint, &format!("etcd://{}", etcd.endpoints()[0]));
        assert!(err.to_string().contains(&etcd.endpoints()[0]), "{err}");
        assert!(message.contains(what), "{message}");
    }

    etcd.restart(0).await.unwrap();
    // The same store and the same watch carry on by themselves.
    let r2 = s.update("/d/k", b"1", rev).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.revision(), r2, "{ev:?}");
}

#[tokio::test]
async fn etcds_url_with_client_certificates_from_the_environment_variables() {
    let etcd = match EtcdCluster::start_tls(1).await {
        Ok(c) => c,
        Err(e) => panic!("cannot run the etcd TLS test: {e}"),
    };
    let files = etcd.tls_files().unwrap().clone();
    let url = etcd.url();
    assert!(url.to_string().starts_with("etcds://"), "{url}");
    // calicoctl's variable names, resolved as `from_url_and_env` does (without
    // touching this process's environment, which other tests share).
    let vars = |name: &str| match name {
        "ETCD_CA_CERT_FILE" => Some(files.ca.display().to_string()),
        "ETCD_CERT_FILE" => Some(files.client_cert.display().to_string()),
        "ETCD_KEY_FILE" => Some(files.client_key.display().to_string()),
        _ => None,
    };
    let config = EtcdConfig::from_url_and_vars(&url, vars).unwrap();
    let s = EtcdStore::connect(config.clone()).await.unwrap();
    let rev = s.create("/tls/k", b"v").await.unwrap();
    assert_eq!(s.get("/tls/k").await.unwrap().unwrap().mod_revision, rev);

    // Without a client certificate the server refuses us, and the error says where.
    let mut anonymous = config.clone();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    anonymous.request_timeout = Duration::from_secs(2);
    let s = EtcdStore::connect(anonymous).await.unwrap();
    let err = s
        .get("/tls/k")
        .await
        .expect_err("client certificate required");
    assert!(err.to_string().contains(&etcd.endpoints()[0]), "{err}");

    // A missing CA file is named.
    let mut missing = config;
    missing.ca_cert_file = Some("/nonexistent/ca.pem".into());
    let err = EtcdStore::connect(missing).await.expect_err("no CA file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn user_and_password_authenticate() {
    let etcd = cluster(1).await;
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("http://{e}"))
        .collect();
    let mut admin = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    admin.user_add("root", "tabby-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let url = etcd.url();
    let vars = |name: &str| match name {
        "TABBY_ETCD_USERNAME" => Some("root".to_string()),
        "ETCD_PASSWORD" => Some("tabby-pw".to_string()),
        _ => None,
    };
    let config = EtcdConfig::from_url_and_vars(&url, vars).unwrap();
    let s = EtcdStore::connect(config.clone()).await.unwrap();
    s.create("/auth/k", b"v").await.unwrap();
    assert!(s.get("/auth/k").await.unwrap().is_some());

    let mut wrong = config.clone();
    wrong.password = Some("nope".to_string());
    let err = EtcdStore::connect(wrong).await.expect_err("wrong password");
    let text = err.to_string();
    assert!(
        text.contains(&etcd.endpoints()[0]) && text.contains("authentication failed"),
        "{text}"
    );

    // Without credentials etcd refuses at once: a permanent error, not a timeout.
    let s = store(&etcd, Duration::from_secs(5), 500).await;
    let started = Instant::now();
    let err = s.get("/auth/k").await.expect_err("anonymous read");
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
