//! The speaker as the node agent sees it: configuration types, a cloneable
//! [`BgpHandle`] to originate/withdraw prefixes and manage peers at run time,
//! a stream of best-path changes for the kernel, and peer status snapshots.
//! Every limit a peer is held to (prefixes, stale time) has a default here,
//! so a peer configured with [`PeerConfig::new`] is safe as it is.

use crate::packet::attribute::LargeCommunity;
use crate::packet::capability::Family;
use crate::policy::Filter;
use crate::rib::BestPathChange;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Errors of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The instance task is gone.
    #[error("the BGP instance has stopped")]
    Stopped,
    /// A peer with this address already exists.
    #[error("peer {0} already exists")]
    PeerExists(IpAddr),
    /// No peer with this address.
    #[error("peer {0} does not exist")]
    NoSuchPeer(IpAddr),
    /// Invalid configuration value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A peer's TCP MD5 password file cannot be used: the peer is refused
    /// rather than peered without MD5.
    #[error("peer {peer}: password file {}: {reason}", path.display())]
    Secret {
        /// The peer.
        peer: IpAddr,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
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

fn default_port() -> u16 {
    179
}
fn default_hold() -> u16 {
    90
}
fn default_connect_retry() -> u64 {
    5
}
fn default_idle_hold() -> u64 {
    5
}
fn default_gr_time() -> u16 {
    120
}
fn default_label() -> String {
    "global".to_string()
}
fn default_true() -> bool {
    true
}

/// Prefixes a peer may send per address family when its configuration sets
/// no limit: beyond any Calico cluster's routes, small enough to bound what
/// one peer can make the speaker hold.
pub const DEFAULT_MAX_PREFIXES: u32 = 500_000;

/// Seconds to wait before reconnecting to a peer closed for sending too
/// many prefixes, when its configuration does not say.
pub const DEFAULT_MAX_PREFIXES_RESTART_SECS: u32 = 60;

/// Instance-wide configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceConfig {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Local AS.
    pub asn: u32,
    /// Listen address (port 0 picks a free one; `None` = do not listen).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Route reflection cluster id (default: router id).
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// Hold time proposed to peers, seconds (0 or >= 3).
    #[serde(default = "default_hold")]
    pub hold_time: u16,
    /// Connect retry interval, seconds.
    #[serde(default = "default_connect_retry")]
    pub connect_retry_secs: u64,
    /// Back-off before restarting a failed session, seconds.
    #[serde(default = "default_idle_hold")]
    pub idle_hold_secs: u64,
    /// Graceful restart time we advertise, seconds (RFC 4724); 0 turns
    /// graceful restart off, also the helper role.
    #[serde(default = "default_gr_time")]
    pub graceful_restart_time: u16,
}

