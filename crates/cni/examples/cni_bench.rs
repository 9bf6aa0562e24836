//! ADD/DEL latency of the `tabby` plugin with N ADDs in parallel, as a runtime on
//! a busy node would issue them. Run by `bench/cni/run.sh` inside a throw-away node
//! namespace (needs root); prints a Markdown table row.
//!
//! `cni_bench <store-url> <bin-dir> [parallel=20] [rounds=5]`

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tabby_api::ippool::IPPoolSpec;
use tabby_api::{Kind, Resource, Spec};

fn plugin(
    bin: &Path,
    cmd: &str,
    cid: &str,
    netns: &str,
    cni_path: &str,
    conf: &[u8],
) -> Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME={netns}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(conf)?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("{cmd} {cid}: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(took)
}

/// CPU time (user + system) of this process's waited-for children so far, in ms
/// (`/proc/self/stat` fields 16 and 17, in clock ticks of 10 ms).
fn children_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state): cutime is field 16, cstime field 17.
    (f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)) as f64 * 10.0
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        bail!("usage: cni_bench <store-url> <bin-dir> [parallel] [rounds]");
    }
    let store_url = args[1].clone();
    let bin_dir = Path::new(&args[2]).to_path_buf();
    let parallel: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let rounds: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let cni_path = bin_dir.display().to_string();
    let bin = bin_dir.join("tabby");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = tabby_store::open(&tabby_store::StoreUrl::parse(&store_url)?).await?;
        let client = tabby_client::Client::new(store);
        if client
            .get(Kind::IPPool, None, "bench-pool")
            .await?
            .is_none()
        {
            let spec = IPPoolSpec {
                cidr: Some("100.64.0.0/16".parse()?),
                block_size: Some(26),
                ..IPPoolSpec::default()
            };
            client
                .create(Resource::with_spec("bench-pool", None, Spec::IPPool(spec)))
                .await?;
        }
        anyhow::Ok(())
    })?;

    let conf = serde_json::to_vec(&json!({
        "cniVersion": "1.1.0", "name": "bench-net", "type": "tabby",
        "nodename": "bench-node", "datastore": store_url, "mtu": 1500,
        "ipam": {"type": "tabby-ipam"},
    }))?;
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    let (mut add_cpu, mut del_cpu) = (0.0, 0.0);
    for round in 0..rounds {
        let names: Vec<String> = (0..parallel)
            .map(|i| format!("tbench-{}-{round}-{i}", std::process::id()))
            .collect();
        for n in &names {
            let ok = Command::new("ip")
                .args(["netns", "add", n])
                .status()?
                .success();
            if !ok {
                bail!("ip netns add {n} failed");
            }
        }
        for cmd in ["ADD", "DEL"] {
            let cpu0 = children_cpu_ms();
            let times: Vec<Result<Duration>> = std::thread::scope(|s| {
                let hs: Vec<_> = names
                    .iter()
                    .map(|n| {
                        let (bin, conf, cp) = (&bin, &conf, &cni_path);
                        s.spawn(move || plugin(bin, cmd, &format!("c{n}"), n, cp, conf))
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            let cpu = children_cpu_ms() - cpu0;
            if cmd == "ADD" {
                add_cpu += cpu;
            } else {
                del_cpu += cpu;
            }
            for t in times {
                let t = t?;
                if cmd == "ADD" {
                    adds.push(t)
                } else {
                    dels.push(t)
                }
            }
        }
        for n in &names {
            Command::new("ip").args(["netns", "del", n]).status()?;
        }
    }
    let kind = store_url.split(':').next().unwrap_or("?");
    let n = adds.len().max(1) as f64;
    println!(
        "| {kind} | {parallel} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        adds.len(),
        pct(&mut adds, 0.5),
        pct(&mut adds, 0.99),
        pct(&mut dels, 0.5),
        pct(&mut dels, 0.99),
        add_cpu / n,
        del_cpu / n
    );
    Ok(())
}
