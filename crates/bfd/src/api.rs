//! BFD as its users see it (the BGP speaker, the node agent, `tabby-bfdd`):
//! configuration types, a cloneable [`BfdHandle`] to add, change and
//! remove sessions at run time, status snapshots, and a broadcast stream of
//! [`StateChange`]s, which is what a BGP speaker listens to (RFC 5882).

use crate::auth::AuthKey;
use crate::packet::{AuthType, Diag, State};
use crate::session::SessionConfig;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// UDP port of single-hop control packets (RFC 5881).
pub const PORT_SINGLE_HOP: u16 = 3784;
/// UDP port of multihop control packets (RFC 5883).
pub const PORT_MULTIHOP: u16 = 4784;
/// Shortest interval accepted in configuration.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest interval accepted (what fits the 32-bit microsecond fields).
pub const MAX_INTERVAL: Duration = Duration::from_secs(4294);

/// Errors of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The instance task is gone.
    #[error("the BFD instance has stopped")]
    Stopped,
    /// A session with this peer already exists.
    #[error("a BFD session with {0} already exists")]
    SessionExists(IpAddr),
    /// No session with this peer.
    #[error("no BFD session with {0}")]
    NoSuchSession(IpAddr),
    /// Invalid configuration value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Binding or configuring a socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn yes() -> bool {
    true
}

/// Instance-wide configuration: which sockets to open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceConfig {
    /// Receive single-hop packets on UDP 3784.
    #[serde(default = "yes")]
    pub single_hop: bool,
    /// Receive multihop packets on UDP 4784.
    #[serde(default)]
    pub multihop: bool,
    /// Open IPv6 sockets as well as IPv4 ones.
    #[serde(default = "yes")]
    pub ipv6: bool,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            single_hop: true,
            multihop: false,
            ipv6: true,
        }
    }
}

/// Per-session options. The textual form (`FromStr`) is what an annotation
/// such as `tabby.dev/bfd: "interval=300ms,multiplier=3"` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionOpts {
    /// Desired Min TX Interval once Up.
    #[serde(with = "interval_serde", default = "default_interval")]
    pub desired_min_tx: Duration,
    /// Required Min RX Interval.
    #[serde(with = "interval_serde", default = "default_interval")]
    pub required_min_rx: Duration,
    /// Detect Mult.
    #[serde(default = "default_mult")]
    pub detect_mult: u8,
    /// Passive role: wait for the peer to speak first.
    #[serde(default)]
    pub passive: bool,
    /// `None`: single hop (RFC 5881, port 3784, received TTL must be 255).
    /// `Some(hops)`: multihop (RFC 5883, port 4784, received TTL at least
    /// 256 - hops).
    #[serde(default)]
    pub multihop: Option<u8>,
    /// Authentication.
    #[serde(default)]
    pub auth: Option<AuthKey>,
}

fn default_interval() -> Duration {
    Duration::from_millis(300)
}
fn default_mult() -> u8 {
    3
}

impl Default for SessionOpts {
    fn default() -> Self {
        SessionOpts {
            desired_min_tx: default_interval(),
            required_min_rx: default_interval(),
            detect_mult: default_mult(),
            passive: false,
            multihop: None,
            auth: None,
        }
    }
}

