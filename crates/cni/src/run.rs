//! The process edge shared by both binaries: environment and stdin in, result or
//! spec error JSON out on stdout, logs on stderr (or `log_file_path`).

use std::io::{Read, Write};

use serde_json::Value;

use crate::config::NetConf;
use crate::env::CniEnv;
use crate::spec::{self, CniError, Command, code};

/// Which plugin the binary is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// `tabby`.
    Main,
    /// `tabby-ipam`.
    Ipam,
}

fn init_logging(conf: Option<&NetConf>) {
    let level = conf
        .and_then(|c| c.log_level.clone())
        .or_else(|| std::env::var("TABBY_CNI_LOG").ok())
        .unwrap_or_else(|| "warn".into())
        .to_lowercase()
        .replace("warning", "warn");
    let filter = tracing_subscriber::EnvFilter::new(level);
    let file = conf.and_then(|c| c.log_file_path.clone()).and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match file {
        Some(f) => b.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => b.with_writer(std::io::stderr).try_init(),
    };
}

/// One invocation, given the environment and stdin; returns (stdout JSON, exit code).
pub fn invoke(
    plugin: Plugin,
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> (Option<Value>, i32) {
    let env = match CniEnv::from_vars(get_env) {
        Ok(e) => e,
        Err(e) => return (Some(e.to_json(spec::CURRENT_VERSION)), 1),
    };
    if env.command == Some(Command::Version) {
        return (Some(spec::version_info()), 0);
    }
    let (conf, raw) = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (Some(e.to_json(spec::CURRENT_VERSION)), 1),
    };
    init_logging(Some(&conf));
    let version = if spec::is_supported(&conf.cni_version) {
        conf.cni_version.clone()
    } else {
        spec::CURRENT_VERSION.to_owned()
    };
    if let Err(e) = spec::check_version(&conf.cni_version, env.command.unwrap_or(Command::Add)) {
        return (Some(e.to_json(&version)), 1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = CniError::new(code::IO, format!("cannot start the runtime: {e}"));
            return (Some(e.to_json(&version)), 1);
        }
    };
    let span = tracing::info_span!("cni", command = ?env.command, container = %env.container_id);
    let _g = span.enter();
    let out = rt.block_on(async {
        match plugin {
            Plugin::Main => crate::plugin::run(&env, &conf, &raw).await,
            Plugin::Ipam => crate::ipam_plugin::run(&env, &conf).await,
        }
    });
    match out {
        Ok(v) => (v, 0),
        Err(e) => {
            tracing::error!(code = e.code, "{}", e.msg);
            (Some(e.to_json(&version)), 1)
        }
    }
}

/// The binaries' `main`: reads the process environment and stdin, prints, exits.
pub fn main(plugin: Plugin) -> ! {
    let mut stdin = Vec::new();
    let is_version = std::env::var("CNI_COMMAND").as_deref() == Ok("VERSION");
    if !is_version && let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let e = CniError::new(code::IO, format!("cannot read stdin: {e}"));
        println!("{}", e.to_json(spec::CURRENT_VERSION));
        std::process::exit(1);
    }
    let (out, rc) = invoke(plugin, |k| std::env::var(k).ok(), &stdin);
    if let Some(v) = out {
        let mut so = std::io::stdout().lock();
        let _ = writeln!(so, "{v}");
        let _ = so.flush();
    }
    std::process::exit(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_bad_input() {
        let (v, rc) = invoke(
            Plugin::Main,
            |k| (k == "CNI_COMMAND").then(|| "VERSION".into()),
            b"",
        );
        assert_eq!(rc, 0);
        assert_eq!(v.unwrap()["cniVersion"], "1.1.0");
        let (v, rc) = invoke(Plugin::Main, |_| None, b"{}");
        assert_eq!(rc, 1);
        assert_eq!(v.unwrap()["code"], 4);
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("STATUS".to_owned()),
            "CNI_PATH" => Some("/nonexistent".to_owned()),
            _ => None,
        };
        let (v, rc) = invoke(Plugin::Main, env, b"not json");
        assert_eq!(rc, 1);
        assert_eq!(v.unwrap()["code"], 6);
        let (v, _) = invoke(Plugin::Main, env, br#"{"cniVersion":"0.1.0","name":"n"}"#);
        assert_eq!(v.unwrap()["code"], 1);
        let (v, _) = invoke(
            Plugin::Main,
            env,
            br#"{"cniVersion":"1.1.0","name":"n","type":"tabby","ipam":{"type":"nope"}}"#,
        );
        let v = v.unwrap();
        assert_eq!(v["code"], 7, "{v}");
        assert!(
            v["msg"].as_str().unwrap().contains("not found in CNI_PATH"),
            "{v}"
        );
    }
}
