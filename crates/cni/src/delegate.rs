//! Running another plugin the way a runtime would: found in `CNI_PATH`, same
//! environment (optionally another `CNI_COMMAND`), config on stdin, result or
//! spec error on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};

use crate::spec::{CniError, Command, code};

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("plugin type {plugin:?} must be a bare name, not a path"),
        ));
    }
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "plugin {plugin:?} not found in CNI_PATH ({}); install it there or fix \"type\"",
                    path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                ),
            )
        })
}

/// Runs `plugin` with `command` and `stdin`; returns its stdout on success, its
/// spec error (with the plugin named) on failure.
pub fn exec(
    plugin: &str,
    path: &[PathBuf],
    command: Command,
    stdin: &[u8],
) -> Result<Vec<u8>, CniError> {
    let bin = find(plugin, path)?;
    let mut child = Proc::new(&bin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::IO, format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin)
            .map_err(|e| CniError::new(code::IO, format!("writing to {plugin}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO, format!("waiting for {plugin}: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(e) => Err(e.context(format!("{plugin} {}", command.as_str()))),
        Err(_) => Err(CniError::new(
            code::DELEGATE,
            format!(
                "{plugin} {} failed ({}): {}",
                command.as_str(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        )),
    }
}
