//! `lab.json`: what a lab is and what it made so far (namespaces, processes with
//! their pids, pods with their addresses), rewritten after every step so that `down`
//! can undo a build that crashed half-way.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LabError;
use super::spec::{Encap, LabSpec, MatrixMode, RouterKind, StoreKind, Topology};
use crate::plan::Role;

/// The state file's name in the lab's dir.
pub const STATE_FILE: &str = "lab.json";

/// How far `up` got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `up` is running (or crashed).
    Building,
    /// `up` finished and every check passed.
    Up,
    /// `up` finished but a check failed; the lab is left for inspection.
    Failed,
}

impl Phase {
    /// Its name in `lab.json` and `lab status`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Building => "building",
            Phase::Up => "up",
            Phase::Failed => "failed",
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_full(m: &MatrixMode) -> bool {
    *m == MatrixMode::Full
}

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is: `agent n1`, `etcd`.
    pub what: String,
    /// Its pid.
    pub pid: u32,
    /// The program's file name, checked against `/proc/<pid>/cmdline` before a signal
    /// is sent, in case the pid was reused.
    pub program: String,
    /// The namespace it runs in.
    pub ns: String,
    /// Its log.
    pub log: PathBuf,
    /// Its whole command line (program path first), so that `heal` can start it
    /// again as it was.
    #[serde(default)]
    pub argv: Vec<String>,
}

/// What `lab fail` broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// A dead host: its fabric link down and its agent killed.
    Node,
    /// Only its fabric link down; the agent runs on, cut off.
    Link,
    /// An L2 plane cut: every port of its bridge down (`node` is `plane:K`).
    Plane,
}

impl FailureKind {
    /// Its name in `lab.json` and the reports.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Node => "node",
            FailureKind::Link => "link",
            FailureKind::Plane => "plane",
        }
    }
}

/// A failure `lab fail` made, recorded before it is made so that `heal` can undo a
/// `fail` that stopped half-way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// The node (`plane:K` for a plane).
    pub node: String,
    /// What was done to it.
    pub kind: FailureKind,
    /// The namespace holding the link that was set down (the fabric's).
    pub link_ns: String,
    /// The link set down: the node's port on its bridge (a plane's bridge).
    pub link: String,
    /// A plane's bridge ports set down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// The agent's pid that was killed, for a node failure.
    pub killed_pid: Option<u32>,
    /// When it was made, Unix milliseconds.
    pub at_unix_ms: u64,
}

/// A pod the lab added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its namespace.
    pub ns: String,
    /// The address IPAM gave it.
    pub ip: String,
}

/// A node of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its fabric address with prefix.
    pub ip: String,
    /// Whether it is a route reflector.
    pub route_reflector: bool,
    /// The agent's control socket.
    pub socket: PathBuf,
}

/// A ToR or spine router of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterRecord {
    /// `tor1`, `spine1`.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// ToR or spine.
    pub role: Role,
    /// Its router ID (its first address).
    pub ip: String,
    /// Its daemon.
    pub daemon: RouterKind,
    /// BIRD's control socket or FRR's vty socket dir.
    pub control: PathBuf,
}

/// The whole state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    /// The lab's name.
    pub name: String,
    /// How far `up` got.
    pub phase: Phase,
    /// The topology.
    pub topology: Topology,
    /// The encapsulation.
    pub encap: Encap,
    /// The datastore kind.
    pub store: StoreKind,
    /// Its URL.
    pub store_url: String,
    /// Which pod pairs `up`, `fail` and `heal` ping (`up --matrix`).
    #[serde(default, skip_serializing_if = "is_full")]
    pub matrix: MatrixMode,
    /// Pods per workload node.
    pub pods_per_node: u32,
    /// The pool's block size.
    pub block_size: u8,
    /// L2 planes (`l2-planes` only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub planes: u32,
    /// Planes each host is in, when not all (`l2-planes` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planes_per_host: Option<u32>,
    /// Namespaces made, in order.
    pub namespaces: Vec<String>,
    /// Processes started.
    pub processes: Vec<ProcessRecord>,
    /// The nodes.
    pub nodes: Vec<NodeRecord>,
    /// The pods added.
    pub pods: Vec<PodRecord>,
    /// Failures made by `lab fail` and not yet healed.
    #[serde(default)]
    pub failures: Vec<FailureRecord>,
    /// Racks (fabric topologies only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub racks: u32,
    /// Spine routers (routed-spine topologies only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spines: u32,
    /// The ToR and spine routers' daemon (fabric topologies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterKind>,
    /// The ToR and spine routers started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routers: Vec<RouterRecord>,
}

