//! Which policy and rule decides a flow between two endpoints, computed from the
//! compiled IR exactly as the data plane evaluates it: the egress program of the
//! source endpoint, then the ingress program of the destination.

use std::net::IpAddr;

use ipnet::IpNet;
use tabby_api::policy::{Action, TierAction};

use crate::compile::{Compiled, Direction, IrEntity, IrPort, IrRule, Program, compile};
use crate::model::{Endpoint, Model};

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

/// Explains any flow from `from` to `to`.
pub fn explain_flow(
    model: &Model,
    from: &str,
    to: &str,
    flow: &Flow,
) -> Result<Verdict, ExplainError> {
    let src = model
        .endpoint(from)
        .ok_or_else(|| ExplainError::NoEndpoint(from.to_string()))?;
    let dst = model
        .endpoint(to)
        .ok_or_else(|| ExplainError::NoEndpoint(to.to_string()))?;
    let versions: &[u8] = match flow.ip_version {
        Some(4) => &[4],
        Some(6) => &[6],
        _ => &[4, 6],
    };
    let (src_ip, dst_ip) = versions
        .iter()
        .find_map(|v| Some((pick(src, *v)?, pick(dst, *v)?)))
        .ok_or_else(|| ExplainError::NoCommonFamily {
            from: src.key(),
            to: dst.key(),
            version: flow.ip_version,
        })?;
    let compiled = compile(model);
    let pkt = Packet {
        src: src_ip,
        dst: dst_ip,
        flow,
    };
    let find = |key: String| {
        compiled
            .endpoints
            .iter()
            .find(|p| p.endpoint == key)
            .expect("every model endpoint is compiled")
    };
    let (eg_allow, eg_by, eg_why) =
        evaluate(&compiled, &find(src.key()).egress, Direction::Egress, &pkt);
    let eg_text = format!("egress of {} ({src_ip}): {eg_why}", src.key());
    if !eg_allow {
        return Ok(Verdict {
            action: VerdictAction::Deny,
            decided_by: Some(eg_by),
            reason: eg_text,
        });
    }
    let (in_allow, in_by, in_why) = evaluate(
        &compiled,
        &find(dst.key()).ingress,
        Direction::Ingress,
        &pkt,
    );
    Ok(Verdict {
        action: if in_allow {
            VerdictAction::Allow
        } else {
            VerdictAction::Deny
        },
        decided_by: Some(in_by),
        reason: format!("{eg_text}; ingress of {} ({dst_ip}): {in_why}", dst.key()),
    })
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
