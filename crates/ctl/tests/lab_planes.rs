//! `tabbyctl lab` end to end for L2 planes with partial membership (needs root): hosts
//! in only some of the planes (`--planes-per-host`, in rotation), each plane's reflector
//! checked against its own plane's hosts, every pod pair pinged, then a plane cut
//! while every pair still shares another plane; and the combinations the lab refuses
//! with L2 planes or the ToR designs. Each test uses its own lab name (with the pid)
//! and state root, and removes its lab on drop, also when it fails. The helpers are
//! those of `tests/lab.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CTL: &str = env!("CARGO_BIN_EXE_tabbyctl");

/// tabby-node, tabby and tabby-ipam live next to tabbyctl when the whole workspace is
/// built; build them when this package's tests run alone.
fn ensure_binaries() {
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

struct Lab {
    name: String,
    root: tempfile::TempDir,
}

impl Lab {
    fn new(label: &str) -> Lab {
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

    fn dir(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    fn command(&self, args: &[&str]) -> Command {
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

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `lab up ARGS`, which must succeed.
    fn up(&self, args: &[&str]) -> String {
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

    fn logs(&self) -> String {
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

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir().join("lab.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn pids(&self) -> Vec<u32> {
        self.state()["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    fn pod_ip(&self, pod: &str) -> String {
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
    fn down_and_check_gone(&self, pids: &[u32]) {
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

    fn assert_gone(&self, pids: &[u32]) {
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

fn tabby_testnet_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Alive and not a zombie (an exited child of an init that does not reap is dead).
fn running(pid: u32) -> bool {
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
    fn ok(&self, args: &[&str]) -> String {
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
    fn refused(&self, args: &[&str], says: &str) {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    /// A ping every 50 ms from pod `from` to pod `to`, output in the test's root dir.
    fn start_ping(&self, from: &str, to: &str) -> (std::process::Child, PathBuf) {
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
}

/// Stops a `ping` with SIGINT (so that it prints its summary): (sent, received).
fn stop_ping(mut child: std::process::Child, log: &Path) -> (u64, u64) {
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

#[test]
fn l2_planes_partial_membership_cut_a_plane() {
    let lab = Lab::new("qp");
    // Four planes, each host in three (n1 1-2-3, n2 2-3-4, n3 3-4-1, n4 4-1-2): a
    // plane holds three hosts and every pair shares two planes.
    let out = lab.up(&[
        "--topology",
        "l2-planes",
        "--planes",
        "4",
        "--planes-per-host",
        "3",
        "--nodes",
        "4",
        "--pods-per-node",
        "1",
    ]);
    assert!(out.contains("12 pairs: 12 ✓"), "{out}");
    assert!(out.contains("--planes 4 --planes-per-host 3`"), "{out}");
    // Each reflector its plane's 3 hosts; each host a session per plane it is in and
    // every block once in its FIB.
    for rr in ["rr1", "rr2", "rr3", "rr4"] {
        let row = format!("{rr}    RR     3/3        3/3");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    for n in ["n1", "n2", "n3", "n4"] {
        let row = format!("{n}     node   3/3        4/4");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    lab.refused(&["fail", "plane:5"], "has planes 1..=4");
    // n1 and n2 share planes 2 and 3: n2's block has a next hop on each, none on 1.
    let routes = lab.run(&["exec", "n1", "--", "ip", "route", "show", "proto", "80"]);
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(
        routes.contains("nexthop via 198.18.2.2 dev p2")
            && routes.contains("nexthop via 198.18.3.2 dev p3")
            && !routes.contains("198.18.1.2")
            && !routes.contains("dev p4"),
        "{routes}"
    );

    // n1 and n3 share planes 1 and 3: cut plane 1 under a ping between them.
    let (ping, log) = lab.start_ping("n1-1", "n3-1");
    std::thread::sleep(Duration::from_millis(500));
    let out = lab.ok(&["fail", "plane:1"]);
    // rr1 and the legs of n1, n3 and n4.
    assert!(
        out.contains("failed plane:1 (plane: the 4 ports of bridge br1 down"),
        "{out}"
    );
    assert!(out.contains("BGP converged"), "{out}");
    assert!(
        out.contains("every remaining pod pair reachable: 12 of 12"),
        "{out}"
    );
    for n in ["n1", "n3", "n4"] {
        let row = format!("{n}     node   live             2/3           rr1 ");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    assert!(out.contains("n2     node   live             3/3"), "{out}");
    assert!(out.contains("rr3    RR     live             3/3"), "{out}");
    let (sent, received) = stop_ping(ping, &log);
    assert!(sent > 20, "the ping ran only {sent} times");
    assert!(
        sent - received <= 5,
        "{} of {sent} pings lost while plane 1 was cut",
        sent - received
    );

    let out = lab.ok(&["heal"]);
    assert!(
        out.contains("plane:1: the 4 ports of bridge br1 up"),
        "{out}"
    );
    assert!(out.contains("every pod pair reachable: 12 of 12"), "{out}");
    assert!(out.contains("planner check: ok"), "{out}");

    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn l2_planes_etcd() {
    let lab = Lab::new("qe");
    // etcd has a leg on every plane; each host's agent and CNI plugin name etcd's
    // addresses on its own planes. Five hosts in 3 of 4 planes: plane 4 holds three
    // (n2, n3, n4), the others four.
    let out = lab.up(&[
        "--topology",
        "l2-planes",
        "--planes-per-host",
        "3",
        "--nodes",
        "5",
        "--pods-per-node",
        "1",
        "--store",
        "etcd",
    ]);
    assert!(out.contains("20 pairs: 20 ✓"), "{out}");
    for (rr, figures) in [("rr1", "4/4        4/4"), ("rr4", "3/3        3/3")] {
        let row = format!("{rr}    RR     {figures}");
        assert!(out.contains(&row), "{row:?} missing:\n{out}");
    }
    let args = lab.state()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"] == "agent n3")
        .unwrap()
        .to_string();
    // n3 is in planes 3, 4 and 1.
    assert!(
        args.contains("etcd://198.18.1.251:2379,198.18.3.251:2379,198.18.4.251:2379\""),
        "{args}"
    );
    // Cutting plane 4 cuts n2, n3 and n4 off etcd's address there, not off etcd.
    let out = lab.ok(&["fail", "plane:4"]);
    assert!(
        out.contains("the 4 ports of bridge br4 down (rr4, n2p4, n3p4, n4p4)"),
        "{out}"
    );
    assert!(
        out.contains("every remaining pod pair reachable: 20 of 20"),
        "{out}"
    );
    let out = lab.ok(&["heal"]);
    assert!(out.contains("every pod pair reachable: 20 of 20"), "{out}");
    assert!(out.contains("planner check: ok"), "{out}");
    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn tor_etcd() {
    let lab = Lab::new("qt");
    // etcd has a leg on every rack's bridge; each node names its rack's.
    let out = lab.up(&[
        "--topology",
        "as-per-rack-l2-spine",
        "--nodes",
        "2",
        "--racks",
        "2",
        "--pods-per-node",
        "1",
        "--store",
        "etcd",
    ]);
    assert!(out.contains("2 pairs: 2 ✓"), "{out}");
    let args = lab.state()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["what"] == "agent n2")
        .unwrap()
        .to_string();
    assert!(args.contains("etcd://198.18.2.251:2379\""), "{args}");
    let pids = lab.pids();
    lab.down_and_check_gone(&pids);
}

#[test]
fn l2_planes_and_fabric_refusals() {
    let lab = Lab::new("qb");
    for (args, says) in [
        (
            vec![
                "up",
                "--topology",
                "l2-planes",
                "--planes",
                "4",
                "--planes-per-host",
                "2",
                "--nodes",
                "3",
            ],
            "hosts n1 (plane 1, plane 2) and n3 (plane 3, plane 4) share no plane",
        ),
        (
            vec!["up", "--topology", "l2-planes", "--planes-per-host", "5"],
            "outside 1..=4",
        ),
        (
            vec!["up", "--planes-per-host", "2"],
            "planes are of --topology l2-planes",
        ),
        (
            vec!["up", "--topology", "l2-planes", "--encap", "vxlan"],
            "--encap",
        ),
        (
            vec![
                "up",
                "--topology",
                "as-per-server",
                "--nodes",
                "2",
                "--encap",
                "vxlan",
            ],
            "the fabric routes the pools natively",
        ),
    ] {
        let out = lab.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!lab.dir().exists());
}
