//! bgperf-style load generator and monitor for `bench/bgp/run.sh` (a
//! benchmark driver, not a test). From one network namespace it opens
//! `--testers` iBGP sessions to the target (each from its own source address,
//! `--src-base` + i) and one monitor session (`--monitor-src`). Once every
//! session is Established the clock starts and each tester writes its
//! pre-encoded UPDATEs (`--prefixes` unique /32s from 100.64.0.0/10, next
//! hop = itself) followed by End-of-RIB. The monitor decodes what the target
//! sends with the tabby-bgp codec and stops the clock when it holds all
//! testers x prefixes routes. Prints one JSON line: convergence seconds,
//! injection seconds, and the target's peak RSS (VmHWM) and CPU seconds when
//! `--target-pid` is given.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ipnet::{IpNet, Ipv4Net};
use socket2::{Domain, Socket, Type};
use tabby_bgp::packet::attribute::{NextHop, PathAttributes};
use tabby_bgp::packet::capability::Capability;
use tabby_bgp::packet::message::{Message, OpenMsg, UpdateMsg};
use tabby_bgp::packet::{DecodeCxt, EncodeCxt};

#[derive(Parser, Debug)]
struct Args {
    /// Target address (port 179).
    #[arg(long)]
    target: Ipv4Addr,
    /// AS of everyone (iBGP; the target reflects).
    #[arg(long, default_value_t = 64512)]
    asn: u32,
    /// Number of tester sessions.
    #[arg(long)]
    testers: u32,
    /// Unique prefixes per tester.
    #[arg(long)]
    prefixes: u32,
    /// Source address of tester 0; tester i uses this + i.
    #[arg(long)]
    src_base: Ipv4Addr,
    /// Source address of the monitor.
    #[arg(long)]
    monitor_src: Ipv4Addr,
    /// The target's pid, for VmHWM and CPU time.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Give up after this many seconds (sessions + convergence).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

const BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const HOLD: u16 = 240;

fn cxt() -> (DecodeCxt, EncodeCxt) {
    (
        DecodeCxt {
            four_octet_as: true,
            extended_message: false,
        },
        EncodeCxt {
            four_octet_as: true,
            extended_message: false,
        },
    )
}

/// Reads whole BGP messages from a stream.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Reader {
    fn new(s: TcpStream) -> Reader {
        Reader {
            s,
            buf: Vec::with_capacity(1 << 20),
            start: 0,
        }
    }
    /// Next raw message (header included).
    fn next(&mut self) -> Result<Vec<u8>> {
        loop {
            let avail = &self.buf[self.start..];
            if avail.len() >= 19 {
                let len = usize::from(u16::from_be_bytes([avail[16], avail[17]]));
                if len < 19 {
                    bail!("bad message length {len}");
                }
                if avail.len() >= len {
                    let m = avail[..len].to_vec();
                    self.start += len;
                    return Ok(m);
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + 65536, 0);
            let n = self.s.read(&mut self.buf[old..])?;
            self.buf.truncate(old + n);
            if n == 0 {
                bail!("connection closed");
            }
        }
    }
}

/// Connects from `src` and runs the OPEN/KEEPALIVE exchange; retries until
/// `deadline` (the target may still be starting or refusing).
fn establish(src: Ipv4Addr, target: Ipv4Addr, asn: u32, deadline: Instant) -> Result<TcpStream> {
    let (dcxt, ecxt) = cxt();
    let mut last = None;
    while Instant::now() < deadline {
        let r = (|| -> Result<TcpStream> {
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
            sock.connect_timeout(
                &SocketAddr::new(IpAddr::V4(target), 179).into(),
                Duration::from_secs(3),
            )?;
            sock.set_tcp_nodelay(true)?;
            let mut s: TcpStream = sock.into();
            let open = OpenMsg::new(
                asn,
                HOLD,
                src,
                vec![
                    Capability::MultiProtocol { afi: 1, safi: 1 },
                    Capability::RouteRefresh,
                    Capability::FourOctetAs(asn),
                ],
            );
            s.write_all(&Message::Open(open).encode(&ecxt))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut rd = Reader::new(s.try_clone()?);
            let mut got_open = false;
            loop {
                match Message::decode(&rd.next()?, &dcxt) {
                    Ok(Message::Open(_)) => {
                        got_open = true;
                        s.write_all(&Message::Keepalive.encode(&ecxt))?;
                    }
                    Ok(Message::Keepalive) if got_open => break,
                    Ok(Message::Notification(n)) => bail!("NOTIFICATION {n}"),
                    Ok(_) => {}
                    Err(e) => bail!("decode: {e:?}"),
                }
            }
            s.set_read_timeout(None)?;
            Ok(s)
        })();
        match r {
            Ok(s) => return Ok(s),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
        .with_context(|| format!("session from {src} to {target}"))
}

/// Sends a KEEPALIVE every 30 s until the process exits.
fn keepalives(mut s: TcpStream) {
    let (_, ecxt) = cxt();
    let ka = Message::Keepalive.encode(&ecxt);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(30));
            if s.write_all(&ka).is_err() {
                return;
            }
        }
    });
}

