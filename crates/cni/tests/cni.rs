//! The `tabby` and `tabby-ipam` plugins driven like a runtime drives them, in
//! network namespaces (needs root). Addresses: pods 100.64.0.0/10 and
//! 2001:db8::/32, nodes 198.18.0.0/15.

mod harness;

use harness::{Cluster, result_ips};
use serde_json::json;

#[test]
fn add_del_100_on_two_nodes_leaves_nothing() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let a = c.node("a");
    let b = c.node("b");
    let (ca, cb) = (c.conf(&a), c.conf(&b));
    let mut pods = Vec::new();
    for i in 0..100 {
        let (node, conf) = if i % 2 == 0 { (&a, &ca) } else { (&b, &cb) };
        let pod = c.pod(&format!("p{i}"), "default");
        let r = c.add(node, &pod, conf).ok();
        assert_eq!(result_ips(&r).len(), 1, "{r}");
        pods.push((node, conf, pod));
    }
    assert_eq!(c.cali_links(&a).len(), 50);
    assert_eq!(c.cali_links(&b).len(), 50);
    let (allocs, handles, weps) = c.store_counts();
    assert_eq!((allocs, handles, weps), (100, 100, 100));
    for (node, conf, pod) in &pods {
        c.del(node, pod, conf).ok();
    }
    c.assert_clean(&[&a, &b]);
}

#[test]
fn add_check_del_dual_stack() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    c.pool("pods-v6", "2001:db8:100::/112", 122);
    let n = c.node("a");
    let mut conf = c.conf(&n);
    conf["ipam"]["assign_ipv6"] = "true".into();
    conf["mtu"] = 1400.into();
    let pod = c.pod("web-1", "prod");
    let r = c.add(&n, &pod, &conf).ok();
    assert_eq!(r["cniVersion"], "1.1.0");
    let ips = result_ips(&r);
    assert_eq!(ips.len(), 2, "{r}");
    assert!(
        ips[0].starts_with("100.64.") && ips[0].ends_with("/32"),
        "{ips:?}"
    );
    assert!(
        ips[1].starts_with("2001:db8:100::") && ips[1].ends_with("/128"),
        "{ips:?}"
    );
    let host_if = tabby_cni::naming::veth_name_k8s("cali", "prod", "web-1");
    assert_eq!(r["interfaces"][0]["name"], host_if.as_str());
    assert_eq!(r["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        pod.netns_path().display().to_string()
    );
    assert_eq!(r["ips"][0]["interface"], 1);

    // Kernel state, pod side.
    let addrs = pod.ns.ip_json(&["addr", "show", "eth0"]).unwrap();
    let a = &addrs[0];
    assert_eq!(a["mtu"], 1400);
    let locals: Vec<String> = a["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["scope"] == "global")
        .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
        .collect();
    assert_eq!(locals, ips);
    let has = |v: &serde_json::Value, want: serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| want.as_object().unwrap().iter().all(|(k, x)| &r[k] == x))
    };
    let r4 = pod.ns.ip_json(&["-4", "route", "show"]).unwrap();
    assert!(
        has(
            &r4,
            json!({"dst":"default","gateway":"169.254.1.1","dev":"eth0"})
        ),
        "{r4}"
    );
    assert!(
        has(
            &r4,
            json!({"dst":"169.254.1.1","dev":"eth0","scope":"link"})
        ),
        "{r4}"
    );
    let r6 = pod.ns.ip_json(&["-6", "route", "show"]).unwrap();
    assert!(
        has(
            &r6,
            json!({"dst":"default","gateway":"fe80::ecee:eeff:feee:eeee","dev":"eth0"})
        ),
        "{r6}"
    );

    // Host side.
    let l = n.ns.ip_json(&["link", "show", &host_if]).unwrap();
    assert_eq!(l[0]["address"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(l[0]["mtu"], 1400);
    let hr =
        n.ns.ip_json(&["-4", "route", "show", "dev", &host_if])
            .unwrap();
    assert_eq!(hr[0]["dst"], ips[0].trim_end_matches("/32"));
    assert_eq!(hr[0]["scope"], "link");
    assert_eq!(hr[0]["protocol"], "80");
    let proxy =
        n.ns.output(&[
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp"),
        ])
        .unwrap();
    assert_eq!(proxy.trim(), "1");

    // The endpoint.
    let client = c.client();
    let wep = c
        .block_on(client.get(
            tabby_api::Kind::WorkloadEndpoint,
            Some("prod"),
            "a-k8s-web--1-eth0",
        ))
        .unwrap()
        .expect("WorkloadEndpoint a-k8s-web--1-eth0");
    let s = wep.spec.as_workload_endpoint().unwrap();
    assert_eq!(s.container_id.as_deref(), Some(pod.container_id.as_str()));
    assert_eq!(s.interface_name.as_deref(), Some(host_if.as_str()));
    assert_eq!(s.ip_networks.len(), 2);
    assert_eq!(s.profiles, ["kns.prod"]);

    // CHECK passes, then names what is missing.
    c.check(&n, &pod, &conf, &r).ok();
    n.ns.ip(&["route", "del", &ips[0], "dev", &host_if])
        .unwrap();
    let (code, msg) = c.check(&n, &pod, &conf, &r).err();
    assert_eq!(code, 104);
    assert!(
        msg.contains(&format!("host route {} dev {host_if} is missing", ips[0])),
        "{msg}"
    );

    // DEL, DEL again, and DEL once the namespace is gone.
    c.del(&n, &pod, &conf).ok();
    c.assert_clean(&[&n]);
    c.del(&n, &pod, &conf).ok();
    let pod2 = c.pod("web-2", "prod");
    c.add(&n, &pod2, &conf).ok();
    pod2.ns.delete().unwrap();
    c.del(&n, &pod2, &conf).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn old_versions_get_old_results() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let mut conf = c.conf(&n);
        conf["cniVersion"] = (*v).into();
        let pod = c.pod(&format!("old{i}"), "default");
        let r = c.add(&n, &pod, &conf).ok();
        assert_eq!(r["cniVersion"], *v);
        let has_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_version, v.starts_with("0."), "{v}: {r}");
        assert!(r["interfaces"][0].get("mtu").is_none());
        if *v == "0.3.1" {
            // CHECK is 0.4.0 and later.
            assert_eq!(c.check(&n, &pod, &conf, &r).err().0, 1);
        }
        c.del(&n, &pod, &conf).ok();
    }
    c.assert_clean(&[&n]);
}