impl LabState {
    /// The state of a lab about to be built.
    pub fn new(spec: &LabSpec, store_url: &str) -> LabState {
        LabState {
            name: spec.name.clone(),
            phase: Phase::Building,
            topology: spec.topology,
            encap: spec.encap,
            store: spec.store,
            store_url: store_url.to_string(),
            matrix: spec.matrix,
            pods_per_node: spec.pods_per_node,
            block_size: spec.block_size,
            planes: if spec.topology == Topology::L2Planes {
                spec.planes
            } else {
                0
            },
            planes_per_host: spec
                .planes_per_host
                .filter(|_| spec.topology == Topology::L2Planes),
            namespaces: Vec::new(),
            processes: Vec::new(),
            nodes: Vec::new(),
            pods: Vec::new(),
            failures: Vec::new(),
            racks: if spec.topology.is_fabric() {
                spec.racks
            } else {
                0
            },
            spines: if spec.topology.has_spines() {
                spec.spines
            } else {
                0
            },
            router: spec.topology.is_fabric().then_some(spec.router),
            routers: Vec::new(),
        }
    }

    /// The spec this lab was built from (its wait timeout the default), with its
    /// state in `<root>/<name>`.
    pub fn spec(&self, root: &Path) -> LabSpec {
        let mut spec = LabSpec::new(&self.name, root);
        spec.topology = self.topology;
        spec.encap = self.encap;
        spec.store = self.store;
        spec.matrix = self.matrix;
        spec.nodes = self.nodes.len() as u32;
        if self.topology == Topology::L2Planes {
            // The planes' reflectors come on top of the hosts.
            spec.nodes = self.nodes.iter().filter(|n| !n.route_reflector).count() as u32;
            spec.planes = self.planes;
            spec.planes_per_host = self.planes_per_host;
        }
        spec.pods_per_node = self.pods_per_node;
        spec.block_size = self.block_size;
        if self.racks > 0 {
            spec.racks = self.racks;
        }
        if self.spines > 0 {
            spec.spines = self.spines;
        }
        if let Some(r) = self.router {
            spec.router = r;
        }
        spec
    }

    /// The recorded failure of a node, if it is failed.
    pub fn failure(&self, node: &str) -> Option<&FailureRecord> {
        self.failures.iter().find(|f| f.node == node)
    }

    /// Reads `<dir>/lab.json`.
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes `<dir>/lab.json` atomically (a temporary file renamed over it).
    pub fn save(&self, dir: &Path) -> Result<(), LabError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the state serializes");
        std::fs::write(&tmp, text + "\n")
            .map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            LabError::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The agent of a node, if it was started.
    pub fn agent(&self, node: &str) -> Option<&ProcessRecord> {
        let what = format!("agent {node}");
        self.processes.iter().find(|p| p.what == what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LabSpec::new("x", dir.path());
        let mut s = LabState::new(&spec, "sqlite:///x/store.db");
        s.namespaces.push("tl-x-fab".into());
        s.processes.push(ProcessRecord {
            what: "agent n1".into(),
            pid: 42,
            program: "tabby-node".into(),
            ns: "tl-x-n1".into(),
            log: dir.path().join("n1.log"),
            argv: vec!["/bin/tabby-node".into(), "--node-name".into(), "n1".into()],
        });
        s.failures.push(FailureRecord {
            node: "n1".into(),
            kind: FailureKind::Node,
            link_ns: "tl-x-fab".into(),
            link: "n1".into(),
            ports: Vec::new(),
            killed_pid: Some(42),
            at_unix_ms: 1,
        });
        s.save(dir.path()).unwrap();
        let back = LabState::load(dir.path()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.agent("n1").unwrap().pid, 42);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"phase\": \"building\""), "{text}");
        assert!(text.contains("\"storeUrl\""), "{text}");
        assert!(text.contains("\"kind\": \"node\""), "{text}");
        assert_eq!(back.failure("n1").unwrap().killed_pid, Some(42));
        assert_eq!(back.spec(dir.path()).nodes, 0);
        // A lab.json from before failures and argv were recorded still loads.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("failures");
        old["processes"][0].as_object_mut().unwrap().remove("argv");
        std::fs::write(dir.path().join(STATE_FILE), old.to_string()).unwrap();
        let back = LabState::load(dir.path()).unwrap();
        assert!(back.failures.is_empty() && back.processes[0].argv.is_empty());
        std::fs::write(dir.path().join(STATE_FILE), "{").unwrap();
        let e = LabState::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("lab.json"), "{e}");
    }
}