/// The pre-encoded UPDATE stream of tester `i`, End-of-RIB included.
fn updates(i: u32, n: u32, next_hop: Ipv4Addr) -> Vec<u8> {
    let (_, ecxt) = cxt();
    let prefixes: Vec<IpNet> = (0..n)
        .map(|k| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(BASE + i * n + k), 32).unwrap()))
        .collect();
    let attrs = PathAttributes {
        local_pref: Some(100),
        ..Default::default()
    };
    let mut out = Vec::new();
    let msgs = UpdateMsg::announce(&attrs, NextHop::Ipv4(next_hop), &prefixes, &ecxt)
        .expect("small attributes fit");
    for m in msgs {
        out.extend(Message::Update(m).encode(&ecxt));
    }
    out.extend(Message::Update(UpdateMsg::default()).encode(&ecxt));
    out
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pid` and its threads, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let expected = u64::from(a.testers) * u64::from(a.prefixes);
    let (dcxt, _) = cxt();

    // Monitor: established first, then counts every route it is sent.
    let mon = establish(a.monitor_src, a.target, a.asn, deadline)?;
    keepalives(mon.try_clone()?);
    let count = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel::<Instant>();
    {
        let count = count.clone();
        let mut rd = Reader::new(mon);
        std::thread::spawn(move || {
            let mut seen = vec![false; 1 << 22];
            let mut n = 0u64;
            let mut sent = false;
            while let Ok(m) = rd.next() {
                let Ok(Message::Update(u)) = Message::decode(&m, &dcxt) else {
                    continue;
                };
                let r = u.routes(true);
                for p in &r.withdrawn {
                    if let IpNet::V4(p) = p
                        && let Some(k) = u32::from(p.addr()).checked_sub(BASE)
                        && (k as usize) < seen.len()
                        && seen[k as usize]
                    {
                        seen[k as usize] = false;
                        n -= 1;
                    }
                }
                for (p, _) in &r.announced {
                    if let IpNet::V4(p) = p
                        && let Some(k) = u32::from(p.addr()).checked_sub(BASE)
                        && (k as usize) < seen.len()
                        && !seen[k as usize]
                    {
                        seen[k as usize] = true;
                        n += 1;
                    }
                }
                count.store(n, Ordering::Relaxed);
                if n >= expected && !sent {
                    sent = true;
                    let _ = done_tx.send(Instant::now());
                }
            }
        });
    }

    // Testers: pre-encode, establish all, then blast together.
    let barrier = Arc::new(Barrier::new(a.testers as usize + 1));
    let (up_tx, up_rx) = mpsc::channel::<Result<()>>();
    let (sent_tx, sent_rx) = mpsc::channel::<Instant>();
    let failed = Arc::new(AtomicBool::new(false));
    for i in 0..a.testers {
        let src = Ipv4Addr::from(u32::from(a.src_base) + i);
        let (barrier, up_tx, sent_tx, failed) = (
            barrier.clone(),
            up_tx.clone(),
            sent_tx.clone(),
            failed.clone(),
        );
        let (target, asn, n) = (a.target, a.asn, a.prefixes);
        std::thread::spawn(move || {
            let bytes = updates(i, n, src);
            let s = match establish(src, target, asn, deadline) {
                Ok(s) => s,
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    let _ = up_tx.send(Err(e));
                    barrier.wait();
                    return;
                }
            };
            // Discard what the reflector sends us, so it never blocks on us.
            let mut sink = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut b = vec![0u8; 1 << 16];
                while matches!(sink.read(&mut b), Ok(n) if n > 0) {}
            });
            let _ = up_tx.send(Ok(()));
            barrier.wait();
            if failed.load(Ordering::Relaxed) {
                return;
            }
            let mut w = s;
            if w.write_all(&bytes).is_ok() {
                let _ = sent_tx.send(Instant::now());
            }
            keepalives(w);
        });
    }
    drop(sent_tx);
    for _ in 0..a.testers {
        let left = deadline.saturating_duration_since(Instant::now());
        match up_rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                barrier.wait();
                return Err(e);
            }
            Err(_) => bail!("tester sessions not up within {} s", a.timeout),
        }
    }
    let cpu0 = a.target_pid.and_then(cpu_secs);
    let t0 = Instant::now();
    barrier.wait();
    let left = deadline.saturating_duration_since(Instant::now());
    let done = done_rx.recv_timeout(left);
    let mut last_sent = t0;
    while let Ok(t) = sent_rx.try_recv() {
        last_sent = last_sent.max(t);
    }
    let cpu1 = a.target_pid.and_then(cpu_secs);
    let rss = a.target_pid.and_then(|p| proc_status_kb(p, "VmHWM:"));
    let got = count.load(Ordering::Relaxed);
    let out = serde_json::json!({
        "testers": a.testers,
        "prefixes": a.prefixes,
        "converged": done.is_ok(),
        "seconds": done.ok().map(|t| (t - t0).as_secs_f64()),
        "injectSeconds": (last_sent - t0).as_secs_f64(),
        "monitorRoutes": got,
        "expected": expected,
        "targetVmHwmKb": rss,
        "targetCpuSeconds": cpu0.zip(cpu1).map(|(a, b)| b - a),
    });
    println!("{out}");
    std::process::exit(if got >= expected { 0 } else { 1 })
}
