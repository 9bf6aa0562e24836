//! Workload bandwidth limits against the real kernel with the `tc` binary: tbf on
//! the host veth, ingress redirect to an ifb with its own tbf, read back, applied
//! idempotently, replaced, repaired and removed. Each test owns a namespace
//! `tqd-<test>-<pid>-a` (removed on drop, also on panic) and checks the kernel with
//! `tc -j` / `ip -j`. Needs root: fails, never skips, without it.

use serde_json::Value;
use tabby_dataplane::tc::{IFB_ALIAS_PREFIX, Peak, Shaping, Tbf, TcCli, TrafficControl, ifb_name};
use tabby_testnet::Netns;

fn setup(test: &str) -> (Netns, TcCli) {
    tabby_testnet::require_root();
    let ns = Netns::new(&format!("tqd-{test}-{}", std::process::id()), "a").expect("netns");
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&[
        "link", "add", "calitq1", "type", "veth", "peer", "name", "calitq1p",
    ])
    .unwrap();
    ns.ip(&["link", "set", "calitq1", "up"]).unwrap();
    ns.ip(&["link", "set", "calitq1p", "up"]).unwrap();
    let tc = TcCli::in_netns(ns.name());
    (ns, tc)
}

fn tc_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["tc", "-j"];
    argv.extend(args);
    let out = ns.output(&argv).unwrap();
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(&out).unwrap() {
        Value::Array(v) => v,
        other => panic!("tc -j {args:?}: {other}"),
    }
}

/// The root tbf's rate (bytes/s) and burst on `dev`.
fn root_tbf(ns: &Netns, dev: &str) -> Option<(u64, u64)> {
    tc_json(ns, &["qdisc", "show", "dev", dev])
        .into_iter()
        .find(|q| q["kind"] == "tbf" && q["root"] == true)
        .map(|q| {
            (
                q["options"]["rate"].as_u64().unwrap(),
                q["options"]["burst"].as_u64().unwrap(),
            )
        })
}

fn has_ingress_qdisc(ns: &Netns, dev: &str) -> bool {
    tc_json(ns, &["qdisc", "show", "dev", dev])
        .iter()
        .any(|q| q["kind"] == "ingress")
}

fn ifb(ns: &Netns, name: &str) -> Option<Value> {
    let v = ns.ip_json(&["-d", "link", "show", "type", "ifb"]).unwrap();
    v.as_array()?.iter().find(|l| l["ifname"] == name).cloned()
}

fn limits(rate_in: u64, rate_out: u64) -> Shaping {
    Shaping {
        ingress: Some(Tbf {
            rate: rate_in,
            burst: 50_000,
            peak: None,
        }),
        egress: Some(Tbf {
            rate: rate_out,
            burst: 32_768,
            peak: Some(Peak {
                rate: rate_out * 2,
                minburst: 2000,
            }),
        }),
    }
}

