//! Real etcd members for tests: starts one or more `etcd` processes on free loopback
//! ports with data in a private temporary directory, waits until they are healthy, and
//! can SIGKILL and restart members. Dropping the cluster kills every member (also when
//! a test panics) and removes the directory.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::StoreUrl;

/// The etcd binary used when `TABBY_ETCD_BIN` is not set (Debian's `etcd-server`).
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// How long a member may take to report itself healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts to start a cluster when a freshly picked port was taken in between.
const START_ATTEMPTS: usize = 3;

static NEXT_CLUSTER: AtomicU64 = AtomicU64::new(0);

/// Why the harness could not run etcd.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "etcd binary {path} not found: install the etcd server (`apt-get install etcd-server`) \
         or point TABBY_ETCD_BIN at an etcd 3.4+ binary"
    )]
    NotInstalled { path: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "etcd member {member} (client port {port}) is not healthy: {reason}\n--- log tail ---\n{log}"
    )]
    Unhealthy {
        member: usize,
        port: u16,
        reason: String,
        log: String,
    },
    #[error("making test certificates with openssl ({step}): {reason}")]
    Certificates { step: String, reason: String },
    #[error("no such etcd member {member} (cluster has {count})")]
    NoSuchMember { member: usize, count: usize },
}

/// One etcd process of a test cluster.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics`, also when clients must use TLS.
    metrics_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

/// A running (or partly stopped) etcd cluster on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    bin: String,
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    progress_notify_interval: Option<Duration>,
    extra_client_host: Option<std::net::IpAddr>,
}

/// How to start a test cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Clients must use TLS with a client certificate ([`EtcdCluster::tls_files`]).
    pub tls: bool,
    /// How often idle watches get progress notifications (etcd's default is 10 min).
    pub progress_notify_interval: Option<Duration>,
    /// Also listen for clients on this address (e.g. one reachable from test
    /// network namespaces); see [`EtcdCluster::url_on`].
    pub extra_client_host: Option<std::net::IpAddr>,
}