#[test]
fn version_and_status() {
    let c = Cluster::new();
    let n = c.node("a");
    let conf = c.conf(&n);
    let v = c.exec(&n, "tabby", "VERSION", None, &json!({})).ok();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let v = c.exec(&n, "tabby-ipam", "VERSION", None, &json!({})).ok();
    assert_eq!(v["cniVersion"], "1.1.0");
    // No pool yet: not available.
    let (code, msg) = c.exec(&n, "tabby", "STATUS", None, &conf).err();
    assert_eq!(code, 50);
    assert!(msg.contains("no enabled IP pool"), "{msg}");
    c.pool("pods-v4", "100.64.0.0/16", 26);
    assert_eq!(
        c.exec(&n, "tabby", "STATUS", None, &conf).ok(),
        serde_json::Value::Null
    );
    // An unreachable store.
    let mut bad = conf.clone();
    bad["datastore"] = "sqlite:///nonexistent-dir/x/store.db".into();
    assert_eq!(c.exec(&n, "tabby", "STATUS", None, &bad).err().0, 50);
}

#[test]
fn two_pods_on_one_node_ping() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    c.pool("pods-v6", "2001:db8:100::/112", 122);
    let n = c.node("a");
    let mut conf = c.conf(&n);
    conf["ipam"]["assign_ipv6"] = true.into();
    let p1 = c.pod("ping-1", "default");
    let p2 = c.pod("ping-2", "default");
    let r1 = c.add(&n, &p1, &conf).ok();
    let r2 = c.add(&n, &p2, &conf).ok();
    let (ip1, ip2) = (result_ips(&r1), result_ips(&r2));
    for (from, to) in [(&p1, &ip2), (&p2, &ip1)] {
        for addr in to {
            let a = addr.split('/').next().unwrap();
            assert!(from.ns.ping(a, 3), "ping {a} from {}", from.ns.name());
        }
    }
    c.del(&n, &p1, &conf).ok();
    c.del(&n, &p2, &conf).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn exec_delegation_to_tabby_ipam_still_works() {
    // By default `tabby` runs `tabby-ipam` in-process; the spec's exec path is kept
    // for other IPAM plugins and behind TABBY_CNI_EXEC_IPAM=1.
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    let p = c.pod("exec-1", "default");
    let bytes = serde_json::to_vec(&conf).unwrap();
    let env = [("TABBY_CNI_EXEC_IPAM", Some("1"))];
    let r = c.exec_raw(&n, "tabby", "ADD", Some(&p), &bytes, &env).ok();
    let ips = result_ips(&r);
    assert_eq!(ips.len(), 1, "{r}");
    // A missing IPAM binary on the exec path is a spec error naming it.
    let mut bad = conf.clone();
    bad["ipam"]["type"] = "no-such-ipam".into();
    let p2 = c.pod("exec-2", "default");
    let call = c.exec_raw(
        &n,
        "tabby",
        "ADD",
        Some(&p2),
        &serde_json::to_vec(&bad).unwrap(),
        &env,
    );
    assert_ne!(call.rc, 0);
    assert!(
        call.out["msg"].as_str().unwrap().contains("no-such-ipam"),
        "{}",
        call.out
    );
    c.exec_raw(&n, "tabby", "DEL", Some(&p), &bytes, &env).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn gc_releases_what_no_attachment_owns() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let a = c.node("a");
    let b = c.node("b");
    let conf_a = c.conf(&a);
    let conf_b = c.conf(&b);
    let keep = c.pod("keep", "default");
    let gone = c.pod("gone", "default");
    let other = c.pod("other", "default");
    let r_keep = c.add(&a, &keep, &conf_a).ok();
    c.add(&a, &gone, &conf_a).ok();
    c.add(&b, &other, &conf_b).ok();
    assert_eq!(c.store_counts(), (3, 3, 3));
    // The runtime lost `gone` (namespace deleted without DEL).
    gone.ns.delete().unwrap();
    let mut gc = conf_a.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
    c.exec(&a, "tabby", "GC", None, &gc).ok();
    // Only node a's stale attachment went; node b's pod is not a's to collect.
    assert_eq!(c.store_counts(), (2, 2, 2));
    c.check(&a, &keep, &conf_a, &r_keep).ok();
    c.del(&a, &keep, &conf_a).ok();
    c.del(&b, &other, &conf_b).ok();
    c.assert_clean(&[&a, &b]);
}

