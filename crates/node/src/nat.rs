//! Outgoing NAT (Calico's `natOutgoing`) on nftables: traffic from a pool with
//! natOutgoing to anywhere outside every pool is masqueraded to the node's address.
//! [`crate::firewall::render`] puts the sets and chain into the `tabby` table of each
//! family beside the policy; [`Nft`] applies it ([`NftLib`] through a long-lived
//! libnftables context, [`NftCli`] by running `nft`, [`FakeNft`] records).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use ipnet::IpNet;
use tabby_api::ippool::IPPoolSpec;

/// The nftables table Tabby owns, one per family.
pub const TABLE: &str = "tabby";
/// The set of pools whose traffic is masqueraded (Calico's `masq-ipam-pools`).
pub const MASQ_SET: &str = "masq-ipam-pools";
/// The set of all pools: destinations that are never masqueraded (Calico's
/// `all-ipam-pools`, today `network-ip-pools`).
pub const ALL_SET: &str = "all-ipam-pools";
/// The NAT chain, hooked at postrouting with srcnat priority.
pub const NAT_CHAIN: &str = "postrouting";

/// What the NAT rules are computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatInputs {
    /// CIDRs of pools with natOutgoing that are not disabled.
    pub masq_pools: Vec<IpNet>,
    /// CIDRs of every pool.
    pub all_pools: Vec<IpNet>,
}

impl NatInputs {
    /// From IPPool specs: every pool with a CIDR goes into `all_pools`, those with
    /// natOutgoing (also the v1 spelling) and not disabled into `masq_pools`.
    pub fn from_pools<'a>(pools: impl IntoIterator<Item = &'a IPPoolSpec>) -> NatInputs {
        let mut inputs = NatInputs::default();
        for pool in pools {
            let Some(cidr) = pool.cidr else { continue };
            inputs.all_pools.push(cidr);
            if pool.effective_nat_outgoing() && !pool.is_disabled() {
                inputs.masq_pools.push(cidr);
            }
        }
        inputs
    }
}

/// An nftables address family Tabby programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `ip`
    Ip,
    /// `ip6`
    Ip6,
}

impl Family {
    /// Both families, in the order they are rendered.
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    /// The nft family keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    pub(crate) fn addr_type(self) -> &'static str {
        match self {
            Family::Ip => "ipv4_addr",
            Family::Ip6 => "ipv6_addr",
        }
    }

    pub(crate) fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::Ip, IpNet::V4(_)) | (Family::Ip6, IpNet::V6(_))
        )
    }
}

/// Errors of applying or reading the nftables state.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The `nft` program is not installed.
    #[error("nft not found: install nftables")]
    NftMissing,
    /// A program could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// nft (or `ip netns exec`) exited with an error.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// nft printed JSON we cannot read.
    #[error("{cmd}: cannot parse the JSON output: {reason}")]
    Parse {
        /// The command line.
        cmd: String,
        /// Why.
        reason: String,
    },
    /// An injected failure (from [`FakeNft::fail_next`]).
    #[error("{0}")]
    Injected(String),
}

/// The script that removes both `tabby` tables, whether they exist or not.
pub fn delete_script() -> String {
    Family::ALL
        .iter()
        .map(|f| {
            let f = f.as_str();
            format!("table {f} {TABLE} {{}}\ndelete table {f} {TABLE}\n")
        })
        .collect()
}

/// nftables as the agent needs it.
pub trait Nft: Send + Sync {
    /// Runs an nft script as one transaction.
    fn apply(&self, script: &str) -> Result<(), NatError>;
    /// Runs an nft JSON batch (`{"nftables": [...]}`) as one transaction.
    fn apply_json(&self, batch: &serde_json::Value) -> Result<(), NatError>;
    /// `nft -j list table <family> tabby`, or `None` if the table does not exist.
    fn list_table(&self, family: &str) -> Result<Option<serde_json::Value>, NatError>;
    /// Whether the `tabby` table of `family` exists. Cheaper than
    /// [`Nft::list_table`] where it lists table names only (not the table's sets and
    /// their elements, which at cluster scale are most of the ruleset).
    fn has_table(&self, family: &str) -> Result<bool, NatError> {
        self.list_table(family).map(|t| t.is_some())
    }
    /// Removes the `tabby` tables of both families (absent ones are fine).
    fn delete_tables(&self) -> Result<(), NatError>;
}

