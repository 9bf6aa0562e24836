//! Bandwidth limits on a workload's host-side interface with Linux traffic control,
//! as Calico and the CNI bandwidth plugin set them: traffic towards the pod is shaped
//! by a `tbf` root qdisc on the host veth (its egress); traffic from the pod enters
//! the host veth's ingress, is redirected (u32 match-all, `mirred`) to an `ifb`
//! device of its own, and shaped by a `tbf` root qdisc there.
//!
//! [`TrafficControl`] reads back, applies (idempotently: only what differs is
//! changed) and removes that shaping; [`TcCli`] runs the `tc` and `ip` binaries,
//! [`FakeTc`] keeps it in memory. Ours is told apart by the root tbf's handle
//! ([`TBF_HANDLE`]) and the ifb's alias ([`IFB_ALIAS_PREFIX`]). Packet rates would
//! need the `police` action (not used here; the node agent warns about them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// The alias an ifb device we made carries: `tabby-qos:<interface>`.
pub const IFB_ALIAS_PREFIX: &str = "tabby-qos:";
/// The most time a packet may wait in a tbf queue (what sizes its limit), in µs;
/// the CNI bandwidth plugin's 25 ms.
pub const LATENCY_US: u32 = 25_000;
/// The handle of the root tbf qdiscs we make ("7ab", tab): a root qdisc with another
/// handle is someone else's and is left alone unless we need the root ourselves.
pub const TBF_HANDLE: &str = "7ab:";
/// Longest interface name the kernel takes.
const IFNAMSIZ_MAX: usize = 15;

/// A token bucket: the rate, the bucket size and an optional peak rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tbf {
    /// Bits per second.
    pub rate: u64,
    /// Bucket size, bytes.
    pub burst: u32,
    /// A second, smaller bucket limiting the peak rate.
    pub peak: Option<Peak>,
}

/// The peak-rate bucket of a [`Tbf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peak {
    /// Bits per second.
    pub rate: u64,
    /// Bucket size (tbf's `mtu`/`minburst`), bytes.
    pub minburst: u32,
}

impl Tbf {
    /// True when `actual` (as read back from the kernel) is this bucket: the rate in
    /// bytes per second equal, the burst and minburst within the kernel's rounding
    /// (it stores buckets as time), the peak rate equal.
    pub fn matches(&self, actual: &Tbf) -> bool {
        let close = |want: u64, have: u64| want.abs_diff(have) <= (want / 100).max(64);
        self.rate / 8 == actual.rate / 8
            && close(u64::from(self.burst), u64::from(actual.burst))
            && match (self.peak, actual.peak) {
                (None, None) => true,
                (Some(w), Some(a)) => {
                    w.rate / 8 == a.rate / 8
                        && u64::from(w.minburst).abs_diff(u64::from(a.minburst)) <= 16
                }
                _ => false,
            }
    }

    fn args(&self) -> Vec<String> {
        let mut v = vec![
            "tbf".to_string(),
            "rate".into(),
            format!("{}bit", self.rate),
            "burst".into(),
            self.burst.to_string(),
            "latency".into(),
            format!("{LATENCY_US}us"),
        ];
        if let Some(p) = self.peak {
            v.extend([
                "peakrate".into(),
                format!("{}bit", p.rate),
                "mtu".into(),
                p.minburst.to_string(),
            ]);
        }
        v
    }
}

impl std::fmt::Display for Tbf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bit/s burst {} B", self.rate, self.burst)?;
        if let Some(p) = self.peak {
            write!(f, " peak {} bit/s minburst {} B", p.rate, p.minburst)?;
        }
        Ok(())
    }
}

/// The shaping of one workload interface, in the pod's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// Towards the pod (the host veth's egress).
    pub ingress: Option<Tbf>,
    /// From the pod (the host veth's ingress, through the ifb).
    pub egress: Option<Tbf>,
}

