//! A table of flows over one model covering tier and policy order, Pass, the end
//! of tier drop, profile fall-through, namespace scoping, named ports, notNets,
//! notSelector, ICMP types, protocols by name and number and ipVersion.

use tabby_api::load::parse_documents;
use tabby_policy::compile::Direction;
use tabby_policy::explain::{Flow, VerdictAction, explain_flow};
use tabby_policy::model::{Model, PolicyError};

const MODEL: &str = r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
  labelsToApply: {pcns.env: prod}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: frontend, namespace: prod, labels: {app: frontend}}
spec:
  ipNetworks: [10.0.1.1/32]
  interfaceName: cali-fe
  profiles: [kns.prod]
  ports: [{name: http, protocol: TCP, port: 8080}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: backend, namespace: prod, labels: {app: backend}}
spec:
  ipNetworks: [10.0.1.2/32, "fd00::2/128"]
  interfaceName: cali-be
  profiles: [kns.prod]
  ports: [{name: http, protocol: TCP, port: 9090}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  ipNetworks: [10.0.1.3/32]
  interfaceName: cali-db
  profiles: [kns.prod]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: tester, namespace: dev, labels: {app: frontend, role: tester}}
spec:
  ipNetworks: [10.0.2.1/32, "fd00::21/128"]
  interfaceName: cali-te
  profiles: [kns.dev]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: open, namespace: dev, labels: {app: open}}
spec:
  ipNetworks: [10.0.2.2/32, "fd00::22/128"]
  interfaceName: cali-op
  profiles: [kns.dev]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: plain, namespace: dev}
spec:
  ipNetworks: [10.0.2.3/32]
  interfaceName: cali-pl
  profiles: [kns.dev]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: orphan, namespace: dev}
spec:
  ipNetworks: [10.0.2.4/32]
  interfaceName: cali-or
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: platform}
spec: {order: 200, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sec-icmp}
spec:
  tier: security
  order: 10
  selector: has(app)
  ingress:
    - {action: Deny, protocol: ICMP, icmp: {type: 8}, source: {nets: [10.0.2.0/24]}}
    - {action: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: platform-db}
spec:
  tier: platform
  selector: app == 'db'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'backend', namespaceSelector: env == 'prod'}
      destination: {ports: [5432]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: deny-not-nets, namespace: prod}
spec:
  order: 50
  selector: app == 'backend'
  ingress:
    - {action: Deny, protocol: UDP, source: {notNets: [10.0.1.0/24]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-frontend, namespace: prod}
spec:
  order: 100
  selector: app == 'backend'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'frontend'}
      destination: {ports: [http]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: z-early, namespace: prod}
