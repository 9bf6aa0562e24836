//! `tabbyctl config get|set`: the calicoctl v1/v2 shorthand for cluster-wide BGP
//! settings (`config set nodeToNodeMesh off`, `config set asNumber 64512`,
//! `config get logLevel`), kept because the seed documents use it. It reads and writes
//! the `default` BGPConfiguration, creating it when absent.

use std::io::Write;

use anyhow::{anyhow, bail};
use serde_json::{Value, json};
use tabby_api::{ASNumber, Kind, Resource};
use tabby_client::ClientError;

use crate::connect::Connection;

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Print a setting: asNumber, nodeToNodeMesh or logLevel.
    Get { name: String },
    /// Change a setting: `asNumber N`, `nodeToNodeMesh on|off`, `logLevel LEVEL`.
    Set { name: String, value: String },
}

/// The settings `config` knows, by their calicoctl v1 names (case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting {
    AsNumber,
    NodeToNodeMesh,
    LogLevel,
}

fn setting(name: &str) -> anyhow::Result<Setting> {
    match name.to_ascii_lowercase().as_str() {
        "asnumber" => Ok(Setting::AsNumber),
        "nodetonodemesh" => Ok(Setting::NodeToNodeMesh),
        "loglevel" => Ok(Setting::LogLevel),
        _ => bail!("unknown config name {name:?}; use asNumber, nodeToNodeMesh or logLevel"),
    }
}

/// The merge patch to the `default` BGPConfiguration's spec that `set` makes.
fn spec_patch(setting: Setting, value: &str) -> anyhow::Result<Value> {
    Ok(match setting {
        Setting::AsNumber => {
            let asn: ASNumber = value
                .parse()
                .map_err(|e| anyhow!("asNumber {value:?}: {e}"))?;
            json!({ "asNumber": asn.get() })
        }
        Setting::NodeToNodeMesh => match value.to_ascii_lowercase().as_str() {
            "on" | "true" => json!({ "nodeToNodeMeshEnabled": true }),
            "off" | "false" => json!({ "nodeToNodeMeshEnabled": false }),
            _ => bail!("nodeToNodeMesh {value:?}: expected on or off"),
        },
        Setting::LogLevel => {
            let severity = match value.to_ascii_lowercase().as_str() {
                "trace" => "Trace",
                "debug" => "Debug",
                "info" => "Info",
                "warning" | "warn" => "Warning",
                "error" => "Error",
                "fatal" | "critical" => "Fatal",
                _ => bail!(
                    "logLevel {value:?}: expected trace, debug, info, warning, error or fatal"
                ),
            };
            json!({ "logSeverityScreen": severity })
        }
    })
}

/// The effective value of a setting, as calicoctl printed it.
fn current(setting: Setting, config: Option<&Resource>) -> String {
    let spec = config.and_then(|r| r.spec.as_bgp_configuration());
    match setting {
        Setting::AsNumber => spec
            .map(|s| s.effective_as_number())
            .unwrap_or(tabby_api::DEFAULT_AS_NUMBER)
            .to_string(),
        Setting::NodeToNodeMesh => {
            let on = spec.map(|s| s.effective_mesh()).unwrap_or(true);
            if on { "on" } else { "off" }.to_string()
        }
        Setting::LogLevel => spec
            .and_then(|s| s.log_severity_screen.clone())
            .unwrap_or_else(|| "Info".to_string())
            .to_ascii_lowercase(),
    }
}

pub async fn run(conn: &Connection, args: &ConfigArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.action {
        Action::Get { name } => {
            let s = setting(name)?;
            let client = conn.client().await?;
            let config = client.get(Kind::BGPConfiguration, None, "default").await?;
            writeln!(out, "{}", current(s, config.as_ref()))?;
        }
        Action::Set { name, value } => {
            let s = setting(name)?;
            let patch = json!({ "spec": spec_patch(s, value)? });
            let client = conn.client().await?;
            loop {
                match client
                    .patch(Kind::BGPConfiguration, None, "default", &patch)
                    .await
                {
                    Ok(_) => break,
                    Err(ClientError::NotFound { .. }) => {
                        let mut r = Resource::new(Kind::BGPConfiguration, "default", None);
                        let mut v = r.to_json_value();
                        tabby_client::merge_patch(&mut v, &patch);
                        r = tabby_api::load::from_json_value(v, "config set")
                            .map_err(|e| anyhow!("{e}"))?;
                        match client.create(r).await {
                            Ok(_) => break,
                            // Someone created it meanwhile: patch theirs.
                            Err(ClientError::AlreadyExists { .. }) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            writeln!(out, "Successfully set {name} to {value}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_to_bgpconfiguration_fields() {
        assert_eq!(
            spec_patch(Setting::AsNumber, "64513").unwrap(),
            json!({"asNumber": 64513})
        );
        assert_eq!(
            spec_patch(Setting::AsNumber, "1.10").unwrap(),
            json!({"asNumber": 65546})
        );
        assert_eq!(
            spec_patch(Setting::NodeToNodeMesh, "off").unwrap(),
            json!({"nodeToNodeMeshEnabled": false})
        );
        assert!(spec_patch(Setting::NodeToNodeMesh, "maybe").is_err());
        assert!(spec_patch(Setting::AsNumber, "x").is_err());
        assert_eq!(
            spec_patch(Setting::LogLevel, "DEBUG").unwrap(),
            json!({"logSeverityScreen": "Debug"})
        );
        assert!(setting("nodeToNodeMesh").is_ok());
        assert!(setting("ipip").is_err());
        assert_eq!(current(Setting::AsNumber, None), "64512");
        assert_eq!(current(Setting::NodeToNodeMesh, None), "on");
    }
}