#[test]
fn apply_is_idempotent_replaces_and_removes() {
    let (ns, tc) = setup("apply");
    let want = limits(20_000_000, 10_000_000);
    assert!(tc.apply("calitq1", &want).unwrap(), "first apply changes");
    let ifb_dev = ifb_name("calitq1");
    assert_eq!(ifb_dev, "bwcalitq1");
    assert_eq!(root_tbf(&ns, "calitq1").map(|t| t.0), Some(2_500_000));
    assert!(has_ingress_qdisc(&ns, "calitq1"));
    let filters = tc_json(
        &ns,
        &["filter", "show", "dev", "calitq1", "parent", "ffff:"],
    );
    let text = serde_json::to_string(&filters).unwrap();
    assert!(
        text.contains(r#""to_dev":"bwcalitq1""#),
        "redirect to the ifb: {text}"
    );
    let link = ifb(&ns, &ifb_dev).expect("the ifb exists");
    assert_eq!(
        link["ifalias"].as_str(),
        Some(format!("{IFB_ALIAS_PREFIX}calitq1").as_str())
    );
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    assert_eq!(root_tbf(&ns, &ifb_dev).map(|t| t.0), Some(1_250_000));

    // Read back equals what was asked (within the kernel's rounding), peak included.
    let back = tc.read("calitq1").unwrap();
    assert!(want.matches(&back), "{want:?} vs {back:?}");
    assert_eq!(back.egress.unwrap().peak.unwrap().rate, 20_000_000);
    assert_eq!(tc.read_all().unwrap().len(), 1, "only calitq1 is shaped");
    assert!(want.matches(&tc.read_all().unwrap()["calitq1"]));
    assert_eq!(
        tc.owned_ifbs().unwrap().get(&ifb_dev).map(String::as_str),
        Some("calitq1")
    );

    // Twice is no change: the qdisc is not even replaced (its handle stays).
    assert!(!tc.apply("calitq1", &want).unwrap());

    // A new rate replaces in place.
    let slower = limits(5_000_000, 3_000_000);
    assert!(tc.apply("calitq1", &slower).unwrap());
    assert_eq!(root_tbf(&ns, "calitq1").map(|t| t.0), Some(625_000));
    assert_eq!(root_tbf(&ns, &ifb_dev).map(|t| t.0), Some(375_000));
    assert!(slower.matches(&tc.read("calitq1").unwrap()));

    // Only one direction left: the ifb and the ingress qdisc go.
    let only_in = Shaping {
        egress: None,
        ..slower
    };
    assert!(tc.apply("calitq1", &only_in).unwrap());
    assert!(ifb(&ns, &ifb_dev).is_none(), "the ifb is deleted");
    assert!(!has_ingress_qdisc(&ns, "calitq1"));
    assert!(root_tbf(&ns, "calitq1").is_some());

    // No limits: nothing of ours remains.
    assert!(tc.apply("calitq1", &Shaping::default()).unwrap());
    assert!(root_tbf(&ns, "calitq1").is_none());
    assert!(tc.read("calitq1").unwrap().is_empty());
    assert!(!tc.apply("calitq1", &Shaping::default()).unwrap());
}

#[test]
fn drift_is_read_and_repaired() {
    let (ns, tc) = setup("drift");
    let want = limits(20_000_000, 10_000_000);
    tc.apply("calitq1", &want).unwrap();
    // Someone removes the root qdisc and the ifb by hand.
    ns.exec(&["tc", "qdisc", "del", "dev", "calitq1", "root"])
        .unwrap();
    ns.ip(&["link", "del", "bwcalitq1"]).unwrap();
    let back = tc.read("calitq1").unwrap();
    assert_eq!(back.ingress, None);
    assert_eq!(back.egress, None, "the redirect target is gone");
    assert!(tc.apply("calitq1", &want).unwrap());
    assert!(want.matches(&tc.read("calitq1").unwrap()));
    // Someone changes the rate by hand.
    ns.exec(&[
        "tc", "qdisc", "replace", "dev", "calitq1", "root", "tbf", "rate", "1mbit", "burst", "10k",
        "latency", "50ms",
    ])
    .unwrap();
    assert!(!want.matches(&tc.read("calitq1").unwrap()));
    assert!(tc.apply("calitq1", &want).unwrap());
    assert_eq!(root_tbf(&ns, "calitq1").map(|t| t.0), Some(2_500_000));
}

#[test]
fn errors_name_the_interface() {
    let (_ns, tc) = setup("err");
    let e = tc
        .apply("calinone", &limits(1_000_000, 1_000_000))
        .unwrap_err()
        .to_string();
    assert!(e.contains("calinone"), "{e}");
}

#[test]
fn someone_elses_qdiscs_are_left_alone_until_we_need_the_root() {
    let (ns, tc) = setup("foreign");
    // A tbf and an ingress redirect made by another tool (handle 1:, ifb "other").
    ns.exec(&[
        "tc", "qdisc", "add", "dev", "calitq1", "root", "handle", "1:", "tbf", "rate", "1mbit",
        "burst", "10k", "latency", "50ms",
    ])
    .unwrap();
    ns.ip(&["link", "add", "other", "type", "ifb"]).unwrap();
    ns.exec(&[
        "tc", "qdisc", "add", "dev", "calitq1", "handle", "ffff:", "ingress",
    ])
    .unwrap();
    ns.exec(&[
        "tc", "filter", "add", "dev", "calitq1", "parent", "ffff:", "protocol", "all", "u32",
        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "other",
    ])
    .unwrap();
    assert!(tc.read("calitq1").unwrap().is_empty(), "not ours");
    assert!(tc.read_all().unwrap().is_empty(), "not ours");
    assert!(!tc.apply("calitq1", &Shaping::default()).unwrap());
    assert_eq!(root_tbf(&ns, "calitq1").map(|t| t.0), Some(125_000));
    assert!(has_ingress_qdisc(&ns, "calitq1"));
    // Limits for the workload take the root and the ingress hook over.
    let want = limits(20_000_000, 10_000_000);
    assert!(tc.apply("calitq1", &want).unwrap());
    assert!(want.matches(&tc.read("calitq1").unwrap()));
    assert_eq!(root_tbf(&ns, "calitq1").map(|t| t.0), Some(2_500_000));
    assert!(!tc.apply("calitq1", &want).unwrap());
}