spec:
  order: 5
  selector: app == 'db'
  ingress:
    - {action: Deny, protocol: TCP, source: {selector: app == 'frontend'}, destination: {ports: [5432]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: b-deny, namespace: prod}
spec:
  order: 200
  selector: app == 'db'
  ingress:
    - {action: Deny, protocol: TCP, destination: {ports: [5432]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: a-allow, namespace: prod}
spec:
  order: 200
  selector: app == 'db'
  ingress:
    - {action: Allow, protocol: TCP, source: {nets: [10.0.0.0/8]}, destination: {ports: [5432]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: db-notsel}
spec:
  order: 400
  selector: app == 'db'
  ingress:
    - {action: Allow, protocol: TCP, source: {notSelector: app == 'frontend'}, destination: {ports: [6379]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: tester-egress}
spec:
  order: 300
  selector: role == 'tester'
  types: [Egress]
  egress:
    - {action: Allow, protocol: UDP, destination: {ports: [53]}}
    - {action: Allow, protocol: TCP, destination: {selector: app == 'backend', ports: [http]}}
    - {action: Allow, protocol: ICMP}
    - {action: Allow, protocol: 47}
    - {action: Allow, ipVersion: 6, protocol: TCP, destination: {ports: [443]}}
"#;

fn model() -> Model {
    Model::from_resources(&parse_documents(MODEL, "model.yaml").unwrap()).unwrap()
}

/// (from, to, flow, allow?, decided by (tier, policy or profile, direction, rule))
type Case = (
    &'static str,
    &'static str,
    Flow,
    bool,
    (
        Option<&'static str>,
        Option<&'static str>,
        Direction,
        Option<usize>,
    ),
);

fn tcp(port: u16) -> Flow {
    Flow {
        protocol: 6,
        dst_port: Some(port),
        ..Flow::default()
    }
}

fn icmp(type_: u8) -> Flow {
    Flow {
        protocol: 1,
        icmp_type: Some(type_),
        icmp_code: Some(0),
        ..Flow::default()
    }
}

#[test]
fn flows() {
    use Direction::{Egress as E, Ingress as I};
    let udp53 = Flow {
        protocol: 17,
        dst_port: Some(53),
        ..Flow::default()
    };
    let tcp443_v6 = Flow {
        ip_version: Some(6),
        ..tcp(443)
    };
    let gre = Flow {
        protocol: 47,
        ..Flow::default()
    };
    let cases: Vec<Case> = vec![
        // Named port resolved on the destination (backend's http is 9090).
        (
            "prod/frontend",
            "prod/backend",
            tcp(9090),
            true,
            (Some("default"), Some("prod/allow-frontend"), I, Some(0)),
        ),
        // 8080 is frontend's http, not backend's: end of tier default.
        (
            "prod/frontend",
            "prod/backend",
            tcp(8080),
            false,
            (Some("default"), None, I, None),
        ),
        // Namespace scoping: tester is app=frontend but in dev.
        (
            "dev/tester",
            "prod/backend",
            tcp(9090),
            false,
            (Some("default"), None, I, None),
        ),
        // notNets: UDP from outside 10.0.1.0/24 denied (order 50 before 100).
        (
            "dev/tester",
            "prod/backend",
            udp53.clone(),
            false,
            (Some("default"), Some("prod/deny-not-nets"), I, Some(0)),
        ),
        (
            "prod/frontend",
            "prod/backend",
            udp53.clone(),
            false,
            (Some("default"), None, I, None),
        ),
        // Tier order: platform (Allow) decides before default.
        (
            "prod/backend",
            "prod/db",
            tcp(5432),
            true,
            (Some("platform"), Some("platform-db"), I, Some(0)),
        ),
        // Policy order beats name: z-early (order 5) denies frontend.
        (
            "prod/frontend",
            "prod/db",
            tcp(5432),
            false,
            (Some("default"), Some("prod/z-early"), I, Some(0)),
        ),
        // Same order: by name, a-allow before b-deny.
        (
            "dev/open",
            "prod/db",
            tcp(5432),
            true,
            (Some("default"), Some("prod/a-allow"), I, Some(0)),
        ),
        // notSelector.
        (
            "prod/backend",
            "prod/db",
            tcp(6379),
            true,
            (Some("default"), Some("db-notsel"), I, Some(0)),
        ),
        (
            "prod/frontend",
            "prod/db",
            tcp(6379),
            false,
            (Some("default"), None, I, None),
        ),
        // Named port resolved on the remote side of an egress rule.
        (
            "dev/tester",
            "prod/backend",
            tcp(8080),
            false,
            (Some("default"), None, E, None),
        ),
        // ICMP type: echo request from dev is denied in the security tier.
        (
            "dev/tester",
            "dev/open",
            icmp(8),
            false,
            (Some("security"), Some("sec-icmp"), I, Some(0)),
        ),
        // Other ICMP types: Pass, no default-tier policy for open, so its profile.
        (
            "dev/tester",
            "dev/open",
            icmp(0),
            true,
            (None, Some("kns.dev"), I, Some(0)),
        ),
        // Protocol by name and by number.
        (
            "dev/tester",
            "dev/open",
            udp53,
            true,
            (None, Some("kns.dev"), I, Some(0)),
        ),
        (
            "dev/tester",
            "dev/open",
            gre.clone(),
            true,
            (None, Some("kns.dev"), I, Some(0)),
        ),
        (
            "dev/tester",
            "prod/db",
            gre,
            false,
            (Some("default"), None, I, None),
        ),
        // ipVersion 6 only.
        (
            "dev/tester",
            "dev/open",
            tcp443_v6,
            true,
            (None, Some("kns.dev"), I, Some(0)),
        ),
        (
            "dev/tester",
            "dev/open",
            tcp(443),
            false,
            (Some("default"), None, E, None),
        ),
        // No policy at all: profiles (synthesized kns.dev) decide in both directions.
        (
            "dev/plain",
            "dev/plain",
            tcp(1),
            true,
            (None, Some("kns.dev"), I, Some(0)),
        ),
        // No policy and no profile: dropped.
        (
            "dev/plain",
            "dev/orphan",
            tcp(1),
            false,
            (None, None, I, None),
        ),
        (
            "dev/orphan",
            "dev/plain",
            tcp(1),
            false,
            (None, None, E, None),
        ),
    ];
    let m = model();
    let mut failures = Vec::new();
    for (i, (from, to, flow, allow, (tier, who, dir, rule))) in cases.into_iter().enumerate() {
        let v = explain_flow(&m, from, to, &flow).unwrap();
        let by = v.decided_by.clone().unwrap();
        let got_who = by.policy.clone().or(by.profile.clone());
        let ok = (v.action == VerdictAction::Allow) == allow
            && by.tier.as_deref() == tier
            && got_who.as_deref() == who
            && by.direction == dir
            && by.rule_index == rule;
        if !ok {
            failures.push(format!("case {i} {from} -> {to} {flow:?}: got {v:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reasons_name_the_decision() {
    let m = model();
    let v = explain_flow(&m, "prod/frontend", "backend", &tcp(8080)).unwrap();
    assert_eq!(
        v.reason,
        "egress of prod/frontend (10.0.1.1): allowed by profile kns.prod egress rule 0 (no policy applies); \
         ingress of prod/backend (10.0.1.2): denied at the end of tier default (policies apply but none allowed or passed)"
    );
    assert!(tabby_policy::explain(&m, "prod/nope", "backend", 6, Some(1)).is_err());
}

#[test]
fn types_default_and_profile_labels() {
    let m = model();
    let p = m.policies.iter().find(|p| p.name == "sec-icmp").unwrap();
    assert_eq!(p.types, vec![tabby_api::policy::PolicyType::Ingress]);
    let fe = m.endpoint("prod/frontend").unwrap();
    assert_eq!(fe.labels.get("pcns.env").map(String::as_str), Some("prod"));
    assert_eq!(
        fe.labels
            .get("projectcalico.org/namespace")
            .map(String::as_str),
        Some("prod")
    );
    assert!(m.profiles.contains_key("kns.dev"), "kns.dev is synthesized");
}

#[test]
fn bad_selector_names_resource_and_field() {
    let text = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p, namespace: ns}
spec:
  ingress: [{action: Allow, source: {selector: "app == 'x'"}}]
"#;
    // The loader validates selectors too; a store or programmatic caller may not.
    let mut res = parse_documents(text, "p.yaml").unwrap();
    let spec = res[0].spec.as_network_policy_mut().unwrap();
    spec.ingress[0].source.as_mut().unwrap().selector = Some("app ==".to_string());
    let err = Model::from_resources(&res).unwrap_err();
    assert!(matches!(err, PolicyError::Selector { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("NetworkPolicy/ns/p: spec.ingress[0].source.selector: "),
        "{msg}"
    );
}