mod interval_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_interval(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_interval(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses `300ms`, `1s`, `250000us` (a bare number is milliseconds).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not an interval such as 300ms or 1s"))?;
    match unit.trim() {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "us" | "µs" => Ok(Duration::from_micros(n)),
        u => Err(format!("{s:?}: unknown unit {u:?} (use us, ms or s)")),
    }
}

/// The shortest exact spelling of an interval.
pub fn format_interval(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

impl SessionOpts {
    /// Checks values the wire cannot carry or that cannot work.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |field: &str, reason: String| ApiError::Invalid {
            field: field.into(),
            reason,
        };
        for (field, v) in [
            ("desiredMinTx", self.desired_min_tx),
            ("requiredMinRx", self.required_min_rx),
        ] {
            if v < MIN_INTERVAL || v > MAX_INTERVAL {
                return Err(bad(
                    field,
                    format!(
                        "{} is outside {}..={}",
                        format_interval(v),
                        format_interval(MIN_INTERVAL),
                        format_interval(MAX_INTERVAL)
                    ),
                ));
            }
        }
        if self.detect_mult == 0 {
            return Err(bad("detectMult", "0 would never detect anything".into()));
        }
        if self.multihop == Some(0) {
            return Err(bad("multihop", "0 hops; use at least 1".into()));
        }
        if let Some(a) = &self.auth {
            a.validate().map_err(|r| bad("auth", r))?;
        }
        Ok(())
    }

    /// The state machine's configuration.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            desired_min_tx_us: self.desired_min_tx.as_micros() as u32,
            required_min_rx_us: self.required_min_rx.as_micros() as u32,
            detect_mult: self.detect_mult,
            passive: self.passive,
            auth: self.auth.clone(),
        }
    }
}

impl FromStr for SessionOpts {
    type Err = ApiError;

    /// Comma-separated `key=value` items: `interval` (both directions),
    /// `tx`, `rx`, `multiplier`, `passive`, `multihop[=hops]`, `auth`
    /// (`simple`, `sha1`, `meticulous-sha1`), `key-id`, `key`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut o = SessionOpts::default();
        let mut auth_type = None;
        let mut key_id = 1u8;
        let mut key = None;
        let bad = |field: &str, reason: String| ApiError::Invalid {
            field: field.into(),
            reason,
        };
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let need = || v.ok_or_else(|| bad(k, "needs a value".into()));
            match k {
                "interval" => {
                    let d = parse_interval(need()?).map_err(|r| bad(k, r))?;
                    o.desired_min_tx = d;
                    o.required_min_rx = d;
                }
                "tx" | "min-tx" => {
                    o.desired_min_tx = parse_interval(need()?).map_err(|r| bad(k, r))?
                }
                "rx" | "min-rx" => {
                    o.required_min_rx = parse_interval(need()?).map_err(|r| bad(k, r))?
                }
                "multiplier" | "detect-mult" => {
                    o.detect_mult = need()?.parse().map_err(|e| bad(k, format!("{e}")))?
                }
                "passive" => o.passive = true,
                "multihop" => {
                    o.multihop = Some(match v {
                        None => 255,
                        Some(h) => h.parse().map_err(|e| bad(k, format!("{e}")))?,
                    })
                }
                "auth" => {
                    auth_type = Some(match need()? {
                        "simple" => AuthType::SimplePassword,
                        "sha1" | "keyed-sha1" => AuthType::KeyedSha1,
                        "meticulous-sha1" => AuthType::MeticulousKeyedSha1,
                        other => {
                            return Err(bad(
                                k,
                                format!("{other:?}: use simple, sha1 or meticulous-sha1"),
                            ));
                        }
                    })
                }
                "key-id" => key_id = need()?.parse().map_err(|e| bad(k, format!("{e}")))?,
                "key" => key = Some(need()?.as_bytes().to_vec()),
                other => return Err(bad(other, "unknown option".into())),
            }
        }
        match (auth_type, key) {
            (Some(auth_type), Some(key)) => {
                o.auth = Some(AuthKey {
                    auth_type,
                    key_id,
                    key,
                })
            }
            (None, None) => {}
            _ => return Err(bad("auth", "auth and key go together".into())),
        }
        o.validate()?;
        Ok(o)
    }
}

/// A state change of one session, as broadcast to subscribers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// The peer.
    pub peer: IpAddr,
    /// The local address, if the session is bound to one.
    pub local: Option<IpAddr>,
    /// Before.
    pub old: State,
    /// After.
    pub new: State,
    /// Why (bfd.LocalDiag after the change).
    pub diag: Diag,
    /// The peer's last state: `AdminDown` when it was shut down on
    /// purpose, which RFC 5882 says must not take a client session down.
    pub remote_state: State,
    /// Unix time of the change, milliseconds.
    pub at_ms: u64,
}

