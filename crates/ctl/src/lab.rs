//! `tabbyctl lab up|status|exec|fail|heal|graph|down`: a Tabby cluster on this machine
//! in network namespaces (the real agent, CNI plugin and datastore), checked against
//! `tabbyctl plan` and with pod-to-pod traffic; failures made and healed to watch it
//! converge; an SVG of its sessions. Progress goes to stderr, the summary to stdout;
//! `up`, `fail` and `heal` exit 1 when a check fails, `exec` with the command's exit
//! code.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tabby_lab::lab::{self, Encap, LabSpec, RouterKind, StoreKind, Topology};
use tabby_lab::plan::Model;

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// The lab's name: namespaces tl-NAME-*, state in STATE_DIR/NAME.
    #[arg(long, global = true, default_value = "lab")]
    name: String,
    /// Where labs keep their state (lab.json, the store, logs, control sockets): one
    /// directory per lab inside it.
    #[arg(long, global = true, env = "TABBY_LAB_DIR", default_value = lab::DEFAULT_ROOT)]
    state_dir: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Build the lab: fabric, datastore, agents, BGP, pods; then check it.
    Up(UpArgs),
    /// Show every node's agent, BGP sessions and routes, and the pods.
    Status,
    /// Run a command in a node's or pod's namespace: `lab exec n1 -- ip route`.
    Exec {
        /// A node (`n1`, `rr1`), a pod (`n1-1`), or `fab`, `rtr`, `etcd`, `tor1`,
        /// `spine1`.
        target: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Fail a node (a dead host: its fabric link down, its agent killed), only its
    /// link (`link:n2`) or an L2 plane (`plane:1`: every port of its bridge), then show
    /// the rest converge: sessions, reachability, times.
    Fail {
        /// A node (`n2`, `rr1`), a node's fabric link (`link:n2`), a plane (`plane:1`)
        /// or a ToR or spine router (`tor1`, `spine1`: its links down, its BGP daemon
        /// killed).
        target: String,
        /// Seconds to wait for the rest of the lab to converge.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Undo every failure `lab fail` made and wait for the lab to be as planned again.
    Heal {
        /// Seconds to wait for every session, route and pod pair.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// An SVG of the devices and their BGP sessions, coloured by state.
    Graph {
        /// Write it to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Remove everything the lab made (a lab that is not there is a no-op).
    Down,
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// BGP topology, a planner model: mesh, route-reflector (2 of the nodes become
    /// dedicated reflectors), l2-planes (a bridge per plane, every node on each, a
    /// dedicated reflector per plane), or a ToR design with a router per rack:
    /// as-per-rack-l2-spine, as-per-rack-l3-spine, as-per-server, downward-default.
    #[arg(long, default_value = "mesh", value_name = "MODEL")]
    topology: Model,
    /// Nodes, route reflectors included (l2-planes: the hosts; the planes' reflectors
    /// come on top).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// L2 planes of the l2-planes topology, 2..=4 (default 4).
    #[arg(long)]
    planes: Option<u32>,
    /// Planes each l2-planes host is in (default all): host i takes this many planes
    /// in rotation from plane i; every pair of hosts must share a plane.
    #[arg(long)]
    planes_per_host: Option<u32>,
    /// Racks of the ToR topologies, 1..=8 (default 2); the nodes fill them in order,
    /// the same number in each.
    #[arg(long)]
    racks: Option<u32>,
    /// Spine routers of as-per-rack-l3-spine, as-per-server and downward-default,
    /// 1..=4 (default 1).
    #[arg(long)]
    spines: Option<u32>,
    /// The daemon of the ToR and spine routers: bird (BIRD 2, the default) or frr.
    #[arg(long, value_name = "bird|frr")]
    router: Option<String>,
    /// Pods on each workload node.
    #[arg(long, default_value_t = 2)]
    pods_per_node: u32,
    /// BFD (300 ms x 3) on every BGP session: the nodes' (annotation
    /// `tabby.dev/bfd: "on"` on the BGPConfiguration and every BGPPeer) and the
    /// ToR and spine routers' (BIRD `bfd on`, FRR bfdd).
    #[arg(long)]
    bfd: bool,
    /// Datastore the lab runs: sqlite (a file in the state dir, the default) or etcd
    /// (from PATH, in its own namespace on the fabric). A TABBY_STORE URL in the
    /// environment is not the lab's and is ignored.
    // The id is tabbyctl's global `--store` (a URL, String-typed): clap shares one
    // value between a global and a subcommand argument of the same id.
    #[arg(long, value_name = "sqlite|etcd")]
    store: Option<String>,
    /// Encapsulation; vxlan-crosssubnet puts the nodes in two subnets behind a router.
    #[arg(long, value_enum, default_value = "none")]
    encap: EncapArg,
    /// IPAM block size of the pool (100.64.0.0/16).
    #[arg(long, default_value_t = tabby_lab::lab::spec::DEFAULT_BLOCK_SIZE)]
    block_size: u8,
    /// Seconds each wait (agents, sessions, routes) may take.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Which pod pairs to ping, in `up` and in later `fail` and `heal`: full (every
    /// pair), sample:K (each pod pings K others, spread over the lab; for large labs)
    /// or none (sessions and routes only).
    #[arg(long, default_value = "full", value_name = "full|sample:K|none")]
    matrix: String,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EncapArg {
    /// Native routing over BGP.
    None,
    /// VXLAN everywhere.
    Vxlan,
    /// VXLAN between subnets only.
    VxlanCrosssubnet,
}

/// Exit with this code and no message (`lab exec` passes its command's code on).
#[derive(Debug)]
pub struct Exit(pub u8);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

pub async fn run(args: &LabArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.action {
        Action::Up(a) => up(args, a, out).await,
        Action::Status => {
            let r = lab::status(&args.name, &args.state_dir).await?;
            write!(out, "{}", r.text)?;
            Ok(())
        }
        Action::Exec { target, command } => {
            out.flush()?;
            let code = lab::exec(&args.name, target, command)?;
            if code == 0 {
                Ok(())
            } else {
                Err(Exit(code.clamp(1, 255) as u8).into())
            }
        }
        Action::Fail { target, timeout } => {
            let r = lab::fail(
                &args.name,
                &args.state_dir,
                target,
                Duration::from_secs(*timeout),
            )
            .await?;
            converged(&args.name, &format!("fail {target}"), r, out)
        }
        Action::Heal { timeout } => {
            let r = lab::heal(&args.name, &args.state_dir, Duration::from_secs(*timeout)).await?;
            converged(&args.name, "heal", r, out)
        }
        Action::Graph { output } => {
            let svg = lab::graph(&args.name, &args.state_dir).await?;
            match output {
                Some(path) => std::fs::write(path, svg)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => write!(out, "{svg}")?,
            }
            Ok(())
        }
        Action::Down => {
            let mut progress = lab::Terminal::default();
            let r = lab::down_with(&args.name, &args.state_dir, &mut progress)?;
            progress.finish();
            write!(out, "{}", r.render(&args.name))?;
            Ok(())
        }
    }
}

/// Prints a `fail` or `heal` report; an error when the lab did not converge.
fn converged(
    name: &str,
    what: &str,
    r: lab::ConvergeReport,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    write!(out, "{}", r.text)?;
    out.flush()?;
    if !r.problems.is_empty() {
        bail!(
            "lab {name:?} did not converge after `lab {what}` ({} problem(s): {}); inspect it with `tabbyctl lab status --name {name}`",
            r.problems.len(),
            r.problems.join("; ")
        );
    }
    Ok(())
}

/// The lab's `--store`; the global `--store` shares its value, so a URL that came
/// from TABBY_STORE is somebody else's setting, not a choice for the lab.
fn store_kind(given: Option<&str>) -> anyhow::Result<StoreKind> {
    match given {
        None | Some("sqlite") => Ok(StoreKind::Sqlite),
        Some("etcd") => Ok(StoreKind::Etcd),
        Some(v) if std::env::var("TABBY_STORE").is_ok_and(|env| env == v) => Ok(StoreKind::Sqlite),
        Some(v) => {
            bail!("lab up --store {v:?}: expected sqlite or etcd (the lab runs its own datastore)")
        }
    }
}

async fn up(args: &LabArgs, a: &UpArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut spec = LabSpec::new(&args.name, &args.state_dir);
    spec.topology = Topology::try_from(a.topology)?;
    spec.nodes = a.nodes;
    if let Some(p) = a.planes {
        if spec.topology != Topology::L2Planes {
            bail!(
                "lab up --planes {p}: planes are of --topology l2-planes (not {})",
                spec.topology
            );
        }
        spec.planes = p;
    }
    if let Some(l) = a.planes_per_host {
        if spec.topology != Topology::L2Planes {
            bail!(
                "lab up --planes-per-host {l}: planes are of --topology l2-planes (not {})",
                spec.topology
            );
        }
        spec.planes_per_host = Some(l);
    }
    let fabric_only = |flag: &str, v: String| -> anyhow::Result<()> {
        if spec.topology.is_fabric() {
            Ok(())
        } else {
            bail!(
                "lab up --{flag} {v}: it is an option of the ToR topologies (as-per-rack-l2-spine, as-per-rack-l3-spine, as-per-server, downward-default), not of {}",
                spec.topology
            )
        }
    };
    if let Some(r) = a.racks {
        fabric_only("racks", r.to_string())?;
        spec.racks = r;
    }
    if let Some(s) = a.spines {
        fabric_only("spines", s.to_string())?;
        if !spec.topology.has_spines() {
            bail!(
                "lab up --spines {s}: {} has an L2 spine (a bridge), no spine routers",
                spec.topology
            );
        }
        spec.spines = s;
    }
    if let Some(r) = &a.router {
        fabric_only("router", r.clone())?;
        spec.router = r.parse::<RouterKind>()?;
    }
    spec.pods_per_node = a.pods_per_node;
    spec.bfd = a.bfd;
    spec.store = store_kind(a.store.as_deref())?;
    spec.encap = match a.encap {
        EncapArg::None => Encap::None,
        EncapArg::Vxlan => Encap::Vxlan,
        EncapArg::VxlanCrosssubnet => Encap::VxlanCrosssubnet,
    };
    spec.block_size = a.block_size;
    spec.timeout_secs = a.timeout;
    spec.matrix = a.matrix.parse::<lab::spec::MatrixMode>()?;
    // A redrawn bar on a terminal, plain step lines otherwise (logs, tests, CI).
    let mut progress = lab::Terminal::default();
    let result = lab::up(&spec, &mut progress).await;
    progress.finish();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            if spec.dir().exists() {
                eprintln!(
                    "the lab is left as it is for inspection; remove it with `tabbyctl lab down --name {}`",
                    spec.name
                );
            }
            return Err(e.into());
        }
    };
    write!(out, "{}", summary.text)?;
    out.flush()?;
    if !summary.problems.is_empty() {
        bail!(
            "lab {:?} is not as planned ({} problem(s): {}); inspect it with `tabbyctl lab status --name {0}`, remove it with `tabbyctl lab down --name {0}`",
            spec.name,
            summary.problems.len(),
            summary.problems.join("; ")
        );
    }
    Ok(())
}