/// PEM files of a throw-away CA, a server certificate for 127.0.0.1 and a client
/// certificate, made with the `openssl` command for TLS tests.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members (1 or 3 are typical) and waits until all are healthy.
    pub async fn start(size: usize) -> Result<EtcdCluster, HarnessError> {
        EtcdCluster::start_with(size, ClusterOptions::default()).await
    }

    /// Like [`EtcdCluster::start`], but clients must speak TLS and show a certificate
    /// signed by the cluster's CA ([`EtcdCluster::tls_files`]).
    pub async fn start_tls(size: usize) -> Result<EtcdCluster, HarnessError> {
        let options = ClusterOptions {
            tls: true,
            ..ClusterOptions::default()
        };
        EtcdCluster::start_with(size, options).await
    }

    /// Starts `size` members with `options`.
    pub async fn start_with(
        size: usize,
        options: ClusterOptions,
    ) -> Result<EtcdCluster, HarnessError> {
        let bin = etcd_binary()?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let mut cluster = EtcdCluster::prepare(&bin, size)?;
            cluster.progress_notify_interval = options.progress_notify_interval;
            cluster.extra_client_host = options.extra_client_host;
            if options.tls {
                cluster.tls = Some(make_tls_files(&cluster.dir)?);
            }
            match cluster.boot().await {
                Ok(()) => return Ok(cluster),
                // Most likely a port picked here was taken by someone else meanwhile:
                // try again on fresh ports (Drop cleans this attempt up).
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("START_ATTEMPTS > 0"))
    }

    fn prepare(bin: &str, size: usize) -> Result<EtcdCluster, HarnessError> {
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let token = format!("tabby-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{token}-etcd"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let ports = free_ports(3 * size)?;
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
                data_dir: dir.join(format!("m{i}.data")),
                log_path: dir.join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        Ok(EtcdCluster {
            bin: bin.to_string(),
            dir,
            token,
            members,
            tls: None,
            progress_notify_interval: None,
            extra_client_host: None,
        })
    }

    async fn boot(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await?;
        }
        Ok(())
    }

    /// `127.0.0.1:port` of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The store URL naming every member: `etcd://127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn url(&self) -> StoreUrl {
        StoreUrl::Etcd {
            endpoints: self.endpoints(),
            tls: self.tls.is_some(),
        }
    }

    /// The store URL naming every member at `host` (the cluster must have been started
    /// with [`ClusterOptions::extra_client_host`] set to it).
    pub fn url_on(&self, host: std::net::IpAddr) -> StoreUrl {
        StoreUrl::Etcd {
            endpoints: self
                .members
                .iter()
                .map(|m| std::net::SocketAddr::new(host, m.client_port).to_string())
                .collect(),
            tls: self.tls.is_some(),
        }
    }

    /// The CA and client certificate of a cluster started with [`EtcdCluster::start_tls`].
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `i` has a live process (started and not killed).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.members.get_mut(i).and_then(|m| m.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILLs member `i` and reaps it. Killing a stopped member is a no-op.
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        let count = self.members.len();
        let member = self
            .members
            .get_mut(i)
            .ok_or(HarnessError::NoSuchMember { member: i, count })?;
        if let Some(mut child) = member.child.take() {
            // `Child::kill` is SIGKILL on Unix: no chance to flush or say goodbye.
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGSTOPs member `i`: it keeps its sockets open but answers nothing, like a hung
    /// or partitioned machine. [`EtcdCluster::resume`] undoes it; Drop still kills it.
    ///
    /// Returns once every thread of the process is stopped: `kill` only queues the
    /// signal, and on a loaded machine a thread can still answer a request shortly
    /// after it.
    pub fn pause(&mut self, i: usize) -> Result<(), HarnessError> {
        self.signal(i, "-STOP")?;
        let pid = self.members[i].child.as_ref().map(|c| c.id()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            if Instant::now() > deadline {
                return Err(HarnessError::Io {
                    what: format!("waiting for member {i} (pid {pid}) to stop"),
                    source: std::io::Error::other("threads still running after 5s"),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// SIGCONTs a member stopped by [`EtcdCluster::pause`].
    pub fn resume(&mut self, i: usize) -> Result<(), HarnessError> {
        self.signal(i, "-CONT")
    }

    /// Sends a signal with the `kill` command (this crate forbids `unsafe`, so no libc).
    fn signal(&mut self, i: usize, signal: &str) -> Result<(), HarnessError> {
        let count = self.members.len();
        let member = self
            .members
            .get(i)
            .ok_or(HarnessError::NoSuchMember { member: i, count })?;
        let Some(child) = member.child.as_ref() else {
            return Err(HarnessError::Unhealthy {
                member: i,
                port: member.metrics_port,
                reason: format!("cannot send {signal}: not running"),
                log: String::new(),
            });
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .map_err(|source| HarnessError::Io {
                what: format!("running kill {signal} {}", child.id()),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Io {
                what: format!("kill {signal} {}", child.id()),
                source: std::io::Error::other(status.to_string()),
            })
        }
    }

    /// SIGKILLs every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill(i);
        }
    }

    /// Starts member `i` again on its old ports and data, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.kill(i)?;
        self.spawn(i)?;
        self.wait_healthy(i).await
    }

    /// Starts every stopped member, then waits until all are healthy (a lone restarted
    /// member of a 3-member cluster cannot be healthy before it has a quorum).
    pub async fn restart_all(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                self.spawn(i)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await?;
        }
        Ok(())
    }

    /// Starts the process of member `i` (its data directory decides new vs. rejoin).
    fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let count = self.members.len();
        let member = self
            .members
            .get_mut(i)
            .ok_or(HarnessError::NoSuchMember { member: i, count })?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(|source| HarnessError::Io {
                what: format!("opening {}", member.log_path.display()),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| HarnessError::Io {
            what: format!("duplicating {}", member.log_path.display()),
            source,
        })?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let metrics_url = format!("http://127.0.0.1:{}", member.metrics_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let listen_clients = match self.extra_client_host {
            Some(h) => format!(
                "{client_url},{scheme}://{}",
                std::net::SocketAddr::new(h, member.client_port)
            ),
            None => client_url.clone(),
        };
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&listen_clients)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--listen-metrics-urls")
            .arg(&metrics_url)
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null());
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        if let Some(interval) = self.progress_notify_interval {
            cmd.arg(format!(
                "--experimental-watch-progress-notify-interval={}ms",
                interval.as_millis()
            ));
        }
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        // etcd reads ETCD_* variables as flags and refuses to start when one conflicts
        // with a flag: keep a developer's calicoctl settings out of the test members.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(&name);
            }
        }
        let child = cmd.spawn().map_err(|source| HarnessError::Io {
            what: format!("starting {}", self.bin),
            source,
        })?;
        member.child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `/health` with `"health":"true"`.
    pub async fn wait_healthy(&mut self, i: usize) -> Result<(), HarnessError> {
        let count = self.members.len();
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let member = self
                .members
                .get_mut(i)
                .ok_or(HarnessError::NoSuchMember { member: i, count })?;
            let port = member.metrics_port;
            let exited = match member.child.as_mut() {
                None => Some("not running".to_string()),
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(format!("exited: {status}")),
                    Ok(None) => None,
                    Err(e) => Some(format!("cannot wait: {e}")),
                },
            };
            if let Some(reason) = exited {
                let log = log_tail(&member.log_path);
                member.child = None;
                return Err(HarnessError::Unhealthy {
                    member: i,
                    port,
                    reason,
                    log,
                });
            }
            let last = match health(port).await {
                Ok(true) => return Ok(()),
                Ok(false) => "reports unhealthy".to_string(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Unhealthy {
                    member: i,
                    port,
                    reason: format!("not healthy after {HEALTH_TIMEOUT:?}: {last}"),
                    log: log_tail(&self.members[i].log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member that is the raft leader right now (from each member's
    /// `etcd_server_is_leader` metric), if one answers as leader.
    pub async fn leader(&mut self) -> Option<usize> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            let port = self.members[i].metrics_port;
            if let Ok(metrics) = http_get(port, "/metrics").await
                && metrics
                    .lines()
                    .any(|l| l.trim() == "etcd_server_is_leader 1")
            {
                return Some(i);
            }
        }
        None
    }

    /// The temporary directory holding data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The etcd binary to run: `TABBY_ETCD_BIN`, else [`DEFAULT_ETCD_BIN`], which must exist.
pub fn etcd_binary() -> Result<String, HarnessError> {
    let path = std::env::var("TABBY_ETCD_BIN").unwrap_or_else(|_| DEFAULT_ETCD_BIN.to_string());
    if Path::new(&path).is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NotInstalled { path })
    }
}

/// Picks `n` distinct free loopback ports. All listeners are held until every port is
/// picked so that the kernel cannot hand out the same port twice.
fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HarnessError::Io {
            what: "binding 127.0.0.1:0 to pick a free port".to_string(),
            source,
        })?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| HarnessError::Io {
            what: "reading a picked port".to_string(),
            source,
        })
}

