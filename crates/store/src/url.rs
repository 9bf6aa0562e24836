//! Which store to open: `sqlite:///path/store.db` or `etcd://host:2379,host2:2379`
//! (`etcds://` for TLS), from a flag, the `TABBY_STORE` variable or a config file.

use std::fmt;
use std::path::PathBuf;

use crate::StoreError;

/// The default embedded store file.
pub const DEFAULT_SQLITE_PATH: &str = "/var/lib/tabby/store.db";

/// A parsed store location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite { path: PathBuf },
    Etcd { endpoints: Vec<String>, tls: bool },
}

impl Default for StoreUrl {
    fn default() -> Self {
        StoreUrl::Sqlite {
            path: PathBuf::from(DEFAULT_SQLITE_PATH),
        }
    }
}

impl StoreUrl {
    /// Parses a store URL. A bare path is taken as a SQLite file.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("no file path after sqlite://"));
            }
            return Ok(StoreUrl::Sqlite {
                path: PathBuf::from(path),
            });
        }
        for (scheme, tls) in [("etcd://", false), ("etcds://", true)] {
            if let Some(rest) = url.strip_prefix(scheme) {
                let endpoints: Vec<String> = rest
                    .split(',')
                    .map(|e| e.trim().trim_end_matches('/').to_string())
                    .filter(|e| !e.is_empty())
                    .collect();
                if endpoints.is_empty() {
                    return Err(bad("no endpoint after etcd://"));
                }
                for e in &endpoints {
                    if !e.contains(':') {
                        return Err(bad(&format!("endpoint {e:?} has no port (host:2379)")));
                    }
                }
                return Ok(StoreUrl::Etcd { endpoints, tls });
            }
        }
        if url.starts_with('/') || url.starts_with('.') {
            return Ok(StoreUrl::Sqlite {
                path: PathBuf::from(url),
            });
        }
        Err(bad(
            "expected sqlite:///path/store.db or etcd://host:2379[,host:2379...]",
        ))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Etcd { endpoints, tls } => {
                let scheme = if *tls { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}", endpoints.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite:///tmp/x.db").unwrap(),
            StoreUrl::Sqlite {
                path: "/tmp/x.db".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("etcd://127.0.0.1:2379, 127.0.0.1:22379").unwrap(),
            StoreUrl::Etcd {
                endpoints: vec!["127.0.0.1:2379".into(), "127.0.0.1:22379".into()],
                tls: false
            }
        );
        let e = StoreUrl::parse("etcd://host").unwrap_err().to_string();
        assert!(e.contains("no port"), "{e}");
        assert!(StoreUrl::parse("mysql://x").is_err());
        assert_eq!(
            StoreUrl::parse("etcds://a:1").unwrap().to_string(),
            "etcds://a:1"
        );
    }
}