impl Shaping {
    /// No limit either way.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    /// True when `actual` is this shaping (see [`Tbf::matches`]).
    pub fn matches(&self, actual: &Shaping) -> bool {
        let same = |w: &Option<Tbf>, a: &Option<Tbf>| match (w, a) {
            (None, None) => true,
            (Some(w), Some(a)) => w.matches(a),
            _ => false,
        };
        same(&self.ingress, &actual.ingress) && same(&self.egress, &actual.egress)
    }
}

/// The ifb device for `iface`: `bw<iface>`, or, when that is longer than the
/// kernel's 15 characters, `bw` + the first 6 characters + 7 hex digits of a hash of
/// the whole name (so two long names with a common start still differ).
pub fn ifb_name(iface: &str) -> String {
    let plain = format!("bw{iface}");
    if plain.len() <= IFNAMSIZ_MAX {
        return plain;
    }
    // FNV-1a, 32 bits: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in iface.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let head: String = iface.chars().take(6).collect();
    format!("bw{head}{:07x}", h & 0x0fff_ffff)
}

/// What a traffic-control operation failed with; each names the command (and so
/// the interface).
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The binary is not installed.
    #[error("{program} not found in PATH (install iproute2)")]
    Missing {
        /// `tc` or `ip`.
        program: String,
    },
    /// The command could not be started.
    #[error("{cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("{cmd}: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr (or its exit status).
        stderr: String,
    },
    /// The command's output was not what we expected.
    #[error("{cmd}: cannot read its output: {reason}")]
    Parse {
        /// The command line.
        cmd: String,
        /// Why.
        reason: String,
    },
}

/// Reading and changing workload shaping in one network namespace.
pub trait TrafficControl: Send + Sync {
    /// The shaping on `iface` now.
    fn read(&self, iface: &str) -> Result<Shaping, TcError>;

    /// The shaping of every interface that has some (ifb devices left out).
    fn read_all(&self) -> Result<BTreeMap<String, Shaping>, TcError>;

    /// Makes `iface` carry exactly `want` (an empty one removes ours, the ifb too),
    /// changing only what differs. Returns whether anything changed.
    fn apply(&self, iface: &str, want: &Shaping) -> Result<bool, TcError>;

    /// The ifb devices we made (named by their alias), mapped to their interface.
    fn owned_ifbs(&self) -> Result<BTreeMap<String, String>, TcError>;

    /// Deletes the ifb device `ifb`.
    fn delete_ifb(&self, ifb: &str) -> Result<(), TcError>;
}

/// What the kernel has on one interface, in detail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Observed {
    root_tbf: Option<Tbf>,
    ingress_qdisc: bool,
    redirect_to: Option<String>,
    ifb_exists: bool,
    ifb_up: bool,
    ifb_tbf: Option<Tbf>,
}

impl Observed {
    fn shaping(&self, iface: &str) -> Shaping {
        let ifb = ifb_name(iface);
        Shaping {
            ingress: self.root_tbf,
            egress: if self.redirect_to.as_deref() == Some(ifb.as_str()) {
                self.ifb_tbf
            } else {
                None
            },
        }
    }
}

/// [`TrafficControl`] with the `tc` and `ip` binaries (iproute2).
#[derive(Clone, Debug, Default)]
pub struct TcCli {
    /// A named network namespace (`tc -n`), or the current one.
    pub netns: Option<String>,
}

impl TcCli {
    /// For the current network namespace.
    pub fn new() -> TcCli {
        TcCli { netns: None }
    }

