//! The network configuration on stdin: the spec's fields plus Calico's (`ipam`
//! with `assign_ipv4`/`ipv4_pools`, `nodename`, `mtu`, `datastore_type`,
//! `etcd_endpoints` with `etcd_ca_cert_file`/`etcd_cert_file`/`etcd_key_file` for
//! https endpoints, `container_settings`) and Tabby's `datastore` URL.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::spec::{CniError, code};

/// Where the node name is read from when `nodename` is not given.
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/tabby/nodename";
/// Where the node agent writes the pod MTU (Calico's `/var/lib/calico/mtu`).
pub const DEFAULT_MTU_FILE: &str = "/var/lib/tabby/mtu";

/// One valid attachment in a GC request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    #[serde(default)]
    pub ifname: String,
}

/// `container_settings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerSettings {
    /// Leave IP forwarding on inside the pod.
    #[serde(default)]
    pub allow_ip_forwarding: bool,
}

/// The `ipam` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct IpamConf {
    /// The IPAM plugin binary (`tabby-ipam`, `host-local`, ...).
    #[serde(rename = "type", default)]
    pub plugin: String,
    /// Allocate an IPv4 address (Calico: the string "true", the default).
    #[serde(default, deserialize_with = "flag")]
    pub assign_ipv4: Option<bool>,
    /// Allocate an IPv6 address (default false).
    #[serde(default, deserialize_with = "flag")]
    pub assign_ipv6: Option<bool>,
    /// IPv4 pools to use, by name or CIDR.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools to use.
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
    /// Specific addresses (Calico's `ipAddrs` annotation, merged in by `tabby`).
    #[serde(default)]
    pub ip_addrs: Vec<String>,
    /// `"block"`: report addresses with their block's prefix length (for main
    /// plugins like `bridge` that need a connected subnet); default /32 and /128.
    #[serde(default)]
    pub result_prefix: Option<String>,
}

impl IpamConf {
    /// Whether IPv4 is wanted (default yes).
    pub fn want_v4(&self) -> bool {
        self.assign_ipv4.unwrap_or(true)
    }

    /// Whether IPv6 is wanted (default no).
    pub fn want_v6(&self) -> bool {
        self.assign_ipv6.unwrap_or(false)
    }
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) => match s.as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not \"true\" or \"false\""
            ))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "{other} is not true or false"
        ))),
    }
}

