//! Shared by the root tests: `Tabby` runs `tabby-bfdd` in a namespace,
//! writes commands to its standard input and reads its JSON lines; `cut`
//! and `repair` drop BFD traffic into a namespace with nftables.
#![allow(dead_code)]

use serde_json::Value;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tabby_testnet::Netns;

pub const BIN: &str = env!("CARGO_BIN_EXE_tabby-bfdd");
/// Generous: the machine running these is shared and often loaded.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub struct Tabby {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Every state change received so far.
    pub changes: RefCell<Vec<Value>>,
    dir: tempfile::TempDir,
}

impl Drop for Tabby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tabby {
    /// Starts `tabby-bfdd --events` in `ns` with `args` (e.g. `--session ...`).
    pub fn start(ns: &Netns, args: &[&str]) -> Tabby {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("bfdd.log")).unwrap();
        let mut child = ns
            .command(BIN)
            .arg("--events")
            .args(args)
            .env("RUST_LOG", "tabby_bfd=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tabby-bfdd in the namespace");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let t = Tabby {
            child,
            stdin,
            lines: rx,
            changes: RefCell::new(Vec::new()),
            dir,
        };
        t.next_event("ready", Duration::from_secs(20));
        t
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bfdd.log")).unwrap_or_default()
    }

    /// The next line of kind `event`, keeping state changes seen meanwhile.
    fn next_event(&self, event: &str, timeout: Duration) -> Value {
        self.next_event_where(event, timeout, |_| true)
    }

    /// The next line of kind `event` that satisfies `f`.
    fn next_event_where(
        &self,
        event: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no {event:?} from tabby-bfdd\n{}", self.log()));
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {event:?} from tabby-bfdd: {e}\n{}", self.log()));
            if v["event"] == "state" {
                self.changes.borrow_mut().push(v["change"].clone());
            }
            if v["event"] == event && f(&v) {
                return v;
            }
            assert_ne!(v["event"], "error", "tabby-bfdd: {v}");
        }
    }

    /// Sends a command and waits for its acknowledgement.
    pub fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.next_event_where("ok", WAIT, |v| v["command"] == cmd);
    }

    /// Status of the session with `peer`.
    pub fn status(&mut self, peer: &str) -> Value {
        writeln!(self.stdin, "status").unwrap();
        self.stdin.flush().unwrap();
        let v = self.next_event("status", WAIT);
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["peer"] == peer)
            .cloned()
            .unwrap_or_else(|| panic!("no session with {peer}: {v}"))
    }

    /// Waits for the state change of `peer` to `state` that happened at or
    /// after `after_ms`, and returns it.
    pub fn wait_change(&self, peer: &str, state: &str, after_ms: u64, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.changes.borrow().iter().find(|c| {
                c["peer"] == peer && c["new"] == state && c["atMs"].as_u64().unwrap() >= after_ms
            }) {
                return c.clone();
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                panic!(
                    "tabby-bfdd: session with {peer} did not become {state}; changes: {:?}\n{}",
                    self.changes.borrow(),
                    self.log()
                );
            };
            if let Ok(v) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
                && v["event"] == "state"
            {
                self.changes.borrow_mut().push(v["change"].clone());
            }
        }
    }

    /// Every state change at or after `after_ms`, waiting up to `wait` for
    /// more to arrive.
    pub fn all_changes_since(&self, after_ms: u64, wait: Duration) -> Vec<Value> {
        if let Ok(v) = self.lines.recv_timeout(wait)
            && v["event"] == "state"
        {
            self.changes.borrow_mut().push(v["change"].clone());
        }
        self.changes_since_where(after_ms, |_| true)
    }

    fn changes_since_where(&self, after_ms: u64, f: impl Fn(&Value) -> bool) -> Vec<Value> {
        while let Ok(v) = self.lines.try_recv() {
            if v["event"] == "state" {
                self.changes.borrow_mut().push(v["change"].clone());
            }
        }
        self.changes
            .borrow()
            .iter()
            .filter(|c| f(c) && c["atMs"].as_u64().unwrap() >= after_ms)
            .cloned()
            .collect()
    }

    /// The process id (`ip netns exec` execs the daemon in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// State changes of `peer` at or after `after_ms`.
    pub fn changes_since(&self, peer: &str, after_ms: u64) -> Vec<Value> {
        self.changes_since_where(after_ms, |c| c["peer"] == peer)
    }
}

/// Drops every BFD packet arriving in `ns` (a silent link failure, as far
/// as this end can tell). Returns the Unix time (ms) just before the drop
/// rule went in and just after.
pub fn cut(ns: &Netns) -> (u64, u64) {
    ns.exec(&["nft", "add", "table", "inet", "bfdcut"]).unwrap();
    ns.exec(&[
        "nft",
        "add chain inet bfdcut in { type filter hook input priority -10 ; }",
    ])
    .unwrap();
    let before = unix_ms();
    ns.exec(&[
        "nft",
        "add rule inet bfdcut in udp dport { 3784, 4784 } drop",
    ])
    .unwrap();
    (before, unix_ms())
}

/// Undoes [`cut`].
pub fn repair(ns: &Netns) {
    ns.exec(&["nft", "delete", "table", "inet", "bfdcut"])
        .unwrap();
}

/// Asserts a detection happened within the detection time plus `margin`
/// of the cut, and no sooner than the detection time minus one transmit
/// interval (the last packet before the cut came at most that early).
pub fn assert_detected(
    what: &str,
    change: &Value,
    cut: (u64, u64),
    detect_ms: u64,
    interval_ms: u64,
    margin_ms: u64,
) -> u64 {
    let at = change["atMs"].as_u64().unwrap();
    let latest = at - cut.0;
    let earliest = at.saturating_sub(cut.1);
    assert!(
        latest <= detect_ms + margin_ms,
        "{what}: detected {latest} ms after the cut, detection time is {detect_ms} ms"
    );
    assert!(
        earliest + interval_ms + margin_ms >= detect_ms,
        "{what}: detected only {earliest} ms after the cut: not by the detection timer"
    );
    assert_eq!(
        change["diag"], "ControlDetectionTimeExpired",
        "{what}: {change}"
    );
    latest
}
