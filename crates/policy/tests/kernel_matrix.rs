//! The traffic matrix, for real: a node namespace with eight workloads attached
//! as Calico attaches them and two outside networks behind host endpoints, the
//! policy below compiled for the node, rendered and applied with `nft -j -f`, and
//! then TCP, UDP and ICMP sent for every case. Each case asserts the kernel's
//! verdict and that `explain` gives the same verdict. Needs root.
//!
//! Covered: actions Allow, Deny, Log, Pass; protocol by name and number,
//! notProtocol; ICMP type and code, notICMP; nets and notNets; selector,
//! notSelector, namespace scoping and namespaceSelector (policy and rule);
//! ports, port ranges, notPorts and named ports (ingress: resolved locally;
//! egress: an address-port set); ipVersion; policy order within a tier, tier
//! order, Pass to the next tier, end-of-tier drop, a tier with defaultAction
//! Pass; profiles in order (Deny in the first, kns.<ns> allow after it, a
//! synthesized kns.<ns>, an explicit kns.<ns> with labelsToApply, no profile at
//! all); NetworkSet and GlobalNetworkSet; host endpoints (a named interface and
//! `*`), failsafe ports configured by FelixConfiguration (with a net), Felix's
//! default outbound failsafes; and what host endpoints must not touch: forwarded
//! traffic, loopback. Between the host and its workloads: workload to host goes
//! through the workload's egress policy, then defaultEndpointToHostAction (Drop
//! by default, then Accept and Return in later passes), never host endpoint
//! policy or failsafes; host to workload is always allowed.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use support::{Lab, OutSpec, PodSpec, Proto};
use tabby_api::load::parse_documents;
use tabby_policy::compile::compile_for_node;
use tabby_policy::explain::{Flow, Peer, VerdictAction, explain_compiled};
use tabby_policy::model::Model;
use tabby_policy::nft::render;

const PODS: &[PodSpec] = &[
    PodSpec {
        key: "prod/fe",
        iface: "cali-fe",
        v4: "100.64.1.1",
        v6: Some("2001:db8:1::1"),
    },
    PodSpec {
        key: "prod/be",
        iface: "cali-be",
        v4: "100.64.1.2",
        v6: Some("2001:db8:1::2"),
    },
    PodSpec {
        key: "prod/db",
        iface: "cali-db",
        v4: "100.64.1.3",
        v6: None,
    },
    PodSpec {
        key: "dev/tester",
        iface: "cali-te",
        v4: "100.64.2.1",
        v6: None,
    },
    PodSpec {
        key: "dev/other",
        iface: "cali-ot",
        v4: "100.64.2.3",
        v6: None,
    },
    PodSpec {
        key: "dev/open",
        iface: "cali-op",
        v4: "100.64.2.2",
        v6: None,
    },
    PodSpec {
        key: "ops/mon",
        iface: "cali-mo",
        v4: "100.64.3.1",
        v6: None,
    },
    PodSpec {
        key: "restricted/iso",
        iface: "cali-is",
        v4: "100.64.4.1",
        v6: None,
    },
    PodSpec {
        key: "bare/bare",
        iface: "cali-ba",
        v4: "100.64.5.1",
        v6: None,
    },
];

const OUTS: &[OutSpec] = &[
    OutSpec {
        name: "out1",
        host_iface: "eth1",
        node_ip: "198.18.0.1",
        ip: "198.18.0.2",
    },
    OutSpec {
        name: "out2",
        host_iface: "eth2",
        node_ip: "198.18.1.1",
        ip: "198.18.1.2",
    },
];

fn wep(key: &str, labels: &str, extra: &str) -> String {
    let p = PODS.iter().find(|p| p.key == key).expect("pod");
    let (ns, name) = key.split_once('/').expect("ns/name");
    let mut ips = vec![format!("{}/32", p.v4)];
    if let Some(v6) = p.v6 {
        ips.push(format!("\"{v6}/128\""));
    }
    format!(
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{node: node1, interfaceName: {}, ipNetworks: [{}]{extra}}}\n",
        p.iface,
        ips.join(", ")
    )
}

const POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.ops}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
  labelsToApply: {pcns.team: ops}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: no-udp-in}
spec:
  ingress: [{action: Deny, protocol: UDP}]
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: prod, labels: {kind: partner}}
spec: {nets: [198.18.0.0/24]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: dmz, labels: {zone: dmz}}
spec: {nets: [198.18.1.0/24]}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: audit}
spec: {order: 150, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 200}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.block}
spec:
  tier: security
  order: 10
  selector: all()
  namespaceSelector: all()
  types: [Ingress, Egress]
  ingress:
    - {action: Deny, protocol: TCP, destination: {ports: [6000]}}
    - {action: Log}
    - {action: Pass}
  egress:
    - {action: Deny, protocol: UDP, destination: {selector: zone == 'dmz'}}
    - {action: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: audit.watch}
spec:
  tier: audit
  order: 10
  selector: app == 'frontend'
  ingress:
    - {action: Deny, protocol: UDP, destination: {ports: [9999]}}
    - {action: Deny, protocol: ICMP, notICMP: {type: 8, code: 3}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: platform.db-only}
spec:
  tier: platform
  order: 10
  selector: app == 'db'
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: app == 'backend'}, destination: {ports: [5432]}}
    - {action: Allow, notProtocol: TCP, source: {selector: app == 'monitor', namespaceSelector: team == 'ops'}}
    - {action: Allow, protocol: ICMP, icmp: {type: 8, code: 1}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: be-deny, namespace: prod}
spec:
  order: 100
  selector: app == 'backend'
  ingress:
    - {action: Deny, protocol: TCP, destination: {ports: [8081]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: be-allow, namespace: prod}
spec:
  order: 200
  selector: app == 'backend'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: role == 'web'}
      destination: {ports: [http, metrics, 8081, 6000, "9000:9010", 9300]}
    - {action: Allow, protocol: 17, source: {nets: [100.64.0.0/16]}, destination: {notPorts: ["5000:5010"]}}
    - {action: Allow, protocol: ICMP, icmp: {type: 8, code: 0}, source: {selector: app == 'frontend'}}
    - {action: Allow, protocol: TCP, ipVersion: 6, destination: {ports: [7000]}}
    - {action: Allow, protocol: TCP, source: {selector: kind == 'partner'}, destination: {ports: [8443]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: fe-egress, namespace: prod}
spec:
  selector: app == 'frontend'
  types: [Egress]
  egress:
    - {action: Deny, protocol: TCP, destination: {ports: [dbg]}}
    - {action: Allow}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: tester-in, namespace: dev}
spec:
  selector: role == 'tester'
  ingress:
    - {action: Allow, protocol: TCP, source: {notSelector: app == 'open'}, destination: {ports: [80]}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth1, labels: {hep: "true"}}
