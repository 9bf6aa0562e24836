//! Two `tabby-bgpd` processes peering over loopback (127.0.0.x, high
//! ports), read through their `--events` JSON lines; plus `--check`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tabby-bgpd");

/// A daemon that is killed when the test ends, also on panic.
struct Daemon {
    child: Child,
    events: mpsc::Receiver<Value>,
    /// Every event received so far: waits look here first, so they do not
    /// depend on the order events were printed in.
    seen: std::cell::RefCell<Vec<Value>>,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgpd.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tabby-bgpd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad event line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            events: rx,
            seen: Default::default(),
            _dir: dir,
        }
    }

    fn wait(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(v) = self.seen.borrow().iter().find(|v| f(v)) {
            return v.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.borrow_mut().push(v.clone());
                    if f(&v) {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("timed out waiting for {what}");
    }
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Daemon configuration with one peer and one originated prefix.
struct Conf<'a> {
    me: &'a str,
    asn: u32,
    port: u16,
    peer: &'a str,
    peer_as: u32,
    peer_port: u16,
    prefix: &'a str,
    gr: u16,
}

impl Conf<'_> {
    fn yaml(&self) -> String {
        let Conf {
            me,
            asn,
            port,
            peer,
            peer_as,
            peer_port,
            prefix,
            gr,
        } = self;
        format!(
            "routerId: {me}\nasn: {asn}\nlisten: {me}:{port}\nholdTime: 9\nconnectRetrySecs: 1\nidleHoldSecs: 1\n\
             gracefulRestartTime: {gr}\n\
             peers:\n  - address: {peer}\n    port: {peer_port}\n    remoteAs: {peer_as}\n    sourceAddress: {me}\n    typeLabel: global\n\
             originate:\n  - prefix: {prefix}\n    communities: [\"64512:100\"]\n"
        )
    }
}

fn config(
    me: &str,
    asn: u32,
    port: u16,
    peer: &str,
    peer_as: u32,
    peer_port: u16,
    prefix: &str,
) -> String {
    Conf {
        me,
        asn,
        port,
        peer,
        peer_as,
        peer_port,
        prefix,
        gr: 120,
    }
    .yaml()
}

#[test]
fn two_daemons_exchange_routes_over_loopback() {
    let (a_ip, b_ip) = ("127.0.4.1", "127.0.4.2");
    let (pa, pb) = (free_port(a_ip), free_port(b_ip));
    let a = Daemon::start(&config(a_ip, 64512, pa, b_ip, 65001, pb, "100.64.1.0/26"));
    // B does not offer graceful restart, so losing it withdraws its routes.
    let b = Daemon::start(
        &Conf {
            me: b_ip,
            asn: 65001,
            port: pb,
            peer: a_ip,
            peer_as: 64512,
            peer_port: pa,
            prefix: "100.64.2.0/26",
            gr: 0,
        }
        .yaml(),
    );
    let established = |v: &Value| v["event"] == "peer" && v["state"] == "Established";
    let peer_up = a.wait("A established", established);
    assert_eq!(peer_up["address"], b_ip);
    assert_eq!(peer_up["type"], "global");
    b.wait("B established", established);
    a.wait("A learns B's prefix", |v| {
        v["event"] == "route"
            && v["prefix"] == "100.64.2.0/26"
            && v["nextHops"] == serde_json::json!([b_ip])
    });
    b.wait("B learns A's prefix", |v| {
        v["event"] == "route"
            && v["prefix"] == "100.64.1.0/26"
            && v["nextHops"] == serde_json::json!([a_ip])
    });
    // B stops: A's session goes down and the route disappears.
    drop(b);
    a.wait("A withdraws B's prefix", |v| {
        v["event"] == "route"
            && v["prefix"] == "100.64.2.0/26"
            && v["nextHops"] == serde_json::json!([])
    });
}