/// The real thing: runs the `nft` program, inside `ip netns exec <netns>` when set.
#[derive(Clone, Debug, Default)]
pub struct NftCli {
    /// A named network namespace (`/run/netns/<name>`), or the current one.
    pub netns: Option<String>,
}

impl NftCli {
    /// For the current network namespace.
    pub fn new() -> NftCli {
        NftCli { netns: None }
    }

    /// For the named network namespace.
    pub fn in_netns(name: impl Into<String>) -> NftCli {
        NftCli {
            netns: Some(name.into()),
        }
    }

    fn command(&self, nft: &Path, args: &[&str]) -> (Command, String) {
        let mut shown = String::new();
        let mut cmd = match &self.netns {
            Some(ns) => {
                shown.push_str(&format!("ip netns exec {ns} "));
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(nft);
                c
            }
            None => Command::new(nft),
        };
        shown.push_str("nft ");
        shown.push_str(&args.join(" "));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (cmd, shown)
    }

    /// Runs nft with `args`, feeding it `stdin`.
    fn run(&self, args: &[&str], stdin: &str) -> Result<RunOutput, NatError> {
        let nft = find_nft().ok_or(NatError::NftMissing)?;
        let (mut cmd, shown) = self.command(&nft, args);
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound && self.netns.is_none() {
                NatError::NftMissing
            } else {
                NatError::Spawn {
                    cmd: shown.clone(),
                    source,
                }
            }
        })?;
        if let Some(mut pipe) = child.stdin.take() {
            // A write error (nft exited early) shows up in the exit status below.
            let _ = pipe.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NatError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
        Ok(RunOutput {
            ok: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            cmd: shown,
        })
    }
}

struct RunOutput {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
    cmd: String,
}

impl RunOutput {
    fn failed(self) -> NatError {
        NatError::Failed {
            cmd: self.cmd,
            status: self.status,
            stderr: self.stderr,
        }
    }
}

/// `nft` on PATH, else in the sbin directories a daemon's PATH may lack.
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
}

impl Nft for NftCli {
    fn apply(&self, script: &str) -> Result<(), NatError> {
        let out = self.run(&["-f", "-"], script)?;
        if out.ok { Ok(()) } else { Err(out.failed()) }
    }

    fn apply_json(&self, batch: &serde_json::Value) -> Result<(), NatError> {
        let out = self.run(&["-j", "-f", "-"], &batch.to_string())?;
        if out.ok { Ok(()) } else { Err(out.failed()) }
    }

    fn list_table(&self, family: &str) -> Result<Option<serde_json::Value>, NatError> {
        let out = self.run(&["-j", "list", "table", family, TABLE], "")?;
        if !out.ok {
            // nft answers a missing table with ENOENT's text.
            if out.stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(out.failed());
        }
        serde_json::from_str(&out.stdout)
            .map(Some)
            .map_err(|e| NatError::Parse {
                cmd: out.cmd,
                reason: e.to_string(),
            })
    }

    fn delete_tables(&self) -> Result<(), NatError> {
        self.apply(&delete_script())
    }

    fn has_table(&self, family: &str) -> Result<bool, NatError> {
        let out = self.run(&["-j", "list", "tables", family], "")?;
        if !out.ok {
            return Err(out.failed());
        }
        tables_hold_ours(&out.stdout, family).map_err(|reason| NatError::Parse {
            cmd: out.cmd,
            reason,
        })
    }
}

/// Whether `nft -j list tables <family>` output names the `tabby` table.
fn tables_hold_ours(json: &str, family: &str) -> Result<bool, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(v["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|i| i["table"]["name"] == TABLE && i["table"]["family"] == family)
    }))
}

/// libnftables in this process: one context (one netlink socket) kept open for
/// the agent's life, in the agent's own network namespace. Applying a batch then
/// costs the kernel commit, not a process start, nft's full cache fetch and the
/// socket close that waits for deleted rules to be freed (see
/// [`tabby_sys::nftables`]). Same behaviour as [`NftCli`] otherwise.
pub struct NftLib {
    session: Mutex<tabby_sys::nftables::Session>,
}

