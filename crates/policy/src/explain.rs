//! Which policy and rule decides a flow between two endpoints, computed from the
//! compiled IR exactly as the data plane evaluates it: the egress program of the
//! source endpoint, then the ingress program of the destination.

use std::net::IpAddr;

use ipnet::IpNet;
use tabby_api::policy::{Action, TierAction};

use crate::compile::{Compiled, Direction, IrEntity, IrPort, IrRule, Program, compile};
use crate::model::{Endpoint, EndpointToHost, FailsafePort, Model};

/// The outcome of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictAction {
    /// The packet is accepted.
    Allow,
    /// The packet is dropped.
    Deny,
}

/// What decided a direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedBy {
    /// The tier, when a policy rule or a tier's end decided.
    pub tier: Option<String>,
    /// The policy (`namespace/name` or `name`), when one of its rules decided.
    pub policy: Option<String>,
    /// The profile, when one of its rules decided.
    pub profile: Option<String>,
    /// Which program decided.
    pub direction: Direction,
    /// The rule index in the policy's or profile's list for the direction; `None`
    /// for the end of a tier or "no profile matched".
    pub rule_index: Option<usize>,
}

/// The result of [`explain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allow or deny.
    pub action: VerdictAction,
    /// The deciding rule: the egress decision when egress denies, otherwise the
    /// ingress decision.
    pub decided_by: Option<DecidedBy>,
    /// Human explanation of both directions.
    pub reason: String,
}

/// A flow to explain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Protocol number.
    pub protocol: u8,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: Option<u16>,
    /// Source port; unknown (ephemeral) when `None`, so rules on source ports do
    /// not match and rules on source notPorts are not excluded by it.
    pub src_port: Option<u16>,
    /// ICMP type.
    pub icmp_type: Option<u8>,
    /// ICMP code.
    pub icmp_code: Option<u8>,
    /// 4 or 6; by default IPv4 if both endpoints have an IPv4 address, else IPv6.
    pub ip_version: Option<u8>,
}

/// Why a flow cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// No endpoint has that key, name or interface.
    #[error("no endpoint {0:?} (give namespace/name, name or interface)")]
    NoEndpoint(String),
    /// The endpoint is in the model but not in the compilation (another node's).
    #[error("endpoint {0:?} is not in this compilation (compiled for another node?)")]
    NotCompiled(String),
    /// Neither side is a policed endpoint (two addresses, or two host endpoints).
    #[error("a flow needs a workload or host endpoint on one side and something else on the other")]
    NoEndpointInFlow,
    /// The endpoints share no address family.
    #[error("{from} and {to} have no addresses of a common IP version{}", .version.map(|v| format!(" (asked for IPv{v})")).unwrap_or_default())]
    NoCommonFamily {
        /// Source endpoint.
        from: String,
        /// Destination endpoint.
        to: String,
        /// Requested version.
        version: Option<u8>,
    },
}

/// Explains a TCP/UDP/SCTP (or port-less) flow from `from` to `to`.
pub fn explain(
    model: &Model,
    from: &str,
    to: &str,
    protocol: u8,
    port: Option<u16>,
) -> Result<Verdict, ExplainError> {
    explain_flow(
        model,
        from,
        to,
        &Flow {
            protocol,
            dst_port: port,
            ..Flow::default()
        },
    )
}

/// One side of a flow: an endpoint (workload or host) or an address outside the
/// node's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// An endpoint by `namespace/name`, name or interface.
    Endpoint(String),
    /// Any address that is not one of the endpoints (a remote host, the internet).
    Address(IpAddr),
}

impl Peer {
    /// An endpoint of the model if one has this id, otherwise an address if `s` is
    /// one, otherwise an endpoint id (which then fails to resolve).
    pub fn parse(model: &Model, s: &str) -> Peer {
        match (model.endpoint(s), s.parse::<IpAddr>()) {
            (None, Ok(ip)) => Peer::Address(ip),
            _ => Peer::Endpoint(s.to_string()),
        }
    }
}

struct Packet<'a> {
    src: IpAddr,
    dst: IpAddr,
    flow: &'a Flow,
}

fn pick(e: &Endpoint, v: u8) -> Option<IpAddr> {
    e.ips
        .iter()
        .map(IpNet::addr)
        .find(|a| if v == 4 { a.is_ipv4() } else { a.is_ipv6() })
}

/// Explains any flow from `from` to `to`; each may be an endpoint id or, when no
/// endpoint has that id, an IP address (see [`Peer::parse`]).
pub fn explain_flow(
    model: &Model,
    from: &str,
    to: &str,
    flow: &Flow,
) -> Result<Verdict, ExplainError> {
    explain_between(
        model,
        &Peer::parse(model, from),
        &Peer::parse(model, to),
        flow,
    )
}

