//! `tabbyctl policy explain`: which tier, policy and rule decide a flow between two
//! endpoints, computed from the stored model with the same compiler the data plane
//! rendering uses (`tabby_policy`).

use std::io::Write;

use anyhow::{Context, bail};
use tabby_api::Kind;
use tabby_api::net::Protocol;
use tabby_policy::explain::{Flow, VerdictAction, explain_flow};
use tabby_policy::model::Model;

use crate::connect::Connection;

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Explain the verdict for one flow: egress of FROM, then ingress of TO.
    Explain(ExplainArgs),
}

#[derive(clap::Args, Debug)]
struct ExplainArgs {
    /// Source endpoint: `namespace/name`, a WorkloadEndpoint or HostEndpoint name, or
    /// its interface.
    #[arg(long)]
    from: String,
    /// Destination endpoint, named the same ways.
    #[arg(long)]
    to: String,
    /// Protocol by name (tcp, udp, icmp, sctp, ...) or number.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Destination port.
    #[arg(long)]
    port: Option<u16>,
    /// ICMP type.
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP code.
    #[arg(long)]
    icmp_code: Option<u8>,
    /// IP version (4 or 6); default 4 when both ends have IPv4.
    #[arg(long)]
    ip_version: Option<u8>,
}

pub async fn run(conn: &Connection, args: &PolicyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.action {
        Action::Explain(a) => explain(conn, a, out).await,
    }
}

fn protocol_number(s: &str) -> anyhow::Result<u8> {
    let p = match s.parse::<u8>() {
        Ok(n) => Protocol::Number(n),
        Err(_) => Protocol::Name(s.to_string()),
    };
    match p.number() {
        Some(n) => Ok(n),
        None => bail!(
            "--protocol {s:?}: not a protocol name (tcp, udp, icmp, icmpv6, sctp, udplite) or number"
        ),
    }
}

async fn explain(conn: &Connection, a: &ExplainArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let protocol = protocol_number(&a.protocol)?;
    if let Some(v) = a.ip_version
        && v != 4
        && v != 6
    {
        bail!("--ip-version {v}: expected 4 or 6");
    }
    let client = conn.client().await?;
    let mut resources = Vec::new();
    for kind in [
        Kind::NetworkPolicy,
        Kind::GlobalNetworkPolicy,
        Kind::Profile,
        Kind::NetworkSet,
        Kind::GlobalNetworkSet,
        Kind::WorkloadEndpoint,
        Kind::HostEndpoint,
        Kind::Tier,
    ] {
        resources.extend(
            client
                .list(kind, None)
                .await
                .with_context(|| format!("listing {kind}"))?,
        );
    }
    let model = Model::from_resources(&resources)?;
    let flow = Flow {
        protocol,
        dst_port: a.port,
        src_port: None,
        icmp_type: a.icmp_type,
        icmp_code: a.icmp_code,
        ip_version: a.ip_version,
    };
    let v = explain_flow(&model, &a.from, &a.to, &flow)?;
    let verdict = match v.action {
        VerdictAction::Allow => "ALLOW",
        VerdictAction::Deny => "DENY",
    };
    writeln!(out, "{verdict}")?;
    if let Some(d) = &v.decided_by {
        let by = match (&d.policy, &d.profile, &d.tier) {
            (Some(p), _, Some(t)) => format!("policy {p} (tier {t})"),
            (Some(p), _, None) => format!("policy {p}"),
            (None, Some(p), _) => format!("profile {p}"),
            (None, None, Some(t)) => format!("the end of tier {t}"),
            (None, None, None) => "no profile matching".to_string(),
        };
        let rule = d
            .rule_index
            .map(|i| format!(", rule {i}"))
            .unwrap_or_default();
        writeln!(out, "decided by: {by}, {:?}{rule}", d.direction)?;
    }
    writeln!(out, "{}", v.reason)?;
    Ok(())
}
