//! Network namespaces as open files, and running a closure inside one on a
//! dedicated thread (never on an async runtime worker: `setns` changes the whole
//! thread, and the thread ends right after).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// An open network namespace (`/run/netns/<name>`, `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct NetnsFile {
    path: PathBuf,
    file: File,
}

impl NetnsFile {
    /// Opens the namespace at `path`; a missing file is [`Error::NotFound`].
    pub fn open(path: impl AsRef<Path>) -> Result<NetnsFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    what: format!("network namespace {}", path.display()),
                }
            } else {
                Error::Netns {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            }
        })?;
        Ok(NetnsFile { path, file })
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its
    /// result. The thread exits afterwards, so no other code ever runs there.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let file = self.file.try_clone().map_err(|e| self.err(e.to_string()))?;
        let path = self.path.display().to_string();
        let joined = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                    path,
                    reason: format!("setns: {e}"),
                })?;
                f()
            })
            .map_err(|e| self.err(format!("cannot start a thread: {e}")))?
            .join();
        joined.unwrap_or_else(|_| Err(self.err("the namespace thread panicked".into())))
    }

    fn err(&self, reason: String) -> Error {
        Error::Netns {
            path: self.path.display().to_string(),
            reason,
        }
    }
}