/// Explains a flow between peers, compiling the whole model.
pub fn explain_between(
    model: &Model,
    from: &Peer,
    to: &Peer,
    flow: &Flow,
) -> Result<Verdict, ExplainError> {
    explain_compiled(model, &compile(model), from, to, flow)
}

enum Side<'a> {
    Endpoint(&'a Endpoint),
    Address(IpAddr),
}

impl Side<'_> {
    fn ip(&self, v: u8) -> Option<IpAddr> {
        match self {
            Side::Endpoint(e) => pick(e, v),
            Side::Address(a) => (a.is_ipv4() == (v == 4)).then_some(*a),
        }
    }

    fn name(&self) -> String {
        match self {
            Side::Endpoint(e) => e.key(),
            Side::Address(a) => a.to_string(),
        }
    }
}

fn failsafe_hit<'a>(
    ports: &'a [FailsafePort],
    flow: &Flow,
    peer: IpAddr,
) -> Option<&'a FailsafePort> {
    ports.iter().find(|p| {
        p.protocol == flow.protocol
            && flow.dst_port == Some(p.port)
            && p.net.is_none_or(|n| n.contains(&peer))
    })
}

/// Explains a flow against an existing compilation of `model` (which must hold
/// the programs of the endpoints involved: [`compile`] or the right node's
/// [`crate::compile::compile_for_node`]).
///
/// What is evaluated, as the data plane does:
/// - workload to workload: the source's egress program, then the destination's
///   ingress program;
/// - workload to an address, or an address to a workload: that workload's program;
/// - an address to a host endpoint (traffic to the host on its interface): the
///   inbound failsafe ports, then the host endpoint's ingress program; a host
///   endpoint to an address: the outbound failsafe ports, then its egress program;
/// - a workload to its own host (one of the node's host endpoints, or an address
///   of one): the workload's egress program, then `DefaultEndpointToHostAction`
///   (Drop by default; Return and Accept allow); never the host endpoint's
///   programs or the failsafe ports;
/// - a workload to another node's host endpoint: its egress program, then that
///   host endpoint's failsafe ports and ingress program;
/// - the host to its own workloads: always allowed (kubelet probes), as Felix.
pub fn explain_compiled(
    model: &Model,
    compiled: &Compiled,
    from: &Peer,
    to: &Peer,
    flow: &Flow,
) -> Result<Verdict, ExplainError> {
    let side = |p: &Peer| match p {
        Peer::Endpoint(id) => model
            .endpoint(id)
            .map(Side::Endpoint)
            .ok_or_else(|| ExplainError::NoEndpoint(id.clone())),
        Peer::Address(a) => Ok(Side::Address(*a)),
    };
    let src = side(from)?;
    let dst = side(to)?;
    let versions: &[u8] = match flow.ip_version {
        Some(4) => &[4],
        Some(6) => &[6],
        _ => &[4, 6],
    };
    let (src_ip, dst_ip) = versions
        .iter()
        .find_map(|v| Some((src.ip(*v)?, dst.ip(*v)?)))
        .ok_or_else(|| ExplainError::NoCommonFamily {
            from: src.name(),
            to: dst.name(),
            version: flow.ip_version,
        })?;
    let pkt = Packet {
        src: src_ip,
        dst: dst_ip,
        flow,
    };
    let find = |e: &Endpoint| {
        let key = e.key();
        compiled
            .endpoints
            .iter()
            .find(|p| p.endpoint == key)
            .ok_or(ExplainError::NotCompiled(key))
    };
    let allow = |reason: String| Verdict {
        action: VerdictAction::Allow,
        decided_by: None,
        reason,
    };
    match (&src, &dst) {
        (Side::Address(_), Side::Address(_)) => Err(ExplainError::NoEndpointInFlow),
        (Side::Endpoint(a), Side::Endpoint(b)) if a.host && b.host => {
            Err(ExplainError::NoEndpointInFlow)
        }
        (Side::Endpoint(a), Side::Endpoint(b)) if a.host => Ok(allow(format!(
            "traffic from the host to its workloads ({} to {}) is always allowed",
            a.key(),
            b.key()
        ))),
        (Side::Endpoint(w), Side::Endpoint(h)) if h.host && same_node(w, h) => {
            to_host(compiled, find(w)?, w, h, src_ip, &pkt)
        }
        (Side::Endpoint(w), Side::Address(a))
            if !w.host && local_host_endpoint(compiled, w, *a).is_some() =>
        {
            let h = local_host_endpoint(compiled, w, *a).and_then(|k| model.endpoint(k));
            match h {
                Some(h) => to_host(compiled, find(w)?, w, h, src_ip, &pkt),
                None => Err(ExplainError::NoEndpointInFlow),
            }
        }
        (Side::Endpoint(w), Side::Endpoint(h)) if h.host => {
            // To another node's host endpoint: this node polices the egress; the
            // other node its failsafe ports and host endpoint ingress.
            let (ok, by, why) = evaluate(compiled, &find(w)?.egress, Direction::Egress, &pkt);
            let mut text = format!("egress of {} ({src_ip}): {why}", w.key());
            if !ok {
                return Ok(verdict(false, by, text));
            }
            if let Some(p) = failsafe_hit(&compiled.failsafe.inbound, flow, src_ip) {
                text.push_str(&format!(
                    "; allowed by the inbound failsafe port {}/{} of host endpoint {}",
                    p.protocol,
                    p.port,
                    h.key()
                ));
                return Ok(verdict(true, by, text));
            }
            let (ok, by, why) = evaluate(compiled, &find(h)?.ingress, Direction::Ingress, &pkt);
            text.push_str(&format!(
                "; ingress of host endpoint {} ({dst_ip}): {why}",
                h.key()
            ));
            Ok(verdict(ok, by, text))
        }
        (Side::Address(_), Side::Endpoint(h)) if h.host => {
            if let Some(p) = failsafe_hit(&compiled.failsafe.inbound, flow, src_ip) {
                return Ok(allow(format!(
                    "allowed by the inbound failsafe port {}/{} of host endpoint {}",
                    p.protocol,
                    p.port,
                    h.key()
                )));
            }
            let (ok, by, why) = evaluate(compiled, &find(h)?.ingress, Direction::Ingress, &pkt);
            Ok(verdict(
                ok,
                by,
                format!("ingress of host endpoint {} ({dst_ip}): {why}", h.key()),
            ))
        }
        (Side::Endpoint(h), Side::Address(_)) if h.host => {
            if let Some(p) = failsafe_hit(&compiled.failsafe.outbound, flow, dst_ip) {
                return Ok(allow(format!(
                    "allowed by the outbound failsafe port {}/{} of host endpoint {}",
                    p.protocol,
                    p.port,
                    h.key()
                )));
            }
            let (ok, by, why) = evaluate(compiled, &find(h)?.egress, Direction::Egress, &pkt);
            Ok(verdict(
                ok,
                by,
                format!("egress of host endpoint {} ({src_ip}): {why}", h.key()),
            ))
        }
        _ => {
            let mut text = Vec::new();
            let mut last = None;
            if let Side::Endpoint(s) = &src {
                let (ok, by, why) = evaluate(compiled, &find(s)?.egress, Direction::Egress, &pkt);
                text.push(format!("egress of {} ({src_ip}): {why}", s.key()));
                if !ok {
                    return Ok(verdict(false, by, text.join("; ")));
                }
                last = Some(by);
            }
            if let Side::Endpoint(d) = &dst {
                let (ok, by, why) = evaluate(compiled, &find(d)?.ingress, Direction::Ingress, &pkt);
                text.push(format!("ingress of {} ({dst_ip}): {why}", d.key()));
                if !ok {
                    return Ok(verdict(false, by, text.join("; ")));
                }
                last = Some(by);
            }
            Ok(Verdict {
                action: VerdictAction::Allow,
                decided_by: last,
                reason: text.join("; "),
            })
        }
    }
}

