//! GC (issue 17): a configuration without `cni.dev/valid-attachments` is refused
//! (missing is not an empty list), and GC removes only this network's attachments
//! on this node that the list lacks. Real plugins in network namespaces (root).

mod harness;

use harness::Cluster;
use serde_json::json;

#[test]
fn gc_without_valid_attachments_is_refused() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    let p = c.pod("kept", "default");
    let r = c.add(&n, &p, &conf).ok();
    for plugin in ["tabby", "tabby-ipam"] {
        let (code, msg) = c.exec(&n, plugin, "GC", None, &conf).err();
        assert_eq!(code, 7, "{plugin}: {msg}");
        assert!(msg.contains("cni.dev/valid-attachments"), "{plugin}: {msg}");
    }
    assert_eq!(c.store_counts(), (1, 1, 1));
    c.check(&n, &p, &conf, &r).ok();
    c.del(&n, &p, &conf).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn gc_removes_only_this_networks_attachments_on_this_node() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let a = c.node("a");
    let b = c.node("b");
    let conf_a = c.conf(&a);
    let conf_b = c.conf(&b);
    // A second network whose name extends the first's (its IPAM handles start
    // with the first network's handle prefix).
    let mut other_a = conf_a.clone();
    other_a["name"] = format!("{}.x", harness::NETWORK).into();

    let keep = c.pod("keep", "default");
    let gone = c.pod("gone", "default");
    let elsewhere = c.pod("elsewhere", "default");
    let other = c.pod("othernet", "default");
    let r_keep = c.add(&a, &keep, &conf_a).ok();
    c.add(&a, &gone, &conf_a).ok();
    let r_elsewhere = c.add(&b, &elsewhere, &conf_b).ok();
    let r_other = c.add(&a, &other, &other_a).ok();
    assert_eq!(c.store_counts(), (4, 4, 4));

    let mut gc = conf_a.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    c.exec(&a, "tabby", "GC", None, &gc).ok();
    assert_eq!(c.store_counts(), (3, 3, 3));
    assert_eq!(c.cali_links(&a).len(), 2, "gone's veth is removed");
    c.check(&a, &keep, &conf_a, &r_keep).ok();
    c.check(&b, &elsewhere, &conf_b, &r_elsewhere).ok();
    c.check(&a, &other, &other_a, &r_other).ok();

    // An empty list collects everything of that network on that node.
    let mut gc = other_a.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    c.exec(&a, "tabby", "GC", None, &gc).ok();
    assert_eq!(c.store_counts(), (2, 2, 2));
    c.check(&a, &keep, &conf_a, &r_keep).ok();
    c.check(&b, &elsewhere, &conf_b, &r_elsewhere).ok();

    c.del(&a, &keep, &conf_a).ok();
    c.del(&b, &elsewhere, &conf_b).ok();
    c.del(&a, &gone, &conf_a).ok();
    c.del(&a, &other, &other_a).ok();
    c.assert_clean(&[&a, &b]);
}