    /// For the named network namespace (`/run/netns/<name>`).
    pub fn in_netns(name: impl Into<String>) -> TcCli {
        TcCli {
            netns: Some(name.into()),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, TcError> {
        let bin = find_program(program).ok_or_else(|| TcError::Missing {
            program: program.into(),
        })?;
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = &self.netns {
            full.extend(["-n", ns.as_str()]);
        }
        full.extend(args);
        let cmd = format!("{program} {}", full.join(" "));
        let out = Command::new(&bin)
            .args(&full)
            .output()
            .map_err(|source| TcError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(TcError::Command {
                cmd,
                stderr: if stderr.is_empty() {
                    out.status.to_string()
                } else {
                    stderr
                },
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn json(&self, program: &str, args: &[&str]) -> Result<Vec<Value>, TcError> {
        let text = self.run(program, args)?;
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        match serde_json::from_str(&text) {
            Ok(Value::Array(v)) => Ok(v),
            Ok(other) => Err(TcError::Parse {
                cmd: format!("{program} {}", args.join(" ")),
                reason: format!("not a JSON array: {other}"),
            }),
            Err(e) => Err(TcError::Parse {
                cmd: format!("{program} {}", args.join(" ")),
                reason: e.to_string(),
            }),
        }
    }

    /// The root tbf of `dev` (peak rate from the text output: `tc -j` leaves it out).
    fn root_tbf(&self, dev: &str, qdiscs: &[Value]) -> Result<Option<Tbf>, TcError> {
        let Some(q) = qdiscs.iter().find(|q| {
            q["kind"] == "tbf"
                && q["handle"] == TBF_HANDLE
                && q["root"].as_bool() == Some(true)
                && q.get("dev").is_none_or(|d| d == dev)
        }) else {
            return Ok(None);
        };
        let mut tbf = tbf_from_json(&q["options"]).ok_or_else(|| TcError::Parse {
            cmd: format!("tc -j qdisc show dev {dev}"),
            reason: format!("tbf without rate or burst: {q}"),
        })?;
        if let Some(minburst) = q["options"]["minburst"].as_u64() {
            let text = self.run("tc", &["-d", "qdisc", "show", "dev", dev, "root"])?;
            let rate = peakrate_from_text(&text).ok_or_else(|| TcError::Parse {
                cmd: format!("tc -d qdisc show dev {dev} root"),
                reason: format!("a tbf with minburst but no peakrate: {text}"),
            })?;
            tbf.peak = Some(Peak {
                rate,
                minburst: u32::try_from(minburst).unwrap_or(u32::MAX),
            });
        }
        Ok(Some(tbf))
    }

    fn ifb_links(&self) -> Result<BTreeMap<String, (bool, Option<String>)>, TcError> {
        let links = self.json("ip", &["-j", "-d", "link", "show", "type", "ifb"])?;
        Ok(links
            .iter()
            .filter_map(|l| {
                let name = l["ifname"].as_str()?.to_string();
                let up = l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "UP"));
                let alias = l["ifalias"].as_str().map(str::to_string);
                Some((name, (up, alias)))
            })
            .collect())
    }

    fn redirect_target(&self, iface: &str) -> Result<Option<String>, TcError> {
        let filters = self.json(
            "tc",
            &["-j", "filter", "show", "dev", iface, "parent", "ffff:"],
        )?;
        Ok(filters.iter().find_map(|f| {
            f["options"]["actions"].as_array()?.iter().find_map(|a| {
                (a["kind"] == "mirred" && a["mirred_action"] == "redirect")
                    .then(|| a["to_dev"].as_str().map(str::to_string))
                    .flatten()
            })
        }))
    }

    fn observe(&self, iface: &str) -> Result<Observed, TcError> {
        let qdiscs = self.json("tc", &["-j", "qdisc", "show", "dev", iface])?;
        let mut o = Observed {
            root_tbf: self.root_tbf(iface, &qdiscs)?,
            ingress_qdisc: qdiscs.iter().any(|q| q["kind"] == "ingress"),
            ..Default::default()
        };
        if o.ingress_qdisc {
            o.redirect_to = self.redirect_target(iface)?;
        }
        let ifb = ifb_name(iface);
        if let Some((up, _)) = self.ifb_links()?.get(&ifb) {
            o.ifb_exists = true;
            o.ifb_up = *up;
            let q = self.json("tc", &["-j", "qdisc", "show", "dev", &ifb])?;
            o.ifb_tbf = self.root_tbf(&ifb, &q)?;
        }
        Ok(o)
    }
}

impl TrafficControl for TcCli {
    fn read(&self, iface: &str) -> Result<Shaping, TcError> {
        Ok(self.observe(iface)?.shaping(iface))
    }

    fn read_all(&self) -> Result<BTreeMap<String, Shaping>, TcError> {
        let qdiscs = self.json("tc", &["-j", "qdisc", "show"])?;
        let ifbs = self.ifb_links()?;
        let mut by_dev: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for q in qdiscs {
            if let Some(d) = q["dev"].as_str() {
                by_dev.entry(d.to_string()).or_default().push(q);
            }
        }
        let mut out = BTreeMap::new();
        for (dev, qs) in &by_dev {
            if ifbs.contains_key(dev) {
                continue;
            }
            let mut o = Observed {
                root_tbf: self.root_tbf(dev, qs)?,
                ingress_qdisc: qs.iter().any(|q| q["kind"] == "ingress"),
                ..Default::default()
            };
            if o.ingress_qdisc {
                o.redirect_to = self.redirect_target(dev)?;
                if let Some(to) = &o.redirect_to
                    && let Some(ifb_qs) = by_dev.get(to)
                {
                    o.ifb_tbf = self.root_tbf(to, ifb_qs)?;
                }
            }
            let s = o.shaping(dev);
            if !s.is_empty() {
                out.insert(dev.clone(), s);
            }
        }
        Ok(out)
    }

    fn apply(&self, iface: &str, want: &Shaping) -> Result<bool, TcError> {
        let have = self.observe(iface)?;
        let mut changed = false;
        // Towards the pod: the root qdisc of the host veth.
        match (&want.ingress, &have.root_tbf) {
            (Some(w), Some(h)) if w.matches(h) => {}
            (Some(w), _) => {
                let mut args = vec![
                    "qdisc", "replace", "dev", iface, "root", "handle", TBF_HANDLE,
                ];
                let tbf = w.args();
                args.extend(tbf.iter().map(String::as_str));
                self.run("tc", &args)?;
                changed = true;
            }
            (None, Some(_)) => {
                self.run(
                    "tc",
                    &["qdisc", "del", "dev", iface, "root", "handle", TBF_HANDLE],
                )?;
                changed = true;
            }
            (None, None) => {}
        }
        // From the pod: ingress qdisc, redirect to the ifb, tbf on the ifb.
        let ifb = ifb_name(iface);
        match &want.egress {
            Some(w) => {
                if !have.ifb_exists {
                    self.run("ip", &["link", "add", "name", &ifb, "type", "ifb"])?;
                    changed = true;
                }
                if !have.ifb_exists || !have.ifb_up {
                    let alias = format!("{IFB_ALIAS_PREFIX}{iface}");
                    self.run("ip", &["link", "set", "dev", &ifb, "alias", &alias, "up"])?;
                    changed = true;
                }
                if !have.ifb_tbf.as_ref().is_some_and(|h| w.matches(h)) {
                    let mut args = vec![
                        "qdisc", "replace", "dev", &ifb, "root", "handle", TBF_HANDLE,
                    ];
                    let tbf = w.args();
                    args.extend(tbf.iter().map(String::as_str));
                    self.run("tc", &args)?;
                    changed = true;
                }
                if have.redirect_to.as_deref() != Some(ifb.as_str()) {
                    if have.ingress_qdisc {
                        // Someone else's filters, or a stale redirect: start clean.
                        self.run("tc", &["qdisc", "del", "dev", iface, "ingress"])?;
                    }
                    self.run(
                        "tc",
                        &["qdisc", "add", "dev", iface, "handle", "ffff:", "ingress"],
                    )?;
                    self.run(
                        "tc",
                        &[
                            "filter", "add", "dev", iface, "parent", "ffff:", "prio", "1",
                            "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred",
                            "egress", "redirect", "dev", &ifb,
                        ],
                    )?;
                    changed = true;
                }
            }
            None => {
                // Only our redirect goes; an ingress qdisc redirecting elsewhere is
                // someone else's.
                if have.ingress_qdisc && have.redirect_to.as_deref() == Some(ifb.as_str()) {
                    self.run("tc", &["qdisc", "del", "dev", iface, "ingress"])?;
                    changed = true;
                }
                if have.ifb_exists {
                    self.delete_ifb(&ifb)?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    fn owned_ifbs(&self) -> Result<BTreeMap<String, String>, TcError> {
        Ok(self
            .ifb_links()?
            .into_iter()
            .filter_map(|(name, (_, alias))| {
                let iface = alias?.strip_prefix(IFB_ALIAS_PREFIX)?.to_string();
                Some((name, iface))
            })
            .collect())
    }

    fn delete_ifb(&self, ifb: &str) -> Result<(), TcError> {
        self.run("ip", &["link", "del", "dev", ifb]).map(|_| ())
    }
}

fn tbf_from_json(opts: &Value) -> Option<Tbf> {
    let bytes_per_sec = opts["rate"].as_u64()?;
    let burst = opts["burst"].as_u64()?;
    Some(Tbf {
        rate: bytes_per_sec * 8,
        burst: u32::try_from(burst).unwrap_or(u32::MAX),
        peak: None,
    })
}

/// The `peakrate` of `tc qdisc show` text: tc prints it as a whole number of
/// `bit`, `Kbit`, `Mbit`, `Gbit` or `Tbit` (only as a multiple when exact).
pub fn peakrate_from_text(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "peakrate")?;
    parse_tc_rate(words.next()?)
}

fn parse_tc_rate(s: &str) -> Option<u64> {
    let s = s.strip_suffix("bit")?;
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1_000),
        'M' => (&s[..s.len() - 1], 1_000_000),
        'G' => (&s[..s.len() - 1], 1_000_000_000),
        'T' => (&s[..s.len() - 1], 1_000_000_000_000),
        _ => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    // Older iproute2 prints fractions ("1.5Mbit").
    let f: f64 = num.parse().ok()?;
    Some((f * mult as f64).round() as u64)
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An in-memory [`TrafficControl`]: interfaces and their shaping, the ifbs made, and
/// a log of every change.
#[derive(Debug, Default)]
pub struct FakeTc {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    shaping: BTreeMap<String, Shaping>,
    ifbs: BTreeMap<String, String>,
    calls: Vec<String>,
}

impl FakeTc {
    /// An empty fake.
    pub fn new() -> FakeTc {
        FakeTc::default()
    }

    /// The changes made so far, e.g. `apply cali1 in=... out=-`, `delete-ifb bwcali1`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().expect("lock poisoned").calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.state.lock().expect("lock poisoned").calls.clear();
    }

    /// Sets what the "kernel" has on `iface` (drift, or state from before a restart).
    pub fn set(&self, iface: &str, s: Shaping) {
        let mut st = self.state.lock().expect("lock poisoned");
        if s.is_empty() {
            st.shaping.remove(iface);
        } else {
            st.shaping.insert(iface.to_string(), s);
        }
        if s.egress.is_some() {
            st.ifbs.insert(ifb_name(iface), iface.to_string());
        }
    }
}

impl TrafficControl for FakeTc {
    fn read(&self, iface: &str) -> Result<Shaping, TcError> {
        let st = self.state.lock().expect("lock poisoned");
        Ok(st.shaping.get(iface).copied().unwrap_or_default())
    }

    fn read_all(&self) -> Result<BTreeMap<String, Shaping>, TcError> {
        Ok(self.state.lock().expect("lock poisoned").shaping.clone())
    }

    fn apply(&self, iface: &str, want: &Shaping) -> Result<bool, TcError> {
        let mut st = self.state.lock().expect("lock poisoned");
        let have = st.shaping.get(iface).copied().unwrap_or_default();
        if want.matches(&have) {
            return Ok(false);
        }
        let show = |t: &Option<Tbf>| t.map_or("-".to_string(), |t| t.rate.to_string());
        st.calls.push(format!(
            "apply {iface} in={} out={}",
            show(&want.ingress),
            show(&want.egress)
        ));
        if want.is_empty() {
            st.shaping.remove(iface);
        } else {
            st.shaping.insert(iface.to_string(), *want);
        }
        if want.egress.is_some() {
            st.ifbs.insert(ifb_name(iface), iface.to_string());
        } else {
            st.ifbs.remove(&ifb_name(iface));
        }
        Ok(true)
    }

    fn owned_ifbs(&self) -> Result<BTreeMap<String, String>, TcError> {
        Ok(self.state.lock().expect("lock poisoned").ifbs.clone())
    }

    fn delete_ifb(&self, ifb: &str) -> Result<(), TcError> {
        let mut st = self.state.lock().expect("lock poisoned");
        st.calls.push(format!("delete-ifb {ifb}"));
        st.ifbs.remove(ifb);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_fit_and_stay_distinct() {
        assert_eq!(ifb_name("caliqa"), "bwcaliqa");
        let a = ifb_name("cali12345678901");
        let b = ifb_name("cali12345678902");
        assert_eq!(a.len(), 15, "{a}");
        assert!(a.starts_with("bwcali12"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, ifb_name("cali12345678901"), "deterministic");
    }

    #[test]
    fn tc_rates_parse() {
        assert_eq!(parse_tc_rate("20Mbit"), Some(20_000_000));
        assert_eq!(parse_tc_rate("20500Kbit"), Some(20_500_000));
        assert_eq!(parse_tc_rate("999bit"), Some(999));
        assert_eq!(parse_tc_rate("1.5Gbit"), Some(1_500_000_000));
        assert_eq!(parse_tc_rate("fast"), None);
        let text = "qdisc tbf 1: root refcnt 2 rate 10Mbit burst 32Kb/1 mpu 0b peakrate 20Mbit mtu 2000b/1 mpu 0b lat 25ms";
        assert_eq!(peakrate_from_text(text), Some(20_000_000));
        assert_eq!(peakrate_from_text("qdisc tbf 1: root rate 10Mbit"), None);
    }

    #[test]
    fn matching_allows_kernel_rounding_only() {
        let want = Tbf {
            rate: 10_000_000,
            burst: 32_768,
            peak: None,
        };
        let read = Tbf {
            burst: 32_767,
            ..want
        };
        assert!(want.matches(&read));
        assert!(!want.matches(&Tbf {
            rate: 11_000_000,
            ..want
        }));
        assert!(!want.matches(&Tbf {
            burst: 60_000,
            ..want
        }));
        let peaked = Tbf {
            peak: Some(Peak {
                rate: 20_000_000,
                minburst: 2000,
            }),
            ..want
        };
        assert!(!peaked.matches(&want));
        assert!(peaked.matches(&peaked));
    }

    #[test]
    fn tbf_arguments() {
        let t = Tbf {
            rate: 20_000_000,
            burst: 50_000,
            peak: Some(Peak {
                rate: 40_000_000,
                minburst: 2000,
            }),
        };
        assert_eq!(
            t.args().join(" "),
            "tbf rate 20000000bit burst 50000 latency 25000us peakrate 40000000bit mtu 2000"
        );
    }

    #[test]
    fn fake_is_idempotent() {
        let tc = FakeTc::new();
        let s = Shaping {
            ingress: Some(Tbf {
                rate: 1_000_000,
                burst: 20_000,
                peak: None,
            }),
            egress: None,
        };
        assert!(tc.apply("cali1", &s).unwrap());
        assert!(!tc.apply("cali1", &s).unwrap());
        assert_eq!(tc.read("cali1").unwrap(), s);
        assert!(tc.apply("cali1", &Shaping::default()).unwrap());
        assert!(tc.read_all().unwrap().is_empty());
    }
}