impl NftLib {
    /// Opens the context, or says why not (library missing).
    pub fn open() -> Result<NftLib, String> {
        tabby_sys::nftables::Session::open().map(|s| NftLib {
            session: Mutex::new(s),
        })
    }

    fn run(&self, what: &str, commands: &str, json: bool) -> Result<String, NatError> {
        // A panic while holding the lock cannot leave the context half-used in a
        // way the next run would see: each run starts from its own buffers.
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        s.run(commands, json).map_err(|e| NatError::Failed {
            cmd: format!("libnftables: {what}"),
            status: "error".to_string(),
            stderr: e.0,
        })
    }
}

impl std::fmt::Debug for NftLib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NftLib")
    }
}

impl Nft for NftLib {
    fn apply(&self, script: &str) -> Result<(), NatError> {
        self.run("nft -f -", script, false).map(drop)
    }

    fn apply_json(&self, batch: &serde_json::Value) -> Result<(), NatError> {
        self.run("nft -j -f -", &batch.to_string(), true).map(drop)
    }

    fn list_table(&self, family: &str) -> Result<Option<serde_json::Value>, NatError> {
        let what = format!("nft -j list table {family} {TABLE}");
        match self.run(&what, &format!("list table {family} {TABLE}"), true) {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|e| NatError::Parse {
                    cmd: what,
                    reason: e.to_string(),
                }),
            Err(NatError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn delete_tables(&self) -> Result<(), NatError> {
        self.apply(&delete_script())
    }

    fn has_table(&self, family: &str) -> Result<bool, NatError> {
        let what = format!("nft -j list tables {family}");
        let out = self.run(&what, &format!("list tables {family}"), true)?;
        tables_hold_ours(&out, family).map_err(|reason| NatError::Parse { cmd: what, reason })
    }
}

/// The agent's nftables: [`NftLib`] when libnftables loads, else [`NftCli`]
/// (logged once, with the reason).
pub fn best_nft() -> Box<dyn Nft> {
    match NftLib::open() {
        Ok(lib) => Box::new(lib),
        Err(why) => {
            tracing::warn!(reason = %why, "libnftables unavailable; running the nft program per batch");
            Box::new(NftCli::new())
        }
    }
}

/// One call recorded by [`FakeNft`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftCall {
    /// [`Nft::apply`] with this script.
    Apply(String),
    /// [`Nft::apply_json`] with this batch.
    ApplyJson(serde_json::Value),
    /// [`Nft::list_table`] of this family.
    List(String),
    /// [`Nft::delete_tables`].
    DeleteTables,
}

/// An in-memory [`Nft`] for unit tests: records every call and keeps the last
/// applied script as the "kernel" state.
#[derive(Debug, Default)]
pub struct FakeNft {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<NftCall>,
    current: Option<String>,
    current_json: Option<serde_json::Value>,
    fail_next: Option<String>,
}

impl FakeNft {
    /// An empty fake.
    pub fn new() -> FakeNft {
        FakeNft::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<NftCall> {
        self.state().calls.clone()
    }

    /// The scripts applied so far, in order.
    pub fn scripts(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter_map(|c| match c {
                NftCall::Apply(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// The script in effect: the last one applied since the last delete.
    pub fn current(&self) -> Option<String> {
        self.state().current.clone()
    }

    /// The JSON batch in effect: the last one applied since the last delete.
    pub fn current_json(&self) -> Option<serde_json::Value> {
        self.state().current_json.clone()
    }

    /// Makes the next call fail with `message`.
    pub fn fail_next(&self, message: impl Into<String>) {
        self.state().fail_next = Some(message.into());
    }

    fn take_failure(st: &mut FakeState) -> Result<(), NatError> {
        match st.fail_next.take() {
            Some(m) => Err(NatError::Injected(m)),
            None => Ok(()),
        }
    }
}

impl Nft for FakeNft {
    fn apply(&self, script: &str) -> Result<(), NatError> {
        let mut st = self.state();
        st.calls.push(NftCall::Apply(script.to_string()));
        FakeNft::take_failure(&mut st)?;
        st.current = Some(script.to_string());
        st.current_json = None;
        Ok(())
    }

    fn apply_json(&self, batch: &serde_json::Value) -> Result<(), NatError> {
        let mut st = self.state();
        st.calls.push(NftCall::ApplyJson(batch.clone()));
        FakeNft::take_failure(&mut st)?;
        st.current_json = Some(batch.clone());
        st.current = None;
        Ok(())
    }

    fn list_table(&self, family: &str) -> Result<Option<serde_json::Value>, NatError> {
        let mut st = self.state();
        st.calls.push(NftCall::List(family.to_string()));
        FakeNft::take_failure(&mut st)?;
        let marker = format!("table {family} {TABLE} {{\n");
        let in_json = st.current_json.as_ref().is_some_and(|b| {
            b["nftables"].as_array().is_some_and(|cmds| {
                cmds.iter().any(|c| {
                    c["add"]["table"]["family"] == family && c["add"]["table"]["name"] == TABLE
                })
            })
        });
        Ok(st
            .current
            .as_ref()
            .filter(|s| s.contains(&marker))
            .map(|_| ())
            .or(in_json.then_some(()))
            .map(|_| {
                serde_json::json!({ "nftables": [
                    { "table": { "family": family, "name": TABLE } }
                ]})
            }))
    }

    fn delete_tables(&self) -> Result<(), NatError> {
        let mut st = self.state();
        st.calls.push(NftCall::DeleteTables);
        FakeNft::take_failure(&mut st)?;
        st.current = None;
        st.current_json = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_names_are_read_from_list_tables() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "filter", "handle": 1}},
            {"table": {"family": "ip", "name": "tabby", "handle": 2}}]}"#;
        assert_eq!(tables_hold_ours(json, "ip"), Ok(true));
        assert_eq!(tables_hold_ours(json, "ip6"), Ok(false));
        let none = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#;
        assert_eq!(tables_hold_ours(none, "ip"), Ok(false));
        assert!(tables_hold_ours("not json", "ip").is_err());
    }

    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn from_pools_follows_nat_outgoing_and_disabled() {
        let pool = |cidr: &str, nat: bool, disabled: bool| IPPoolSpec {
            cidr: Some(cidr.parse().unwrap()),
            nat_outgoing: Some(nat),
            disabled: Some(disabled),
            ..Default::default()
        };
        let pools = [
            pool("100.64.0.0/16", true, false),
            pool("100.65.0.0/16", true, true),
            pool("100.66.0.0/16", false, false),
            IPPoolSpec::default(),
        ];
        let inputs = NatInputs::from_pools(&pools);
        assert_eq!(inputs.masq_pools, nets(&["100.64.0.0/16"]));
        assert_eq!(
            inputs.all_pools,
            nets(&["100.64.0.0/16", "100.65.0.0/16", "100.66.0.0/16"])
        );
    }

    #[test]
    fn delete_script_is_idempotent_in_form() {
        assert_eq!(
            delete_script(),
            "table ip tabby {}\ndelete table ip tabby\ntable ip6 tabby {}\ndelete table ip6 tabby\n"
        );
    }

    #[test]
    fn fake_records_and_tracks_state() {
        let fake = FakeNft::new();
        let batch = crate::firewall::render(Some(&NatInputs::default()), None);
        fake.apply_json(&batch).unwrap();
        assert!(fake.list_table("ip").unwrap().is_some());
        assert!(fake.list_table("ip6").unwrap().is_some());
        assert_eq!(fake.current_json(), Some(batch.clone()));
        fake.fail_next("boom");
        assert_eq!(fake.delete_tables().unwrap_err().to_string(), "boom");
        fake.delete_tables().unwrap();
        assert_eq!(fake.list_table("ip").unwrap(), None);
        assert_eq!(
            fake.calls(),
            vec![
                NftCall::ApplyJson(batch),
                NftCall::List("ip".into()),
                NftCall::List("ip6".into()),
                NftCall::DeleteTables,
                NftCall::DeleteTables,
                NftCall::List("ip".into()),
            ]
        );
    }
}