#[test]
fn check_validates_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        config(
            "127.0.4.3",
            64512,
            1790,
            "127.0.4.4",
            64512,
            1790,
            "100.64.0.0/26",
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "routerId: 127.0.4.3\nasn: 64512\nholdTime: 2\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holdTime"), "{err}");
    let bad = dir.path().join("bad2.yaml");
    std::fs::write(
        &bad,
        "routerId: 127.0.4.3\nasn: 64512\noriginate:\n  - prefix: 100.64.0.0/26\n    communities: [\"x:1\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("originate[0].communities"), "{err}");
    // Fails closed: an unreadable MD5 password file, or a filter rule that
    // cannot be applied, fails the check; a readable one passes.
    let check = |yaml: &str| {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&f)
            .arg("--check")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let peer = |extra: &str| {
        format!(
            "routerId: 127.0.4.3\nasn: 64512\npeers:\n  - address: 127.0.4.4\n    remoteAs: 64512\n{extra}"
        )
    };
    let missing = dir.path().join("missing-md5");
    let (ok, err) = check(&peer(&format!("    passwordFile: {}\n", missing.display())));
    assert!(!ok, "unreadable password file accepted");
    assert!(
        err.contains("peers[0].passwordFile") && err.contains("missing-md5"),
        "{err}"
    );
    let empty = dir.path().join("empty-md5");
    std::fs::write(&empty, "\n").unwrap();
    let (ok, err) = check(&peer(&format!("    passwordFile: {}\n", empty.display())));
    assert!(!ok && err.contains("empty"), "{err}");
    let key = dir.path().join("md5");
    std::fs::write(&key, "s3cret\n").unwrap();
    let (ok, err) = check(&peer(&format!("    passwordFile: {}\n", key.display())));
    assert!(ok, "{err}");
    let (ok, err) = check(&peer(
        "    filters:\n      - name: f\n        importV4:\n          - {action: Reject, interface: eth0}\n",
    ));
    assert!(!ok && err.contains("interface"), "{err}");
    let (ok, err) = check(&peer("    maxPrefixesRestartSecs: 0\n"));
    assert!(!ok && err.contains("maxPrefixesRestartSecs"), "{err}");
}

fn route_is(v: &Value, prefix: &str, next_hops: Value) -> bool {
    v["event"] == "route" && v["prefix"] == prefix && v["nextHops"] == next_hops
}

#[test]
fn graceful_restart_helper_keeps_routes_of_a_restarting_peer() {
    let (a_ip, b_ip) = ("127.0.4.5", "127.0.4.6");
    let (pa, pb) = (free_port(a_ip), free_port(b_ip));
    let a = Daemon::start(&config(a_ip, 64512, pa, b_ip, 64512, pb, "100.64.5.0/26"));
    // B asks for its routes to be kept 4 s after it disappears.
    let b_conf = |prefix| {
        Conf {
            me: b_ip,
            asn: 64512,
            port: pb,
            peer: a_ip,
            peer_as: 64512,
            peer_port: pa,
            prefix,
            gr: 4,
        }
        .yaml()
    };
    let b = Daemon::start(&b_conf("100.64.6.0/26"));
    a.wait("A learns B's prefix", |v| {
        route_is(v, "100.64.6.0/26", serde_json::json!([b_ip]))
    });
    // SIGTERM with graceful restart on: B leaves without a NOTIFICATION.
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(b.child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
    let mut b = b;
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "B ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "B exited with {exit}");
    drop(b);
    a.wait("A sees the session go down", |v| {
        v["event"] == "peer" && v["state"] != "Established"
    });
    // The route stays while B restarts...
    std::thread::sleep(Duration::from_millis(1500));
    let withdrawn = |v: &Value| route_is(v, "100.64.6.0/26", serde_json::json!([]));
    assert!(
        !a.seen.borrow().iter().any(withdrawn) && a.events.try_iter().all(|v| !withdrawn(&v)),
        "route withdrawn during the restart window"
    );
    // ...and B comes back with a different prefix: the old one is flushed
    // once the new session is up (B does not claim preserved forwarding).
    let b = Daemon::start(&b_conf("100.64.7.0/26"));
    a.wait("A learns B's new prefix", |v| {
        route_is(v, "100.64.7.0/26", serde_json::json!([b_ip]))
    });
    a.wait("A flushes B's stale prefix", withdrawn);
    // Killed again and not restarted: stale routes go when the 4 s expire.
    drop(b);
    let down = Instant::now();
    a.wait("A removes B's route after the restart time", |v| {
        route_is(v, "100.64.7.0/26", serde_json::json!([]))
    });
    let waited = down.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "removed after only {waited:?}"
    );
}
