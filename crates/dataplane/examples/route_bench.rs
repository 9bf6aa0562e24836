//! Installs N routes `100.64.x.y/32 via 198.18.0.2 dev veth0 onlink proto 80` with
//! [`Netlink::add_routes`] in one fresh namespace and with `ip -batch` in another,
//! and compares the rates (then removes them both ways). Needs root.
//!
//! `cargo run --release -p tabby-dataplane --example route_bench -- --routes 100000`

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ipnet::IpNet;
use tabby_dataplane::{Family, Netlink, Route, RtNetlink};
use tabby_testnet::Netns;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The i-th /32 of 100.64.0.0/10.
fn dst(i: u32) -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6440_0000 + i)), 32).expect("32 is valid")
}

/// A namespace with veth0 (198.18.0.1/24) and its peer veth1, both up, so
/// 198.18.0.2 is a valid onlink gateway on veth0.
fn namespace(prefix: &str, name: &str) -> anyhow::Result<Netns> {
    let ns = Netns::new(prefix, name)?;
    ns.ip(&[
        "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
    ])?;
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "veth0"])?;
    ns.ip(&["link", "set", "veth0", "up"])?;
    ns.ip(&["link", "set", "veth1", "up"])?;
    Ok(ns)
}

fn ip_batch(ns: &Netns, file: &std::path::Path) -> anyhow::Result<Duration> {
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

fn count_ours(ns: &Netns) -> anyhow::Result<usize> {
    let out = ns.ip(&["-4", "route", "show", "proto", "80"])?;
    Ok(out.lines().count())
}

fn rate(n: u32, d: Duration) -> f64 {
    f64::from(n) / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut n: u32 = 100_000;
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
            "--bench" => {} // passed by `cargo bench`-style runners
            other => bail!("unknown argument {other:?} (usage: route_bench [--routes N])"),
        }
    }
    ensure!(
        (1..=1 << 22).contains(&n),
        "--routes must be 1..=4194304 (100.64.0.0/10)"
    );
    tabby_testnet::require_root();
    let prefix = format!("tdp-bench-{}", std::process::id());
    let tabby_ns = namespace(&prefix, "tabby")?;
    let ip_ns = namespace(&prefix, "ip")?;

    let nl = RtNetlink::in_netns(format!("/run/netns/{}", tabby_ns.name()))?;
    let veth = nl
        .link_by_name("veth0")
        .await?
        .context("veth0 is missing")?
        .index;
    let routes: Vec<Route> = (0..n)
        .map(|i| Route::via_onlink(dst(i), IpAddr::V4(GATEWAY), veth))
        .collect();

    let dir = tempfile_dir(&prefix)?;
    let add_file = dir.join("add.batch");
    let del_file = dir.join("del.batch");
    let mut add = String::new();
    let mut del = String::new();
    for i in 0..n {
        let d = dst(i);
        add.push_str(&format!(
            "route add {d} via {GATEWAY} dev veth0 onlink proto 80\n"
        ));
        del.push_str(&format!(
            "route del {d} via {GATEWAY} dev veth0 onlink proto 80\n"
        ));
    }
    std::fs::write(&add_file, add)?;
    std::fs::write(&del_file, del)?;

    // Add.
    let start = Instant::now();
    let res = nl.add_routes(&routes).await;
    let tabby_add = start.elapsed();
    let failed = res.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = res.iter().find(|r| r.is_err()) {
        bail!("{failed} of {n} routes failed, first: {e}");
    }
    let ip_add = ip_batch(&ip_ns, &add_file)?;
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
    let seen = count_ours(&ip_ns)?;
    ensure!(seen == n as usize, "ip namespace has {seen} of {n} routes");
    let (r1, r2) = (rate(n, tabby_add), rate(n, ip_add));
    println!(
        "tabby add_routes: {n} routes in {:.3} s ({:.0} routes/s); ip -batch: {:.3} s ({:.0}/s); ratio {:.2}",
        tabby_add.as_secs_f64(),
        r1,
        ip_add.as_secs_f64(),
        r2,
        r1 / r2
    );

    // Delete.
    let start = Instant::now();
    let res = nl.del_routes(&routes).await;
    let tabby_del = start.elapsed();
    if let Some(Err(e)) = res.iter().find(|r| r.is_err()) {
        bail!("delete failed: {e}");
    }
    let ip_del = ip_batch(&ip_ns, &del_file)?;
    ensure!(count_ours(&ip_ns)? == 0, "ip -batch left routes behind");
    let (d1, d2) = (rate(n, tabby_del), rate(n, ip_del));
    println!(
        "tabby del_routes: {n} routes in {:.3} s ({:.0} routes/s); ip -batch: {:.3} s ({:.0}/s); ratio {:.2}",
        tabby_del.as_secs_f64(),
        d1,
        ip_del.as_secs_f64(),
        d2,
        d1 / d2
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir(prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
