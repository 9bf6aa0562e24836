//! Stored records are read leniently: a record written by a newer version (or by
//! calicoctl) with a field this version does not know still lists and reads, and a
//! read-modify-write refuses to drop that field rather than losing it.

use std::sync::Arc;

use tabby_api::Kind;
use tabby_client::{Client, key_of};
use tabby_store::StoreUrl;

#[tokio::test]
async fn unknown_stored_fields_are_read_but_never_dropped_by_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = tabby_store::open(&StoreUrl::parse(&url).unwrap())
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    let future = serde_json::json!({
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"bgp": {"ipv4Address": "198.18.0.1/24"}, "fromTheFuture": {"x": 1}}
    });
    let plain = serde_json::json!({
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": "n2"}, "spec": {}
    });
    let k1 = key_of(Kind::Node, None, "n1");
    store
        .create(&k1, &serde_json::to_vec(&future).unwrap())
        .await
        .unwrap();
    store
        .create(
            &key_of(Kind::Node, None, "n2"),
            &serde_json::to_vec(&plain).unwrap(),
        )
        .await
        .unwrap();
    // The list holds both; the unknown field does not fail it.
    let nodes = client.list(Kind::Node, None).await.unwrap();
    assert_eq!(nodes.len(), 2);
    let n1 = client.get(Kind::Node, None, "n1").await.unwrap().unwrap();
    assert_eq!(
        n1.spec
            .as_node()
            .unwrap()
            .bgp
            .as_ref()
            .unwrap()
            .ipv4_address
            .as_deref(),
        Some("198.18.0.1/24")
    );
    // A rewrite would lose `spec.fromTheFuture`: refused, naming it, record intact.
    let err = client
        .modify(Kind::Node, None, "n1", |r| {
            r.metadata.labels.insert("a".into(), "b".into());
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.fromTheFuture"), "{err}");
    let raw = store.get(&k1).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    assert_eq!(v["spec"]["fromTheFuture"]["x"], 1);
    // A record without unknown fields is rewritten as usual.
    client
        .modify(Kind::Node, None, "n2", |r| {
            r.metadata.labels.insert("a".into(), "b".into());
            Ok(())
        })
        .await
        .unwrap();
}