/// Whether two endpoints are on the same node (an unknown node counts as this one).
fn same_node(a: &Endpoint, b: &Endpoint) -> bool {
    a.node.is_none() || b.node.is_none() || a.node == b.node
}

/// The key of a compiled host endpoint on the workload's node that has `ip`.
fn local_host_endpoint<'c>(c: &'c Compiled, w: &Endpoint, ip: IpAddr) -> Option<&'c str> {
    c.endpoints
        .iter()
        .find(|e| {
            e.host
                && (w.node.is_none() || e.node.is_none() || e.node == w.node)
                && e.ips.iter().any(|n| n.addr() == ip)
        })
        .map(|e| e.endpoint.as_str())
}

/// A workload to its own host: the workload's egress program, then
/// `DefaultEndpointToHostAction`; the host endpoint's programs and the failsafe
/// ports do not apply.
fn to_host(
    c: &Compiled,
    prog: &crate::compile::EndpointProgram,
    w: &Endpoint,
    h: &Endpoint,
    src_ip: IpAddr,
    pkt: &Packet<'_>,
) -> Result<Verdict, ExplainError> {
    let (ok, by, why) = evaluate(c, &prog.egress, Direction::Egress, pkt);
    let text = format!("egress of {} ({src_ip}): {why}", w.key());
    if !ok {
        return Ok(verdict(false, by, text));
    }
    let action = c.endpoint_to_host;
    let then = match action {
        EndpointToHost::Drop => "dropped",
        EndpointToHost::Return => "returned to the host's other input rules (accepted)",
        EndpointToHost::Accept => "accepted",
    };
    Ok(Verdict {
        action: if action == EndpointToHost::Drop {
            VerdictAction::Deny
        } else {
            VerdictAction::Allow
        },
        decided_by: Some(by),
        reason: format!(
            "{text}; to its own host ({}): {then} by DefaultEndpointToHostAction {} \
             (host endpoint policy and failsafe ports do not apply)",
            h.key(),
            action.as_str()
        ),
    })
}

