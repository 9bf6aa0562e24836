//! `lab up`: builds the lab step by step (fabric, datastore, configuration, ToR and
//! spine routers, agents, sessions, pods, routes, traffic), recording everything in
//! `lab.json` as it goes, then compares every device with the planner and tests every
//! pod pair with a ping.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use super::check::{self, DeviceRow, Matrix, Observed};
use super::layout::{self, Expected, Layout};
use super::progress::Progress;
use super::router;
use super::spec::{LabSpec, MatrixMode, StoreKind};
use super::state::{
    LabState, NodeRecord, Phase, PodRecord, ProcessRecord, RouterRecord, STATE_FILE,
};
use super::{LabError, netns_prefix};
use super::{host, icmp};

/// The agent's workload interface prefix (its default).
pub(crate) const WORKLOAD_PREFIX: &str = "cali";

const STEPS: usize = 9;
const POLL: Duration = Duration::from_millis(250);
const HINT: &str = "build them with `cargo build -p tabby-node -p tabby-cni` (they are looked for next to tabbyctl first)";

/// What `up` reports at the end.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The summary for stdout: nodes, sessions, routes, the planner check and the
    /// reachability matrix.
    pub text: String,
    /// Everything that is not as planned; empty when the lab is good.
    pub problems: Vec<String>,
    /// The lab's state dir.
    pub dir: PathBuf,
    /// When each phase ended, since `up` started: `fabric`, `agents`, `sessions`
    /// (all as planned), `built` (the pods added), `converged` (every expected route
    /// on every device), `reachability`.
    pub timings: Vec<(&'static str, Duration)>,
}

/// Builds the lab `spec` describes. Progress lines (`[3/9] ...`) go to `progress`.
/// Once the state dir exists, a failure leaves the lab as it is for inspection;
/// `down` removes it.
pub async fn up(spec: &LabSpec, progress: &mut dyn Progress) -> Result<Summary, LabError> {
    let started = Instant::now();
    progress.step(&format!("[1/{STEPS}] checking prerequisites"));
    spec.validate()?;
    if !tabby_testnet::is_root() {
        return Err(LabError::NotRoot);
    }
    let layout = Layout::new(spec);
    layout.check()?;
    let (_, expected) = layout::expected(spec, &layout)?;
    let bins = host::find_binaries(&["tabby-node", "tabby", "tabby-ipam"], HINT)?;
    let etcd_bin = match spec.store {
        StoreKind::Etcd => Some(find_in_path("etcd")?),
        StoreKind::Sqlite => None,
    };
    let router_bin = if layout.routers.is_empty() {
        None
    } else {
        Some(router::find_daemon(spec.router)?)
    };
    check_absent(spec, &layout)?;
    let mut raised = host::raise_neighbour_limits(neighbour_entries(&layout))?;
    // One inotify instance per agent watching the SQLite store, and room for others.
    raised.extend(host::raise_inotify_instances(
        layout.nodes.len() as u64 + 128,
    )?);
    if !raised.is_empty() {
        progress.step(&format!(
            "  raised kernel limits (one neighbour table and one inotify budget for all namespaces): {}",
            raised.join(", ")
        ));
    }
    let dir = layout.dir.clone();
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let mut b = Builder {
        spec,
        state: LabState::new(spec, &layout.store_url),
        layout,
        agent: bins[0].clone(),
        cni: bins[1].clone(),
        cni_path: bins[2]
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        etcd: etcd_bin,
        router_bin,
        children: Vec::new(),
        problems: Vec::new(),
        started,
        timings: Vec::new(),
    };
    b.save()?;
    match b.build(&expected, progress).await {
        Ok(summary) => Ok(summary),
        Err(e) => {
            b.state.phase = Phase::Failed;
            let _ = b.save();
            Err(e)
        }
    }
}

fn find_in_path(name: &str) -> Result<PathBuf, LabError> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::MissingBinary {
            missing: name.to_string(),
            looked: "PATH".into(),
            hint: "install etcd (e.g. `apt-get install etcd-server`) or use --store sqlite".into(),
        })
}

