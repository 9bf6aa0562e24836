//! Running external tools (`ip`, `birdc`, `vtysh`, `gobgp`) with errors that
//! carry the command line and its standard error.

use std::process::{Command, Output};

use crate::error::{Error, Result};

/// The command line of `cmd` as text, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; returns stdout, or an error with stderr on failure.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(cmd, &out))
    }
}

/// Runs `cmd` to completion and returns its raw output whatever the status.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|source| Error::Spawn {
        cmd: describe(cmd),
        source,
    })
}

/// The error for a command that exited unsuccessfully.
pub(crate) fn failed(cmd: &Command, out: &Output) -> Error {
    let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if msg.is_empty() {
        msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Error::Command {
        cmd: describe(cmd),
        status: out.status.to_string(),
        stderr: msg,
    }
}

/// `ip` with the given arguments.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}