impl InstanceConfig {
    /// Checks values the wire cannot carry.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(ApiError::Invalid {
                field: "holdTime".into(),
                reason: format!("{} is neither 0 nor at least 3", self.hold_time),
            });
        }
        if self.router_id.is_unspecified() {
            return Err(ApiError::Invalid {
                field: "routerId".into(),
                reason: "0.0.0.0 is not a valid BGP identifier".into(),
            });
        }
        if self.graceful_restart_time > 4095 {
            return Err(ApiError::Invalid {
                field: "gracefulRestartTime".into(),
                reason: format!(
                    "{} does not fit the 12-bit field (max 4095)",
                    self.graceful_restart_time
                ),
            });
        }
        if self.asn == 0 {
            return Err(ApiError::Invalid {
                field: "asn".into(),
                reason: "AS 0 is reserved".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn connect_retry(&self) -> Duration {
        Duration::from_secs(self.connect_retry_secs.max(1))
    }

    pub(crate) fn idle_hold(&self) -> Duration {
        Duration::from_secs(self.idle_hold_secs)
    }
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// Peer address.
    pub address: IpAddr,
    /// Peer TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Peer AS.
    pub remote_as: u32,
    /// Our AS towards this peer, overriding the instance AS.
    #[serde(default)]
    pub local_as: Option<u32>,
    /// Wait for the peer to connect.
    #[serde(default)]
    pub passive: bool,
    /// TCP MD5 password.
    #[serde(default)]
    pub password: Option<String>,
    /// The peer is a route reflector client.
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Always advertise ourselves as next hop.
    #[serde(default)]
    pub next_hop_self: bool,
    /// Never rewrite the next hop, even on eBGP.
    #[serde(default)]
    pub next_hop_keep: bool,
    /// TTL for multihop sessions.
    #[serde(default)]
    pub multihop: Option<u8>,
    /// Graceful restart time advertised to this peer, seconds (BIRD's
    /// per-peer `graceful restart time`); `None` = the instance's.
    #[serde(default)]
    pub graceful_restart_time: Option<u16>,
    /// Interval between KEEPALIVEs, seconds (BIRD's `keepalive time`);
    /// `None` = a third of the negotiated hold time, which also caps it.
    #[serde(default)]
    pub keepalive_secs: Option<u16>,
    /// GTSM: maximum hops to the peer.
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// How many times our AS may appear in received paths.
    #[serde(default)]
    pub allow_local_as: u8,
    /// Source address of outbound connections.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// IPv6 next hop to advertise for next-hop-self on an IPv4 session.
    #[serde(default)]
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Address families; empty = the peer address's family.
    #[serde(default)]
    pub families: Vec<FamilyName>,
    /// Label shown in status (Calico: "node-to-node mesh", "global", ...).
    #[serde(default = "default_label")]
    pub type_label: String,
    /// BGPFilters for this peer, applied in order.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// TCP MD5 password read from this file (trailing newlines dropped)
    /// when the peer is added, instead of `password`. A file that cannot be
    /// read, or holds no usable key, refuses the peer: never a session
    /// without MD5.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Most prefixes the peer may send per address family (after import
    /// policy); one more closes the session with Cease / maximum number of
    /// prefixes reached (RFC 4486). `None` = [`DEFAULT_MAX_PREFIXES`],
    /// `Some(0)` = no limit.
    #[serde(default)]
    pub max_prefixes: Option<u32>,
    /// Seconds to wait before reconnecting after closing the session for
    /// too many prefixes; `None` = [`DEFAULT_MAX_PREFIXES_RESTART_SECS`].
    #[serde(default)]
    pub max_prefixes_restart_secs: Option<u32>,
    /// Longest we keep this peer's routes while it restarts, whatever
    /// restart time it asks for (seconds); `None` =
    /// [`crate::neighbor::restart::DEFAULT_STALE_CAP_SECS`].
    #[serde(default)]
    pub max_stale_secs: Option<u16>,
    /// Export routes learned over eBGP to this eBGP peer (transit between
    /// external peers). Off by default, as in Calico's BIRD configuration:
    /// external peers get our own and the cluster's routes only.
    #[serde(default)]
    pub transit: bool,
    /// Routes from this eBGP peer must start their AS path with its AS, or
    /// they are treated as withdrawn (RFC 4271 section 6.3). On by default;
    /// off for route servers that do not prepend themselves.
    #[serde(default = "default_true")]
    pub enforce_first_as: bool,
    /// Offer extended messages (RFC 8654): when the peer offers them too,
    /// UPDATEs may be up to 65535 bytes. Off by default, as in BIRD.
    #[serde(default)]
    pub extended_messages: bool,
    /// Protect the session with BFD (RFC 5882): no session while the BFD
    /// session with the peer is not Up, and the session drops as soon as
    /// BFD detects a failure. In configuration files `bfd: true`, `bfd:
    /// "on"` (300 ms x 3), `bfd: "interval=300ms,multiplier=3"` (see
    /// [`parse_bfd`]) or the options as a map. Single hop (RFC 5881)
    /// unless the options say `multihop`.
    #[serde(default, with = "bfd_setting", skip_serializing_if = "Option::is_none")]
    pub bfd: Option<tabby_bfd::SessionOpts>,
    /// With `bfd`: hold the session until BFD is Up (RFC 5882 section
    /// 4.3). `false` (`no-wait` in the text form) starts it at once and only
    /// takes it down when BFD fails: for peers that start BFD only once the
    /// BGP session is up, such as FRR towards a directly connected iBGP peer.
    #[serde(default = "default_true")]
    pub bfd_wait: bool,
}

/// A parsed BFD setting: the session options and whether BGP waits for BFD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdSetting {
    /// The BFD session's options.
    pub opts: tabby_bfd::SessionOpts,
    /// Hold BGP until BFD is Up ([`PeerConfig::bfd_wait`]).
    pub wait: bool,
}

impl PeerConfig {
    /// Sets (or clears) BFD from a parsed setting.
    pub fn set_bfd(&mut self, setting: Option<BfdSetting>) {
        self.bfd_wait = setting.as_ref().is_none_or(|s| s.wait);
        self.bfd = setting.map(|s| s.opts);
    }
}

/// Parses a BFD setting as the `tabby.dev/bfd` annotation and `bfd` in
/// tabby-bgpd's configuration carry it: `on` (or `true`) for the defaults,
/// 300 ms x 3; `off` (or `false`) for none; or comma-separated options:
/// `interval=300ms,multiplier=3`, `min-tx=`, `min-rx=`, `passive`,
/// `multihop`, `auth=sha1,key-id=1,key=...`; and `no-wait` (with `on` or
/// options: `on,no-wait`) for [`PeerConfig::bfd_wait`] off.
pub fn parse_bfd(text: &str) -> Result<Option<BfdSetting>, String> {
    let mut wait = true;
    let mut on = false;
    let mut rest = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item {
            "no-wait" => wait = false,
            "on" | "true" => on = true,
            "off" | "false" => return Ok(None),
            other => rest.push(other),
        }
    }
    if !on && rest.is_empty() {
        return Err("empty: use \"on\" or options".into());
    }
    let opts = rest
        .join(",")
        .parse::<tabby_bfd::SessionOpts>()
        .map_err(|e| e.to_string())?;
    Ok(Some(BfdSetting { opts, wait }))
}

