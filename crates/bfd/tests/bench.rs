//! Scripted benchmark (ignored by default; needs root): 100 single-hop
//! sessions at 300 ms x 3 between two `tabby-bfdd` instances in two
//! namespaces. Measures the CPU of one instance over 30 s from
//! /proc/<pid>/stat, then the distribution of detection times over
//! repeated silent link cuts (BFD dropped by nftables on one side).
//!
//! ```text
//! cargo test --release -p tabby-bfd --test bench -- --ignored --nocapture
//! ```
//! Figures are in docs/benchmarks.md.

mod common;

use common::{Tabby, cut, repair, unix_ms};
use std::time::{Duration, Instant};
use tabby_testnet::bgp::bfd::{BfdConfig, BirdBfd};
use tabby_testnet::{End, TestNet, require_root};

const SESSIONS: usize = 100;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (utime, stime) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse().unwrap(), f[12].parse().unwrap())
}

/// CPU of `pid` over `secs` seconds: (% of a core, user ticks, system ticks).
fn measure(pid: u32, secs: u64) -> (f64, u64, u64) {
    let hz = clock_ticks_per_sec();
    let (t0, (u0, s0)) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(secs));
    let (u1, s1) = cpu_ticks(pid);
    let dt = t0.elapsed().as_secs_f64();
    let (du, ds) = (u1 - u0, s1 - s0);
    ((du + ds) as f64 / hz as f64 / dt * 100.0, du, ds)
}

fn clock_ticks_per_sec() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn wait_all(t: &Tabby, state: &str, after: u64, peers: usize, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
        for c in t.all_changes_since(after, Duration::from_millis(50)) {
            if c["new"] == state {
                seen.entry(c["peer"].as_str().unwrap().to_string())
                    .or_insert(c["atMs"].as_u64().unwrap());
            }
        }
        if seen.len() >= peers {
            return seen.into_values().collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {peers} sessions became {state}",
            seen.len()
        );
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn hundred_sessions_cpu_and_detection() {
    require_root();
    let tn = TestNet::new();
    let a = tn.netns("a").unwrap();
    let b = tn.netns("b").unwrap();
    tn.veth(
        End::new(&a, "eth0", &["198.18.1.1/16"]),
        End::new(&b, "eth0", &["198.18.2.1/16"]),
    )
    .unwrap();
    for i in 2..=SESSIONS {
        a.add_addr("eth0", &format!("198.18.1.{i}/16")).unwrap();
        b.add_addr("eth0", &format!("198.18.2.{i}/16")).unwrap();
    }
    let spec = |peer: &str, local: &str| {
        format!("--session={peer},local={local},interval=300ms,multiplier=3")
    };
    let sa: Vec<String> = (1..=SESSIONS)
        .map(|i| spec(&format!("198.18.2.{i}"), &format!("198.18.1.{i}")))
        .collect();
    let sb: Vec<String> = (1..=SESSIONS)
        .map(|i| spec(&format!("198.18.1.{i}"), &format!("198.18.2.{i}")))
        .collect();
    let ta = Tabby::start(&a, &sa.iter().map(String::as_str).collect::<Vec<_>>());
    let tb = Tabby::start(&b, &sb.iter().map(String::as_str).collect::<Vec<_>>());
    wait_all(&ta, "Up", 0, SESSIONS, Duration::from_secs(60));
    wait_all(&tb, "Up", 0, SESSIONS, Duration::from_secs(60));
    // Let every Poll Sequence finish.
    std::thread::sleep(Duration::from_secs(3));

    let secs = env_or("BFD_BENCH_SECS", 30);
    let start = unix_ms();
    let (cpu, du, ds) = measure(ta.pid(), secs);
    let flaps = ta.all_changes_since(start, Duration::from_millis(10)).len();
    println!(
        "BENCH cpu tabby-bfdd: {SESSIONS} sessions at 300 ms x 3 over {secs} s: {cpu:.2}% of a core (user {du}, system {ds} ticks), {flaps} state changes"
    );
    assert_eq!(flaps, 0, "sessions flapped during the CPU measurement");

    let cuts = env_or("BFD_BENCH_CUTS", 10);
    let mut detections = Vec::new();
    for _ in 0..cuts {
        let c = cut(&a);
        let downs = wait_all(&ta, "Down", c.0, SESSIONS, Duration::from_secs(20));
        detections.extend(downs.iter().map(|d| d - c.0));
        repair(&a);
        wait_all(&ta, "Up", c.1, SESSIONS, Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(2));
    }
    detections.sort_unstable();
    println!(
        "BENCH detection over {} cuts x {SESSIONS} sessions (detection time 900 ms): min {} p50 {} p90 {} p99 {} max {} ms",
        cuts,
        detections[0],
        pct(&detections, 0.5),
        pct(&detections, 0.9),
        pct(&detections, 0.99),
        detections[detections.len() - 1]
    );
    assert!(
        *detections.last().unwrap() <= 1000,
        "a failover took longer than 1 s"
    );

    // The same load carried by BIRD, for scale: BIRD replaces instance a.
    let again = unix_ms();
    drop(ta);
    let mut cfg = BfdConfig::new("198.18.1.1".parse().unwrap()).timers(300, 300, 3);
    for i in 1..=SESSIONS {
        cfg = cfg.peer(
            format!("198.18.2.{i}").parse().unwrap(),
            format!("198.18.1.{i}").parse().unwrap(),
            "eth0",
        );
    }
    let bird = BirdBfd::start(&a, &cfg).unwrap();
    let up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_all(&tb, "Up", again, SESSIONS, Duration::from_secs(60))
    }));
    if up.is_err() {
        use tabby_testnet::bgp::bfd::BfdDaemon;
        let s = bird.sessions().unwrap();
        panic!(
            "BIRD: {} sessions, {:?}\n{}",
            s.len(),
            s.iter().take(3).collect::<Vec<_>>(),
            bird.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = a.pids().unwrap()[0] as u32;
    let (cpu, du, ds) = measure(pid, secs);
    println!(
        "BENCH cpu BIRD 2.0.12: {SESSIONS} sessions at 300 ms x 3 over {secs} s: {cpu:.2}% of a core (user {du}, system {ds} ticks)"
    );
    drop(bird);
}
