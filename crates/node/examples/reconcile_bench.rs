//! Reconciles N routes `100.64.x.y/32 via 198.18.0.2 dev veth0 onlink proto 80` into
//! an empty namespace with [`Reconciler::apply_routes`] (list the kernel's routes,
//! diff, apply in pipelined batches), then adds the same routes with `ip -batch` into
//! a second fresh namespace, and compares the rates; a second `apply_routes` on the
//! full namespace gives the cost of a no-op resync. Needs root.
//!
//! `cargo run --release -p tabby-node --example reconcile_bench -- --routes 100000`

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ipnet::IpNet;
use tabby_dataplane::{Family, Netlink, Route, RtNetlink};
use tabby_node::reconcile::{Applied, Reconciler};
use tabby_testnet::Netns;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The i-th /32 of 100.64.0.0/10.
fn dst(i: u32) -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)), 32).expect("32 is valid")
}

/// A namespace with veth0 (198.18.0.1/24) whose peer veth1 sits, up, in the peer
/// namespace, so 198.18.0.2 is a valid onlink gateway on veth0.
fn namespace(prefix: &str, name: &str) -> anyhow::Result<(Netns, Netns)> {
    let ns = Netns::new(prefix, name)?;
    let peer = Netns::new(prefix, &format!("{name}-peer"))?;
    ns.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
        "netns",
        peer.name(),
    ])?;
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "veth0"])?;
    peer.ip(&["addr", "add", "198.18.0.2/24", "dev", "veth1"])?;
    ns.ip(&["link", "set", "veth0", "up"])?;
    peer.ip(&["link", "set", "veth1", "up"])?;
    Ok((ns, peer))
}

fn ip_batch(ns: &Netns, file: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-batch"])
        .arg(file)
        .output()
        .context("run ip -batch")?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("ip -batch failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

/// `ip route show proto 80`: the number of lines and how long the dump took.
fn ip_dump(ns: &Netns) -> anyhow::Result<(usize, Duration)> {
    let start = Instant::now();
    let out = ns.ip(&["-4", "route", "show", "proto", "80"])?;
    Ok((out.lines().count(), start.elapsed()))
}

fn rate(n: u32, d: Duration) -> f64 {
    f64::from(n) / d.as_secs_f64()
}

async fn reconcile(
    rec: &Reconciler,
    desired: &BTreeMap<IpNet, Route>,
) -> anyhow::Result<(Applied, Duration)> {
    let mut out = Applied::default();
    let start = Instant::now();
    // Listing the links is part of a pass, as in the agent.
    let links = rec.links().await?;
    rec.apply_routes(desired, &links, &BTreeSet::new(), false, &mut out)
        .await;
    let took = start.elapsed();
    if let Some(e) = out.errors.first() {
        bail!("{} errors, first: {e}", out.errors.len());
    }
    Ok((out, took))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut n: u32 = 100_000;
    let mut ip_first = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--routes" => {
                n = args
                    .next()
                    .context("--routes needs a number")?
                    .parse()
                    .context("--routes")?
            }
            "--ip-first" => ip_first = true,
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?} (usage: reconcile_bench [--routes N] [--ip-first])"
            ),
        }
    }
    ensure!(
        (1..=1 << 22).contains(&n),
        "--routes must be 1..=4194304 (100.64.0.0/10)"
    );
    tabby_testnet::require_root();
    // Namespaces are removed with their handles, also when a step below fails.
    let prefix = format!("tnrb{}", std::process::id() % 100_000);
    let (tabby_ns, _tabby_peer) = namespace(&prefix, "t")?;
    let (ip_ns, _ip_peer) = namespace(&prefix, "i")?;

    let nl = RtNetlink::in_netns(format!("/run/netns/{}", tabby_ns.name()))?;
    let veth = nl
        .link_by_name("veth0")
        .await?
        .context("veth0 is missing")?
        .index;
    let nl: Arc<dyn Netlink> = Arc::new(nl);
    let rec = Reconciler::new(nl.clone(), "cali");
    let desired: BTreeMap<IpNet, Route> = (0..n)
        .map(|i| (dst(i), Route::via_onlink(dst(i), IpAddr::V4(GATEWAY), veth)))
        .collect();

    let dir = tempfile::Builder::new().prefix(&prefix).tempdir()?;
    let add_file = dir.path().join("add.batch");
    let mut add = String::with_capacity(n as usize * 64);
    for i in 0..n {
        add.push_str(&format!(
            "route add {} via {GATEWAY} dev veth0 onlink proto 80\n",
            dst(i)
        ));
    }
    std::fs::write(&add_file, add)?;

    let (first, tabby_took, ip_took) = if ip_first {
        let ip_took = ip_batch(&ip_ns, &add_file)?;
        let (first, tabby_took) = reconcile(&rec, &desired).await?;
        (first, tabby_took, ip_took)
    } else {
        let (first, tabby_took) = reconcile(&rec, &desired).await?;
        let ip_took = ip_batch(&ip_ns, &add_file)?;
        (first, tabby_took, ip_took)
    };
    ensure!(
        first.routes_changed == n as usize,
        "apply_routes changed {} of {n} routes",
        first.routes_changed
    );
    let seen = nl
        .routes(Family::V4)
        .await?
        .iter()
        .filter(|r| r.protocol == 80)
        .count();
    ensure!(
        seen == n as usize,
        "tabby namespace has {seen} of {n} routes"
    );
    let (seen, ip_dump_took) = ip_dump(&ip_ns)?;
    ensure!(seen == n as usize, "ip namespace has {seen} of {n} routes");
    let (r1, r2) = (rate(n, tabby_took), rate(n, ip_took));
    println!(
        "tabby apply_routes: {n} routes into an empty namespace in {:.3} s ({:.0} routes/s); ip -batch: {:.3} s ({:.0}/s); ratio {:.2} ({} first)",
        tabby_took.as_secs_f64(),
        r1,
        ip_took.as_secs_f64(),
        r2,
        r1 / r2,
        if ip_first { "ip" } else { "tabby" }
    );

    // The periodic resync on a namespace that already matches: list, diff, nothing
    // to apply.
    let (again, noop_took) = reconcile(&rec, &desired).await?;
    ensure!(
        again.routes_changed == 0 && again.routes_deleted == 0,
        "the second pass changed {} and deleted {} routes",
        again.routes_changed,
        again.routes_deleted
    );
    println!(
        "tabby no-op apply_routes over {n} installed routes: {:.3} s; ip route show proto 80 (dump and print only): {:.3} s",
        noop_took.as_secs_f64(),
        ip_dump_took.as_secs_f64()
    );
    Ok(())
}