mod bfd_setting {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tabby_bfd::SessionOpts;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Setting {
        Flag(bool),
        Text(String),
        Opts(SessionOpts),
    }

    pub fn serialize<S: Serializer>(v: &Option<SessionOpts>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SessionOpts>, D::Error> {
        match Option::<Setting>::deserialize(d)? {
            None | Some(Setting::Flag(false)) => Ok(None),
            Some(Setting::Flag(true)) => Ok(Some(SessionOpts::default())),
            Some(Setting::Text(t)) => match super::parse_bfd(&t) {
                Err(e) => Err(serde::de::Error::custom(format!("bfd: {t:?}: {e}"))),
                Ok(Some(s)) if !s.wait => Err(serde::de::Error::custom(format!(
                    "bfd: {t:?}: no-wait is written `bfdWait: false` beside `bfd` here"
                ))),
                Ok(s) => Ok(s.map(|s| s.opts)),
            },
            Some(Setting::Opts(o)) => o
                .validate()
                .map(|()| Some(o))
                .map_err(|e| serde::de::Error::custom(format!("bfd: {e}"))),
        }
    }
}

/// BGPPeer annotations the node agent maps onto [`PeerConfig`]: Calico's
/// BGPPeer has no fields for these limits, so manifests stay
/// Calico-compatible and carry them as annotations.
pub mod annotations {
    /// [`super::PeerConfig::max_prefixes`]: a count, `0` = no limit.
    pub const MAX_PREFIXES: &str = "bgp.tabby.dev/max-prefixes";
    /// [`super::PeerConfig::max_prefixes_restart_secs`]: seconds, at least 1.
    pub const MAX_PREFIXES_RESTART_SECS: &str = "bgp.tabby.dev/max-prefixes-restart-secs";
    /// [`super::PeerConfig::max_stale_secs`]: seconds.
    pub const MAX_STALE_SECS: &str = "bgp.tabby.dev/max-stale-secs";
    /// [`super::PeerConfig::transit`]: `"true"` or `"false"`.
    pub const TRANSIT: &str = "bgp.tabby.dev/transit";
    /// [`super::PeerConfig::bfd`]: `"on"`, `"interval=300ms,multiplier=3"`
    /// (see [`super::parse_bfd`]). On a BGPPeer it applies to that peer's
    /// sessions, on the `default` BGPConfiguration to the node-to-node mesh.
    pub const BFD: &str = "tabby.dev/bfd";
}

/// Address family names in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FamilyName {
    /// IPv4 unicast.
    #[serde(rename = "ipv4-unicast")]
    Ipv4Unicast,
    /// IPv6 unicast.
    #[serde(rename = "ipv6-unicast")]
    Ipv6Unicast,
}