spec: {node: node1, interfaceName: eth1, expectedIPs: [198.18.0.1]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-all, labels: {hep: "true"}}
spec: {node: node1, interfaceName: "*", expectedIPs: [198.18.1.1]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node2-eth1, labels: {hep: "true"}}
spec: {node: node2, interfaceName: eth1, expectedIPs: [198.18.5.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-in}
spec:
  order: 10
  selector: hep == 'true'
  types: [Ingress, Egress]
  ingress:
    - {action: Allow, protocol: TCP, source: {nets: [198.18.0.0/15], notNets: [198.18.1.0/24]}, destination: {ports: [8080]}}
    - {action: Allow, protocol: ICMP, source: {selector: zone == 'dmz'}}
  egress:
    - {action: Allow, protocol: TCP, destination: {nets: [198.18.0.0/24], ports: [9000]}}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  failsafeInboundHostPorts:
    - {protocol: tcp, port: 22}
    - {protocol: tcp, port: 2379, net: 198.18.1.0/24}
"#;

fn resources() -> String {
    let mut y = String::new();
    for (key, labels, extra) in [
        (
            "prod/fe",
            "app: frontend, role: web",
            ", profiles: [kns.prod]",
        ),
        (
            "prod/be",
            "app: backend",
            ", profiles: [kns.prod], ports: [{name: http, protocol: TCP, port: 8080}, \
             {name: metrics, protocol: TCP, port: 9100}, {name: dbg, protocol: TCP, port: 9300}]",
        ),
        ("prod/db", "app: db", ", profiles: [kns.prod]"),
        (
            "dev/tester",
            "app: frontend, role: tester",
            ", profiles: [kns.dev]",
        ),
        ("dev/open", "app: open", ", profiles: [kns.dev]"),
        ("dev/other", "app: other", ", profiles: [kns.dev]"),
        ("ops/mon", "app: monitor", ", profiles: [kns.ops]"),
        (
            "restricted/iso",
            "app: iso",
            ", profiles: [no-udp-in, kns.restricted]",
        ),
        ("bare/bare", "app: bare", ""),
    ] {
        y.push_str(&wep(key, labels, extra));
        y.push_str("---\n");
    }
    y.push_str(POLICY);
    y
}

/// One side of a case: a pod (`ns/name`), an outside network, or the node
/// reached through (or leaving by) a host endpoint's address.
#[derive(Clone, Copy, Debug)]
enum At {
    Pod(&'static str),
    Out(&'static str),
    /// The node, by host endpoint name and the node address used.
    Node(&'static str, &'static str),
    /// The node's loopback.
    Loopback,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    from: At,
    to: At,
    proto: Proto,
    port: u16,
    v6: bool,
    allow: bool,
    why: &'static str,
}

fn c(from: At, to: At, proto: Proto, port: u16, allow: bool, why: &'static str) -> Case {
    Case {
        from,
        to,
        proto,
        port,
        v6: false,
        allow,
        why,
    }
}

const T: Proto = Proto::Tcp;
const U: Proto = Proto::Udp;
const I: Proto = Proto::Icmp;
use At::{Loopback, Node, Out, Pod};

fn cases() -> Vec<Case> {
    let fe = Pod("prod/fe");
    let be = Pod("prod/be");
    let db = Pod("prod/db");
    let tester = Pod("dev/tester");
    let open = Pod("dev/open");
    let other = Pod("dev/other");
    let mon = Pod("ops/mon");
    let iso = Pod("restricted/iso");
    let bare = Pod("bare/bare");
    let (out1, out2) = (Out("out1"), Out("out2"));
    let n1 = Node("node1-eth1", "198.18.0.1");
    let n2 = Node("node1-all", "198.18.1.1");
    let mut v = vec![
        c(
            fe,
            be,
            T,
            8080,
            true,
            "named port http; through Log and Pass",
        ),
        c(fe, be, T, 9100, true, "named port metrics"),
        c(
            fe,
            be,
            T,
            8081,
            false,
            "policy order: be-deny before be-allow",
        ),
        c(
            fe,
            be,
            T,
            6000,
            false,
            "tier order: security Deny before default Allow",
        ),
        c(fe, be, T, 9005, true, "port range 9000:9010"),
        c(fe, be, T, 9011, false, "end of tier default"),
        c(
            fe,
            be,
            T,
            9300,
            false,
            "egress named port dbg (address-port set)",
        ),
        c(db, be, T, 8080, false, "selector role == web"),
        c(
            tester,
            be,
            I,
            0,
            false,
            "rule selector scoped to namespace prod",
        ),
        c(fe, be, I, 0, true, "ICMP type 8 code 0"),
        c(fe, be, U, 5020, true, "protocol 17 by number, notPorts"),
        c(fe, be, U, 5005, false, "notPorts 5000:5010"),
        c(fe, be, T, 7000, false, "ipVersion 6 only (IPv4 flow)"),
        c(
            out1,
            be,
            T,
            8443,
            true,
            "NetworkSet partners; forwarded, no host endpoint",
        ),
        c(out2, be, T, 8443, false, "not in NetworkSet partners"),
        c(
            be,
            out1,
            U,
            7000,
            true,
            "egress to the outside, profile kns.prod",
        ),
        c(
            be,
            out2,
            U,
            7000,
            false,
            "GlobalNetworkSet dmz in tier security",
        ),
        c(be, db, T, 5432, true, "tier platform allow"),
        c(fe, db, T, 5432, false, "end of tier platform"),
        c(be, db, T, 5433, false, "end of tier platform (port)"),
        c(
            mon,
            db,
            U,
            53,
            true,
            "notProtocol TCP, rule namespaceSelector team == ops",
        ),
        c(mon, db, I, 0, true, "notProtocol TCP admits ICMP"),
        c(mon, db, T, 80, false, "notProtocol TCP"),
        c(
            open,
            db,
            U,
            53,
            false,
            "namespaceSelector does not match dev",
        ),
        c(be, db, I, 0, false, "ICMP code 1 does not match code 0"),
        c(tester, fe, U, 9999, false, "tier audit Deny"),
        c(
            tester,
            fe,
            T,
            7777,
            true,
            "tier audit defaultAction Pass, then profile",
        ),
        c(open, tester, I, 0, false, "notICMP 8/3 matches echo 8/0"),
        c(
            other,
            tester,
            T,
            80,
            true,
            "notSelector app == open does not exclude other",
        ),
        c(
            fe,
            tester,
            T,
            80,
            false,
            "a namespaced rule's notSelector selects in its namespace only",
        ),
        c(open, tester, T, 80, false, "notSelector app == open"),
        c(tester, open, T, 80, true, "synthesized kns.dev"),
        c(open, mon, T, 80, true, "explicit kns.ops"),
        c(open, iso, U, 5000, false, "first profile no-udp-in denies"),
        c(
            open,
            iso,
            T,
            5000,
            true,
            "second profile kns.restricted allows",
        ),
        c(open, bare, T, 80, false, "no profiles: ingress drop"),
        c(bare, open, T, 80, false, "no profiles: egress drop"),
        c(out1, n1, T, 8080, true, "host endpoint eth1 ingress allow"),
        c(
            out2,
            n2,
            T,
            8080,
            false,
            "host endpoint *: notNets 198.18.1.0/24",
        ),
        c(out1, n1, T, 8081, false, "host endpoint: end of tier"),
        c(out1, n1, T, 22, true, "failsafe tcp:22"),
        c(
            out1,
            n1,
            T,
            2379,
            false,
            "failsafe tcp:2379 only from 198.18.1.0/24",
        ),
        c(
            out2,
            n2,
            T,
            2379,
            true,
            "failsafe tcp:2379 from 198.18.1.0/24",
        ),
        c(
            out1,
            n1,
            T,
            6443,
            false,
            "Felix default inbound failsafes replaced",
        ),
        c(
            out2,
            n2,
            I,
            0,
            true,
            "GlobalNetworkSet in host endpoint policy",
        ),
        c(out1, n1, I, 0, false, "not in GlobalNetworkSet dmz"),
        c(n1, out1, T, 9000, true, "host endpoint egress allow"),
        c(
            n2,
            out2,
            T,
            9000,
            false,
            "host endpoint * egress: nets 198.18.0.0/24",
        ),
        c(n1, out1, U, 53, true, "default outbound failsafe udp:53"),
        c(n1, out1, U, 54, false, "host endpoint egress: end of tier"),
        c(
            fe,
            n1,
            T,
            8081,
            false,
            "workload to host: DefaultEndpointToHostAction Drop (default)",
        ),
        c(
            fe,
            n1,
            T,
            22,
            false,
            "workload to host: failsafe ports do not apply",
        ),
        c(
            n1,
            be,
            T,
            9011,
            true,
            "host to workload: allowed though be's ingress denies 9011",
        ),
        c(
            n1,
            iso,
            U,
            5300,
            true,
            "host to workload: allowed though iso's profile denies UDP in",
        ),
        c(
            Loopback,
            Loopback,
            T,
            8081,
            true,
            "loopback with a * host endpoint",
        ),
    ];
    let mut v6 = c(fe, be, T, 7000, true, "ipVersion 6");
    v6.v6 = true;
    v.push(v6);
    v
}

/// The same policy with `defaultEndpointToHostAction: <action>`.
fn resources_with(action: &str) -> String {
    resources().replace(
        "spec:\n  failsafeInboundHostPorts:",
        &format!("spec:\n  defaultEndpointToHostAction: {action}\n  failsafeInboundHostPorts:"),
    )
}

/// Workload-to-host cases under `defaultEndpointToHostAction` Accept or Return.
fn accept_cases() -> Vec<Case> {
    let fe = Pod("prod/fe");
    let be = Pod("prod/be");
    let n1 = Node("node1-eth1", "198.18.0.1");
    let n2 = Node("node1-all", "198.18.1.1");
    vec![
        c(fe, n1, T, 8081, true, "workload to host: Accept / Return"),
        c(
            fe,
            n2,
            U,
            5353,
            false,
            "workload to host: egress security.block denies UDP to dmz first",
        ),
        c(
            fe,
            n2,
            T,
            8081,
            true,
            "workload to host: * host endpoint ingress does not apply",
        ),
        c(n1, be, T, 9011, true, "host to workload: still allowed"),
    ]
}

fn addr(lab: &Lab, at: At, v6: bool) -> IpAddr {
    let s = match at {
        At::Pod(k) => {
            let (_, p) = &lab.pods[k];
            if v6 {
                p.v6.expect("pod has IPv6")
            } else {
                p.v4
            }
        }
        At::Out(o) => lab.outs[o].1.ip,
        At::Node(_, a) => a,
        At::Loopback => "127.0.0.1",
    };
    s.parse().expect("address")
}

fn ns_of(lab: &Lab, at: At) -> String {
    match at {
        At::Pod(k) => lab.ns_name(k),
        At::Out(o) => lab.ns_name(o),
        At::Node(..) | At::Loopback => lab.ns_name("node"),
    }
}

fn peer(lab: &Lab, at: At) -> Peer {
    match at {
        At::Pod(k) => Peer::Endpoint(k.to_string()),
        At::Node(hep, _) => Peer::Endpoint(hep.to_string()),
        At::Out(_) | At::Loopback => Peer::Address(addr(lab, at, false)),
    }
}

#[test]
fn kernel_traffic_matrix_matches_explain() {
    let started = Instant::now();
    let resources = parse_documents(&resources(), "matrix.yaml").expect("resources load");
    let model = Model::from_resources(&resources).expect("model");
    let compiled = compile_for_node(&model, "node1");
    assert!(
        compiled
            .endpoints
            .iter()
            .all(|e| e.node.as_deref() == Some("node1")),
        "node2's host endpoint is not compiled for node1"
    );
    let lab = Lab::new("tpm", PODS, OUTS);
    lab.nft(&render(&compiled))
        .expect("nft accepts the rendering");
    let cases = cases();
    let lab = std::sync::Arc::new(lab);
    let (mut report, mut bad) = run(&lab, &model, &compiled, &cases);

    // defaultEndpointToHostAction Accept, then Return, each applied as a full
    // replacement. Return leaves Tabby's input chain: with no other rules on the
    // hook the packet is accepted, and host endpoint policy still does not apply.
    let mut more = Vec::new();
    for (action, want) in [
        ("Accept", tabby_policy::model::EndpointToHost::Accept),
        ("Return", tabby_policy::model::EndpointToHost::Return),
    ] {
        let resources =
            parse_documents(&resources_with(action), "matrix.yaml").expect("resources load");
        let m = Model::from_resources(&resources).expect("model");
        assert_eq!(m.endpoint_to_host, want);
        let compiled = compile_for_node(&m, "node1");
        lab.nft(&render(&compiled))
            .expect("nft accepts the rendering");
        let k = accept_cases();
        report.push(format!("  -- defaultEndpointToHostAction: {action} --"));
        let (r, b) = run(&lab, &m, &compiled, &k);
        report.extend(r);
        bad += b;
        more.extend(k);
    }
    eprintln!("{}", report.join("\n"));
    eprintln!(
        "{} cases in {:?}",
        cases.len() + more.len(),
        started.elapsed()
    );
    assert_eq!(bad, 0, "{bad} cases disagree (marked XX above)");
}

/// Sends every case's traffic and asks `explain` about it: the report lines and
/// how many disagree with the expectation.
fn run(
    lab: &std::sync::Arc<Lab>,
    model: &Model,
    compiled: &tabby_policy::Compiled,
    cases: &[Case],
) -> (Vec<String>, usize) {
    for k in cases {
        let dst = match k.to {
            At::Loopback => "node".to_string(),
            At::Pod(p) => p.to_string(),
            At::Out(o) => o.to_string(),
            At::Node(..) => "node".to_string(),
        };
        lab.serve(&dst, k.proto, k.port);
    }
    let handles: Vec<_> = cases
        .iter()
        .map(|k| {
            let k = *k;
            let lab = lab.clone();
            std::thread::spawn(move || {
                let ns = ns_of(&lab, k.from);
                let dst = addr(&lab, k.to, k.v6);
                // A second try rules out a slow first connection on a loaded
                // machine; a dropped packet fails both.
                (0..2)
                    .any(|_| support::probe(&ns, dst, k.proto, k.port, Duration::from_millis(900)))
            })
        })
        .collect();
    let kernel: Vec<bool> = handles
        .into_iter()
        .map(|h| h.join().expect("probe"))
        .collect();

    let mut report = Vec::new();
    let mut bad = 0;
    for (k, got) in cases.iter().zip(&kernel) {
        let explained = match (k.from, k.to) {
            (At::Loopback, _) => None,
            _ => {
                let flow = Flow {
                    protocol: match k.proto {
                        Proto::Tcp => 6,
                        Proto::Udp => 17,
                        Proto::Icmp => 1,
                    },
                    dst_port: (k.proto != Proto::Icmp).then_some(k.port),
                    icmp_type: (k.proto == Proto::Icmp).then_some(8),
                    icmp_code: (k.proto == Proto::Icmp).then_some(0),
                    ip_version: Some(if k.v6 { 6 } else { 4 }),
                    ..Flow::default()
                };
                let v =
                    explain_compiled(model, compiled, &peer(lab, k.from), &peer(lab, k.to), &flow)
                        .unwrap_or_else(|e| panic!("explain {k:?}: {e}"));
                Some((v.action == VerdictAction::Allow, v.reason))
            }
        };
        let ok = *got == k.allow && explained.as_ref().is_none_or(|(a, _)| *a == k.allow);
        if !ok {
            bad += 1;
        }
        report.push(format!(
            "{} {:?} -> {:?} {:?}/{}{}: want {} kernel {} explain {} ({}){}",
            if ok { "  " } else { "XX" },
            k.from,
            k.to,
            k.proto,
            k.port,
            if k.v6 { " v6" } else { "" },
            verdict(k.allow),
            verdict(*got),
            explained
                .as_ref()
                .map_or("n/a (loopback is no endpoint)", |(a, _)| verdict(*a)),
            k.why,
            explained
                .map(|(_, r)| format!("\n      explain: {r}"))
                .unwrap_or_default()
        ));
    }
    (report, bad)
}

fn verdict(allow: bool) -> &'static str {
    if allow { "ALLOW" } else { "DENY" }
}
