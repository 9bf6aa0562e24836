//! Host endpoints, failsafes, node-local compilation and incremental updates
//! without root: hand-checked snapshots of the rendered nftables JSON and the
//! diff between two models, plus the rules around them.

use serde_json::{Value, json};
use tabby_api::load::parse_documents;
use tabby_policy::compile::{compile, compile_for_node};
use tabby_policy::explain::{Flow, Peer, VerdictAction, explain_between};
use tabby_policy::model::{Failsafe, Model};
use tabby_policy::nft::{Family, render_family, ruleset, update_commands};

const BEFORE: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: edge}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [198.18.0.1]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n2-eth0, labels: {role: edge}}
spec: {node: n2, interfaceName: eth0, expectedIPs: [198.18.0.2]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: web, labels: {app: a}}
spec: {node: n1, ipNetworks: [100.64.0.1/32], interfaceName: cali-a, profiles: [kns.web]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: edge}
spec:
  selector: role == 'edge'
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: role == 'edge'}, destination: {ports: [10250]}}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  failsafeInboundHostPorts: [{protocol: tcp, port: 22}, {protocol: udp, port: 68, net: 198.18.0.0/24}]
  failsafeOutboundHostPorts: []
"#;

/// BEFORE with the edge policy on two ports and a third node's host endpoint
/// (its address joins the selection; its chains are not on n1).
fn after() -> String {
    format!(
        "{}{}",
        BEFORE.replace("ports: [10250]", "ports: [10250, 10255]"),
        r#"---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n3-eth0, labels: {role: edge}}
spec: {node: n3, interfaceName: eth0, expectedIPs: [198.18.0.3]}
"#
    )
}

fn model(text: &str) -> Model {
    Model::from_resources(&parse_documents(text, "m.yaml").expect("load")).expect("model")
}

