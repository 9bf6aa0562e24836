//! A long-running process inside a namespace (a routing daemon, a listener),
//! with output to a log file; killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::wait::wait_until;

/// A child process running inside a namespace.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    cmdline: String,
    log: PathBuf,
}

impl Process {
    /// Starts `argv` in `ns`; stdout and stderr are appended to `log`.
    pub fn spawn(ns: &Netns, argv: &[&str], log: &Path) -> Result<Process> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| Error::invalid("command", "empty argv"))?;
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| Error::File {
                path: log.to_path_buf(),
                source,
            })?;
        let err = file.try_clone().map_err(|source| Error::File {
            path: log.to_path_buf(),
            source,
        })?;
        let mut c = ns.command(prog);
        c.args(args).stdin(Stdio::null()).stdout(file).stderr(err);
        let cmdline = cmd::describe(&c);
        let child = c.spawn().map_err(|source| Error::Spawn {
            cmd: cmdline.clone(),
            source,
        })?;
        Ok(Process {
            child: Some(child),
            cmdline,
            log: log.to_path_buf(),
        })
    }

    /// The process id, if it was not reaped yet.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file with the process' output.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// An error saying the process died, with the end of its log.
    pub fn died(&self) -> Error {
        Error::Command {
            cmd: self.cmdline.clone(),
            status: "exited early".into(),
            stderr: self.log_tail(15),
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if wait_until(grace, || !self.is_running()) {
                self.child = None;
                return Ok(());
            }
        }
        self.kill()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            // Already exited is fine: wait() below still reaps it.
            let _ = c.kill();
            c.wait().map_err(|source| Error::Spawn {
                cmd: self.cmdline.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("tabby-testnet: {e}");
        }
    }
}