/// The network configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NetConf {
    /// The spec version the runtime speaks.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The network's name (first part of IPAM handles).
    #[serde(default)]
    pub name: String,
    /// The plugin type.
    #[serde(rename = "type", default)]
    pub plugin: String,
    /// Pod MTU; 0 or absent: the MTU file, else the node's smallest uplink MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// This node's name.
    #[serde(default)]
    pub nodename: Option<String>,
    /// File holding the node name.
    #[serde(default)]
    pub nodename_file: Option<PathBuf>,
    /// IPAM.
    #[serde(default)]
    pub ipam: IpamConf,
    /// Datastore URL (`sqlite:///var/lib/tabby/store.db`, `etcd://h:2379`).
    #[serde(default)]
    pub datastore: Option<String>,
    /// Calico's `etcdv3` (or `kubernetes`, unsupported).
    #[serde(default)]
    pub datastore_type: Option<String>,
    /// Calico's comma-separated etcd endpoints.
    #[serde(default)]
    pub etcd_endpoints: Option<String>,
    /// PEM CA bundle that signed the etcd servers' certificates (https endpoints).
    #[serde(default)]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// PEM client certificate for etcd, with [`NetConf::etcd_key_file`].
    #[serde(default)]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of [`NetConf::etcd_cert_file`].
    #[serde(default)]
    pub etcd_key_file: Option<PathBuf>,
    /// Log level (`debug`, `info`, `warning`, `error`).
    #[serde(default)]
    pub log_level: Option<String>,
    /// Log file; stderr when absent.
    #[serde(default)]
    pub log_file_path: Option<PathBuf>,
    /// Pod settings.
    #[serde(default)]
    pub container_settings: ContainerSettings,
    /// Host interface prefix (Felix's `interfacePrefix`), default `cali`.
    #[serde(default)]
    pub interface_prefix: Option<String>,
    /// The previous plugin's result (chaining, CHECK, DEL).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// GC: attachments still in use. `None` (the key is missing) is not an empty
    /// list: GC refuses it rather than collecting everything.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Anything else (kept for delegation).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl NetConf {
    /// Parses stdin. A JSON error is code 6; a wrong field is code 7.
    pub fn parse(bytes: &[u8]) -> Result<(NetConf, Value), CniError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is not JSON: {e}"),
            )
        })?;
        if !raw.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration on stdin must be a JSON object",
            ));
        }
        let conf: NetConf = serde_json::from_value(raw.clone()).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network configuration: {e}"),
            )
        })?;
        Ok((conf, raw))
    }

    /// Checks what the main plugin needs: a name and an IPAM type.
    pub fn require_main(&self) -> Result<(), CniError> {
        if self.name.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no \"name\"",
            ));
        }
        if self.ipam.plugin.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no \"ipam\": {\"type\": ...}; use \"tabby-ipam\"",
            ));
        }
        Ok(())
    }

    /// The datastore URL: `datastore`, then Calico's `etcd_endpoints`, then
    /// `$TABBY_DATASTORE`, then the default SQLite file.
    pub fn datastore_url(&self, env_override: Option<String>) -> Result<String, CniError> {
        if let Some(u) = &self.datastore {
            return Ok(u.clone());
        }
        match self.datastore_type.as_deref() {
            None | Some("etcdv3") => {}
            Some(other) => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "datastore_type {other:?} is not supported; use \"etcdv3\" or set \"datastore\" to a sqlite:// or etcd:// URL"
                    ),
                ));
            }
        }
        if let Some(eps) = &self.etcd_endpoints {
            let eps: Vec<&str> = eps
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .collect();
            let tls = eps.iter().filter(|e| e.starts_with("https://")).count();
            if tls != 0 && tls != eps.len() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "etcd_endpoints mixes https:// and plain endpoints ({}); use https:// for all of them",
                        eps.join(",")
                    ),
                ));
            }
            let hosts: Vec<&str> = eps
                .iter()
                .map(|e| {
                    e.trim_start_matches("http://")
                        .trim_start_matches("https://")
                })
                .collect();
            let scheme = if tls > 0 { "etcds" } else { "etcd" };
            return Ok(format!("{scheme}://{}", hosts.join(",")));
        }
        if let Some(u) = env_override.filter(|u| !u.is_empty()) {
            return Ok(u);
        }
        Ok(format!(
            "sqlite://{}",
            tabby_store::url::DEFAULT_SQLITE_PATH
        ))
    }

    /// Checks the etcd TLS settings against the URL's scheme, naming the
    /// configuration keys (`etcd_ca_cert_file`, ...). `env_ca` says whether the
    /// CA comes from the environment instead (`TABBY_ETCD_CA_CERT_FILE`).
    pub fn check_etcd_tls(&self, tls: bool, env_ca: bool) -> Result<(), CniError> {
        let bad = |m: String| Err(CniError::new(code::INVALID_CONFIG, m));
        let files = [
            ("etcd_ca_cert_file", &self.etcd_ca_cert_file),
            ("etcd_cert_file", &self.etcd_cert_file),
            ("etcd_key_file", &self.etcd_key_file),
        ];
        if !tls && let Some((key, _)) = files.iter().find(|(_, v)| v.is_some()) {
            return bad(format!(
                "{key} is set but the etcd endpoints are plain (http:// or etcd://); use https:// endpoints (or an etcds:// datastore URL)"
            ));
        }
        match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(_), None) => return bad("etcd_cert_file is set without etcd_key_file".into()),
            (None, Some(_)) => return bad("etcd_key_file is set without etcd_cert_file".into()),
            _ => {}
        }
        if tls && self.etcd_ca_cert_file.is_none() && !env_ca {
            return bad(
                "the etcd endpoints use TLS (https://) but no etcd_ca_cert_file names the CA that signed the etcd servers"
                    .into(),
            );
        }
        for (key, v) in files {
            if let Some(p) = v
                && !p.is_file()
            {
                return bad(format!("{key}: {} is not a readable file", p.display()));
            }
        }
        Ok(())
    }

    /// GC's valid attachments; an error naming the key when it is missing.
    pub fn gc_attachments(&self) -> Result<&[Attachment], CniError> {
        self.valid_attachments.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC needs \"cni.dev/valid-attachments\" in the configuration: without the \
                 list of attachments in use every attachment would look stale (send [] to \
                 collect them all)",
            )
        })
    }

    /// The node name: `nodename`, else the first line of the nodename file, else
    /// the host name.
    pub fn node_name(&self) -> Result<String, CniError> {
        if let Some(n) = self.nodename.as_ref().filter(|n| !n.is_empty()) {
            return Ok(n.clone());
        }
        let file = self
            .nodename_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NODENAME_FILE));
        if let Ok(s) = std::fs::read_to_string(&file)
            && let Some(n) = s.lines().next().map(str::trim).filter(|n| !n.is_empty())
        {
            return Ok(n.to_owned());
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "no \"nodename\" in the config, no {} and no host name: {e}",
                    file.display()
                ),
            )
        })?;
        Ok(host.trim().to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_style_config() {
        let (c, raw) = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tabby","mtu":1440,
                "nodename":"node-a","datastore_type":"etcdv3","etcd_endpoints":"http://198.18.0.1:2379",
                "ipam":{"type":"tabby-ipam","assign_ipv4":"true","assign_ipv6":"true","ipv4_pools":["default-ipv4"]},
                "container_settings":{"allow_ip_forwarding":true},"policy":{"type":"k8s"}}"#,
        )
        .unwrap();
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.mtu, Some(1440));
        assert!(c.ipam.want_v4() && c.ipam.want_v6());
        assert_eq!(c.ipam.ipv4_pools, ["default-ipv4"]);
        assert!(c.container_settings.allow_ip_forwarding);
        assert_eq!(c.datastore_url(None).unwrap(), "etcd://198.18.0.1:2379");
        assert_eq!(c.node_name().unwrap(), "node-a");
        assert!(c.other.contains_key("policy"));
        assert_eq!(raw["ipam"]["type"], "tabby-ipam");
        c.require_main().unwrap();
    }

    #[test]
    fn defaults_and_errors() {
        let (c, _) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"tabby","ipam":{"type":"tabby-ipam"}}"#,
        )
        .unwrap();
        assert!(c.ipam.want_v4() && !c.ipam.want_v6());
        assert_eq!(
            c.datastore_url(Some("sqlite:///tmp/x.db".into())).unwrap(),
            "sqlite:///tmp/x.db"
        );
        assert_eq!(
            c.datastore_url(None).unwrap(),
            "sqlite:///var/lib/tabby/store.db"
        );

        let e = NetConf::parse(b"{nope").unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("not JSON"), "{e}");
        let e = NetConf::parse(br#"{"name":"n","ipam":{"assign_ipv4":"yes"}}"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("\"yes\""), "{e}");
        let (c, _) = NetConf::parse(br#"{"name":"n"}"#).unwrap();
        assert!(c.require_main().unwrap_err().msg.contains("tabby-ipam"));
        let (c, _) = NetConf::parse(br#"{"name":"n","datastore_type":"kubernetes"}"#).unwrap();
        assert_eq!(c.datastore_url(None).unwrap_err().code, 2);
    }

    #[test]
    fn etcd_tls() {
        let (c, _) = NetConf::parse(
            br#"{"name":"n","etcd_endpoints":"https://198.18.0.1:2379, https://198.18.0.2:2379"}"#,
        )
        .unwrap();
        assert_eq!(
            c.datastore_url(None).unwrap(),
            "etcds://198.18.0.1:2379,198.18.0.2:2379"
        );
        let e = c.check_etcd_tls(true, false).unwrap_err();
        assert!(e.msg.contains("etcd_ca_cert_file"), "{e}");
        c.check_etcd_tls(true, true).unwrap();
        let (c, _) = NetConf::parse(
            br#"{"name":"n","etcd_endpoints":"https://198.18.0.1:2379,http://198.18.0.2:2379"}"#,
        )
        .unwrap();
        assert!(c.datastore_url(None).unwrap_err().msg.contains("mixes"));
        let (c, _) = NetConf::parse(
            br#"{"name":"n","etcd_endpoints":"http://198.18.0.1:2379","etcd_ca_cert_file":"/etc/hosts"}"#,
        )
        .unwrap();
        assert_eq!(c.datastore_url(None).unwrap(), "etcd://198.18.0.1:2379");
        let e = c.check_etcd_tls(false, false).unwrap_err();
        assert!(e.msg.contains("etcd_ca_cert_file is set"), "{e}");
        let (c, _) = NetConf::parse(
            br#"{"name":"n","etcd_ca_cert_file":"/etc/hosts","etcd_cert_file":"/etc/hosts"}"#,
        )
        .unwrap();
        let e = c.check_etcd_tls(true, false).unwrap_err();
        assert!(e.msg.contains("without etcd_key_file"), "{e}");
        let (c, _) =
            NetConf::parse(br#"{"name":"n","etcd_ca_cert_file":"/nonexistent/ca.pem"}"#).unwrap();
        let e = c.check_etcd_tls(true, false).unwrap_err();
        assert!(e.msg.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn gc_attachments() {
        let (c, _) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.gc_attachments().unwrap()[0].container_id, "abc");
        let (c, _) = NetConf::parse(br#"{"name":"n","cni.dev/valid-attachments":[]}"#).unwrap();
        assert!(c.gc_attachments().unwrap().is_empty());
        let (c, _) = NetConf::parse(br#"{"name":"n"}"#).unwrap();
        let e = c.gc_attachments().unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("cni.dev/valid-attachments"), "{e}");
    }
}
