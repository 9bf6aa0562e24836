//! What SQLite watches cost while nothing happens, and how fast they see a write made
//! through another handle on the file (as another process's would be).
//!
//! `cargo run --release -p tabby-store --example watch_idle -- --db /tmp/w.db \
//!     --streams 100 [--processes 10] [--seconds 10] [--wake inotify|poll]`
//! measures the CPU time used by processes holding `--streams` idle watch streams in
//! all (split evenly over `--processes`, each with its own store handle) over
//! `--seconds`; `--latency 200` instead times 200 writes through a second handle, 20 to
//! 45 ms apart, from the start of the write until a watch of the first handle delivers it.
//! `bench/store/run.sh` runs both in both wake modes.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tabby_store::Datastore;
use tabby_store::sqlite::{SqliteOptions, SqliteStore, Wake};

struct Args {
    db: PathBuf,
    streams: usize,
    processes: usize,
    seconds: u64,
    wake: Wake,
    latency: Option<usize>,
    /// This process is one of the `--processes`: hold the streams until stdin closes.
    child: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        db: PathBuf::new(),
        streams: 100,
        processes: 1,
        seconds: 10,
        wake: Wake::Inotify,
        latency: None,
        child: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<usize, String> {
            v.parse().map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--db" => args.db = PathBuf::from(value("--db")?),
            "--streams" => args.streams = number("--streams", value("--streams")?)?,
            "--processes" => args.processes = number("--processes", value("--processes")?)?,
            "--seconds" => args.seconds = number("--seconds", value("--seconds")?)? as u64,
            "--latency" => args.latency = Some(number("--latency", value("--latency")?)?),
            "--wake" => {
                args.wake = match value("--wake")?.as_str() {
                    "inotify" => Wake::Inotify,
                    "poll" => Wake::Poll,
                    other => return Err(format!("--wake: {other:?} is not inotify or poll")),
                }
            }
            "--child" => args.child = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.db.as_os_str().is_empty() {
        return Err("--db PATH (the SQLite store file) is required".to_string());
    }
    if args.processes == 0 || args.streams < args.processes {
        return Err("--processes must be between 1 and --streams".to_string());
    }
    Ok(args)
}

fn options(wake: Wake) -> SqliteOptions {
    SqliteOptions {
        wake,
        ..SqliteOptions::default()
    }
}

fn wake_name(wake: Wake) -> &'static str {
    match wake {
        Wake::Inotify => "inotify",
        Wake::Poll => "poll",
    }
}

/// User + system CPU time of process `pid` (all its threads), from `/proc/<pid>/stat`.
fn cpu_time(pid: &str) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields from the 3rd on follow the command name, which may hold spaces; utime and
    // stime (14th, 15th) are in USER_HZ ticks, 100 per second on Linux.
    let rest = &stat[stat.rfind(')').ok_or("bad stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or("short stat")?
            .parse()
            .map_err(|e| format!("{e}"))
    };
    Ok(Duration::from_millis((tick(11)? + tick(12)?) * 10))
}

/// Opens the store and `streams` watches of distinct prefixes, each with a consumer
/// task, as an agent's would be.
async fn hold_streams(args: &Args, streams: usize) -> Result<SqliteStore, String> {
    let store = SqliteStore::open_with(&args.db, options(args.wake))
        .await
        .map_err(|e| e.to_string())?;
    for i in 0..streams {
        let mut w = store
            .watch(&format!("/bench/idle/{}/{i}/", std::process::id()), 0)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move { while w.next().await.is_some() {} });
    }
    // Let every stream make its first read of the log.
    while store.watch_stats().polls < streams as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(store)
}

/// The idle measurement: in this process, or in `--processes` children of it.
async fn idle(args: &Args) -> Result<(), String> {
    let settle = Duration::from_millis(500);
    let window = Duration::from_secs(args.seconds);
    let (used, checks) = if args.processes == 1 {
        let store = hold_streams(args, args.streams).await?;
        tokio::time::sleep(settle).await;
        let (before, stats) = (cpu_time("self")?, store.watch_stats());
        tokio::time::sleep(window).await;
        let used = cpu_time("self")?.saturating_sub(before);
        (used, Some(store.watch_stats().checks - stats.checks))
    } else {
        let children = spawn_children(args)?;
        tokio::time::sleep(settle).await;
        let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
        let before: Vec<Duration> = pids.iter().map(|p| cpu_time(p)).collect::<Result<_, _>>()?;
        tokio::time::sleep(window).await;
        let mut used = Duration::ZERO;
        for (pid, b) in pids.iter().zip(before) {
            used += cpu_time(pid)?.saturating_sub(b);
        }
        stop_children(children)?;
        (used, None)
    };
    println!(
        "idle    wake={:<7} streams={} processes={} over {}s: CPU {:.3} s = {:.2}% of one core{}",
        wake_name(args.wake),
        args.streams,
        args.processes,
        args.seconds,
        used.as_secs_f64(),
        100.0 * used.as_secs_f64() / window.as_secs_f64(),
        checks.map_or(String::new(), |c| format!(", {c} revision checks")),
    );
    Ok(())
}