// Hand-checked. Only n1's endpoints have chains (n1-eth0 and web/a), but the
// `role == edge` set holds n2's host endpoint address too. The verdict maps
// send each interface (eth0, cali-a) straight to its program chain. The host endpoint program chains start with the invalid-state drop and
// the failsafe jump, then run the program like a workload's: tier chain, end-of-tier drop, "Drop if no profiles
// matched" (a host endpoint without policy or profile is closed, except for
// failsafes). FelixConfiguration sets inbound tcp:22 and udp:68 from
// 198.18.0.0/24, and no outbound failsafes (an empty failsafe-out chain). The
// host endpoint maps `goto` (the chain's return ends in the base chain's accept);
// workload maps `jump` (the forward chain goes on to the ingress side).
const EXPECTED_HOST_IPV4: &str = r#"[
{"add":{"table":{"family":"ip","name":"tabby"}}},
{"delete":{"table":{"family":"ip","name":"tabby"}}},
{"add":{"table":{"family":"ip","name":"tabby"}}},
{"add":{"set":{"comment":"selector role == \"edge\"","elem":[{"prefix":{"addr":"198.18.0.1","len":32}},{"prefix":{"addr":"198.18.0.2","len":32}}],"family":"ip","flags":["interval"],"name":"s-e5c54272564cc569","table":"tabby","type":"ipv4_addr"}}},
{"add":{"set":{"elem":["cali-a"],"family":"ip","name":"workload-interfaces","table":"tabby","type":"ifname"}}},
{"add":{"chain":{"family":"ip","name":"failsafe-in","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"failsafe-out","table":"tabby"}}},
{"add":{"chain":{"family":"ip","hook":"forward","name":"forward","policy":"accept","prio":0,"table":"tabby","type":"filter"}}},
{"add":{"chain":{"family":"ip","name":"from-host-endpoint-e6a4ca4803237165","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"from-workload-d9c093d9150823de","table":"tabby"}}},
{"add":{"chain":{"family":"ip","hook":"input","name":"input","policy":"accept","prio":0,"table":"tabby","type":"filter"}}},
{"add":{"chain":{"family":"ip","hook":"output","name":"output","policy":"accept","prio":0,"table":"tabby","type":"filter"}}},
{"add":{"chain":{"family":"ip","name":"pro-kns.web-46843bb0d18d8793","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"pro-kns.web-61ca5cab7b224583","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"tier-default-e6a4ca4803237165","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"to-host-endpoint-4a5e1ce30ea09322","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"to-workload-8f2cdaaf9c949e6b","table":"tabby"}}},
{"add":{"chain":{"family":"ip","name":"wl-to-host","table":"tabby"}}},
{"add":{"map":{"elem":[["cali-a",{"jump":{"target":"from-workload-d9c093d9150823de"}}]],"family":"ip","map":"verdict","name":"from-endpoint","table":"tabby","type":"ifname"}}},
{"add":{"map":{"elem":[["eth0",{"goto":{"target":"from-host-endpoint-e6a4ca4803237165"}}]],"family":"ip","map":"verdict","name":"from-host-endpoint","table":"tabby","type":"ifname"}}},
{"add":{"map":{"elem":[["cali-a",{"jump":{"target":"to-workload-8f2cdaaf9c949e6b"}}]],"family":"ip","map":"verdict","name":"to-endpoint","table":"tabby","type":"ifname"}}},
{"add":{"map":{"elem":[["eth0",{"goto":{"target":"to-host-endpoint-4a5e1ce30ea09322"}}]],"family":"ip","map":"verdict","name":"to-host-endpoint","table":"tabby","type":"ifname"}}},
{"add":{"rule":{"chain":"failsafe-in","comment":"failsafe","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":6}},{"match":{"left":{"payload":{"field":"dport","protocol":"tcp"}},"op":"==","right":22}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"failsafe-in","comment":"failsafe","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":17}},{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"198.18.0.0","len":24}}}},{"match":{"left":{"payload":{"field":"dport","protocol":"udp"}},"op":"==","right":68}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"forward","comment":"Unknown workload interface","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"cali*"}},{"match":{"left":{"meta":{"key":"iifname"}},"op":"!=","right":"@workload-interfaces"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"forward","comment":"Unknown workload interface","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"cali*"}},{"match":{"left":{"meta":{"key":"oifname"}},"op":"!=","right":"@workload-interfaces"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"forward","expr":[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"forward","expr":[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":"invalid"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"forward","expr":[{"vmap":{"data":"@from-endpoint","key":{"meta":{"key":"iifname"}}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"forward","expr":[{"vmap":{"data":"@to-endpoint","key":{"meta":{"key":"oifname"}}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-host-endpoint-e6a4ca4803237165","expr":[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":"invalid"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-host-endpoint-e6a4ca4803237165","expr":[{"jump":{"target":"failsafe-in"}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-host-endpoint-e6a4ca4803237165","expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"&":[{"meta":{"key":"mark"}},4294901759]}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-host-endpoint-e6a4ca4803237165","expr":[{"jump":{"target":"tier-default-e6a4ca4803237165"}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-host-endpoint-e6a4ca4803237165","expr":[{"match":{"left":{"&":[{"meta":{"key":"mark"}},65536]},"op":"==","right":65536}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-host-endpoint-e6a4ca4803237165","comment":"Drop if no profiles matched","expr":[{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-workload-d9c093d9150823de","expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"&":[{"meta":{"key":"mark"}},4294901759]}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-workload-d9c093d9150823de","expr":[{"jump":{"target":"pro-kns.web-61ca5cab7b224583"}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-workload-d9c093d9150823de","expr":[{"match":{"left":{"&":[{"meta":{"key":"mark"}},65536]},"op":"==","right":65536}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"from-workload-d9c093d9150823de","comment":"Drop if no profiles matched","expr":[{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"input","comment":"Unknown workload interface","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"cali*"}},{"match":{"left":{"meta":{"key":"iifname"}},"op":"!=","right":"@workload-interfaces"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"input","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"lo"}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"input","comment":"Workload to host: egress policy, then DefaultEndpointToHostAction","expr":[{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":"@workload-interfaces"}},{"goto":{"target":"wl-to-host"}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"input","expr":[{"vmap":{"data":"@from-host-endpoint","key":{"meta":{"key":"iifname"}}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"output","comment":"Unknown workload interface","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"cali*"}},{"match":{"left":{"meta":{"key":"oifname"}},"op":"!=","right":"@workload-interfaces"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"output","expr":[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":["established","related"]}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"output","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"lo"}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"output","comment":"Host to workload: always allowed","expr":[{"match":{"left":{"meta":{"key":"oifname"}},"op":"==","right":"@workload-interfaces"}},{"accept":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"output","expr":[{"vmap":{"data":"@to-host-endpoint","key":{"meta":{"key":"oifname"}}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"pro-kns.web-46843bb0d18d8793","comment":"profile kns.web ingress[0]","expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},65536]}}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"pro-kns.web-61ca5cab7b224583","comment":"profile kns.web egress[0]","expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},65536]}}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"tier-default-e6a4ca4803237165","comment":"default edge ingress[0]","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":6}},{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":"@s-e5c54272564cc569"}},{"match":{"left":{"payload":{"field":"dport","protocol":"tcp"}},"op":"==","right":10250}},{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},65536]}}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"tier-default-e6a4ca4803237165","comment":"End of tier default. Drop if no policies passed packet","expr":[{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-host-endpoint-4a5e1ce30ea09322","expr":[{"match":{"left":{"ct":{"key":"state"}},"op":"in","right":"invalid"}},{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-host-endpoint-4a5e1ce30ea09322","expr":[{"jump":{"target":"failsafe-out"}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-host-endpoint-4a5e1ce30ea09322","expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"&":[{"meta":{"key":"mark"}},4294901759]}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-host-endpoint-4a5e1ce30ea09322","comment":"Drop if no profiles matched","expr":[{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-workload-8f2cdaaf9c949e6b","expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"&":[{"meta":{"key":"mark"}},4294901759]}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-workload-8f2cdaaf9c949e6b","expr":[{"jump":{"target":"pro-kns.web-46843bb0d18d8793"}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-workload-8f2cdaaf9c949e6b","expr":[{"match":{"left":{"&":[{"meta":{"key":"mark"}},65536]},"op":"==","right":65536}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"to-workload-8f2cdaaf9c949e6b","comment":"Drop if no profiles matched","expr":[{"drop":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"wl-to-host","expr":[{"vmap":{"data":"@from-endpoint","key":{"meta":{"key":"iifname"}}}}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"wl-to-host","comment":"DefaultEndpointToHostAction Drop","expr":[{"drop":null}],"family":"ip","table":"tabby"}}}
]"#;

// Hand-checked: program and tier chains are named after the program's first
// interface, not their rules, so the changed rule only refills eth0's tier chain
// (flush, then its two rules) in place; the set gains 198.18.0.3 (aggregated
// with .2 into .2/31: the old /32 element goes, the /31 comes). The program
// chain, the maps and everything else are not touched; IPv6 has no change at all
// (the set has no IPv6 member, so the rule is not rendered there either way).
const EXPECTED_DIFF: &str = r#"[
{"delete":{"element":{"elem":[{"prefix":{"addr":"198.18.0.2","len":32}}],"family":"ip","name":"s-e5c54272564cc569","table":"tabby"}}},
{"add":{"element":{"elem":[{"prefix":{"addr":"198.18.0.2","len":31}}],"family":"ip","name":"s-e5c54272564cc569","table":"tabby"}}},
{"flush":{"chain":{"family":"ip","name":"tier-default-e6a4ca4803237165","table":"tabby"}}},
{"add":{"rule":{"chain":"tier-default-e6a4ca4803237165","comment":"default edge ingress[0]","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":6}},{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":"@s-e5c54272564cc569"}},{"match":{"left":{"payload":{"field":"dport","protocol":"tcp"}},"op":"==","right":{"set":[10250,10255]}}},{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},65536]}}},{"return":null}],"family":"ip","table":"tabby"}}},
{"add":{"rule":{"chain":"tier-default-e6a4ca4803237165","comment":"End of tier default. Drop if no policies passed packet","expr":[{"drop":null}],"family":"ip","table":"tabby"}}}
]"#;

fn compare(got: &[Value], want: &str) {
    let want: Value = serde_json::from_str(want).expect("expected JSON");
    let want = want.as_array().expect("array");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "command {i} differs:\n got {g}\nwant {w}");
    }
    assert_eq!(got.len(), want.len(), "number of commands");
}

#[test]
fn host_endpoint_table_snapshot() {
    let c = compile_for_node(&model(BEFORE), "n1");
    compare(&render_family(&c, Family::Ipv4), EXPECTED_HOST_IPV4);
}

#[test]
fn incremental_update_snapshot() {
    let before = compile_for_node(&model(BEFORE), "n1");
    let after = compile_for_node(&model(&after()), "n1");
    compare(&update_commands(&before, &after), EXPECTED_DIFF);
    assert!(update_commands(&after, &after).is_empty());
}

#[test]
fn compile_for_node_keeps_local_endpoints_and_resolves_selectors_over_all() {
    let m = model(BEFORE);
    let c = compile_for_node(&m, "n1");
    let keys: Vec<&str> = c.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
    assert_eq!(keys, ["n1-eth0", "web/a"]);
    let edge = c
        .ip_sets
        .iter()
        .find(|s| s.description == "selector role == \"edge\"")
        .expect("edge set");
    let members: Vec<String> = edge.members.iter().map(ToString::to_string).collect();
    assert_eq!(members, ["198.18.0.1/32", "198.18.0.2/32"]);
    assert!(compile_for_node(&m, "n9").endpoints.is_empty());
    assert_eq!(compile(&m).endpoints.len(), 3, "compile() keeps every node");
    assert_eq!(
        m.endpoint("web/a").and_then(|e| e.node.as_deref()),
        Some("n1")
    );
}

#[test]
fn one_program_per_interface_when_nodes_share_names() {
    // compile() of every node: n1-eth0 and n2-eth0 both name eth0; the map
    // holds one element (the first endpoint's), not a duplicate nft would refuse.
    let c = compile(&model(BEFORE));
    let rs = ruleset(&c);
    let map = &rs.tables[0].sets["from-host-endpoint"];
    assert_eq!(map.elems.len(), 1);
    assert_eq!(map.elems[0][0], json!("eth0"));
    assert!(
        map.elems[0][1]["goto"]["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("from-host-endpoint-"))
    );
}

#[test]
fn failsafe_ports_come_from_the_default_felix_configuration() {
    let m = model(BEFORE);
    assert_eq!(m.failsafe.inbound.len(), 2);
    assert_eq!(m.failsafe.inbound[1].protocol, 17);
    assert_eq!(
        m.failsafe.inbound[1].net.map(|n| n.to_string()).as_deref(),
        Some("198.18.0.0/24")
    );
    assert!(m.failsafe.outbound.is_empty(), "an empty list means none");
    // Without a FelixConfiguration: Felix's defaults.
    let d = Failsafe::default();
    let ports = |v: &[tabby_policy::model::FailsafePort]| -> Vec<(u8, u16)> {
        v.iter().map(|p| (p.protocol, p.port)).collect()
    };
    assert_eq!(
        ports(&d.inbound),
        [
            (6, 22),
            (17, 68),
            (6, 179),
            (6, 2379),
            (6, 2380),
            (6, 5473),
            (6, 6443),
            (6, 6666),
            (6, 6667)
        ]
    );
    assert_eq!(
        ports(&d.outbound),
        [
            (17, 53),
            (17, 67),
            (6, 179),
            (6, 2379),
            (6, 2380),
            (6, 5473),
            (6, 6443),
            (6, 6666),
            (6, 6667)
        ]
    );
    assert_eq!(model("").failsafe, d);
}

#[test]
fn a_bad_failsafe_port_names_the_field() {
    let spec: tabby_api::felix::FelixConfigurationSpec = serde_json::from_value(json!({
        "failsafeOutboundHostPorts": [{"protocol": "tcp", "port": 1}, {"protocol": "icmp", "port": 2}]
    }))
    .expect("spec");
    let e = Failsafe::from_felix("FelixConfiguration/default", &spec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "FelixConfiguration/default: spec.failsafeOutboundHostPorts[1].protocol: \"icmp\" is not tcp, udp or sctp"
    );
}

#[test]
fn explain_host_endpoints_failsafes_and_workload_host_traffic() {
    let m = model(BEFORE);
    let tcp = |port| Flow {
        protocol: 6,
        dst_port: Some(port),
        ..Flow::default()
    };
    let from_peer = Peer::Address("198.18.0.2".parse().expect("ip"));
    let from_stranger = Peer::Address("198.18.9.9".parse().expect("ip"));
    let hep = Peer::Endpoint("n1-eth0".to_string());
    let v = explain_between(&m, &from_peer, &hep, &tcp(10250)).expect("explain");
    assert_eq!(v.action, VerdictAction::Allow);
    assert_eq!(v.decided_by.and_then(|d| d.policy).as_deref(), Some("edge"));
    let v = explain_between(&m, &from_stranger, &hep, &tcp(10250)).expect("explain");
    assert_eq!(v.action, VerdictAction::Deny, "{}", v.reason);
    let v = explain_between(&m, &from_stranger, &hep, &tcp(22)).expect("explain");
    assert_eq!(v.action, VerdictAction::Allow);
    assert!(v.reason.contains("failsafe"), "{}", v.reason);
    // udp:68 is failsafe only from 198.18.0.0/24.
    let udp68 = Flow {
        protocol: 17,
        dst_port: Some(68),
        ..Flow::default()
    };
    assert_eq!(
        explain_between(&m, &from_peer, &hep, &udp68)
            .expect("explain")
            .action,
        VerdictAction::Allow
    );
    assert_eq!(
        explain_between(&m, &from_stranger, &hep, &udp68)
            .expect("explain")
            .action,
        VerdictAction::Deny
    );
    // No egress policy and no profile: the host endpoint is closed outbound.
    let v = explain_between(&m, &hep, &from_peer, &tcp(443)).expect("explain");
    assert_eq!(v.action, VerdictAction::Deny);
    // Workload to its host: its egress program (kns.web allows), then
    // DefaultEndpointToHostAction, Drop by default; never the host endpoint's
    // programs or failsafe ports (tcp:22 is failsafe, 10250 allowed by edge).
    let wl = Peer::Endpoint("web/a".into());
    for port in [9, 22, 10250] {
        let v = explain_between(&m, &wl, &hep, &tcp(port)).expect("explain");
        assert_eq!(v.action, VerdictAction::Deny, "{}", v.reason);
        assert!(
            v.reason.contains("DefaultEndpointToHostAction Drop"),
            "{}",
            v.reason
        );
    }
    // The host's address counts as the host.
    let host_ip = Peer::Address("198.18.0.1".parse().expect("ip"));
    let v = explain_between(&m, &wl, &host_ip, &tcp(9)).expect("explain");
    assert_eq!(v.action, VerdictAction::Deny, "{}", v.reason);
    for action in ["Accept", "Return"] {
        let m = model(&BEFORE.replace(
            "  failsafeOutboundHostPorts: []",
            &format!("  failsafeOutboundHostPorts: []\n  defaultEndpointToHostAction: {action}"),
        ));
        let v = explain_between(&m, &wl, &hep, &tcp(9)).expect("explain");
        assert_eq!(v.action, VerdictAction::Allow, "{action}: {}", v.reason);
    }
    // Another node's host endpoint is reached by forwarding: its failsafes and
    // ingress program apply (web/a is not in the edge selection).
    let n2 = Peer::Endpoint("n2-eth0".into());
    let v = explain_between(&m, &wl, &n2, &tcp(10250)).expect("explain");
    assert_eq!(v.action, VerdictAction::Deny, "{}", v.reason);
    let v = explain_between(&m, &wl, &n2, &tcp(22)).expect("explain");
    assert_eq!(v.action, VerdictAction::Allow, "{}", v.reason);
    // Host to workload: always allowed.
    let v = explain_between(&m, &hep, &wl, &tcp(9)).expect("explain");
    assert_eq!(v.action, VerdictAction::Allow, "{}", v.reason);
    // Two addresses: nothing to explain.
    assert!(explain_between(&m, &from_peer, &from_stranger, &tcp(1)).is_err());
    // An address given where an endpoint id is expected.
    let v = tabby_policy::explain_flow(&m, "198.18.0.2", "n1-eth0", &tcp(10250)).expect("explain");
    assert_eq!(v.action, VerdictAction::Allow);
}

#[test]
fn pre_dnat_and_do_not_track_policies_are_not_enforced() {
    let text = format!(
        "{BEFORE}---\n{}",
        r#"apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: raw}
spec:
  order: 1
  selector: role == 'edge'
  preDNAT: true
  applyOnForward: true
  ingress: [{action: Deny}]
"#
    );
    let m = model(&text);
    let p = m.policies.iter().find(|p| p.name == "raw").expect("policy");
    assert_eq!(
        p.unsupported.as_deref(),
        Some("GlobalNetworkPolicy/raw: spec.preDNAT is not supported")
    );
    let c = compile_for_node(&m, "n1");
    let hep = c.endpoints.iter().find(|e| e.host).expect("host endpoint");
    let policies: Vec<&str> = hep.ingress.tiers[0]
        .policies
        .iter()
        .map(|p| p.policy.as_str())
        .collect();
    assert_eq!(policies, ["edge"]);
}

#[test]
fn removing_an_endpoint_deletes_its_chains_and_map_elements() {
    let two = format!(
        "{BEFORE}---\n{}",
        r#"apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: b, namespace: web, labels: {app: b}}
spec: {node: n1, ipNetworks: [100.64.0.2/32], interfaceName: cali-b, profiles: [kns.web]}
"#
    );
    let before = compile_for_node(&model(&two), "n1");
    let after = compile_for_node(&model(BEFORE), "n1");
    let cmds: Vec<String> = update_commands(&before, &after)
        .iter()
        .filter(|c| c.to_string().contains("\"ip\""))
        .map(|c| {
            let (op, body) = c
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("command");
            let (kind, obj) = body
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("object");
            let name = obj.get("name").or_else(|| obj.get("chain")).expect("name");
            format!("{op} {kind} {}", name.as_str().expect("str"))
        })
        .collect();
    assert_eq!(
        cmds,
        [
            "delete element workload-interfaces",
            "delete element from-endpoint",
            "delete element to-endpoint",
        ],
        "b had the same programs as a: only its map elements go, the shared chains stay"
    );
    // An endpoint with its own program (a profile that does not exist: no
    // profile chain, just its egress and ingress program chains) takes those
    // along too.
    let own = two.replace(
        "interfaceName: cali-b, profiles: [kns.web]",
        "interfaceName: cali-b, profiles: [kns.other]",
    );
    let before = compile_for_node(&model(&own), "n1");
    let kinds: Vec<String> = update_commands(&before, &after)
        .iter()
        .filter(|c| c.to_string().contains("\"ip\""))
        .map(|c| {
            let (op, body) = c
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("command");
            let kind = body
                .as_object()
                .and_then(|o| o.keys().next())
                .expect("kind");
            format!("{op} {kind}")
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "delete element",
            "delete element",
            "delete element",
            "flush chain",
            "flush chain",
            "delete chain",
            "delete chain",
        ]
    );
}
