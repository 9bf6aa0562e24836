//! etcd over TLS from the CNI configuration (issue 17): `https://` endpoints in
//! `etcd_endpoints` with `etcd_ca_cert_file`, `etcd_cert_file` and `etcd_key_file`
//! against a real etcd that requires client certificates. etcd runs inside the
//! test node's namespace (on its own 127.0.0.1), so the plugins reach it from
//! where a runtime runs them. Needs root, `etcd` (etcd-server) and `openssl`;
//! without them the test fails and says what is missing.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{Cluster, Node, result_ips};
use serde_json::Value;
use tabby_api::ippool::IPPoolSpec;
use tabby_api::{Kind, Resource, Spec};
use tabby_client::Client;
use tabby_dataplane::NetnsFile;
use tabby_store::etcd::{EtcdConfig, EtcdStore};
use tabby_store::etcd_harness::{TlsFiles, etcd_binary, make_tls_files};
use tabby_testnet::process::Process;

const ENDPOINT: &str = "127.0.0.1:23790";

/// Runs `f` with a client of the node's etcd, from inside the node's namespace.
fn in_node<T: Send + 'static>(
    node: &Node,
    tls: &TlsFiles,
    f: impl FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
    + Send
    + 'static,
) -> Result<T, String> {
    let ns = NetnsFile::open(Path::new("/run/netns").join(node.ns.name())).unwrap();
    let tls = tls.clone();
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async move {
            let mut c = EtcdConfig::new([ENDPOINT]);
            c.tls = true;
            c.ca_cert_file = Some(tls.ca.clone());
            c.cert_file = Some(tls.client_cert.clone());
            c.key_file = Some(tls.client_key.clone());
            c.dial_timeout = Duration::from_secs(1);
            let store = EtcdStore::connect(c).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(f(Client::new(std::sync::Arc::new(store))).await)
        });
        Ok(out)
    })
    .map_err(|e| e.to_string())?
}

/// A one-member etcd in `node`'s namespace that requires TLS client certificates.
fn start_etcd(c: &Cluster, node: &Node) -> (Process, TlsFiles) {
    let bin = etcd_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = c.dir.join("etcd");
    std::fs::create_dir_all(&dir).unwrap();
    let tls = make_tls_files(&dir).unwrap_or_else(|e| panic!("{e}"));
    let p = |p: &Path| p.display().to_string();
    let data = p(&dir.join("data"));
    let (cert, key, ca) = (p(&tls.server_cert), p(&tls.server_key), p(&tls.ca));
    let client_url = format!("https://{ENDPOINT}");
    let argv = [
        bin.as_str(),
        "--name",
        "m0",
        "--data-dir",
        &data,
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        "http://127.0.0.1:23800",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:23800",
        "--initial-cluster",
        "m0=http://127.0.0.1:23800",
        "--cert-file",
        &cert,
        "--key-file",
        &key,
        "--trusted-ca-file",
        &ca,
        "--client-cert-auth",
        "--log-level",
        "warn",
    ];
    node.ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let etcd = Process::spawn(&node.ns, &argv, &dir.join("etcd.log")).unwrap();
    let start = Instant::now();
    loop {
        let ok = in_node(node, &tls, |c| {
            Box::pin(async move { c.list(Kind::IPPool, None).await.is_ok() })
        });
        if ok == Ok(true) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "etcd did not come up over TLS: {ok:?}\n{}",
            etcd.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (etcd, tls)
}

fn tls_conf(c: &Cluster, node: &Node, tls: &TlsFiles) -> Value {
    let mut conf = c.conf(node);
    conf.as_object_mut().unwrap().remove("datastore");
    conf["etcd_endpoints"] = format!("https://{ENDPOINT}").into();
    conf["etcd_ca_cert_file"] = tls.ca.display().to_string().into();
    conf["etcd_cert_file"] = tls.client_cert.display().to_string().into();
    conf["etcd_key_file"] = tls.client_key.display().to_string().into();
    conf
}

#[test]
fn add_check_del_over_etcd_with_client_certificates() {
    let c = Cluster::new();
    let n = c.node("a");
    let (_etcd, tls) = start_etcd(&c, &n);
    in_node(&n, &tls, |client| {
        Box::pin(async move {
            let spec = IPPoolSpec {
                cidr: Some("100.64.0.0/16".parse().unwrap()),
                block_size: Some(26),
                ..IPPoolSpec::default()
            };
            client
                .create(Resource::with_spec("pods-v4", None, Spec::IPPool(spec)))
                .await
                .unwrap();
        })
    })
    .unwrap();
    let conf = tls_conf(&c, &n, &tls);

    assert_eq!(c.exec(&n, "tabby", "STATUS", None, &conf).ok(), Value::Null);
    let pod = c.pod("tls", "default");
    let r = c.add(&n, &pod, &conf).ok();
    let ips = result_ips(&r);
    assert_eq!(ips.len(), 1, "{r}");
    assert_eq!(c.add(&n, &pod, &conf).ok(), r);
    c.check(&n, &pod, &conf, &r).ok();
    assert!(pod.ns.ping("198.18.0.1", 2), "the pod reaches its node");
    let weps = in_node(&n, &tls, |client| {
        Box::pin(async move {
            client
                .list(Kind::WorkloadEndpoint, None)
                .await
                .unwrap()
                .len()
        })
    })
    .unwrap();
    assert_eq!(weps, 1);

    // Without the client certificate etcd refuses the connection.
    let mut no_cert = conf.clone();
    let o = no_cert.as_object_mut().unwrap();
    o.remove("etcd_cert_file");
    o.remove("etcd_key_file");
    let (code, msg) = c.exec(&n, "tabby", "STATUS", None, &no_cert).err();
    assert_eq!(code, 50, "{msg}");
    // https without a CA, and TLS files with plain endpoints, are config errors
    // that name the key.
    let mut no_ca = conf.clone();
    no_ca.as_object_mut().unwrap().remove("etcd_ca_cert_file");
    let (code, msg) = c.exec(&n, "tabby", "ADD", Some(&pod), &no_ca).err();
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("etcd_ca_cert_file"), "{msg}");
    let mut plain = conf.clone();
    plain["etcd_endpoints"] = format!("http://{ENDPOINT}").into();
    let (code, msg) = c.exec(&n, "tabby", "ADD", Some(&pod), &plain).err();
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("use https://"), "{msg}");

    // tabby-ipam alone over the same TLS settings.
    let mut ipam = conf.clone();
    ipam["type"] = "tabby-ipam".into();
    let other = c.pod("tls-ipam", "default");
    let a = c.exec(&n, "tabby-ipam", "ADD", Some(&other), &ipam).ok();
    assert_eq!(c.exec(&n, "tabby-ipam", "ADD", Some(&other), &ipam).ok(), a);
    c.exec(&n, "tabby-ipam", "DEL", Some(&other), &ipam).ok();

    c.del(&n, &pod, &conf).ok();
    assert_eq!(c.cali_links(&n), Vec::<String>::new());
    let left = in_node(&n, &tls, |client| {
        Box::pin(async move {
            let ipam = tabby_client::ipam::ipam_for(&client);
            let allocs: usize = ipam
                .list_blocks(None)
                .await
                .unwrap()
                .iter()
                .map(|b| b.allocations().len())
                .sum();
            let weps = client
                .list(Kind::WorkloadEndpoint, None)
                .await
                .unwrap()
                .len();
            (allocs, weps)
        })
    })
    .unwrap();
    assert_eq!(left, (0, 0));
}
