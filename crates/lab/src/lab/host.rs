//! The lab's edge to the system: `ip` for namespaces, links and routes, processes
//! spawned into namespaces (outliving `tabbyctl`), `/proc` for whether they still run,
//! ping, the CNI plugin, and the datastore reached from inside a namespace.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::layout::{Leg, Pod};
use super::{LabError, netns_prefix};

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c`; its stdout, or an error with its stderr.
pub(crate) fn run(c: &mut Command) -> Result<String, LabError> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::io(format!("running `{}`", describe(c)), e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.is_empty() {
        msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(LabError::Command {
        cmd: describe(c),
        status: out.status.to_string(),
        stderr: msg,
    })
}

/// `ip <args>`.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

/// `ip -n <ns> <args>`.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(["-n", ns]).args(args))
}

/// `ip netns exec <ns> <argv>`, as a command to run.
pub(crate) fn in_netns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Makes namespace `name` with `lo` up.
pub(crate) fn add_netns(name: &str) -> Result<(), LabError> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "dev", "lo", "up"]).map(drop)
}

/// Sets a sysctl inside `ns`.
pub(crate) fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    run(in_netns(ns, "sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(drop)
}

/// A bridge in the fabric namespace, up, with an optional address.
pub(crate) fn add_bridge(
    fabric: &str,
    name: &str,
    address: Option<&ipnet::Ipv4Net>,
) -> Result<(), LabError> {
    ip_in(fabric, &["link", "add", "name", name, "type", "bridge"])?;
    if let Some(a) = address {
        ip_in(fabric, &["addr", "add", &a.to_string(), "dev", name])?;
    }
    ip_in(fabric, &["link", "set", "dev", name, "up"]).map(drop)
}

/// A veth from `ns` into a bridge port of the fabric namespace, addressed and up.
pub(crate) fn add_leg(ns: &str, leg: &Leg, fabric: &str) -> Result<(), LabError> {
    ip(&[
        "link",
        "add",
        "name",
        &leg.ifname,
        "netns",
        ns,
        "type",
        "veth",
        "peer",
        "name",
        &leg.port,
        "netns",
        fabric,
    ])?;
    ip_in(
        fabric,
        &["link", "set", "dev", &leg.port, "master", &leg.bridge, "up"],
    )?;
    ip_in(
        ns,
        &["addr", "add", &leg.address.to_string(), "dev", &leg.ifname],
    )?;
    ip_in(ns, &["link", "set", "dev", &leg.ifname, "up"]).map(drop)
}

/// A point-to-point veth between a ToR and a spine router, addressed and up.
pub(crate) fn add_p2p(p: &super::fabric::P2pLink) -> Result<(), LabError> {
    ip(&[
        "link",
        "add",
        "name",
        &p.tor_if,
        "netns",
        &p.tor_ns,
        "type",
        "veth",
        "peer",
        "name",
        &p.spine_if,
        "netns",
        &p.spine_ns,
    ])?;
    for (ns, dev, addr) in [
        (&p.tor_ns, &p.tor_if, p.tor_addr),
        (&p.spine_ns, &p.spine_if, p.spine_addr),
    ] {
        ip_in(ns, &["addr", "add", &addr.to_string(), "dev", dev])?;
        ip_in(ns, &["link", "set", "dev", dev, "up"])?;
    }
    Ok(())
}

/// Sets link `dev` in `ns` up or down.
pub(crate) fn set_link(ns: &str, dev: &str, up: bool) -> Result<(), LabError> {
    let state = if up { "up" } else { "down" };
    ip_in(ns, &["link", "set", "dev", dev, state]).map(drop)
}

/// Starts `ping -i <interval>` from `ns` to `to` with its output in `log` (a file, not
/// a pipe: a pipe nobody reads would fill and stop it); SIGINT ends it with its
/// summary.
pub(crate) fn spawn_ping(
    ns: &str,
    to: &str,
    interval_ms: u64,
    log: &Path,
) -> Result<Child, LabError> {
    let file = std::fs::File::create(log)
        .map_err(|e| LabError::io(format!("creating {}", log.display()), e))?;
    let mut c = in_netns(ns, "ping");
    c.args([
        "-n",
        "-W",
        "1",
        "-i",
        &format!("{:.3}", interval_ms as f64 / 1000.0),
        to,
    ])
    .stdin(Stdio::null())
    .stdout(file)
    .stderr(Stdio::null());
    c.spawn()
        .map_err(|e| LabError::io(format!("starting `{}`", describe(&c)), e))
}

/// Starts `program args` in `ns`, output appended to `log`. The process gets its own
/// process group so that it outlives `tabbyctl` and a Ctrl-C of `lab up`.
pub(crate) fn spawn(
    ns: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Child, LabError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let err = file
        .try_clone()
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let mut c = in_netns(ns, program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0);
    // etcd reads ETCD_* variables as flags and refuses to start when one conflicts.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD") {
            c.env_remove(&name);
        }
    }
    c.spawn()
        .map_err(|e| LabError::io(format!("starting `{}`", describe(&c)), e))
}

/// Whether `pid` is a live (not zombie) process running `program`.
pub(crate) fn alive(pid: u32, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ..."; comm may hold spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(&*String::from_utf8_lossy(argv0))
        .file_name()
        .is_some_and(|f| f == program)
}

/// Sends `sig` to `pid`; a process already gone is fine.
pub(crate) fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// The last `n` lines of a log file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether one ping from `ns` to `to` is answered (within 1 s). Through `nsenter`
/// where there is one: `ip netns exec` remounts `/sys` for every ping, which makes
/// an N² matrix of a large lab several times slower.
pub(crate) fn ping(ns: &str, to: &str) -> bool {
    static NSENTER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let nsenter = *NSENTER.get_or_init(|| {
        Command::new("nsenter")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let mut c = if nsenter {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg("ping");
        c
    } else {
        in_netns(ns, "ping")
    };
    c.args(["-n", "-q", "-c", "1", "-W", "1", to])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `f` over `items` on `workers` threads (bounded, so a 100-node lab does not
/// fork hundreds of processes at once on a small machine); the results in the
/// items' order. `tick` hears how many are done each time one finishes, on the
/// calling thread.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
    mut tick: impl FnMut(usize),
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, R)>();
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            let tx = tx.clone();
            let (next, f) = (&next, &f);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if tx.send((i, f(item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, r) in rx {
            out[i] = Some(r);
            done += 1;
            tick(done);
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item ran (a worker panic would have propagated)"))
        .collect()
}

/// Threads for the lab's parallel `ip` and CNI work: enough to hide process start
/// latency, few enough for a 2-core machine.
pub(crate) const WORKERS: usize = 8;

/// [`proto80_routes`] of many namespaces, in parallel, in their order.
pub(crate) fn proto80_routes_all(ns: &[String]) -> Vec<Result<Value, LabError>> {
    parallel(ns, WORKERS, |n| proto80_routes(n), |_| {})
}

/// Raises the kernel's neighbour-table limits (`net.ipv4.neigh.default.gc_thresh1..3`)
/// to at least `entries` in the host's namespace, where they are set for the whole
/// machine: the ARP table is one table shared by every namespace, so a 100-node lab
/// (every node resolving its peers, pods their node) overflows the default 1024
/// ("neighbour table overflow") and pings fail. Never lowers a limit; returns the
/// limits changed, as `key old -> new`.
pub(crate) fn raise_neighbour_limits(entries: u64) -> Result<Vec<String>, LabError> {
    let want = [
        ("gc_thresh1", entries / 4),
        ("gc_thresh2", entries / 2),
        ("gc_thresh3", entries),
    ];
    let mut changed = Vec::new();
    for (key, value) in want {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{key}");
        let now: u64 = std::fs::read_to_string(&path)
            .map_err(|e| LabError::io(format!("reading {path}"), e))?
            .trim()
            .parse()
            .unwrap_or(0);
        if now < value {
            std::fs::write(&path, value.to_string())
                .map_err(|e| LabError::io(format!("writing {path}"), e))?;
            changed.push(format!("net.ipv4.neigh.default.{key} {now} -> {value}"));
        }
    }
    Ok(changed)
}

/// Raises `fs.inotify.max_user_instances` to at least `instances`: every agent's
/// SQLite store watches the database file through one inotify instance, and the
/// default (128) would push the agents of a large lab onto the 25 ms fallback poll.
/// Never lowers it; returns the change made, as `key old -> new`.
pub(crate) fn raise_inotify_instances(instances: u64) -> Result<Option<String>, LabError> {
    let path = "/proc/sys/fs/inotify/max_user_instances";
    let now: u64 = std::fs::read_to_string(path)
        .map_err(|e| LabError::io(format!("reading {path}"), e))?
        .trim()
        .parse()
        .unwrap_or(0);
    if now >= instances {
        return Ok(None);
    }
    std::fs::write(path, instances.to_string())
        .map_err(|e| LabError::io(format!("writing {path}"), e))?;
    Ok(Some(format!(
        "fs.inotify.max_user_instances {now} -> {instances}"
    )))
}

/// `ip -j route show proto 80` in `ns`, parsed.
pub(crate) fn proto80_routes(ns: &str) -> Result<Value, LabError> {
    let out = ip_in(ns, &["-j", "route", "show", "proto", "80"])?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).map_err(|e| LabError::Command {
        cmd: format!("ip -n {ns} -j route show proto 80"),
        status: "unparsable output".into(),
        stderr: e.to_string(),
    })
}

/// Runs the CNI plugin's ADD for `pod` in its node's namespace, as a container runtime
/// would; returns the pod's address.
pub(crate) fn cni_add(
    node_ns: &str,
    plugin: &Path,
    env: &[(String, String)],
    conf: &Value,
    pod: &Pod,
) -> Result<String, LabError> {
    let failed = |output: String| LabError::Cni {
        pod: pod.name.clone(),
        node: pod.node.clone(),
        output,
    };
    let mut c = in_netns(node_ns, plugin);
    c.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| LabError::io(format!("starting {}", plugin.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| LabError::io(format!("writing to {}", plugin.display()), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("waiting for {}", plugin.display()), e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(failed(text));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|_| failed(text.clone()))?;
    let addr = v["ips"][0]["address"]
        .as_str()
        .ok_or_else(|| failed(text.clone()))?;
    Ok(addr.split('/').next().unwrap_or(addr).to_string())
}

/// Applies YAML resources to the store at `url`, from inside namespace `ns` when
/// given (etcd listens on the fabric, which the host's namespace does not reach).
/// Runs on a thread of its own with its own runtime, so it may be called from async
/// code.
pub(crate) fn apply_resources(url: &str, ns: Option<&str>, yaml: &str) -> Result<usize, LabError> {
    let store_err = |reason: String| LabError::Store {
        url: url.to_string(),
        reason,
    };
    let job = {
        let (url, yaml) = (url.to_string(), yaml.to_string());
        move || -> Result<usize, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let parsed = tabby_store::StoreUrl::parse(&url).map_err(|e| e.to_string())?;
                let store = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    tabby_store::open(&parsed),
                )
                .await
                .map_err(|_| "no answer within 5 s".to_string())?
                .map_err(|e| e.to_string())?;
                let client = tabby_client::Client::new(store);
                let docs = tabby_api::load::parse_documents(&yaml, "lab resources")
                    .map_err(|e| e.to_string())?;
                let n = docs.len();
                for r in docs {
                    client.apply(r).await.map_err(|e| e.to_string())?;
                }
                Ok(n)
            })
        }
    };
    let result = match ns {
        Some(ns) => {
            let file = tabby_dataplane::NetnsFile::open(format!("/run/netns/{ns}"))
                .map_err(|e| store_err(e.to_string()))?;
            file.run(move || Ok(job()))
                .map_err(|e| store_err(e.to_string()))?
        }
        None => std::thread::spawn(job)
            .join()
            .unwrap_or_else(|_| Err("the store thread panicked".into())),
    };
    result.map_err(store_err)
}

/// Finds `names` next to the running executable, else in PATH.
pub(crate) fn find_binaries(names: &[&str], hint: &str) -> Result<Vec<PathBuf>, LabError> {
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let hit = here
            .iter()
            .chain(&path_dirs)
            .map(|d| d.join(name))
            .find(|p| p.is_file());
        match hit {
            Some(p) => found.push(p),
            None => missing.push(*name),
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    Err(LabError::MissingBinary {
        missing: missing.join(", "),
        looked: here.map_or_else(|| "(no executable dir)".into(), |d| d.display().to_string()),
        hint: hint.to_string(),
    })
}

/// The lab's namespaces that exist now.
pub(crate) fn lab_namespaces(lab: &str) -> Result<Vec<String>, LabError> {
    let prefix = netns_prefix(lab);
    let all = tabby_testnet::list_netns()
        .map_err(|e| LabError::invalid("ip netns list", e.to_string()))?;
    Ok(all.into_iter().filter(|n| n.starts_with(&prefix)).collect())
}

/// `lab exec`: runs `argv` in the namespace of `target` (a node `n1`, a pod `n1-1`,
/// or `fab`, `rtr`, `etcd`) of lab `lab` with the terminal's stdio, and returns its
/// exit code (128 + signal when killed).
pub fn exec(lab: &str, target: &str, argv: &[String]) -> Result<i32, LabError> {
    super::spec::check_name(lab)?;
    let Some((program, args)) = argv.split_first() else {
        return Err(LabError::invalid(
            "lab exec",
            "give a command after `--`, e.g. `tabbyctl lab exec n1 -- ip route`",
        ));
    };
    let prefix = netns_prefix(lab);
    let existing = lab_namespaces(lab)?;
    let candidates = [format!("{prefix}{target}"), format!("{prefix}p{target}")];
    let Some(ns) = candidates.iter().find(|c| existing.contains(c)) else {
        let mut known: Vec<String> = existing
            .iter()
            .map(|n| {
                let short = &n[prefix.len()..];
                // Pod namespaces are p<pod>; nodes never start with 'p'.
                short.strip_prefix('p').unwrap_or(short).to_string()
            })
            .collect();
        known.sort();
        return Err(LabError::NoTarget {
            lab: lab.to_string(),
            target: target.to_string(),
            known: if known.is_empty() {
                "no namespaces (is it up?)".into()
            } else {
                known.join(", ")
            },
        });
    };
    let status = in_netns(ns, program)
        .args(args)
        .status()
        .map_err(|e| LabError::io(format!("running {program} in {ns}"), e))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