fn verdict(ok: bool, by: DecidedBy, reason: String) -> Verdict {
    Verdict {
        action: if ok {
            VerdictAction::Allow
        } else {
            VerdictAction::Deny
        },
        decided_by: Some(by),
        reason,
    }
}

fn in_set(c: &Compiled, set: usize, ip: IpAddr) -> bool {
    c.ip_sets[set].members.iter().any(|n| n.contains(&ip))
}

fn port_matches(c: &Compiled, p: &IrPort, ip: IpAddr, port: Option<u16>) -> bool {
    let Some(port) = port else { return false };
    match p {
        IrPort::Range(a, b) => (*a..=*b).contains(&port),
        IrPort::Set(i) => c.port_sets[*i]
            .members
            .iter()
            .any(|(n, p)| *p == port && n.contains(&ip)),
    }
}

fn entity_matches(c: &Compiled, e: &IrEntity, ip: IpAddr, port: Option<u16>) -> bool {
    e.in_sets.iter().all(|s| in_set(c, *s, ip))
        && !e.not_in_sets.iter().any(|s| in_set(c, *s, ip))
        && (e.ports.is_empty() || e.ports.iter().any(|p| port_matches(c, p, ip, port)))
        && !e.not_ports.iter().any(|p| port_matches(c, p, ip, port))
}

/// Whether a rule matches the packet.
fn rule_matches(c: &Compiled, r: &IrRule, pkt: &Packet<'_>) -> bool {
    let f = pkt.flow;
    let version = if pkt.src.is_ipv4() { 4 } else { 6 };
    let icmp_matches = |i: &crate::model::Icmp| {
        f.icmp_type == Some(i.type_) && i.code.is_none_or(|code| f.icmp_code == Some(code))
    };
    r.never.is_none()
        && r.ip_version.is_none_or(|v| v == version)
        && r.protocol.is_none_or(|p| p == f.protocol)
        && r.not_protocol != Some(f.protocol)
        && r.icmp.as_ref().is_none_or(icmp_matches)
        && !r.not_icmp.as_ref().is_some_and(icmp_matches)
        && entity_matches(c, &r.src, pkt.src, f.src_port)
        && entity_matches(c, &r.dst, pkt.dst, f.dst_port)
}

fn evaluate(
    c: &Compiled,
    prog: &Program,
    d: Direction,
    pkt: &Packet<'_>,
) -> (bool, DecidedBy, String) {
    let by =
        |tier: Option<&str>, policy: Option<&str>, profile: Option<&str>, rule: Option<usize>| {
            DecidedBy {
                tier: tier.map(str::to_string),
                policy: policy.map(str::to_string),
                profile: profile.map(str::to_string),
                direction: d,
                rule_index: rule,
            }
        };
    'tiers: for t in &prog.tiers {
        for p in &t.policies {
            for r in &p.rules {
                if !rule_matches(c, r, pkt) {
                    continue;
                }
                let what = format!(
                    "tier {} policy {} {} rule {}",
                    t.tier,
                    p.policy,
                    d.as_str(),
                    r.index
                );
                let decided = by(Some(&t.tier), Some(&p.policy), None, Some(r.index));
                match r.action {
                    Action::Allow => return (true, decided, format!("allowed by {what}")),
                    Action::Deny => return (false, decided, format!("denied by {what}")),
                    Action::Pass => continue 'tiers,
                    Action::Log => {}
                }
            }
        }
        if t.default_action == TierAction::Deny {
            return (
                false,
                by(Some(&t.tier), None, None, None),
                format!(
                    "denied at the end of tier {} (policies apply but none allowed or passed)",
                    t.tier
                ),
            );
        }
    }
    let via = if prog.tiers.is_empty() {
        "no policy applies"
    } else {
        "every tier passed"
    };
    for pr in &prog.profiles {
        for r in &pr.rules {
            if !rule_matches(c, r, pkt) {
                continue;
            }
            let what = format!(
                "profile {} {} rule {} ({via})",
                pr.profile,
                d.as_str(),
                r.index
            );
            let decided = by(None, None, Some(&pr.profile), Some(r.index));
            match r.action {
                Action::Allow => return (true, decided, format!("allowed by {what}")),
                Action::Deny => return (false, decided, format!("denied by {what}")),
                Action::Pass => break,
                Action::Log => {}
            }
        }
    }
    (
        false,
        by(None, None, None, None),
        format!("denied: {via} and no profile allowed"),
    )
}
