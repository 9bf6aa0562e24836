//! `tabby-bgpd`: the BGP speaker as a standalone daemon, configured by a
//! YAML file. Logs go to stderr; with `--events`, one JSON line per peer
//! state change and per best-path change goes to stdout. SIGINT stops with
//! Cease NOTIFICATIONs; SIGTERM, when graceful restart is on, leaves
//! without them so peers keep our routes while we restart, and
//! `--restarted` on the next start says so in the graceful restart
//! capability. The configuration check fails closed: a peer whose TCP MD5
//! password file cannot be read fails it, as does a filter rule that
//! cannot be applied.

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tabby_bgp::api::{InstanceConfig, OriginAttrs, PeerConfig, RestartState};
use tabby_bgp::packet::attribute::LargeCommunity;
use tabby_bgp::policy::parse_community;

#[derive(Parser, Debug)]
#[command(name = "tabby-bgpd", about = "Tabby's BGP speaker")]
struct Args {
    /// YAML configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Print peer and route events as JSON lines on stdout.
    #[arg(long)]
    events: bool,
    /// This start follows a graceful stop (SIGTERM): set the Restart State
    /// and Forwarding State bits, so peers keep our routes until our
    /// End-of-RIB (a reflector's routes point at other routers, so their
    /// forwarding never depended on us).
    #[arg(long)]
    restarted: bool,
}

fn default_hold() -> u16 {
    90
}
fn default_secs() -> u64 {
    5
}
fn default_gr() -> u16 {
    120
}

/// The configuration file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DaemonConfig {
    router_id: Ipv4Addr,
    asn: u32,
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    cluster_id: Option<Ipv4Addr>,
    #[serde(default = "default_hold")]
    hold_time: u16,
    #[serde(default = "default_secs")]
    connect_retry_secs: u64,
    #[serde(default = "default_secs")]
    idle_hold_secs: u64,
    #[serde(default = "default_gr")]
    graceful_restart_time: u16,
    /// Prefix limit per family for peers that set none (`maxPrefixes`
    /// per peer overrides it; 0 = no limit).
    #[serde(default)]
    max_prefixes: Option<u32>,
    /// Wait before reconnecting to a peer closed for too many prefixes, for
    /// peers that set none.
    #[serde(default)]
    max_prefixes_restart_secs: Option<u32>,
    #[serde(default)]
    peers: Vec<PeerConfig>,
    #[serde(default)]
    originate: Vec<Originate>,
}

/// A prefix to originate.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Originate {
    prefix: IpNet,
    /// COMMUNITIES as "AS:value".
    #[serde(default)]
    communities: Vec<String>,
    /// LARGE_COMMUNITY values as "global:local1:local2".
    #[serde(default)]
    large_communities: Vec<String>,
}

fn parse_large(s: &str) -> Option<LargeCommunity> {
    let mut it = s.split(':').map(|p| p.trim().parse::<u32>());
    let (Some(Ok(global)), Some(Ok(local1)), Some(Ok(local2)), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    Some(LargeCommunity {
        global,
        local1,
        local2,
    })
}

fn load(path: &Path) -> Result<(InstanceConfig, DaemonConfig)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cfg: DaemonConfig =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for p in &mut cfg.peers {
        p.max_prefixes = p.max_prefixes.or(cfg.max_prefixes);
        p.max_prefixes_restart_secs = p
            .max_prefixes_restart_secs
            .or(cfg.max_prefixes_restart_secs);
    }
    let inst = InstanceConfig {
        router_id: cfg.router_id,
        asn: cfg.asn,
        listen: cfg.listen,
        cluster_id: cfg.cluster_id,
        hold_time: cfg.hold_time,
        connect_retry_secs: cfg.connect_retry_secs,
        idle_hold_secs: cfg.idle_hold_secs,
        graceful_restart_time: cfg.graceful_restart_time,
    };
    inst.validate()
        .with_context(|| format!("{}", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    for (i, p) in cfg.peers.iter().enumerate() {
        p.validate()
            .with_context(|| format!("{}: peers[{i}]", path.display()))?;
        // Fails closed: no session at all rather than one without MD5.
        p.md5_key()
            .with_context(|| format!("{}: peers[{i}].passwordFile", path.display()))?;
        if !seen.insert(p.address) {
            bail!(
                "{}: peers[{i}].address: {} is listed twice",
                path.display(),
                p.address
            );
        }
    }
    for (i, o) in cfg.originate.iter().enumerate() {
        for c in &o.communities {
            if parse_community(c).is_none() {
                bail!(
                    "{}: originate[{i}].communities: {c:?} is not AS:value with two 16-bit numbers",
                    path.display()
                );
            }
        }
        for c in &o.large_communities {
            if parse_large(c).is_none() {
                bail!(
                    "{}: originate[{i}].largeCommunities: {c:?} is not global:local1:local2",
                    path.display()
                );
            }
        }
    }
    Ok((inst, cfg))
}

fn emit(line: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (inst, cfg) = load(&args.config)?;
    if args.check {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    // Handlers first: a SIGTERM that arrives once sessions are up must never find the
    // default action (exit) still in place.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let graceful_restart = inst.graceful_restart_time > 0;
    let handle = tabby_bgp::start(inst).await?;
    if args.restarted {
        handle
            .set_restart_state(RestartState {
                restarted: true,
                forwarding_preserved: true,
            })
            .await?;
    }
    if let Some(addr) = handle.local_addr() {
        tracing::info!(%addr, "listening");
    }
    if args.events {
        let mut peers = handle.subscribe_peers();
        tokio::spawn(async move {
            while let Ok(s) = peers.recv().await {
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                v["event"] = "peer".into();
                emit(v);
            }
        });
        let mut routes = handle.subscribe_routes();
        tokio::spawn(async move {
            while let Ok(c) = routes.recv().await {
                let mut v = serde_json::to_value(&c).unwrap_or_default();
                v["event"] = "route".into();
                emit(v);
            }
        });
    }
    for o in cfg.originate {
        let attrs = OriginAttrs {
            communities: o
                .communities
                .iter()
                .filter_map(|c| parse_community(c))
                .collect(),
            large_communities: o
                .large_communities
                .iter()
                .filter_map(|c| parse_large(c))
                .collect(),
            ..Default::default()
        };
        handle.originate_with(vec![o.prefix], attrs).await?;
    }
    for p in cfg.peers {
        handle.add_peer(p).await?;
    }
    let restarting = tokio::select! {
        _ = int.recv() => false,
        _ = term.recv() => true,
    };
    if restarting && graceful_restart {
        // SIGTERM is how a node agent is restarted: leave without Cease so
        // peers keep our routes for the graceful restart time.
        tracing::info!("SIGTERM: stopping for a restart, peers keep our routes");
        handle.shutdown_for_restart().await?;
    } else {
        tracing::info!("shutting down");
        handle.shutdown().await?;
    }
    // Let the writers flush the Cease NOTIFICATIONs.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(())
}
