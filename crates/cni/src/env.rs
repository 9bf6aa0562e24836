//! The CNI_* environment variables, checked per command as the spec requires,
//! and `CNI_ARGS` (`K=V;K=V`) with the Kubernetes pod identity.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::spec::{CniError, Command, code};

/// Calico's pool annotations (also accepted as CNI_ARGS keys).
pub const ANNOTATION_IPV4_POOLS: &str = "cni.projectcalico.org/ipv4pools";
/// IPv6 pools annotation.
pub const ANNOTATION_IPV6_POOLS: &str = "cni.projectcalico.org/ipv6pools";
/// Specific addresses annotation.
pub const ANNOTATION_IP_ADDRS: &str = "cni.projectcalico.org/ipAddrs";

/// The parsed environment of one invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Option<Command>,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (absent on DEL is allowed).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH` directories.
    pub path: Vec<PathBuf>,
}

/// `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair, in order.
    pub pairs: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `K=V;K=V`; an entry without `=` is an error (code 4).
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut pairs = BTreeMap::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {part:?} is not KEY=VALUE (entries are separated by ';')"),
                )
            })?;
            pairs.insert(k.to_owned(), v.to_owned());
        }
        Ok(CniArgs { pairs })
    }

    /// One value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `K8S_POD_NAMESPACE`.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    /// `K8S_POD_NAME`.
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }

    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub fn infra_container_id(&self) -> Option<&str> {
        self.get("K8S_POD_INFRA_CONTAINER_ID")
    }

    /// The pool and address annotations given as arguments: the annotation key
    /// itself, or the short forms `IPV4POOLS`, `IPV6POOLS`, `IP` (Calico's).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (key, alias) in [
            (ANNOTATION_IPV4_POOLS, "IPV4POOLS"),
            (ANNOTATION_IPV6_POOLS, "IPV6POOLS"),
            (ANNOTATION_IP_ADDRS, "IP"),
        ] {
            if let Some(v) = self.get(key).or_else(|| self.get(alias)) {
                out.insert(key.to_owned(), v.to_owned());
            }
        }
        out
    }
}

/// Parses a pool/address annotation: a JSON list (`["a","b"]`) or a comma list.
pub fn parse_list(v: &str) -> Result<Vec<String>, CniError> {
    let t = v.trim();
    if t.starts_with('[') {
        serde_json::from_str(t).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("{v:?} is not a JSON list of strings: {e}"),
            )
        })
    } else {
        Ok(t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

fn check_ifname(n: &str) -> Result<(), CniError> {
    if n.is_empty() || n.len() > 15 || n == "." || n == ".." {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {n:?} must be 1 to 15 bytes and not \".\" or \"..\""),
        ));
    }
    if n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {n:?} must not contain '/', ':' or spaces"),
        ));
    }
    Ok(())
}

impl CniEnv {
    /// Reads the variables through `get` (e.g. `std::env::var`), checking what the
    /// command needs: ADD and CHECK need CONTAINERID, NETNS, IFNAME and PATH; DEL
    /// the same but NETNS; GC and STATUS only PATH; VERSION nothing.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let missing = |v: &str, cmd: &str| {
            CniError::new(
                code::INVALID_ENV,
                format!("{v} is not set; the runtime must set it for {cmd}"),
            )
        };
        let cmd_s = get("CNI_COMMAND")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    "CNI_COMMAND is not set; expected ADD, DEL, CHECK, STATUS, GC or VERSION",
                )
            })?;
        let command = Command::parse(&cmd_s).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {cmd_s:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
            )
        })?;
        let mut env = CniEnv {
            command: Some(command),
            ..CniEnv::default()
        };
        if command == Command::Version {
            return Ok(env);
        }
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if needs_container {
            env.container_id = nonempty("CNI_CONTAINERID")
                .ok_or_else(|| missing("CNI_CONTAINERID", command.as_str()))?;
            check_container_id(&env.container_id)?;
            env.ifname =
                nonempty("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME", command.as_str()))?;
            check_ifname(&env.ifname)?;
            env.netns = nonempty("CNI_NETNS").map(PathBuf::from);
            if command != Command::Del && env.netns.is_none() {
                return Err(missing("CNI_NETNS", command.as_str()));
            }
        }
        let path = nonempty("CNI_PATH").ok_or_else(|| missing("CNI_PATH", command.as_str()))?;
        env.path = std::env::split_paths(&path).collect();
        if let Some(a) = get("CNI_ARGS") {
            env.args = CniArgs::parse(&a)?;
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn add_env() {
        let e = CniEnv::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc123;IPV4POOLS=[\"p1\"]",
            ),
        ]))
        .unwrap();
        assert_eq!(e.command, Some(Command::Add));
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.args.pod_name(), Some("web-1"));
        assert_eq!(e.args.pod_namespace(), Some("default"));
        let a = e.args.annotations();
        assert_eq!(parse_list(&a[ANNOTATION_IPV4_POOLS]).unwrap(), ["p1"]);
    }

    #[test]
    fn bad_env() {
        let e = CniEnv::from_vars(vars(&[])).unwrap_err();
        assert_eq!(e.code, 4);
        let e = CniEnv::from_vars(vars(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x")]))
            .unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"), "{e}");
        let e = CniEnv::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]))
        .unwrap_err();
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        // DEL without a netns is fine.
        assert!(
            CniEnv::from_vars(vars(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x"),
            ]))
            .is_ok()
        );
        let e = CniEnv::from_vars(vars(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "-x")]))
            .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e}");
        assert_eq!(
            CniEnv::from_vars(vars(&[("CNI_COMMAND", "VERSION")]))
                .unwrap()
                .command,
            Some(Command::Version)
        );
        assert!(CniArgs::parse("A=1;B").is_err());
        assert_eq!(parse_list("a, b").unwrap(), ["a", "b"]);
    }
}