impl StateChange {
    /// True when a client (BGP) must take its session down now: the
    /// session left Up for a reason other than the peer's AdminDown.
    pub fn is_failure(&self) -> bool {
        self.old == State::Up
            && self.new != State::Up
            && self.new != State::AdminDown
            && self.remote_state != State::AdminDown
    }
}

/// Status of one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// The peer.
    pub peer: IpAddr,
    /// The local address, if bound.
    pub local: Option<IpAddr>,
    /// Multihop hops, if multihop.
    pub multihop: Option<u8>,
    /// bfd.SessionState.
    pub state: State,
    /// bfd.RemoteSessionState.
    pub remote_state: State,
    /// bfd.LocalDiag.
    pub diag: Diag,
    /// The peer's diagnostic.
    pub remote_diag: Diag,
    /// bfd.LocalDiscr.
    pub local_discriminator: u32,
    /// bfd.RemoteDiscr.
    pub remote_discriminator: u32,
    /// Configured options.
    pub opts: SessionOpts,
    /// Advertised Desired Min TX, microseconds (1 s while not Up).
    pub desired_min_tx_us: u32,
    /// Advertised Required Min RX, microseconds.
    pub required_min_rx_us: u32,
    /// The peer's Desired Min TX, microseconds.
    pub remote_desired_min_tx_us: u32,
    /// The peer's Required Min RX, microseconds.
    pub remote_required_min_rx_us: u32,
    /// The peer's Detect Mult.
    pub remote_detect_mult: u8,
    /// Negotiated transmit interval (before jitter), microseconds.
    pub tx_interval_us: u32,
    /// Detection time, microseconds (0 until the peer was heard).
    pub detection_time_us: u64,
    /// A Poll Sequence is in flight.
    pub polling: bool,
    /// Authentication in use.
    pub auth: Option<AuthType>,
    /// Unix time of the last state change, seconds.
    pub since: u64,
    /// Times the session reached Up.
    pub ups: u64,
    /// Times the session left Up.
    pub downs: u64,
    /// Packets accepted.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets refused: authentication, wrong TTL, wrong source.
    pub rx_errors: u64,
}

