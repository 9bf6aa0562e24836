//! `tabbyctl policy explain` on a temporary embedded store: the deciding tier, policy
//! and rule for allowed and denied flows, and errors that name the bad argument.

use std::process::{Command, Output};

const MODEL: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {node: n1, interfaceName: caliweb, ipNetworks: [100.64.0.1/32], profiles: [kns.shop]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {node: n2, interfaceName: calidb, ipNetworks: [100.64.0.65/32], profiles: [kns.shop]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'web'}
      destination: {ports: [5432]}
"#;

fn ctl(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tabbyctl"))
        .args(args)
        .env("TABBY_STORE", store)
        .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
        .output()
        .unwrap()
}

#[test]
fn explain_names_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let file = dir.path().join("model.yaml");
    std::fs::write(&file, MODEL).unwrap();
    let out = ctl(&store, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).to_string();
    let allowed = ctl(
        &store,
        &[
            "policy",
            "explain",
            "--from",
            "shop/web",
            "--to",
            "shop/db",
            "--protocol",
            "tcp",
            "--port",
            "5432",
        ],
    );
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let t = text(&allowed);
    assert!(t.starts_with("ALLOW"), "{t}");
    assert!(
        t.contains("policy shop/db-from-web") && t.contains("rule 0"),
        "{t}"
    );

    // Another port: the policy selects db, nothing allows it, the tier's end drops.
    let denied = ctl(
        &store,
        &[
            "policy", "explain", "--from", "shop/web", "--to", "shop/db", "--port", "22",
        ],
    );
    let t = text(&denied);
    assert!(t.starts_with("DENY"), "{t}");
    assert!(t.contains("end of tier"), "{t}");

    // The other way: web has no policy, so its kns.shop profile allows it.
    let back = ctl(
        &store,
        &[
            "policy", "explain", "--from", "shop/db", "--to", "shop/web", "--port", "80",
        ],
    );
    let t = text(&back);
    assert!(
        t.starts_with("ALLOW") && t.contains("profile kns.shop"),
        "{t}"
    );

    let bad = ctl(
        &store,
        &[
            "policy",
            "explain",
            "--from",
            "shop/web",
            "--to",
            "shop/db",
            "--protocol",
            "tcpx",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--protocol"));
    let missing = ctl(
        &store,
        &[
            "policy",
            "explain",
            "--from",
            "shop/nope",
            "--to",
            "shop/db",
        ],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("shop/nope"));
}
