//! CNI wire types: commands, versions, the result (1.x shape, rendered for 0.3.x
//! and 0.4.0 callers with per-IP `version`), errors with the spec's codes, and the
//! VERSION answer.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The version this implementation speaks.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Every version it answers.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes: 1-99 are the spec's, 100+ are Tabby's.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// Plugin not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// No address could be allocated (pool exhausted, block limit, no pool for the node).
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// The datastore cannot be opened or failed.
    pub const DATASTORE: u32 = 101;
    /// A netlink or sysctl operation failed.
    pub const DATAPLANE: u32 = 102;
    /// An interface name is already taken.
    pub const INTERFACE_EXISTS: u32 = 103;
    /// CHECK found the container's networking differs from its result.
    pub const CHECK_FAILED: u32 = 104;
    /// Another plugin (IPAM, chained) failed without a spec error on stdout.
    pub const DELEGATE: u32 = 105;
}

/// A CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready (1.1).
    Status,
    /// Garbage-collect attachments not in the valid list (1.1).
    Gc,
    /// Report supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// A spec error: printed as JSON on stdout, exit status 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{msg}")]
pub struct CniError {
    /// The code (see [`code`]).
    pub code: u32,
    /// What went wrong, for a person.
    pub msg: String,
    /// More detail (underlying error).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a code and message.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// Prefixes the message with context.
    pub fn context(mut self, ctx: impl std::fmt::Display) -> CniError {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The error document for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

/// Whether `v` is a version this plugin answers.
pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Parses `a.b.c` for comparisons.
pub fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next().unwrap_or(Some(0))?);
    Some(t)
}

/// Checks the configuration's version against the command: unknown versions are
/// error 1; CHECK needs 0.4.0, STATUS and GC need 1.1.0.
pub fn check_version(v: &str, cmd: Command) -> Result<(), CniError> {
    if !is_supported(v) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is {v:?}, plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let t = version_tuple(v).unwrap_or_default();
    let need = match cmd {
        Command::Check => Some(((0, 4, 0), "0.4.0")),
        Command::Status | Command::Gc => Some(((1, 1, 0), "1.1.0")),
        _ => None,
    };
    if let Some((min, s)) = need
        && t < min
    {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs cniVersion {s} or later, the config says {v}",
                cmd.as_str()
            ),
        ));
    }
    Ok(())
}

/// The VERSION answer.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// An interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Namespace path; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// "4" or "6": 0.3.x and 0.4.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A route in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// An ADD result (and a `prevResult`), any supported version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version it is written in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Parses a result or `prevResult`.
    pub fn from_value(v: &serde_json::Value) -> Result<CniResult, CniError> {
        serde_json::from_value(v.clone())
            .map_err(|e| CniError::new(code::DECODE, format!("cannot decode a CNI result: {e}")))
    }

    /// The result rendered for a caller speaking `version`: 0.3.x and 0.4.0 carry
    /// `"version": "4"|"6"` per address; 1.x do not; interface MTUs are 1.1 only.
    pub fn for_version(&self, version: &str) -> CniResult {
        let mut r = self.clone();
        r.cni_version = version.to_owned();
        let old = version_tuple(version).is_some_and(|t| t < (1, 0, 0));
        for ip in &mut r.ips {
            ip.version = old.then(|| {
                if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                }
                .to_owned()
            });
        }
        if version_tuple(version).is_some_and(|t| t < (1, 1, 0)) {
            for i in &mut r.interfaces {
                i.mtu = None;
            }
        }
        r
    }

    /// Addresses only.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|i| i.address.addr()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:00:00:00:01".into(),
                mtu: Some(1440),
                sandbox: "/run/netns/x".into(),
            }],
            ips: vec![
                IpConfig {
                    address: "100.64.0.5/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                    version: None,
                },
                IpConfig {
                    address: "2001:db8::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                    version: None,
                },
            ],
            ..CniResult::default()
        }
    }

    #[test]
    fn result_versions() {
        let v = serde_json::to_value(sample().for_version("0.3.1")).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = serde_json::to_value(sample().for_version("1.0.0")).unwrap();
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = serde_json::to_value(sample().for_version("1.1.0")).unwrap();
        assert_eq!(v["interfaces"][0]["mtu"], 1440);
        assert!(v.get("dns").is_none() && v.get("routes").is_none());
        // Round trip, including the old form.
        let back =
            CniResult::from_value(&serde_json::to_value(sample().for_version("0.4.0")).unwrap())
                .unwrap();
        assert_eq!(back.addresses(), sample().addresses());
    }

    #[test]
    fn versions_and_commands() {
        assert!(check_version("0.3.1", Command::Add).is_ok());
        assert_eq!(check_version("0.2.0", Command::Add).unwrap_err().code, 1);
        assert_eq!(check_version("0.3.1", Command::Check).unwrap_err().code, 1);
        assert!(check_version("0.4.0", Command::Check).is_ok());
        assert!(check_version("1.0.0", Command::Gc).is_err());
        assert!(check_version("1.1.0", Command::Status).is_ok());
        assert_eq!(Command::parse("GC"), Some(Command::Gc));
        assert_eq!(Command::parse("add"), None);
        assert_eq!(version_info()["supportedVersions"][4], "1.1.0");
    }

    #[test]
    fn error_json() {
        let e = CniError::new(code::INVALID_ENV, "CNI_NETNS is not set").with_details("x");
        let v = e.to_json("1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_NETNS is not set");
        assert_eq!(v["details"], "x");
        assert_eq!(v["cniVersion"], "1.0.0");
    }
}