/// Neighbour entries the lab may hold at once, with room to spare: every fabric leg
/// may resolve every other leg of its segment, every pod its node and every node its
/// pods, and the host's other users keep theirs.
fn neighbour_entries(layout: &Layout) -> u64 {
    let legs = layout
        .nodes
        .iter()
        .map(|n| n.legs().count() as u64)
        .sum::<u64>()
        + layout.router.as_ref().map_or(0, |r| r.legs.len() as u64)
        + u64::from(layout.etcd.is_some());
    let segments = layout.bridges.len().max(1) as u64;
    let per_segment = legs.div_ceil(segments) + 1;
    let pods = layout.pods.len() as u64;
    let need = segments * per_segment * per_segment + 2 * pods;
    (2 * need + 1024).next_power_of_two().max(1024)
}

/// Refuses to build over an existing lab (state dir or namespaces).
fn check_absent(spec: &LabSpec, layout: &Layout) -> Result<(), LabError> {
    let exists = |evidence: String| LabError::Exists {
        name: spec.name.clone(),
        evidence,
    };
    if layout.dir.join(STATE_FILE).exists() {
        return Err(exists(format!(
            "{} exists",
            layout.dir.join(STATE_FILE).display()
        )));
    }
    if let Ok(mut entries) = std::fs::read_dir(&layout.dir)
        && entries.next().is_some()
    {
        return Err(exists(format!("{} is not empty", layout.dir.display())));
    }
    let ns = host::lab_namespaces(&spec.name)?;
    if !ns.is_empty() {
        return Err(exists(format!(
            "namespaces {}* exist: {}",
            netns_prefix(&spec.name),
            ns.join(", ")
        )));
    }
    Ok(())
}

struct Builder<'a> {
    spec: &'a LabSpec,
    layout: Layout,
    state: LabState,
    agent: PathBuf,
    cni: PathBuf,
    cni_path: String,
    etcd: Option<PathBuf>,
    /// `bird` (or FRR's `bgpd`) for the ToR and spine routers.
    router_bin: Option<PathBuf>,
    /// Processes started by this `up`, to notice one that dies while building.
    children: Vec<(String, Child, PathBuf)>,
    problems: Vec<String>,
    /// When `up` started.
    started: Instant,
    /// Each phase's end, since `started`.
    timings: Vec<(&'static str, Duration)>,
}