impl PeerConfig {
    /// A peer with defaults for everything but address and AS.
    pub fn new(address: IpAddr, remote_as: u32) -> Self {
        PeerConfig {
            address,
            port: default_port(),
            remote_as,
            local_as: None,
            passive: false,
            password: None,
            route_reflector_client: false,
            next_hop_self: false,
            next_hop_keep: false,
            multihop: None,
            graceful_restart_time: None,
            keepalive_secs: None,
            ttl_security: None,
            allow_local_as: 0,
            source_address: None,
            next_hop_v6: None,
            families: Vec::new(),
            type_label: default_label(),
            filters: Vec::new(),
            password_file: None,
            max_prefixes: None,
            max_prefixes_restart_secs: None,
            max_stale_secs: None,
            transit: false,
            enforce_first_as: true,
            extended_messages: false,
            bfd: None,
            bfd_wait: true,
        }
    }

    /// The prefix limit per family in effect; `None` = no limit.
    pub fn prefix_limit(&self) -> Option<u32> {
        match self.max_prefixes {
            None => Some(DEFAULT_MAX_PREFIXES),
            Some(0) => None,
            Some(n) => Some(n),
        }
    }

    /// The wait after closing the session for too many prefixes.
    pub fn prefix_limit_restart(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.max_prefixes_restart_secs
                .unwrap_or(DEFAULT_MAX_PREFIXES_RESTART_SECS),
        ))
    }

    /// The cap on a restarting peer's stale routes, in seconds.
    pub fn stale_cap_secs(&self) -> u16 {
        self.max_stale_secs
            .unwrap_or(crate::neighbor::restart::DEFAULT_STALE_CAP_SECS)
    }

    /// The TCP MD5 key: `password`, or the contents of `password_file`
    /// (trailing newlines dropped), read now. Fails closed: a file that
    /// cannot be read, is empty or holds more than the 80 bytes TCP MD5
    /// allows is an error naming the peer and the file, never "no key".
    pub fn md5_key(&self) -> Result<Option<String>, ApiError> {
        let Some(path) = &self.password_file else {
            return Ok(self.password.clone());
        };
        let err = |reason: String| ApiError::Secret {
            peer: self.address,
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let key = text.trim_end_matches(['\n', '\r']);
        if key.is_empty() {
            return Err(err("empty: no key to sign the session with".into()));
        }
        if key.len() > 80 {
            return Err(err(format!(
                "{} bytes is longer than the 80 TCP MD5 allows",
                key.len()
            )));
        }
        Ok(Some(key.to_string()))
    }

    /// Families to negotiate.
    pub fn families(&self) -> Vec<Family> {
        if self.families.is_empty() {
            return vec![match self.address {
                IpAddr::V4(_) => Family::Ipv4Unicast,
                IpAddr::V6(_) => Family::Ipv6Unicast,
            }];
        }
        let mut v: Vec<Family> = self
            .families
            .iter()
            .map(|f| match f {
                FamilyName::Ipv4Unicast => Family::Ipv4Unicast,
                FamilyName::Ipv6Unicast => Family::Ipv6Unicast,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Applies the BGPPeer annotations named in [`annotations`] (other keys
    /// are ignored). A value that does not parse is an error naming the
    /// annotation: the peer should be refused, not peered without it.
    pub fn apply_annotations<'a>(
        &mut self,
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), ApiError> {
        fn parse<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T, ApiError> {
            value.trim().parse().map_err(|_| ApiError::Invalid {
                field: format!("metadata.annotations[{key}]"),
                reason: format!("{value:?} is not {what}"),
            })
        }
        for (key, value) in annotations {
            match key {
                annotations::MAX_PREFIXES => {
                    self.max_prefixes = Some(parse(key, value, "a prefix count (0 = no limit)")?)
                }
                annotations::MAX_PREFIXES_RESTART_SECS => {
                    self.max_prefixes_restart_secs = Some(parse(key, value, "a number of seconds")?)
                }
                annotations::MAX_STALE_SECS => {
                    self.max_stale_secs = Some(parse(key, value, "a number of seconds")?)
                }
                annotations::TRANSIT => self.transit = parse(key, value, "true or false")?,
                annotations::BFD => {
                    let s = parse_bfd(value).map_err(|e| ApiError::Invalid {
                        field: format!("metadata.annotations[{key}]"),
                        reason: format!(
                            "{value:?} is not \"on\" or BFD options such as \"interval=300ms,multiplier=3\": {e}"
                        ),
                    })?;
                    self.set_bfd(s);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<(), ApiError> {
        let field = |f: &str| format!("peers[{}].{f}", self.address);
        if self.remote_as == 0 {
            return Err(ApiError::Invalid {
                field: field("remoteAs"),
                reason: "AS 0 is reserved".into(),
            });
        }
        if let Some(p) = &self.password
            && p.len() > 80
        {
            return Err(ApiError::Invalid {
                field: field("password"),
                reason: format!("{} bytes is longer than the 80 TCP MD5 allows", p.len()),
            });
        }
        // An empty key would clear MD5 on the socket: a session without it.
        if self.password.as_deref() == Some("") {
            return Err(ApiError::Invalid {
                field: field("password"),
                reason: "empty; leave it unset for a session without TCP MD5".into(),
            });
        }
        if self.password_file.is_some() && self.password.is_some() {
            return Err(ApiError::Invalid {
                field: field("passwordFile"),
                reason: "cannot be combined with password".into(),
            });
        }
        if self.max_prefixes_restart_secs == Some(0) {
            return Err(ApiError::Invalid {
                field: field("maxPrefixesRestartSecs"),
                reason: "0 would reconnect at once to a peer that sends too much".into(),
            });
        }
        if let Some(t) = self.graceful_restart_time
            && t > 4095
        {
            return Err(ApiError::Invalid {
                field: field("gracefulRestartTime"),
                reason: format!("{t} does not fit the 12-bit field (max 4095)"),
            });
        }
        if self.keepalive_secs == Some(0) {
            return Err(ApiError::Invalid {
                field: field("keepaliveSecs"),
                reason: "0 is not an interval; leave it unset for a third of the hold time".into(),
            });
        }
        if self.multihop.is_some() && self.ttl_security.is_some() {
            return Err(ApiError::Invalid {
                field: field("ttlSecurity"),
                reason: "cannot be combined with multihop".into(),
            });
        }
        for (i, f) in self.filters.iter().enumerate() {
            let lists = [
                ("exportV4", &f.export_v4),
                ("importV4", &f.import_v4),
                ("exportV6", &f.export_v6),
                ("importV6", &f.import_v6),
            ];
            for (list, rules) in lists {
                for (j, r) in rules.iter().enumerate() {
                    r.validate().map_err(|reason| ApiError::Invalid {
                        field: field(&format!("filters[{i}].{list}[{j}]")),
                        reason,
                    })?;
                }
            }
        }
        if self.next_hop_self && self.next_hop_keep {
            return Err(ApiError::Invalid {
                field: field("nextHopKeep"),
                reason: "cannot be combined with nextHopSelf".into(),
            });
        }
        Ok(())
    }
}

/// Status of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Peer address.
    pub address: IpAddr,
    /// The configured type label.
    #[serde(rename = "type")]
    pub type_label: String,
    /// FSM state name.
    pub state: String,
    /// Unix time (seconds) of the last state change.
    pub since: u64,
    /// Last error or extra information.
    pub info: String,
    /// The BFD session protecting this peer, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdPeerStatus>,
}

/// The BFD side of a peer, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BfdPeerStatus {
    /// `Up`, `Down`, `Init` or `AdminDown`; `Down` until BFD reported.
    pub state: String,
    /// Configured Desired Min TX, microseconds.
    pub desired_min_tx_us: u64,
    /// Configured Required Min RX, microseconds.
    pub required_min_rx_us: u64,
    /// Configured Detect Mult.
    pub detect_mult: u8,
    /// Multihop (RFC 5883) rather than single hop.
    pub multihop: bool,
    /// Times BFD left Up while protecting this peer.
    pub downs: u64,
    /// Why BFD cannot run for this peer (e.g. UDP 3784 cannot be bound).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl BfdPeerStatus {
    /// `300ms/300ms x3`: the configured intervals (tx/rx) and multiplier.
    pub fn intervals(&self) -> String {
        let f = |us: u64| tabby_bfd::api::format_interval(Duration::from_micros(us));
        format!(
            "{}/{} x{}",
            f(self.desired_min_tx_us),
            f(self.required_min_rx_us),
            self.detect_mult
        )
    }
}

/// Path attributes of originated prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginAttrs {
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY values.
    pub large_communities: Vec<LargeCommunity>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF towards iBGP peers (Calico carries the route priority
    /// here as 2147483647 - metric).
    pub local_pref: Option<u32>,
}

/// What this speaker tells its peers about its own restart, in the graceful
/// restart capability (RFC 4724 section 3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestartState {
    /// This speaker has just restarted: the Restart State (R) bit is set in
    /// the OPEN of each peer's first session from now on.
    pub restarted: bool,
    /// The forwarding state survived (routes learned before are still in
    /// the kernel): the Forwarding State (F) bit is set for every family,
    /// so peers keep our routes until our End-of-RIB instead of flushing
    /// them when the session comes back.
    pub forwarding_preserved: bool,
}

/// Requests from handles to the instance.
#[derive(Debug)]
pub(crate) enum Request {
    Originate {
        prefixes: Vec<IpNet>,
        attrs: OriginAttrs,
    },
    Withdraw(Vec<IpNet>),
    AddPeer(Box<PeerConfig>, oneshot::Sender<Result<(), ApiError>>),
    UpdatePeer(Box<PeerConfig>, oneshot::Sender<Result<(), ApiError>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), ApiError>>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    BestPaths(oneshot::Sender<Vec<BestPathChange>>),
    SetRestartState(RestartState),
    Shutdown {
        notify: bool,
        done: oneshot::Sender<()>,
    },
}

/// A handle to a running speaker; cheap to clone.
#[derive(Clone, Debug)]
pub struct BgpHandle {
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) routes: broadcast::Sender<BestPathChange>,
    pub(crate) peers: broadcast::Sender<PeerStatus>,
    pub(crate) local_addr: Option<SocketAddr>,
}

impl BgpHandle {
    async fn send(&self, r: Request) -> Result<(), ApiError> {
        self.tx.send(r).await.map_err(|_| ApiError::Stopped)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Originates prefixes (replacing any previous origination of the same
    /// prefix) with the given COMMUNITIES.
    pub async fn originate(
        &self,
        prefixes: Vec<IpNet>,
        communities: Vec<u32>,
    ) -> Result<(), ApiError> {
        let attrs = OriginAttrs {
            communities,
            ..Default::default()
        };
        self.originate_with(prefixes, attrs).await
    }

    /// Originates prefixes with the given attributes (replacing any previous
    /// origination of the same prefix).
    pub async fn originate_with(
        &self,
        prefixes: Vec<IpNet>,
        attrs: OriginAttrs,
    ) -> Result<(), ApiError> {
        self.send(Request::Originate { prefixes, attrs }).await
    }

    /// Stops originating prefixes.
    pub async fn withdraw(&self, prefixes: Vec<IpNet>) -> Result<(), ApiError> {
        self.send(Request::Withdraw(prefixes)).await
    }

    /// Adds and starts a peer.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), ApiError> {
        peer.validate()?;
        let (tx, rx) = oneshot::channel();
        self.send(Request::AddPeer(Box::new(peer), tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Replaces a peer's configuration; the session restarts only if the
    /// configuration changed.
    pub async fn update_peer(&self, peer: PeerConfig) -> Result<(), ApiError> {
        peer.validate()?;
        let (tx, rx) = oneshot::channel();
        self.send(Request::UpdatePeer(Box::new(peer), tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Stops and removes a peer (sending Cease/peer de-configured).
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::RemovePeer(address, tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)?
    }

    /// Current status of every peer.
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Peers(tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    /// Every learned prefix with its current ECMP next hops: the full table a
    /// subscriber that lagged behind [`BgpHandle::subscribe_routes`] resyncs from.
    pub async fn best_paths(&self) -> Result<Vec<BestPathChange>, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::BestPaths(tx)).await?;
        rx.await.map_err(|_| ApiError::Stopped)
    }

    /// Sets what the graceful restart capability says about this speaker
    /// (R and F bits) in the OPENs sent from now on. Call it before adding
    /// peers after a restart that kept the kernel routes.
    pub async fn set_restart_state(&self, state: RestartState) -> Result<(), ApiError> {
        self.send(Request::SetRestartState(state)).await
    }

    /// Best-path changes (prefix and ECMP next hops) for the kernel.
    pub fn subscribe_routes(&self) -> broadcast::Receiver<BestPathChange> {
        self.routes.subscribe()
    }

    /// Peer status changes.
    pub fn subscribe_peers(&self) -> broadcast::Receiver<PeerStatus> {
        self.peers.subscribe()
    }

    /// Stops every session (Cease/administrative shutdown) and the instance.
    pub async fn shutdown(&self) -> Result<(), ApiError> {
        self.stop(true).await
    }

    /// Stops for a planned restart: connections are closed without a
    /// NOTIFICATION, so peers that support graceful restart keep our routes
    /// until we are back (RFC 4724).
    pub async fn shutdown_for_restart(&self) -> Result<(), ApiError> {
        self.stop(false).await
    }

    async fn stop(&self, notify: bool) -> Result<(), ApiError> {
        let (done, rx) = oneshot::channel();
        self.send(Request::Shutdown { notify, done }).await?;
        rx.await.map_err(|_| ApiError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_config_defaults_and_validation() {
        let p: PeerConfig =
            serde_json::from_str(r#"{"address":"198.18.0.2","remoteAs":65001}"#).unwrap();
        assert_eq!(p.port, 179);
        assert_eq!(p.families(), vec![Family::Ipv4Unicast]);
        assert!(p.validate().is_ok());
        let mut bad = p.clone();
        bad.next_hop_keep = true;
        bad.next_hop_self = true;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("nextHopKeep")
        );
        let p6: PeerConfig = serde_json::from_str(
            r#"{"address":"2001:db8::2","remoteAs":65001,"families":["ipv4-unicast","ipv6-unicast"]}"#,
        )
        .unwrap();
        assert_eq!(
            p6.families(),
            vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
        );
        assert_eq!((p.graceful_restart_time, p.keepalive_secs), (None, None));
        let timed: PeerConfig = serde_json::from_str(
            r#"{"address":"198.18.0.2","remoteAs":65001,"gracefulRestartTime":300,"keepaliveSecs":10}"#,
        )
        .unwrap();
        assert_eq!(
            (timed.graceful_restart_time, timed.keepalive_secs),
            (Some(300), Some(10))
        );
        assert!(timed.validate().is_ok());
        let mut bad = timed.clone();
        bad.graceful_restart_time = Some(5000);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("gracefulRestartTime")
        );
        let mut bad = timed;
        bad.keepalive_secs = Some(0);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("keepaliveSecs")
        );
        assert!(
            serde_json::from_str::<PeerConfig>(
                r#"{"address":"198.18.0.2","remoteAs":1,"bogus":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn annotations_set_limits_and_name_bad_values() {
        let mut p = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 65001);
        assert_eq!(p.prefix_limit(), Some(DEFAULT_MAX_PREFIXES));
        p.apply_annotations([
            ("bgp.tabby.dev/max-prefixes", "100000"),
            ("bgp.tabby.dev/max-prefixes-restart-secs", "300"),
            ("bgp.tabby.dev/max-stale-secs", "30"),
            ("bgp.tabby.dev/transit", "true"),
            ("projectcalico.org/other", "x"),
        ])
        .unwrap();
        assert_eq!(p.prefix_limit(), Some(100_000));
        assert_eq!(p.prefix_limit_restart(), Duration::from_secs(300));
        assert_eq!(p.stale_cap_secs(), 30);
        assert!(p.transit);
        p.apply_annotations([(annotations::MAX_PREFIXES, "0")])
            .unwrap();
        assert_eq!(p.prefix_limit(), None, "0 = no limit");
        let e = p
            .apply_annotations([(annotations::MAX_PREFIXES, "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bgp.tabby.dev/max-prefixes") && e.contains("lots"),
            "{e}"
        );
        let mut q = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 65001);
        q.apply_annotations([(annotations::MAX_PREFIXES_RESTART_SECS, "0")])
            .unwrap();
        assert!(q.validate().is_err(), "a 0 s wait is refused by validate");
    }

    #[test]
    fn bfd_setting_forms() {
        let ms = Duration::from_millis;
        let d = parse_bfd("on").unwrap().unwrap();
        assert_eq!(
            (d.opts.desired_min_tx, d.opts.detect_mult, d.wait),
            (ms(300), 3, true)
        );
        assert_eq!(parse_bfd("off").unwrap(), None);
        let n = parse_bfd("on, no-wait").unwrap().unwrap();
        assert_eq!(
            (n.opts.clone(), n.wait),
            (tabby_bfd::SessionOpts::default(), false)
        );
        assert!(parse_bfd("").is_err());
        assert!(parse_bfd("no-wait").is_err());
        let o = parse_bfd("interval=100ms,multiplier=5,min-rx=200ms")
            .unwrap()
            .unwrap()
            .opts;
        assert_eq!(
            (o.desired_min_tx, o.required_min_rx, o.detect_mult),
            (ms(100), ms(200), 5)
        );
        // The configuration file: a flag, the text form or a map.
        for (json, want) in [
            (r#"true"#, Some(ms(300))),
            (r#"false"#, None),
            (r#""interval=50ms""#, Some(ms(50))),
            (r#"{"desiredMinTx":"20ms","detectMult":4}"#, Some(ms(20))),
        ] {
            let p: PeerConfig = serde_json::from_str(&format!(
                r#"{{"address":"198.18.0.2","remoteAs":65001,"bfd":{json}}}"#
            ))
            .unwrap();
            assert_eq!(p.bfd.map(|o| o.desired_min_tx), want, "{json}");
        }
        let e = serde_json::from_str::<PeerConfig>(
            r#"{"address":"198.18.0.2","remoteAs":65001,"bfd":"interval=1ms"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bfd") && e.contains("desiredMinTx"), "{e}");
        let p: PeerConfig = serde_json::from_str(
            r#"{"address":"198.18.0.2","remoteAs":65001,"bfd":true,"bfdWait":false}"#,
        )
        .unwrap();
        assert!(p.bfd.is_some() && !p.bfd_wait);
        let e = serde_json::from_str::<PeerConfig>(
            r#"{"address":"198.18.0.2","remoteAs":65001,"bfd":"on,no-wait"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bfdWait"), "{e}");
        // The annotation.
        let mut p = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 65001);
        p.apply_annotations([(annotations::BFD, "interval=300ms,multiplier=3")])
            .unwrap();
        assert_eq!(p.bfd, Some(tabby_bfd::SessionOpts::default()));
        assert!(p.bfd_wait);
        p.apply_annotations([(annotations::BFD, "on,no-wait")])
            .unwrap();
        assert!(p.bfd.is_some() && !p.bfd_wait);
        let e = p
            .apply_annotations([(annotations::BFD, "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("metadata.annotations[tabby.dev/bfd]") && e.contains("sometimes"),
            "{e}"
        );
        let s = BfdPeerStatus {
            state: "Up".into(),
            desired_min_tx_us: 300_000,
            required_min_rx_us: 1_000_000,
            detect_mult: 3,
            multihop: false,
            downs: 0,
            error: String::new(),
        };
        assert_eq!(s.intervals(), "300ms/1s x3");
    }

    #[test]
    fn md5_key_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 65001);
        p.password_file = Some(dir.path().join("missing"));
        let e = p.md5_key().unwrap_err().to_string();
        assert!(e.contains("198.18.0.2") && e.contains("missing"), "{e}");
        std::fs::write(dir.path().join("k"), "s3cret\n").unwrap();
        p.password_file = Some(dir.path().join("k"));
        assert_eq!(p.md5_key().unwrap().as_deref(), Some("s3cret"));
        p.password = Some("other".into());
        assert!(p.validate().is_err(), "password and passwordFile together");
        let mut q = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 65001);
        q.password = Some(String::new());
        assert!(q.validate().unwrap_err().to_string().contains("password"));
    }

    #[test]
    fn instance_config_validation_names_fields() {
        let mut c = InstanceConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 1),
            asn: 64512,
            listen: None,
            cluster_id: None,
            hold_time: 2,
            connect_retry_secs: 5,
            idle_hold_secs: 5,
            graceful_restart_time: 120,
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("holdTime")
        );
        c.hold_time = 90;
        assert!(c.validate().is_ok());
    }
}