/// Starts `--processes` copies of this program holding a share of the streams each,
/// and waits until every one is ready.
fn spawn_children(args: &Args) -> Result<Vec<Child>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let per = args.streams / args.processes;
    let mut children = Vec::new();
    for _ in 0..args.processes {
        let child = Command::new(&exe)
            .arg("--db")
            .arg(&args.db)
            .args(["--streams", &per.to_string(), "--child"])
            .args(["--wake", wake_name(args.wake)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting a child: {e}"))?;
        children.push(child);
    }
    for child in &mut children {
        let out = child.stdout.take().ok_or("no child stdout")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("a child failed to start: {line:?}"));
        }
    }
    Ok(children)
}

fn stop_children(children: Vec<Child>) -> Result<(), String> {
    for mut child in children {
        // Closing its stdin ends it.
        drop(child.stdin.take());
        child.wait().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A child: holds its streams until its stdin closes.
async fn child(args: &Args) -> Result<(), String> {
    let _store = hold_streams(args, args.streams).await?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await
    .map_err(|e| e.to_string())
}

/// Times `writes` writes through a second handle until a watch of the first delivers
/// each one.
async fn latency(args: &Args, writes: usize) -> Result<(), String> {
    let watcher = SqliteStore::open_with(&args.db, options(args.wake))
        .await
        .map_err(|e| e.to_string())?;
    let writer: Arc<dyn Datastore> = Arc::new(
        SqliteStore::open(&args.db)
            .await
            .map_err(|e| e.to_string())?,
    );
    let prefix = format!("/bench/latency/{}/", std::process::id());
    let mut w = watcher.watch(&prefix, 0).await.map_err(|e| e.to_string())?;
    let (seen, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(event)) = w.next().await {
            let _ = seen.send((event.revision(), Instant::now()));
        }
    });
    let mut samples = Vec::with_capacity(writes);
    let mut write_times = Vec::with_capacity(writes);
    // From the write's return (when its commit and doorbell are done) to the event:
    // the wake itself, without the commit's fsync.
    let mut after_write = Vec::with_capacity(writes);
    for i in 0..writes {
        // 20 ms and a spread over one fallback poll interval, so that writes do not
        // fall into step with the polls.
        let pause = 20 + (i as u64 * 7) % 25;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let started = Instant::now();
        let rev = writer
            .create(&format!("{prefix}{i:05}"), b"v")
            .await
            .map_err(|e| e.to_string())?;
        let written = started.elapsed();
        write_times.push(written);
        let (got, at) = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await
            .map_err(|_| "no event within 10 s".to_string())?
            .ok_or("watch ended")?;
        if got != rev {
            return Err(format!("expected revision {rev}, got {got}"));
        }
        samples.push(at.duration_since(started));
        after_write.push(at.saturating_duration_since(started + written));
    }
    for v in [&mut samples, &mut write_times, &mut after_write] {
        v.sort();
    }
    let pick = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let ms = |v: &[Duration], q: f64| pick(v, q).as_secs_f64() * 1000.0;
    println!(
        "latency wake={:<7} writes={writes}: write start to event p50 {:.2} ms, p99 {:.2} ms \
         (the write itself p50 {:.2} ms, p99 {:.2} ms; write return to event p50 {:.2} ms, \
         p99 {:.2} ms)",
        wake_name(args.wake),
        ms(&samples, 0.5),
        ms(&samples, 0.99),
        ms(&write_times, 0.5),
        ms(&write_times, 0.99),
        ms(&after_write, 0.5),
        ms(&after_write, 0.99),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let result = match parse_args() {
        Ok(args) if args.child => child(&args).await,
        Ok(args) => match args.latency {
            Some(writes) => latency(&args, writes).await,
            None => idle(&args).await,
        },
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("watch_idle: {e}");
        std::process::exit(1);
    }
}