impl Builder<'_> {
    fn save(&self) -> Result<(), LabError> {
        self.state.save(&self.layout.dir)
    }

    /// Records that phase `what` ended now.
    fn mark(&mut self, what: &'static str) {
        self.timings.push((what, self.started.elapsed()));
    }

    fn netns(&mut self, name: &str) -> Result<(), LabError> {
        // Recorded first: a half-made namespace is still the lab's to remove.
        self.state.namespaces.push(name.to_string());
        self.save()?;
        host::add_netns(name)
    }

    fn spawn(
        &mut self,
        what: &str,
        ns: &str,
        program: PathBuf,
        args: &[String],
    ) -> Result<(), LabError> {
        let log = self.layout.log(&what.replace(' ', "-"));
        let child = host::spawn(ns, &program, args, &log)?;
        let mut argv = vec![program.display().to_string()];
        argv.extend(args.iter().cloned());
        self.state.processes.push(ProcessRecord {
            what: what.to_string(),
            pid: child.id(),
            program: program
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ns: ns.to_string(),
            log: log.clone(),
            argv,
        });
        self.children.push((what.to_string(), child, log));
        self.save()
    }

    /// An error for the first started process that has exited.
    fn check_children(&mut self) -> Result<(), LabError> {
        for (what, child, log) in &mut self.children {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(LabError::Died {
                    what: what.clone(),
                    log: log.clone(),
                    tail: host::tail(log, 20),
                });
            }
        }
        Ok(())
    }

    async fn build(
        &mut self,
        expected: &[Expected],
        progress: &mut dyn Progress,
    ) -> Result<Summary, LabError> {
        let spec = self.spec;
        let timeout = Duration::from_secs(spec.timeout_secs);
        let n = self.layout.nodes.len();

        let segments = if !self.layout.routers.is_empty() {
            format!(
                "{} racks, {} {} routers",
                spec.racks,
                self.layout.routers.len(),
                spec.router
            )
        } else if self.layout.planes > 0 {
            format!("{} L2 planes", self.layout.planes)
        } else if spec.encap.two_subnets() {
            "two subnets behind a router".to_string()
        } else {
            "one subnet".to_string()
        };
        progress.step(&format!(
            "[2/{STEPS}] building the fabric: {n} node namespaces on {segments}"
        ));
        self.fabric(progress)?;
        self.mark("fabric");

        let store_what = match &self.layout.etcd {
            Some(e) => format!("etcd at {}:{}", e.leg.address.addr(), layout::ETCD_PORT),
            None => format!("SQLite {}", self.layout.dir.join("store.db").display()),
        };
        progress.step(&format!("[3/{STEPS}] starting the datastore: {store_what}"));
        self.datastore()?;

        progress.step(&format!(
            "[4/{STEPS}] writing the configuration: IPPool {} /{} vxlanMode {}, BGP {}",
            super::spec::POOL_CIDR,
            spec.block_size,
            spec.encap.vxlan_mode(),
            spec.topology
        ));
        self.configure(timeout).await?;

        if !self.layout.routers.is_empty() {
            progress.step(&format!(
                "[5/{STEPS}] starting {} {} routers and {n} agents",
                self.layout.routers.len(),
                spec.router
            ));
            self.start_routers(timeout).await?;
        } else {
            progress.step(&format!("[5/{STEPS}] starting {n} agents"));
        }
        self.agents(timeout, progress).await?;
        self.mark("agents");

        let devices = self.layout.device_names();
        let mut want: Vec<String> = Vec::new();
        for (name, e) in devices.iter().zip(expected) {
            // A long list says nothing more than its first entries and its total.
            if want.len() < 6 {
                want.push(format!("{name} {}", e.sessions));
            }
        }
        if devices.len() > want.len() {
            let total: u64 = expected.iter().map(|e| e.sessions).sum();
            want.push(format!("... {total} in all"));
        }
        progress.step(&format!(
            "[6/{STEPS}] waiting for BGP sessions ({})",
            want.join(", ")
        ));
        let ok = self
            .wait(timeout, expected, progress, |o, e| {
                o.established == e.sessions && o.peers == e.sessions
            })
            .await?;
        self.mark("sessions");
        if !ok {
            progress.step(&format!(
                "  sessions are not as planned after {} s; going on",
                timeout.as_secs()
            ));
        }

        progress.step(&format!(
            "[7/{STEPS}] adding {} pods through the CNI plugin ({} per workload node)",
            self.layout.pods.len(),
            spec.pods_per_node
        ));
        self.pods(progress)?;
        self.mark("built");

        progress.step(&format!(
            "[8/{STEPS}] waiting for routes to match the planner"
        ));
        let ok = self
            .wait(timeout, expected, progress, |o, e| {
                o.routes.routes == e.routes && o.routes.pod_routes == e.pod_routes
            })
            .await?;
        self.mark("converged");
        if !ok {
            progress.step(&format!(
                "  routes are not as planned after {} s; going on",
                timeout.as_secs()
            ));
        }
        let rows = self.observe_all(expected).await;

        let mode = spec.matrix;
        let tested = self.state.pods.len() * mode.offsets(self.state.pods.len()).len();
        progress.step(&format!(
            "[9/{STEPS}] testing reachability: {tested} pod pairs ({mode})"
        ));
        let sources = self.state.pods.len();
        let matrix = reachability_with(&self.state.pods, &[], mode, &mut |done| {
            progress.tick("pods pinged their pairs", done, sources)
        });
        self.mark("reachability");

        for r in &rows {
            self.problems.extend(r.differences());
        }
        for (a, b) in matrix.failures() {
            self.problems.push(format!("{a} cannot reach {b}"));
        }
        self.state.phase = if self.problems.is_empty() {
            Phase::Up
        } else {
            Phase::Failed
        };
        self.save()?;
        Ok(Summary {
            text: self.render(&rows, &matrix),
            problems: self.problems.clone(),
            dir: self.layout.dir.clone(),
            timings: self.timings.clone(),
        })
    }

    fn fabric(&mut self, progress: &mut dyn Progress) -> Result<(), LabError> {
        let l = self.layout.clone();
        self.netns(&l.fabric_ns)?;
        for br in &l.bridges {
            host::add_bridge(&l.fabric_ns, &br.name, br.address.as_ref())?;
        }
        if let Some(r) = &l.router {
            self.netns(&r.ns)?;
            host::sysctl(&r.ns, "net.ipv4.ip_forward", "1")?;
            for leg in &r.legs {
                host::add_leg(&r.ns, leg, &l.fabric_ns)?;
            }
        }
        self.fabric_routers()?;
        // Recorded first, all at once: a half-made namespace is still the lab's.
        self.state
            .namespaces
            .extend(l.nodes.iter().map(|n| n.ns.clone()));
        self.save()?;
        let total = l.nodes.len();
        let results = host::parallel(
            &l.nodes,
            host::WORKERS,
            |node| node_fabric(&l, node),
            |done| progress.tick("nodes", done, total),
        );
        results.into_iter().collect::<Result<Vec<()>, LabError>>()?;
        for node in &l.nodes {
            self.state.nodes.push(NodeRecord {
                name: node.name.clone(),
                ns: node.ns.clone(),
                ip: node.leg.address.to_string(),
                route_reflector: node.route_reflector,
                socket: l.socket(&node.name),
            });
        }
        self.save()
    }

    fn datastore(&mut self) -> Result<(), LabError> {
        let l = self.layout.clone();
        let Some(e) = &l.etcd else {
            return Ok(());
        };
        self.netns(&e.ns)?;
        for leg in e.legs() {
            host::add_leg(&e.ns, leg, &l.fabric_ns)?;
        }
        host::ip_in(
            &e.ns,
            &["route", "add", "default", "via", &e.gateway.to_string()],
        )?;
        let bin = self.etcd.clone().expect("etcd was found for --store etcd");
        self.spawn("etcd", &e.ns, bin, &l.etcd_args(e))
    }

    async fn configure(&mut self, timeout: Duration) -> Result<(), LabError> {
        let yaml = layout::resources(self.spec);
        let url = self.layout.store_url.clone();
        let ns = self.layout.etcd.as_ref().map(|e| e.ns.clone());
        let deadline = Instant::now() + timeout;
        loop {
            // The first write is also the wait for etcd to serve.
            match host::apply_resources(&url, ns.as_deref(), &yaml) {
                Ok(_) => return Ok(()),
                Err(_) if ns.is_some() && Instant::now() < deadline => {
                    self.check_children()?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn agents(
        &mut self,
        timeout: Duration,
        progress: &mut dyn Progress,
    ) -> Result<(), LabError> {
        let l = self.layout.clone();
        for node in &l.nodes {
            let state = l.node_state(&node.name);
            std::fs::create_dir_all(&state)
                .map_err(|e| LabError::io(format!("creating {}", state.display()), e))?;
            self.spawn(
                &format!("agent {}", node.name),
                &node.ns,
                self.agent.clone(),
                &l.agent_args(node),
            )?;
        }
        let deadline = Instant::now() + timeout;
        let total = l.nodes.len();
        let mut waiting: Vec<&layout::Node> = l.nodes.iter().collect();
        loop {
            self.check_children()?;
            let sockets: Vec<PathBuf> = waiting.iter().map(|n| l.socket(&n.name)).collect();
            let answers = query_all(&sockets).await;
            let mut still = Vec::new();
            for (node, answer) in waiting.into_iter().zip(answers) {
                if answer.is_none() {
                    still.push(node);
                }
            }
            waiting = still;
            progress.tick("agents answering", total - waiting.len(), total);
            let Some(node) = waiting.first() else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(LabError::Timeout {
                    what: format!(
                        "agent {} answering on {} ({} of {total} agents do not answer)",
                        node.name,
                        l.socket(&node.name).display(),
                        waiting.len()
                    ),
                    secs: timeout.as_secs(),
                    detail: host::tail(&l.log(&format!("agent-{}", node.name)), 20),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Adds the pods through the CNI plugin, nodes in parallel and each node's pods
    /// one after the other (two first pods of a node at once would race to claim
    /// its first block).
    fn pods(&mut self, progress: &mut dyn Progress) -> Result<(), LabError> {
        let l = self.layout.clone();
        self.state
            .namespaces
            .extend(l.pods.iter().map(|p| p.ns.clone()));
        self.save()?;
        let mut by_node: Vec<(&layout::Node, Vec<&layout::Pod>)> = Vec::new();
        for pod in &l.pods {
            let node = l.node(&pod.node).expect("pods are on the lab's nodes");
            match by_node.last_mut() {
                Some((n, pods)) if n.name == node.name => pods.push(pod),
                _ => by_node.push((node, vec![pod])),
            }
        }
        let (total, spec, cni, cni_path) = (l.pods.len(), self.spec, &self.cni, &self.cni_path);
        let done = std::sync::atomic::AtomicUsize::new(0);
        let results = host::parallel(
            &by_node,
            host::WORKERS,
            |(node, pods)| {
                let mut ips = Vec::new();
                for pod in pods {
                    let r = host::add_netns(&pod.ns).and_then(|()| {
                        let mtu = layout::pod_mtu(&l.node_state(&node.name), spec.encap);
                        let conf = l.cni_conf(&node.name, mtu);
                        let env = l.cni_env(pod, "ADD", cni_path);
                        host::cni_add(&node.ns, cni, &env, &conf, pod)
                    });
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let failed = r.is_err();
                    ips.push((*pod, r));
                    if failed {
                        break;
                    }
                }
                ips
            },
            |_| {
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                progress.tick("pods", n, total);
            },
        );
        let mut first_error = None;
        for (pod, r) in results.into_iter().flatten() {
            match r {
                Ok(ip) => self.state.pods.push(PodRecord {
                    name: pod.name.clone(),
                    node: pod.node.clone(),
                    ns: pod.ns.clone(),
                    ip,
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.save()?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Polls every node until `done` holds for all of them or `timeout` passes;
    /// whether it held. A dead agent is an error.
    async fn wait(
        &mut self,
        timeout: Duration,
        expected: &[Expected],
        progress: &mut dyn Progress,
        done: impl Fn(&Observed, &Expected) -> bool,
    ) -> Result<bool, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_children()?;
            let rows = self.observe_all(expected).await;
            let good = rows
                .iter()
                .filter(|r| done(&r.observed, &r.expected))
                .count();
            progress.tick("devices as planned", good, rows.len());
            if good == rows.len() {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn observe_all(&self, expected: &[Expected]) -> Vec<DeviceRow> {
        let nodes = &self.layout.nodes;
        let ns: Vec<String> = nodes.iter().map(|n| n.ns.clone()).collect();
        let sockets: Vec<PathBuf> = nodes.iter().map(|n| self.layout.socket(&n.name)).collect();
        let observed = observe_many(&ns, &sockets).await;
        let mut rows = nodes
            .iter()
            .zip(expected)
            .zip(observed)
            .map(|((node, e), observed)| DeviceRow {
                name: node.name.clone(),
                address: node.leg.address.to_string(),
                expected: e.clone(),
                observed,
            })
            .collect::<Vec<_>>();
        let routers = expected.get(self.layout.nodes.len()..).unwrap_or_default();
        for (r, e) in self.layout.routers.iter().zip(routers) {
            let ctl = router::control(self.spec.router, &self.layout.router_dir(&r.name));
            rows.push(DeviceRow {
                name: r.name.clone(),
                address: r.router_id.to_string(),
                expected: e.clone(),
                observed: router::observe(self.spec.router, r, &ctl).0,
            });
        }
        rows
    }

    /// The ToR and spine routers' namespaces, their bridge legs and their
    /// point-to-point links (fabric topologies; nothing otherwise).
    fn fabric_routers(&mut self) -> Result<(), LabError> {
        let l = self.layout.clone();
        for r in &l.routers {
            self.netns(&r.ns)?;
            host::sysctl(&r.ns, "net.ipv4.ip_forward", "1")?;
            for leg in &r.legs {
                host::add_leg(&r.ns, leg, &l.fabric_ns)?;
            }
        }
        for p in &l.links {
            host::add_p2p(p)?;
        }
        Ok(())
    }

    /// Writes every router's configuration into its dir and starts its daemons in
    /// its namespace, then waits for each to answer on its control socket.
    async fn start_routers(&mut self, timeout: Duration) -> Result<(), LabError> {
        let l = self.layout.clone();
        let kind = self.spec.router;
        let bird = self.router_bin.clone().unwrap_or_default();
        for r in &l.routers {
            let dir = l.router_dir(&r.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
            for (path, text) in router::config_files(kind, r, &dir) {
                std::fs::write(&path, text)
                    .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
            }
            self.state.routers.push(RouterRecord {
                name: r.name.clone(),
                ns: r.ns.clone(),
                role: r.role,
                ip: r.router_id.to_string(),
                daemon: kind,
                control: router::control(kind, &dir),
            });
            for (i, d) in router::daemons(kind, r, &dir, &bird)
                .into_iter()
                .enumerate()
            {
                if i > 0 {
                    // bgpd connects to zebra's API socket: give zebra a moment.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                self.spawn(&d.what, &r.ns, d.program, &d.args)?;
            }
        }
        let deadline = Instant::now() + timeout;
        for r in &l.routers {
            let ctl = router::control(kind, &l.router_dir(&r.name));
            while router::sessions(kind, &r.ns, &ctl).is_none() {
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err(LabError::Timeout {
                        what: format!("{kind} on {} answering on {}", r.name, ctl.display()),
                        secs: timeout.as_secs(),
                        detail: host::tail(&l.log(&router::daemon_log(kind, &r.name)), 20),
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    fn render(&self, rows: &[DeviceRow], matrix: &Matrix) -> String {
        let spec = self.spec;
        let count = |n: usize, what: &str| {
            if n == 1 {
                format!("1 {what}")
            } else {
                format!("{n} {what}s")
            }
        };
        let mut out = format!(
            "Lab {:?}: topology {}{}, encap {}, store {} ({}), {}, {}; state in {}\n\n",
            spec.name,
            spec.topology,
            if spec.bfd { " with BFD" } else { "" },
            spec.encap,
            spec.store,
            self.layout.store_url,
            count(self.layout.nodes.len(), "node"),
            count(self.state.pods.len(), "pod"),
            self.layout.dir.display()
        );
        out.push_str(&check::render_nodes(rows, &[]));
        out.push('\n');
        out.push_str(&check::render_comparison(rows, &layout::plan_command(spec)));
        out.push('\n');
        out.push_str(&matrix.render());
        out.push('\n');
        out.push_str(&render_timings(&self.timings));
        out
    }
}

/// `Timings (s since up started): fabric 1.2, agents 3.4, ...`, with a word on what
/// the two that matter mean.
pub fn render_timings(timings: &[(&str, Duration)]) -> String {
    let cells: Vec<String> = timings
        .iter()
        .map(|(what, t)| format!("{what} {:.1}", t.as_secs_f64()))
        .collect();
    format!(
        "Timings (s since `up` started; built = pods added, converged = every planned route on every device): {}\n",
        cells.join(", ")
    )
}

/// One node's namespace, its fabric legs and its default route; nodes are set up in
/// parallel, so this touches nothing but the node's namespace and its bridge ports.
fn node_fabric(l: &Layout, node: &layout::Node) -> Result<(), LabError> {
    host::add_netns(&node.ns)?;
    for leg in node.legs() {
        host::add_leg(&node.ns, leg, &l.fabric_ns)?;
    }
    if l.planes > 0 {
        // A cut plane's links lose carrier; the kernel then skips their
        // next hops in ECMP routes at once, before BGP withdraws them.
        host::sysctl(
            &node.ns,
            "net.ipv4.conf.all.ignore_routes_with_linkdown",
            "1",
        )?;
    }
    // Proxy ARP for the pods' 169.254.1.1 answers only for destinations the
    // node can route: give it a default route (over every plane), unless BGP
    // brings one (downward-default: no gateways).
    if node.gateways.is_empty() {
        return Ok(());
    }
    let mut args = vec!["route".to_string(), "add".into(), "default".into()];
    if let [gw] = node.gateways.as_slice() {
        args.extend(["via".to_string(), gw.to_string()]);
    } else {
        for gw in &node.gateways {
            args.extend(["nexthop".to_string(), "via".into(), gw.to_string()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    host::ip_in(&node.ns, &args).map(drop)
}

/// Every agent's answer on its control socket (`None` when it does not answer), asked
/// all at once, in the sockets' order.
pub(crate) async fn query_all(
    sockets: &[PathBuf],
) -> Vec<Option<tabby_node::status::StatusReport>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, s) in sockets.iter().enumerate() {
        let s = s.clone();
        set.spawn(async move { (i, tabby_node::status::query(&s).await.ok()) });
    }
    let mut out: Vec<Option<tabby_node::status::StatusReport>> = vec![None; sockets.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, report)) = r {
            out[i] = report;
        }
    }
    out
}

/// [`observe`] for many nodes at once (`ns[i]` with `sockets[i]`): the agents asked
/// concurrently, the routes read on a few threads.
pub(crate) async fn observe_many(ns: &[String], sockets: &[PathBuf]) -> Vec<Observed> {
    let reports = query_all(sockets).await;
    let routes = host::proto80_routes_all(ns);
    reports
        .into_iter()
        .zip(routes)
        .map(|(report, routes)| {
            let routes = routes
                .map(|v| check::count_routes(&v, WORKLOAD_PREFIX))
                .unwrap_or_default();
            observed(report, routes)
        })
        .collect()
}

fn observed(
    report: Option<tabby_node::status::StatusReport>,
    routes: check::RouteCounts,
) -> Observed {
    match report {
        Some(r) => Observed {
            agent: r.running,
            established: r.peers.iter().filter(|p| p.state == "Established").count() as u64,
            peers: r.peers.len() as u64,
            routes,
        },
        None => Observed {
            routes,
            ..Observed::default()
        },
    }
}

/// Every pod pings the pods `mode` names (every other pod by default): one echo
/// request per pair, retried twice so that a lost first packet (neighbour
/// resolution) is not a failure. Each source pod sends all its requests at once
/// from a raw socket in its namespace ([`icmp`]), a few pods at a time, so a broken
/// lab fails in seconds and a 100-node lab's matrix takes seconds too. Pairs with a
/// pod marked in `down` (on a failed node) get a single try.
pub(crate) fn reachability(pods: &[PodRecord], down: &[bool], mode: MatrixMode) -> Matrix {
    reachability_with(pods, down, mode, &mut |_| {})
}

/// [`reachability`], telling `tick` how many source pods are done.
pub(crate) fn reachability_with(
    pods: &[PodRecord],
    down: &[bool],
    mode: MatrixMode,
    tick: &mut dyn FnMut(usize),
) -> Matrix {
    let is_down = |i: usize| down.get(i).copied().unwrap_or(false);
    let n = pods.len();
    let offsets = mode.offsets(n);
    let sources: Vec<usize> = (0..n).collect();
    let ok = host::parallel(
        &sources,
        host::WORKERS,
        |&i| {
            let mut row = vec![false; n];
            let (live, dead): (Vec<usize>, Vec<usize>) = offsets
                .iter()
                .map(|d| (i + d) % n)
                .partition(|&j| !is_down(i) && !is_down(j));
            for (targets, tries) in [(&live, 3), (&dead, 1)] {
                if targets.is_empty() {
                    continue;
                }
                let addrs: Vec<Ipv4Addr> = targets
                    .iter()
                    .map(|&j| pods[j].ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED))
                    .collect();
                let answered = icmp::ping_all(&pods[i].ns, &addrs, tries).unwrap_or_else(|| {
                    // No raw socket there: a `ping` process per pair.
                    targets
                        .iter()
                        .map(|&j| (0..tries).any(|_| host::ping(&pods[i].ns, &pods[j].ip)))
                        .collect()
                });
                for (&j, a) in targets.iter().zip(answered) {
                    row[j] = a;
                }
            }
            row
        },
        tick,
    );
    Matrix {
        pods: pods.iter().map(|p| p.name.clone()).collect(),
        ok,
        down: down.to_vec(),
        mode,
    }
}
