//! `tabby-bfdd`: a BFD instance run by hand, by the interop tests and by
//! the CPU benchmark. Sessions come from `--session` flags and from
//! commands on standard input; state changes and status go to standard
//! output as JSON lines, logs to standard error.
//!
//! A session spec is the peer address followed by comma-separated options:
//! `198.18.0.2,local=198.18.0.1,interval=300ms,multiplier=3` (see
//! `SessionOpts`'s textual form). Commands on standard input:
//!
//! ```text
//! add <spec>              update <spec>          remove <peer>
//! down <peer>             up <peer>              status
//! ```

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;
use std::io::BufRead;
use std::net::IpAddr;
use tabby_bfd::{BfdHandle, InstanceConfig, SessionOpts};

#[derive(Parser, Debug)]
#[command(version, about = "Run BFD sessions (RFC 5880/5881/5883)")]
struct Args {
    /// A session: `PEER[,local=ADDR][,interval=300ms,multiplier=3,...]`.
    #[arg(long = "session")]
    sessions: Vec<String>,
    /// Also listen for multihop sessions on UDP 4784.
    #[arg(long)]
    multihop: bool,
    /// IPv4 only.
    #[arg(long)]
    no_ipv6: bool,
    /// Print each state change as a JSON line on standard output.
    #[arg(long)]
    events: bool,
}

/// Splits a spec into peer, local address and options.
fn parse_spec(spec: &str) -> Result<(IpAddr, Option<IpAddr>, SessionOpts)> {
    let mut items = spec.split(',').map(str::trim);
    let peer: IpAddr = items
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{spec:?}: the first item must be the peer address"))?;
    let mut local = None;
    let mut rest = Vec::new();
    for i in items {
        match i.strip_prefix("local=") {
            Some(l) => local = Some(l.parse().with_context(|| format!("local address {l:?}"))?),
            None => rest.push(i),
        }
    }
    let opts: SessionOpts = rest.join(",").parse()?;
    Ok((peer, local, opts))
}

fn print(v: serde_json::Value) {
    println!("{v}");
}

async fn command(h: &BfdHandle, line: &str) -> Result<()> {
    let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let peer = || -> Result<IpAddr> {
        arg.trim()
            .parse()
            .with_context(|| format!("{arg:?} is not a peer address"))
    };
    match cmd {
        "" => {}
        "add" => {
            let (p, l, o) = parse_spec(arg)?;
            h.add_session(p, l, o).await?;
        }
        "update" => {
            let (p, _, o) = parse_spec(arg)?;
            h.update_session(p, o).await?;
        }
        "remove" => h.remove_session(peer()?).await?,
        "down" => h.set_admin_down(peer()?, true).await?,
        "up" => h.set_admin_down(peer()?, false).await?,
        "status" => print(json!({"event": "status", "sessions": h.sessions().await?})),
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One thread: the whole instance is a single event loop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let cfg = InstanceConfig {
        single_hop: true,
        multihop: args.multihop,
        ipv6: !args.no_ipv6,
    };
    let h = tabby_bfd::start(cfg).await?;
    let mut changes = h.subscribe();
    for s in &args.sessions {
        let (p, l, o) = parse_spec(s)?;
        h.add_session(p, l, o).await?;
    }
    print(json!({"event": "ready", "pid": std::process::id()}));
    // Standard input is read on its own thread: commands are rare and a
    // blocking read keeps the runtime free of it.
    let (line_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line_tx.blocking_send(l).is_err() {
                return;
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Ok(c) if args.events => print(json!({"event": "state", "change": c})),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "state changes dropped");
                }
                Err(_) => return Ok(()),
            },
            l = lines.recv(), if stdin_open => match l {
                Some(l) => {
                    if let Err(e) = command(&h, &l).await {
                        print(json!({"event": "error", "command": l, "message": format!("{e:#}")}));
                    } else if !l.trim().is_empty() {
                        print(json!({"event": "ok", "command": l}));
                    }
                }
                // Without standard input the sessions from the flags run on.
                None => stdin_open = false,
            },
            _ = tokio::signal::ctrl_c() => {
                h.shutdown().await?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let (p, l, o) = parse_spec("198.18.0.2,local=198.18.0.1,interval=200ms").unwrap();
        assert_eq!(p.to_string(), "198.18.0.2");
        assert_eq!(l.unwrap().to_string(), "198.18.0.1");
        assert_eq!(o.desired_min_tx.as_millis(), 200);
        let (p, l, _) = parse_spec("2001:db8::2").unwrap();
        assert!(p.is_ipv6() && l.is_none());
        assert!(parse_spec("nonsense,interval=1s").is_err());
        assert!(parse_spec("198.18.0.2,local=x").is_err());
    }
}
