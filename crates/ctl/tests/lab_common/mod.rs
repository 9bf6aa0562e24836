//! The harness of the `tabbyctl lab` tests (`lab.rs`, `lab_fabric.rs`,
//! `lab_planes.rs`): a lab with its own name (with the pid) and state root, run
//! through the real `tabbyctl`, removed on drop also when a test fails; the
//! agent and CNI binaries built when missing; a ping running through a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

pub const CTL: &str = env!("CARGO_BIN_EXE_tabbyctl");

/// tabby-node, tabby and tabby-ipam live next to tabbyctl when the whole workspace is
/// built; build them when this package's tests run alone.
pub fn ensure_binaries() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(CTL).parent().unwrap();
        let names = ["tabby-node", "tabby", "tabby-ipam"];
        if names.iter().all(|n| dir.join(n).exists()) {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["build", "-p", "tabby-node", "-p", "tabby-cni", "--bins"]);
        if dir.file_name().is_some_and(|d| d == "release") {
            c.arg("--release");
        }
        let ok = c.status().unwrap().success();
        assert!(
            ok,
            "cannot build the agent and CNI plugin (cargo build -p tabby-node -p tabby-cni)"
        );
        for n in names {
            assert!(
                dir.join(n).exists(),
                "{n} is not next to {CTL} after building it"
            );
        }
    });
}

pub struct Lab {
    pub name: String,
    pub root: tempfile::TempDir,
}

impl Lab {
    pub fn new(label: &str) -> Lab {
        assert!(
            tabby_testnet_is_root(),
            "this test needs root (network namespaces)"
        );
        ensure_binaries();
        Lab {
            name: format!("{label}{}", std::process::id()),
            root: tempfile::Builder::new()
                .prefix("tabby-lab-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(CTL);
        // The name first: after `exec TARGET --` everything is the command.
        c.args(["lab", "--name", &self.name])
            .args(args)
            .env("TABBY_LAB_DIR", self.root.path())
            .env("TABBY_CONFIG", "/nonexistent/tabbyctl.yaml")
            .env_remove("TABBY_STORE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `lab up ARGS`, which must succeed.
    pub fn up(&self, args: &[&str]) -> String {
        let start = Instant::now();
        let mut full = vec!["up"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "lab up {args:?} failed ({}):\n{stdout}\n{stderr}\n{}",
            out.status,
            self.logs()
        );
        assert!(stderr.contains("[9/9] testing reachability"), "{stderr}");
        assert!(
            stdout.contains("planner check: ok, every device matches the plan"),
            "{stdout}"
        );
        // The only ✗ is the matrix's count of failed pairs: 0.
        assert!(
            stdout.contains(" ✓, 0 ✗):") && stdout.matches('✗').count() == 1,
            "a pod pair or a device failed:\n{stdout}"
        );
        eprintln!("lab up {args:?}: {:.1} s", start.elapsed().as_secs_f64());
        stdout
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                    s.push_str(&format!("--- {} ---\n{tail}\n", p.display()));
                }
            }
        }
        s
    }

    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir().join("lab.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.state()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    pub fn pod_ip(&self, pod: &str) -> String {
        self.state()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))["ip"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `lab down`, twice: the first removes, the second finds nothing; then nothing of
    /// the lab is left.
    pub fn down_and_check_gone(&self, pids: &[u32]) {
        let out = self.run(&["down"]);
        assert!(out.status.success(), "lab down: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("removed"), "{stdout}");
        let again = self.run(&["down"]);
        assert!(again.status.success(), "second lab down: {again:?}");
        assert!(
            String::from_utf8_lossy(&again.stdout).contains("nothing to remove"),
            "{again:?}"
        );
        self.assert_gone(pids);
    }

    pub fn assert_gone(&self, pids: &[u32]) {
        let prefix = format!("tl-{}-", self.name);
        let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect();
        assert!(left.is_empty(), "namespaces left: {left:?}");
        for pid in pids {
            assert!(!running(*pid), "process {pid} of the lab still runs");
        }
        // Also any process naming the lab's dir (agents name their sockets in it).
        let dir = self.dir().display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                !(cmdline.contains(&dir) && running(pid)),
                "process {pid} of the lab still runs: {cmdline}"
            );
        }
        assert!(!self.dir().exists(), "{} is left", self.dir().display());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

pub fn tabby_testnet_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Alive and not a zombie (an exited child of an init that does not reap is dead).
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next().map(String::from));
    !matches!(state.as_deref(), Some("Z") | Some("X") | None)
}

impl Lab {
    /// `lab ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let start = Instant::now();
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "lab {args:?} failed ({}):\n{stdout}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        eprintln!("lab {args:?}: {:.1} s", start.elapsed().as_secs_f64());
        stdout
    }

    /// `lab ARGS`, which must fail with exit code 1 and say `says` on stderr.
    pub fn refused(&self, args: &[&str], says: &str) {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    /// The pid of node `node`'s agent now (`heal` starts a killed one again).
    pub fn agent_pid(&self, node: &str) -> u32 {
        self.state()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["what"] == format!("agent {node}"))
            .unwrap()["pid"]
            .as_u64()
            .unwrap() as u32
    }

    /// A ping every 50 ms from pod `from` to pod `to`, output in the test's root dir.
    pub fn start_ping(&self, from: &str, to: &str) -> (std::process::Child, PathBuf) {
        let log = self.root.path().join(format!("ping-{from}-{to}.txt"));
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("tl-{}-p{from}", self.name)])
            .args(["ping", "-n", "-i", "0.05", "-W", "1", &self.pod_ip(to)])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (child, log)
    }

    /// Whether one ping from pod `from` to pod `to` is answered within 2 s.
    pub fn pings(&self, from: &str, to: &str) -> bool {
        let to = self.pod_ip(to);
        self.run(&["exec", from, "--", "ping", "-c", "1", "-W", "2", &to])
            .status
            .success()
    }
}

/// Stops a `ping` with SIGINT (so that it prints its summary): (sent, received).
pub fn stop_ping(mut child: std::process::Child, log: &Path) -> (u64, u64) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot signal ping");
    child.wait().unwrap();
    let text = std::fs::read_to_string(log).unwrap();
    let summary = text
        .lines()
        .find(|l| l.contains(" packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary:\n{text}"));
    let nums: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[0], nums[1])
}
