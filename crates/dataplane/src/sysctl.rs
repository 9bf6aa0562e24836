//! `/proc/sys` access behind a trait: [`ProcSysctl`] writes the real files (in the
//! current namespace or, on a dedicated thread, in another one).

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::netns::NetnsFile;

/// Reads and writes kernel parameters such as `net/ipv4/conf/cali1/proxy_arp`.
pub trait Sysctl: Send + Sync {
    /// Writes each `(key, value)` in order; stops at the first failure.
    fn set_all(&self, settings: &[(String, String)]) -> Result<()>;

    /// Reads one key (trailing newline removed).
    fn get(&self, key: &str) -> Result<String>;
}

/// The real `/proc/sys/<key>` files.
#[derive(Debug, Default)]
pub struct ProcSysctl {
    netns: Option<PathBuf>,
}

impl ProcSysctl {
    /// Sysctls of the calling process's namespace.
    pub fn current() -> ProcSysctl {
        ProcSysctl { netns: None }
    }

    /// Sysctls of the namespace at `path` (entered on a dedicated thread per call).
    pub fn in_netns(path: impl Into<PathBuf>) -> ProcSysctl {
        ProcSysctl {
            netns: Some(path.into()),
        }
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        match &self.netns {
            None => f(),
            Some(p) => NetnsFile::open(p)?.run(f),
        }
    }
}

fn write_key(key: &str, value: &str) -> Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value).map_err(|e| Error::Sysctl {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

impl Sysctl for ProcSysctl {
    fn set_all(&self, settings: &[(String, String)]) -> Result<()> {
        let settings = settings.to_vec();
        self.run(move || {
            for (k, v) in &settings {
                write_key(k, v)?;
            }
            Ok(())
        })
    }

    fn get(&self, key: &str) -> Result<String> {
        let key = key.to_owned();
        self.run(move || {
            std::fs::read_to_string(format!("/proc/sys/{key}"))
                .map(|s| s.trim_end().to_owned())
                .map_err(|e| Error::Sysctl {
                    key: key.clone(),
                    reason: e.to_string(),
                })
        })
    }
}