/// One `GET /health` over plain HTTP; `Ok(true)` when etcd reports itself healthy.
async fn health(port: u16) -> Result<bool, String> {
    Ok(http_get(port, "/health")
        .await?
        .contains("\"health\":\"true\""))
}

/// The whole answer (headers and body) to one plain HTTP/1.0 `GET` on 127.0.0.1.
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path}: no answer within 2s")))
}

/// The last lines of a member's log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(15)..] {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// Makes a CA, a server certificate for IP 127.0.0.1 and a client certificate in `dir`
/// with the `openssl` command (P-256 keys: quick to make, accepted by etcd and rustls).
pub fn make_tls_files(dir: &Path) -> Result<TlsFiles, HarnessError> {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    let ca_key = dir.join("ca-key.pem");
    let p = |p: &Path| p.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca: Vec<String> = vec!["req".into(), "-x509".into()];
    ca.extend(ec.iter().map(|s| s.to_string()));
    ca.extend(
        [
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&files.ca),
            "-days",
            "2",
            "-subj",
            "/CN=tabby-test-ca",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    openssl("CA", &ca)?;
    let leaves = [
        (
            "server",
            &files.server_cert,
            &files.server_key,
            "serverAuth,clientAuth",
        ),
        (
            "client",
            &files.client_cert,
            &files.client_key,
            "clientAuth",
        ),
    ];
    for (name, cert, key, usage) in leaves {
        let csr = dir.join(format!("{name}.csr"));
        let ext = dir.join(format!("{name}.ext"));
        fs::write(
            &ext,
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .map_err(|e| HarnessError::Certificates {
            step: format!("writing {}", ext.display()),
            reason: e.to_string(),
        })?;
        let mut req: Vec<String> = vec!["req".into()];
        req.extend(ec.iter().map(|s| s.to_string()));
        req.extend(
            [
                "-keyout",
                &p(key),
                "-out",
                &p(&csr),
                "-subj",
                &format!("/CN=tabby-test-{name}"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        openssl(name, &req)?;
        let sign: Vec<String> = [
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&files.ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(cert),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        openssl(name, &sign)?;
    }
    Ok(files)
}

fn openssl(step: &str, args: &[String]) -> Result<(), HarnessError> {
    let out =
        Command::new("openssl")
            .args(args)
            .output()
            .map_err(|e| HarnessError::Certificates {
                step: step.to_string(),
                reason: format!("cannot run openssl (apt-get install openssl): {e}"),
            })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Certificates {
            step: step.to_string(),
            reason: format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// Whether every thread of process `pid` is in the stopped state (`T` in
/// `/proc/<pid>/task/<tid>/stat`). A process that is gone counts as stopped.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true;
        };
        // "tid (comm) S ...": the state follows the last ')', comm may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t")
    })
}
