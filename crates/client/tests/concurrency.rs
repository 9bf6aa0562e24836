//! Concurrent writers through the embedded store lose no update: two OS processes each
//! do 1000 read-modify-write increments of one resource (a counter label on a Node)
//! with `Client::modify`, and the final count is exactly 2000.

use std::process::Command;
use std::sync::Arc;

use tabby_api::{Kind, Resource};
use tabby_client::Client;
use tabby_store::StoreUrl;

const WORKER_ENV: &str = "TABBY_CLIENT_TEST_WORKER_STORE";
const INCREMENTS: u32 = 1000;

async fn client_for(url: &str) -> Client {
    let store = tabby_store::open(&StoreUrl::parse(url).unwrap())
        .await
        .unwrap();
    Client::new(Arc::clone(&store))
}

async fn increment(client: &Client) {
    client
        .modify(Kind::Node, None, "counter-node", |r| {
            let labels = &mut r.metadata.labels;
            let n: u32 = labels.get("count").map(|v| v.parse().unwrap()).unwrap_or(0);
            labels.insert("count".to_string(), (n + 1).to_string());
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_lose_no_update() {
    // The test re-runs its own binary as the two worker processes.
    if let Ok(url) = std::env::var(WORKER_ENV) {
        let client = client_for(&url).await;
        for _ in 0..INCREMENTS {
            increment(&client).await;
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let client = client_for(&url).await;
    client
        .create(Resource::new(Kind::Node, "counter-node", None))
        .await
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args([
                "two_processes_lose_no_update",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, &url)
            .spawn()
            .unwrap()
    };
    let mut a = spawn();
    let mut b = spawn();
    // This process writes too, so three writers race on one key.
    for _ in 0..100 {
        increment(&client).await;
    }
    assert!(a.wait().unwrap().success(), "worker a failed");
    assert!(b.wait().unwrap().success(), "worker b failed");

    let node = client
        .must_get(Kind::Node, None, "counter-node")
        .await
        .unwrap();
    assert_eq!(
        node.labels().get("count").map(String::as_str),
        Some((2 * INCREMENTS + 100).to_string().as_str()),
        "every read-modify-write landed"
    );
}