#[test]
fn addresses_and_pools_from_annotations() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    c.pool("pods-b", "100.66.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    // Calico's `IP=` CNI argument (the ipAddrs annotation without Kubernetes).
    let mut p1 = c.pod("fixed", "default");
    p1.extra_args = "IP=100.64.7.7".into();
    let r = c.add(&n, &p1, &conf).ok();
    assert_eq!(result_ips(&r), ["100.64.7.7/32"]);
    // A WorkloadEndpoint created beforehand carries the pool annotation (what the
    // pod's annotations are in Kubernetes); ADD keeps its metadata.
    let client = c.client();
    let mut wep = tabby_api::Resource::new(
        tabby_api::Kind::WorkloadEndpoint,
        "a-k8s-annotated-eth0",
        Some("default"),
    );
    wep.metadata.annotations.insert(
        "cni.projectcalico.org/ipv4pools".into(),
        "[\"pods-b\"]".into(),
    );
    c.block_on(client.create(wep)).unwrap();
    let p2 = c.pod("annotated", "default");
    let r = c.add(&n, &p2, &conf).ok();
    assert!(result_ips(&r)[0].starts_with("100.66."), "{r}");
    let wep = c
        .block_on(client.get(
            tabby_api::Kind::WorkloadEndpoint,
            Some("default"),
            "a-k8s-annotated-eth0",
        ))
        .unwrap()
        .unwrap();
    assert!(
        wep.metadata
            .annotations
            .contains_key("cni.projectcalico.org/ipv4pools")
    );
    assert_eq!(
        wep.spec
            .as_workload_endpoint()
            .unwrap()
            .container_id
            .as_deref(),
        Some(p2.container_id.as_str())
    );
    c.del(&n, &p1, &conf).ok();
    c.del(&n, &p2, &conf).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn late_del_of_a_replaced_sandbox_leaves_the_new_one_alone() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    let old = c.pod("restart", "default");
    c.add(&n, &old, &conf).ok();
    // The runtime recreates the sandbox: same pod, new container and namespace.
    let mut new = c.pod("restart-new", "default");
    new.k8s = Some(("default".into(), "restart".into()));
    let r_new = c.add(&n, &new, &conf).ok();
    assert_eq!(c.cali_links(&n).len(), 1);
    // The old container's DEL arrives late.
    c.del(&n, &old, &conf).ok();
    c.check(&n, &new, &conf, &r_new).ok();
    assert_eq!(c.store_counts(), (1, 1, 1));
    c.del(&n, &new, &conf).ok();
    c.assert_clean(&[&n]);
}
