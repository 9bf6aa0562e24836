//! Bad input gives a spec error a user can act on, and a failed ADD leaves no
//! veth, route, allocation or endpoint behind (needs root).

mod harness;

use harness::Cluster;
use serde_json::json;

#[test]
fn missing_env_and_bad_json() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let pod = c.pod("x", "default");
    let conf = serde_json::to_vec(&c.conf(&n)).unwrap();

    let r = c.exec_raw(
        &n,
        "tabby",
        "ADD",
        Some(&pod),
        &conf,
        &[("CNI_CONTAINERID", None)],
    );
    let (code, msg) = r.err();
    assert_eq!(code, 4);
    assert!(msg.contains("CNI_CONTAINERID is not set"), "{msg}");
    let (code, msg) = c
        .exec_raw(
            &n,
            "tabby",
            "ADD",
            Some(&pod),
            &conf,
            &[("CNI_COMMAND", None)],
        )
        .err();
    assert_eq!(code, 4);
    assert!(msg.contains("CNI_COMMAND"), "{msg}");
    let (code, msg) = c
        .exec_raw(
            &n,
            "tabby",
            "ADD",
            Some(&pod),
            &conf,
            &[("CNI_NETNS", Some("/run/netns/does-not-exist"))],
        )
        .err();
    assert_eq!(code, 3);
    assert!(msg.contains("does-not-exist"), "{msg}");
    let (code, msg) = c
        .exec_raw(&n, "tabby", "ADD", Some(&pod), b"{\"cniVersion\":", &[])
        .err();
    assert_eq!(code, 6);
    assert!(msg.contains("not JSON"), "{msg}");
    let (code, msg) = c
        .exec_raw(&n, "tabby-ipam", "ADD", Some(&pod), b"[1,2]", &[])
        .err();
    assert_eq!(code, 6);
    assert!(msg.contains("JSON object"), "{msg}");
    let mut bad = c.conf(&n);
    bad["cniVersion"] = "9.9.9".into();
    assert_eq!(c.add(&n, &pod, &bad).err().0, 1);
    let mut bad = c.conf(&n);
    bad["ipam"]["type"] = "no-such-ipam".into();
    let (code, msg) = c.add(&n, &pod, &bad).err();
    assert_eq!(code, 7);
    assert!(
        msg.contains("no-such-ipam") && msg.contains("CNI_PATH"),
        "{msg}"
    );
    c.assert_clean(&[&n]);
}

#[test]
fn unknown_pool() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let pod = c.pod("x", "default");
    let mut conf = c.conf(&n);
    conf["ipam"]["ipv4_pools"] = json!(["no-such-pool"]);
    let (code, msg) = c.add(&n, &pod, &conf).err();
    assert_eq!(code, 7);
    assert!(
        msg.contains("no-such-pool") && msg.contains("does not exist"),
        "{msg}"
    );
    c.assert_clean(&[&n]);
    // The same through the pool annotation in CNI_ARGS.
    let mut pod = c.pod("y", "default");
    pod.extra_args = "IPV4POOLS=[\"other\"]".into();
    let (code, msg) = c.add(&n, &pod, &c.conf(&n)).err();
    assert_eq!(code, 7);
    assert!(msg.contains("other"), "{msg}");
    c.assert_clean(&[&n]);
    // A pool named by the annotation that exists is used.
    pod.extra_args = "IPV4POOLS=pods-v4".into();
    let r = c.add(&n, &pod, &c.conf(&n)).ok();
    assert!(harness::result_ips(&r)[0].starts_with("100.64."));
    c.del(&n, &pod, &c.conf(&n)).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn exhausted_pool() {
    let c = Cluster::new();
    c.pool("tiny", "100.65.0.0/30", 30);
    let n = c.node("a");
    let conf = c.conf(&n);
    let pods: Vec<_> = (0..4).map(|i| c.pod(&format!("t{i}"), "default")).collect();
    for p in &pods {
        c.add(&n, p, &conf).ok();
    }
    let extra = c.pod("t4", "default");
    let (code, msg) = c.add(&n, &extra, &conf).err();
    assert_eq!(code, 100);
    assert!(
        msg.contains("Assigned 0 out of 1 requested IPv4 addresses"),
        "{msg}"
    );
    assert_eq!(c.store_counts(), (4, 4, 4));
    assert_eq!(c.cali_links(&n).len(), 4);
    for p in &pods {
        c.del(&n, p, &conf).ok();
    }
    c.assert_clean(&[&n]);
}

#[test]
fn interface_collisions() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    // The pod already has an eth0: refused, the pod's own link is untouched, and the
    // address allocated before the dataplane step is released.
    let pod = c.pod("coll", "default");
    pod.ns
        .ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ])
        .unwrap();
    let (code, msg) = c.add(&n, &pod, &conf).err();
    assert_eq!(code, 103);
    assert!(
        msg.contains("\"eth0\" already exists in network namespace"),
        "{msg}"
    );
    assert!(pod.ns.ip(&["link", "show", "eth0"]).is_ok());
    c.assert_clean(&[&n]);

    // The host name is taken by something that is not a veth.
    let pod = c.pod("coll2", "default");
    let host_if = tabby_cni::naming::veth_name_k8s("cali", "default", "coll2");
    n.ns.ip(&["link", "add", &host_if, "type", "bridge"])
        .unwrap();
    let (code, msg) = c.add(&n, &pod, &conf).err();
    assert_eq!(code, 103);
    assert!(msg.contains("is a bridge link"), "{msg}");
    n.ns.ip(&["link", "del", &host_if]).unwrap();
    c.assert_clean(&[&n]);
    assert!(
        pod.ns.ip(&["link", "show", "eth0"]).is_err(),
        "no pod link left"
    );
}