/// Requests from handles to the instance.
#[derive(Debug)]
pub(crate) enum Request {
    Add {
        peer: IpAddr,
        local: Option<IpAddr>,
        opts: Box<SessionOpts>,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Update {
        peer: IpAddr,
        opts: Box<SessionOpts>,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Remove {
        peer: IpAddr,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    AdminDown {
        peer: IpAddr,
        down: bool,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Sessions(oneshot::Sender<Vec<SessionStatus>>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle to a running instance; cheap to clone.
#[derive(Clone, Debug)]
pub struct BfdHandle {
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) changes: broadcast::Sender<StateChange>,
}

impl BfdHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ApiError::Stopped)?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    /// Adds a session with `peer` and starts it (it begins Down). `local`
    /// binds it to one of our addresses (sent from, and expected as the
    /// destination of the peer's packets); `None` lets routing choose.
    pub async fn add_session(
        &self,
        peer: IpAddr,
        local: Option<IpAddr>,
        opts: SessionOpts,
    ) -> Result<(), ApiError> {
        opts.validate()?;
        if let Some(l) = local
            && l.is_ipv4() != peer.is_ipv4()
        {
            return Err(ApiError::Invalid {
                field: "local".into(),
                reason: format!("{l} and peer {peer} are of different families"),
            });
        }
        let opts = Box::new(opts);
        self.call(|reply| Request::Add {
            peer,
            local,
            opts,
            reply,
        })
        .await?
    }

    /// Changes a session's options; interval changes run a Poll Sequence
    /// without taking the session down.
    pub async fn update_session(&self, peer: IpAddr, opts: SessionOpts) -> Result<(), ApiError> {
        opts.validate()?;
        let opts = Box::new(opts);
        self.call(|reply| Request::Update { peer, opts, reply })
            .await?
    }

    /// Removes a session; the peer is told with AdminDown packets first.
    pub async fn remove_session(&self, peer: IpAddr) -> Result<(), ApiError> {
        self.call(|reply| Request::Remove { peer, reply }).await?
    }

    /// Holds a session in AdminDown (`true`) or lets it come up again.
    pub async fn set_admin_down(&self, peer: IpAddr, down: bool) -> Result<(), ApiError> {
        self.call(|reply| Request::AdminDown { peer, down, reply })
            .await?
    }

    /// Status of every session, sorted by peer.
    pub async fn sessions(&self) -> Result<Vec<SessionStatus>, ApiError> {
        self.call(Request::Sessions).await
    }

    /// State changes of every session, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }

    /// Takes every session AdminDown (so peers do not see a failure) and
    /// stops the instance.
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        self.call(Request::Shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_syntax() {
        let o: SessionOpts = "interval=300ms,multiplier=3".parse().unwrap();
        assert_eq!(o.desired_min_tx, Duration::from_millis(300));
        assert_eq!(o.required_min_rx, Duration::from_millis(300));
        assert_eq!(o.detect_mult, 3);
        let o: SessionOpts = "tx=200ms, rx=1s, multiplier=5, passive, multihop=3"
            .parse()
            .unwrap();
        assert_eq!(
            (
                o.desired_min_tx,
                o.required_min_rx,
                o.detect_mult,
                o.passive,
                o.multihop
            ),
            (
                Duration::from_millis(200),
                Duration::from_secs(1),
                5,
                true,
                Some(3)
            )
        );
        let o: SessionOpts = "auth=meticulous-sha1,key-id=7,key=tabby-secret"
            .parse()
            .unwrap();
        let a = o.auth.unwrap();
        assert_eq!((a.auth_type, a.key_id), (AuthType::MeticulousKeyedSha1, 7));
        for (bad, field) in [
            ("interval=5ms", "desiredMinTx"),
            ("multiplier=0", "detectMult"),
            ("interval=3 fortnights", "interval"),
            ("colour=blue", "colour"),
            ("auth=sha1", "auth"),
            ("auth=md5,key=x", "auth"),
            ("auth=sha1,key=012345678901234567890", "auth"),
        ] {
            let e = bad.parse::<SessionOpts>().unwrap_err().to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
    }

    #[test]
    fn intervals_round_trip_in_json() {
        let o = SessionOpts {
            desired_min_tx: Duration::from_micros(1500),
            ..Default::default()
        };
        let j = serde_json::to_value(&o).unwrap();
        assert_eq!(j["desiredMinTx"], "1500us");
        assert_eq!(j["requiredMinRx"], "300ms");
        let back: SessionOpts = serde_json::from_value(j).unwrap();
        assert_eq!(back, o);
        let d: SessionOpts = serde_json::from_str(r#"{"detectMult":5}"#).unwrap();
        assert_eq!(d.desired_min_tx, Duration::from_millis(300));
        assert_eq!(format_interval(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn failure_follows_rfc_5882() {
        let c = |old, new, remote_state| StateChange {
            peer: "198.18.0.2".parse().unwrap(),
            local: None,
            old,
            new,
            diag: Diag::None,
            remote_state,
            at_ms: 0,
        };
        assert!(c(State::Up, State::Down, State::Up).is_failure());
        assert!(c(State::Up, State::Down, State::Down).is_failure());
        assert!(!c(State::Up, State::Down, State::AdminDown).is_failure());
        assert!(!c(State::Up, State::AdminDown, State::Up).is_failure());
        assert!(!c(State::Init, State::Down, State::Up).is_failure());
        assert!(!c(State::Down, State::Up, State::Init).is_failure());
    }
}
