//! ADD is safe to repeat (issue 17): the same attachment gets the same result and
//! one address, wiring left half done is completed, and a failed ADD releases only
//! what it allocated. Real plugins in network namespaces (needs root).

mod harness;

use harness::{Cluster, result_ips};
use tabby_cni::naming::veth_name_k8s;

fn host_if(pod: &str) -> String {
    veth_name_k8s("cali", "default", pod)
}

#[test]
fn repeated_add_returns_the_same_result_with_one_address() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    c.pool("pods-v6", "2001:db8:100::/112", 122);
    let n = c.node("a");
    let mut conf = c.conf(&n);
    conf["ipam"]["assign_ipv6"] = true.into();
    let p = c.pod("again", "default");
    let first = c.add(&n, &p, &conf).ok();
    let second = c.add(&n, &p, &conf).ok();
    assert_eq!(first, second);
    let third = c.add(&n, &p, &conf).ok();
    assert_eq!(first, third);
    assert_eq!(result_ips(&first).len(), 2);
    // (allocations, handles, endpoints): one pod's worth.
    assert_eq!(c.store_counts(), (2, 1, 1));
    assert_eq!(c.cali_links(&n), [host_if("again")]);
    c.check(&n, &p, &conf, &first).ok();
    let peer = c.pod("peer", "default");
    let r = c.add(&n, &peer, &conf).ok();
    for a in result_ips(&first) {
        assert!(peer.ns.ping(a.split('/').next().unwrap(), 3), "ping {a}");
    }
    c.del(&n, &p, &conf).ok();
    c.del(&n, &peer, &conf).ok();
    let _ = r;
    c.assert_clean(&[&n]);
}

#[test]
fn repeated_add_finishes_what_is_missing() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    let p = c.pod("finish", "default");
    let first = c.add(&n, &p, &conf).ok();
    let ip = result_ips(&first)[0].clone();
    let hif = host_if("finish");
    // The host route and the pod's default route went missing.
    n.ns.ip(&["route", "del", &ip, "dev", &hif]).unwrap();
    p.ns.ip(&["route", "del", "default"]).unwrap();
    assert_eq!(c.check(&n, &p, &conf, &first).err().0, 104);
    let again = c.add(&n, &p, &conf).ok();
    assert_eq!(again, first);
    c.check(&n, &p, &conf, &first).ok();
    // The veth itself went: it is made again, with the same address.
    n.ns.ip(&["link", "del", &hif]).unwrap();
    let again = c.add(&n, &p, &conf).ok();
    assert_eq!(result_ips(&again), [ip]);
    c.check(&n, &p, &conf, &again).ok();
    assert_eq!(c.store_counts(), (1, 1, 1));
    c.del(&n, &p, &conf).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn failed_add_releases_only_its_own_allocation() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let conf = c.conf(&n);
    let live = c.pod("live", "default");
    let r_live = c.add(&n, &live, &conf).ok();
    let live_ip = result_ips(&r_live)[0].clone();

    // A second ADD of the running pod whose wiring fails (its host interface name
    // is taken by a non-veth link): the pod keeps its address and endpoint.
    let hif = host_if("live");
    n.ns.ip(&["link", "del", &hif]).unwrap();
    n.ns.ip(&["link", "add", &hif, "type", "bridge"]).unwrap();
    let (code, msg) = c.add(&n, &live, &conf).err();
    assert_eq!(code, 103, "{msg}");
    assert!(msg.contains("not a Tabby veth"), "{msg}");
    assert_eq!(c.store_counts(), (1, 1, 1));

    // A new pod whose veth cannot be made after IPAM allocated for it: only its
    // own address is released.
    let fresh = c.pod("fresh", "default");
    let fif = host_if("fresh");
    n.ns.ip(&["link", "add", &fif, "type", "bridge"]).unwrap();
    let (code, msg) = c.add(&n, &fresh, &conf).err();
    assert_eq!(code, 103, "{msg}");
    assert_eq!(c.store_counts(), (1, 1, 1));
    let client = c.client();
    let held = c.block_on(async {
        tabby_client::ipam::ipam_for(&client)
            .ips_by_handle(&format!("{}.{}", harness::NETWORK, live.container_id))
            .await
            .unwrap()
    });
    assert_eq!(
        held.iter().map(|a| format!("{a}/32")).collect::<Vec<_>>(),
        std::slice::from_ref(&live_ip)
    );

    // Once the names are free, ADD completes both with what they hold.
    n.ns.ip(&["link", "del", &hif]).unwrap();
    n.ns.ip(&["link", "del", &fif]).unwrap();
    let again = c.add(&n, &live, &conf).ok();
    assert_eq!(result_ips(&again), [live_ip]);
    c.add(&n, &fresh, &conf).ok();
    assert_eq!(c.store_counts(), (2, 2, 2));
    c.del(&n, &live, &conf).ok();
    c.del(&n, &fresh, &conf).ok();
    c.assert_clean(&[&n]);
}

#[test]
fn tabby_ipam_alone_gives_a_handle_the_same_address() {
    let c = Cluster::new();
    c.pool("pods-v4", "100.64.0.0/16", 26);
    let n = c.node("a");
    let mut conf = c.conf(&n);
    conf["type"] = "tabby-ipam".into();
    let p = c.pod("ipam", "default");
    let first = c.exec(&n, "tabby-ipam", "ADD", Some(&p), &conf).ok();
    let second = c.exec(&n, "tabby-ipam", "ADD", Some(&p), &conf).ok();
    assert_eq!(result_ips(&first).len(), 1);
    assert_eq!(first, second);
    assert_eq!(c.store_counts(), (1, 1, 0));
    c.exec(&n, "tabby-ipam", "DEL", Some(&p), &conf).ok();
    assert_eq!(c.store_counts(), (0, 0, 0));
}

#[test]
fn failed_repeat_add_keeps_a_running_pods_address_with_another_ipam() {
    // With an exec'd IPAM plugin (host-local) `tabby` cannot tell which addresses
    // a call allocated: once the attachment has an endpoint, a failed ADD keeps
    // them all (its DEL would release by container ID, the pod's own address too).
    let c = Cluster::new();
    let n = c.node("a");
    let data = c.dir.join("host-local");
    let mut conf = c.conf(&n);
    // Debian's host-local speaks up to 1.0.0.
    conf["cniVersion"] = "1.0.0".into();
    conf["ipam"] = serde_json::json!({
        "type": "host-local",
        "ranges": [[{"subnet": "100.64.5.0/24"}]],
        "dataDir": data.display().to_string(),
    });
    let p = c.pod("hl", "default");
    let r = c.add(&n, &p, &conf).ok();
    let ip = result_ips(&r)[0].clone();
    let addr = ip.split('/').next().unwrap().to_owned();
    let held = data.join(harness::NETWORK).join(&addr);
    assert!(held.exists(), "{}", held.display());

    // host-local refuses a second allocation for the container, so the repeated
    // ADD fails in IPAM; its rollback must not free the running pod's address.
    let (_, msg) = c.add(&n, &p, &conf).err();
    assert!(msg.contains("host-local"), "{msg}");
    assert!(held.exists(), "the running pod's address was released");
    assert_eq!(c.store_counts().2, 1);
    c.check(&n, &p, &conf, &r).ok();

    c.del(&n, &p, &conf).ok();
    assert!(!held.exists());
    c.assert_clean(&[&n]);
}
