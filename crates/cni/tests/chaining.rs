//! `tabby` in a conflist before `portmap` and `bandwidth`, and `tabby-ipam`
//! under Debian's `bridge` plugin (containernetworking-plugins in /usr/lib/cni).
//! Needs root.

mod harness;

use harness::{Cluster, result_ips};
use serde_json::json;

#[test]
fn tabby_then_portmap_then_bandwidth() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    c.pool("pods-v6", "2001:db8:100::/112", 122);
    let n = c.node("a");
    let mut tabby = c.conf(&n);
    tabby.as_object_mut().unwrap().remove("cniVersion");
    tabby["ipam"]["assign_ipv6"] = "true".into();
    let plugins = [
        tabby,
        json!({"type": "portmap", "capabilities": {"portMappings": true},
               "runtimeConfig": {"portMappings": [{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}]}}),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true},
               "runtimeConfig": {"bandwidth": {"ingressRate": 8000000, "ingressBurst": 800000}}}),
    ];
    let pod = c.pod("chain", "default");
    let res = c
        .add_chain(&n, &pod, "tabby-chain", "1.0.0", &plugins)
        .unwrap_or_else(|(i, call)| panic!("plugin {i} failed: {} {}", call.out, call.stderr));
    // prevResult went through both: the final result is still ours.
    let ip = result_ips(&res)[0].clone();
    assert!(ip.starts_with("100.64."), "{res}");
    let host_if = tabby_cni::naming::veth_name_k8s("cali", "default", "chain");
    assert_eq!(res["interfaces"][0]["name"], host_if.as_str());
    // portmap's DNAT and bandwidth's qdisc exist on the node.
    let nat = n.ns.output(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(
        nat.contains("30080") && nat.contains(ip.trim_end_matches("/32")),
        "{nat}"
    );
    let tc =
        n.ns.output(&["tc", "qdisc", "show", "dev", &host_if])
            .unwrap();
    assert!(tc.contains("tbf"), "{tc}");

    // CHECK through the chain (each plugin with the final result). portmap 1.1.1's
    // CHECK is skipped: it looks for its IPv4 rules in the IPv6 table (and for an
    // IPv6 chain on IPv4-only pods) whatever the previous plugin returned.
    for p in plugins.iter().filter(|p| p["type"] != "portmap") {
        let mut conf = p.clone();
        conf["name"] = "tabby-chain".into();
        conf["cniVersion"] = "1.0.0".into();
        conf["prevResult"] = res.clone();
        c.exec(&n, p["type"].as_str().unwrap(), "CHECK", Some(&pod), &conf)
            .ok();
    }

    for call in c.del_chain(&n, &pod, "tabby-chain", "1.0.0", &plugins, &res) {
        call.ok();
    }
    let nat = n.ns.output(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(!nat.contains("30080"), "{nat}");
    c.assert_clean(&[&n]);
}

#[test]
fn tabby_ipam_under_bridge() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "bridge-net",
        "type": "bridge",
        "bridge": "cni-tb0",
        "isGateway": false,
        "ipMasq": false,
        "nodename": n.name,
        "datastore": c.store_url,
        "ipam": {"type": "tabby-ipam", "result_prefix": "block"},
    });
    let p1 = c.pod("br-1", "default");
    let p2 = c.pod("br-2", "default");
    let r1 = c.exec(&n, "bridge", "ADD", Some(&p1), &conf).ok();
    let r2 = c.exec(&n, "bridge", "ADD", Some(&p2), &conf).ok();
    let (a1, a2) = (result_ips(&r1)[0].clone(), result_ips(&r2)[0].clone());
    assert!(a1.ends_with("/26") && a2.ends_with("/26"), "{a1} {a2}");
    assert!(p1.ns.ping(a2.split('/').next().unwrap(), 3));
    assert!(p2.ns.ping(a1.split('/').next().unwrap(), 3));
    assert_eq!(c.store_counts().0, 2);
    // The IPAM plugin on its own: CHECK and STATUS.
    let mut chk = conf.clone();
    chk["prevResult"] = r1.clone();
    c.exec(&n, "tabby-ipam", "CHECK", Some(&p1), &chk).ok();
    let mut st = conf.clone();
    st["cniVersion"] = "1.1.0".into();
    c.exec(&n, "tabby-ipam", "STATUS", None, &st).ok();
    c.exec(&n, "bridge", "DEL", Some(&p1), &conf).ok();
    c.exec(&n, "bridge", "DEL", Some(&p2), &conf).ok();
    assert_eq!(c.store_counts(), (0, 0, 0));
}
