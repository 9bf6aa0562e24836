//! Real BGP daemons (BIRD, FRR, GoBGP) run inside a [`Netns`] from one common
//! configuration model, each with its own temp dir, control socket and pid
//! file, so nothing touches system-wide instances. Queries return sessions and
//! RIB entries in one shape whatever the daemon.

pub mod bfd;
pub mod bird;
pub mod frr;
pub mod gobgp;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use crate::addr;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::wait::expect_within;

pub use bird::Bird;
pub use frr::Frr;
pub use gobgp::Gobgp;

/// Address family (unicast SAFI implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Afi {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

impl Afi {
    /// The family of an address.
    pub fn of(a: IpAddr) -> Afi {
        if a.is_ipv4() { Afi::Ipv4 } else { Afi::Ipv6 }
    }
}

/// One BGP neighbor of a daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// Peer address.
    pub address: IpAddr,
    /// Peer AS (equal to the local AS for iBGP).
    pub remote_as: u32,
    /// Peer TCP port when not 179.
    pub port: Option<u16>,
    /// Local address to use (update-source); needed for multihop sessions.
    pub local_address: Option<IpAddr>,
    /// Only accept connections, never connect.
    pub passive: bool,
    /// TCP MD5 signature password (RFC 2385).
    pub password: Option<String>,
    /// Treat the peer as route-reflector client.
    pub rr_client: bool,
    /// Rewrite the next hop to our address when sending.
    pub next_hop_self: bool,
    /// eBGP multihop with this TTL.
    pub multihop: Option<u8>,
    /// Families to negotiate; empty means the family of `address`.
    pub families: Vec<Afi>,
    /// Protect the session with BFD (BIRD `bfd on`, FRR `neighbor X bfd`),
    /// with the timers of [`BgpConfig::bfd_timers`].
    pub bfd: bool,
}

impl Neighbor {
    /// A neighbor with defaults: active, no password, family of the address.
    pub fn new(address: IpAddr, remote_as: u32) -> Neighbor {
        Neighbor {
            address,
            remote_as,
            port: None,
            local_address: None,
            passive: false,
            password: None,
            rr_client: false,
            next_hop_self: false,
            multihop: None,
            families: Vec::new(),
            bfd: false,
        }
    }
    /// Protects the session with BFD.
    pub fn bfd(mut self) -> Self {
        self.bfd = true;
        self
    }
    /// Sets the peer port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Sets the local (source) address.
    pub fn local_address(mut self, a: IpAddr) -> Self {
        self.local_address = Some(a);
        self
    }
    /// Makes the session passive.
    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }
    /// Sets a TCP MD5 password.
    pub fn password(mut self, p: &str) -> Self {
        self.password = Some(p.to_string());
        self
    }
    /// Marks the peer as route-reflector client.
    pub fn rr_client(mut self) -> Self {
        self.rr_client = true;
        self
    }
    /// Sends routes with ourselves as next hop.
    pub fn next_hop_self(mut self) -> Self {
        self.next_hop_self = true;
        self
    }
    /// eBGP multihop with `ttl`.
    pub fn multihop(mut self, ttl: u8) -> Self {
        self.multihop = Some(ttl);
        self
    }
    /// Families to negotiate.
    pub fn families(mut self, f: &[Afi]) -> Self {
        self.families = f.to_vec();
        self
    }
    /// The families in effect (the address family when none were given).
    pub fn effective_families(&self) -> Vec<Afi> {
        if self.families.is_empty() {
            vec![Afi::of(self.address)]
        } else {
            self.families.clone()
        }
    }
    /// True for iBGP under `cfg`.
    pub fn is_ibgp(&self, cfg: &BgpConfig) -> bool {
        self.remote_as == cfg.local_as
    }
}

/// A prefix a daemon originates, with optional path attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Originate {
    /// The prefix.
    pub prefix: IpNet,
    /// COMMUNITIES to attach.
    pub communities: Vec<(u16, u16)>,
    /// LARGE_COMMUNITIES to attach.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (sent to iBGP peers only).
    pub local_pref: Option<u32>,
}

impl Originate {
    /// A prefix with no extra attributes.
    pub fn new(prefix: IpNet) -> Originate {
        Originate {
            prefix,
            communities: Vec::new(),
            large_communities: Vec::new(),
            med: None,
            local_pref: None,
        }
    }
    /// Adds a community.
    pub fn community(mut self, asn: u16, value: u16) -> Self {
        self.communities.push((asn, value));
        self
    }
    /// Adds a large community.
    pub fn large_community(mut self, global: u32, local1: u32, local2: u32) -> Self {
        self.large_communities.push((global, local1, local2));
        self
    }
    /// Sets the MED.
    pub fn med(mut self, med: u32) -> Self {
        self.med = Some(med);
        self
    }
    /// Sets LOCAL_PREF.
    pub fn local_pref(mut self, lp: u32) -> Self {
        self.local_pref = Some(lp);
        self
    }
    /// True when any attribute is set.
    pub fn has_attributes(&self) -> bool {
        !self.communities.is_empty()
            || !self.large_communities.is_empty()
            || self.med.is_some()
            || self.local_pref.is_some()
    }
}

/// Daemon-independent BGP configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    /// Router id.
    pub router_id: Ipv4Addr,
    /// Local AS.
    pub local_as: u32,
    /// TCP port to listen on (179 by default).
    pub listen_port: u16,
    /// Neighbors.
    pub neighbors: Vec<Neighbor>,
    /// Prefixes this daemon originates (no kernel route needed).
    pub originate: Vec<Originate>,
    /// Advertise graceful restart (RFC 4724).
    pub graceful_restart: bool,
    /// Install learned routes into the namespace's kernel table.
    pub export_to_kernel: bool,
    /// Hold time in seconds (keepalive = hold / 3); daemon default when None.
    pub hold_time: Option<u16>,
    /// Route-reflector cluster id for `rr_client` neighbors; the router id when None.
    pub cluster_id: Option<Ipv4Addr>,
    /// BFD timers of neighbors with `bfd`: min RX ms, min TX ms, multiplier.
    pub bfd_timers: (u32, u32, u8),
}

impl BgpConfig {
    /// A config with no neighbors, graceful restart off, no kernel export.
    pub fn new(router_id: Ipv4Addr, local_as: u32) -> BgpConfig {
        BgpConfig {
            router_id,
            local_as,
            listen_port: 179,
            neighbors: Vec::new(),
            originate: Vec::new(),
            graceful_restart: false,
            export_to_kernel: false,
            hold_time: None,
            cluster_id: None,
            bfd_timers: (300, 300, 3),
        }
    }
    /// Sets the BFD timers (min RX ms, min TX ms, multiplier).
    pub fn bfd_timers(mut self, min_rx_ms: u32, min_tx_ms: u32, multiplier: u8) -> Self {
        self.bfd_timers = (min_rx_ms, min_tx_ms, multiplier);
        self
    }
    /// True when some neighbor uses BFD.
    pub fn uses_bfd(&self) -> bool {
        self.neighbors.iter().any(|n| n.bfd)
    }
    /// Adds a neighbor.
    pub fn neighbor(mut self, n: Neighbor) -> Self {
        self.neighbors.push(n);
        self
    }
    /// Adds an originated prefix without extra attributes.
    pub fn originate(mut self, prefix: IpNet) -> Self {
        self.originate.push(Originate::new(prefix));
        self
    }
    /// Adds an originated prefix with attributes.
    pub fn originate_with(mut self, o: Originate) -> Self {
        self.originate.push(o);
        self
    }
    /// Sets graceful restart.
    pub fn graceful_restart(mut self, on: bool) -> Self {
        self.graceful_restart = on;
        self
    }
    /// Sets kernel export.
    pub fn export_to_kernel(mut self, on: bool) -> Self {
        self.export_to_kernel = on;
        self
    }
    /// Sets the listen port.
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = port;
        self
    }
    /// Sets the hold time.
    pub fn hold_time(mut self, secs: u16) -> Self {
        self.hold_time = Some(secs);
        self
    }

    /// Sets the route-reflector cluster id.
    pub fn cluster_id(mut self, id: Ipv4Addr) -> Self {
        self.cluster_id = Some(id);
        self
    }
    /// The cluster id in effect for reflected routes.
    pub fn effective_cluster_id(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }

    /// Checks addresses against the test ranges and values against BGP limits.
    pub fn validate(&self) -> Result<()> {
        if self.local_as == 0 {
            return Err(Error::invalid("local_as", "0 is reserved"));
        }
        if let Some(h) = self.hold_time
            && h != 0
            && h < 3
        {
            return Err(Error::invalid(
                "hold_time",
                format!("{h} must be 0 or at least 3"),
            ));
        }
        for (i, n) in self.neighbors.iter().enumerate() {
            addr::check_addr(&format!("neighbors[{i}].address"), n.address)?;
            if let Some(l) = n.local_address {
                addr::check_addr(&format!("neighbors[{i}].local_address"), l)?;
            }
            if n.rr_client && n.remote_as != self.local_as {
                return Err(Error::invalid(
                    format!("neighbors[{i}].rr_client"),
                    "route-reflector clients must be iBGP",
                ));
            }
            if n.remote_as == 0 {
                return Err(Error::invalid(
                    format!("neighbors[{i}].remote_as"),
                    "0 is reserved",
                ));
            }
            if let Some(p) = &n.password
                && (p.is_empty() || p.len() > 80 || p.contains('"') || p.contains('\n'))
            {
                return Err(Error::invalid(
                    format!("neighbors[{i}].password"),
                    "1..=80 chars, no quote or newline",
                ));
            }
        }
        if let Some(d) = self.neighbors.iter().enumerate().find_map(|(i, n)| {
            self.neighbors[..i]
                .iter()
                .any(|m| m.address == n.address)
                .then_some(n.address)
        }) {
            return Err(Error::invalid("neighbors", format!("{d} appears twice")));
        }
        for (i, o) in self.originate.iter().enumerate() {
            addr::check_net(&format!("originate[{i}]"), o.prefix)?;
        }
        Ok(())
    }

    /// Originated prefixes of one family.
    pub fn originated(&self, afi: Afi) -> impl Iterator<Item = &Originate> {
        self.originate
            .iter()
            .filter(move |o| Afi::of(o.prefix.addr()) == afi)
    }

    /// Keepalive and hold time, when set.
    pub fn timers(&self) -> Option<(u16, u16)> {
        self.hold_time.map(|h| (h / 3, h))
    }
}

/// BGP FSM state of a session as reported by a daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Idle (also: administratively down).
    Idle,
    /// Connect.
    Connect,
    /// Active.
    Active,
    /// OpenSent.
    OpenSent,
    /// OpenConfirm.
    OpenConfirm,
    /// Established.
    Established,
    /// Something the parser did not recognise, verbatim.
    Other(String),
}

impl SessionState {
    /// Parses the usual spellings (`Established`, `ESTABLISHED`, `OpenSent`, `opensent`).
    pub fn parse(s: &str) -> SessionState {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace(['_', ' '], "")
            .as_str()
        {
            "idle" => SessionState::Idle,
            "connect" => SessionState::Connect,
            "active" => SessionState::Active,
            "opensent" => SessionState::OpenSent,
            "openconfirm" => SessionState::OpenConfirm,
            "established" => SessionState::Established,
            _ => SessionState::Other(s.trim().to_string()),
        }
    }
}

/// ORIGIN attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// IGP.
    Igp,
    /// EGP.
    Egp,
    /// INCOMPLETE.
    Incomplete,
}

impl Origin {
    /// Parses `IGP`, `i`, `EGP`, `incomplete`, `?`, or the wire codes 0/1/2.
    pub fn parse(s: &str) -> Option<Origin> {
        match s.trim().to_ascii_lowercase().as_str() {
            "igp" | "i" | "0" => Some(Origin::Igp),
            "egp" | "e" | "1" => Some(Origin::Egp),
            "incomplete" | "?" | "2" => Some(Origin::Incomplete),
            _ => None,
        }
    }
}

/// One path in a daemon's RIB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub prefix: IpNet,
    /// BGP next hop(s): global first, then link-local if the daemon shows one.
    /// Empty or unspecified for locally originated routes.
    pub next_hops: Vec<IpAddr>,
    /// AS_PATH flattened (sequences and sets in order).
    pub as_path: Vec<u32>,
    /// COMMUNITIES as (asn, value).
    pub communities: Vec<(u16, u16)>,
    /// LARGE_COMMUNITIES as (global, local1, local2).
    pub large_communities: Vec<(u32, u32, u32)>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// The daemon selected this path as best.
    pub best: bool,
    /// The neighbor the path came from; None for locally originated paths.
    pub peer: Option<IpAddr>,
    /// ORIGINATOR_ID (RFC 4456), set on reflected routes.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456), most recent reflector first.
    pub cluster_list: Vec<Ipv4Addr>,
}

impl Route {
    /// An empty path for `prefix`, filled in by the parsers.
    pub(crate) fn new(prefix: IpNet) -> Route {
        Route {
            prefix,
            next_hops: Vec::new(),
            as_path: Vec::new(),
            communities: Vec::new(),
            large_communities: Vec::new(),
            med: None,
            local_pref: None,
            origin: None,
            best: false,
            peer: None,
            originator_id: None,
            cluster_list: Vec::new(),
        }
    }
}

/// Which daemon to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DaemonKind {
    /// BIRD 2.
    Bird,
    /// FRR bgpd (plus zebra when exporting to the kernel).
    Frr,
    /// GoBGP.
    Gobgp,
}

impl DaemonKind {
    /// All kinds, for tests that loop over them.
    pub const ALL: [DaemonKind; 3] = [DaemonKind::Bird, DaemonKind::Frr, DaemonKind::Gobgp];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            DaemonKind::Bird => "bird",
            DaemonKind::Frr => "frr",
            DaemonKind::Gobgp => "gobgp",
        }
    }
}

/// Operations common to all daemon runners.
pub trait BgpDaemon: Send {
    /// Which daemon this is.
    fn kind(&self) -> DaemonKind;
    /// The namespace it runs in.
    fn netns(&self) -> &Netns;
    /// The configuration it was started with.
    fn config(&self) -> &BgpConfig;
    /// The directory with its config, sockets, pid file and logs.
    fn dir(&self) -> &Path;
    /// State of each configured neighbor.
    fn session_states(&self) -> Result<Vec<(IpAddr, SessionState)>>;
    /// All paths of one family (received and locally originated).
    fn routes(&self, afi: Afi) -> Result<Vec<Route>>;
    /// Graceful stop (SIGTERM; daemons send a Cease NOTIFICATION).
    fn stop(&mut self) -> Result<()>;
    /// SIGKILL: no NOTIFICATION, peers see the TCP session die (or hold timer expire).
    fn kill(&mut self) -> Result<()>;
    /// Starts it again with the same configuration (after stop or kill).
    fn restart(&mut self) -> Result<()>;
    /// True while the daemon process runs.
    fn is_running(&mut self) -> bool;

    /// State of the session with `peer`, if it is configured.
    fn session_state(&self, peer: IpAddr) -> Result<Option<SessionState>> {
        Ok(self
            .session_states()?
            .into_iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, s)| s))
    }

    /// Waits until the session with `peer` is Established.
    fn wait_established(&self, peer: IpAddr, timeout: Duration) -> Result<()> {
        let what = format!(
            "{} session with {peer} in {} to be Established",
            self.kind().name(),
            self.netns().name()
        );
        expect_within(&what, timeout, || {
            matches!(
                self.session_state(peer),
                Ok(Some(SessionState::Established))
            )
            .then_some(())
        })
    }

    /// Waits until the best path for `prefix` learned from a peer is present, and returns it.
    fn wait_route(&self, prefix: IpNet, timeout: Duration) -> Result<Route> {
        let afi = Afi::of(prefix.addr());
        let what = format!(
            "{} in {} to learn {prefix}",
            self.kind().name(),
            self.netns().name()
        );
        expect_within(&what, timeout, || {
            self.routes(afi)
                .ok()?
                .into_iter()
                .find(|r| r.prefix == prefix && r.best && r.peer.is_some())
        })
    }
}

/// Starts a daemon of the given kind.
pub fn start(kind: DaemonKind, ns: &Netns, cfg: &BgpConfig) -> Result<Box<dyn BgpDaemon>> {
    Ok(match kind {
        DaemonKind::Bird => Box::new(Bird::start(ns, cfg)?),
        DaemonKind::Frr => Box::new(Frr::start(ns, cfg)?),
        DaemonKind::Gobgp => Box::new(Gobgp::start(ns, cfg)?),
    })
}

/// How long a daemon may take to open its control socket.
pub(crate) const STARTUP: Duration = Duration::from_secs(10);

/// Seconds between connection attempts: short, so tests converge quickly.
pub(crate) const CONNECT_RETRY: u16 = 2;

/// A fresh temp dir for a daemon.
pub(crate) fn daemon_dir(kind: DaemonKind, ns: &Netns) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("tabby-{}-{}-", kind.name(), ns.name()))
        .tempdir()
        .map_err(|source| Error::File {
            path: std::env::temp_dir(),
            source,
        })
}

/// Writes `text` to `path`, with the path in the error.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let ok = BgpConfig::new("198.18.0.1".parse().unwrap(), 64512)
            .neighbor(Neighbor::new(ip("198.18.0.2"), 64512))
            .originate("100.64.1.0/24".parse().unwrap());
        ok.validate().unwrap();
        let e = ok
            .clone()
            .neighbor(Neighbor::new(ip("10.1.1.1"), 1))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("neighbors[1].address"), "{e}");
        let e = ok
            .clone()
            .originate("192.168.0.0/16".parse().unwrap())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("originate[1]"), "{e}");
        let e = ok
            .clone()
            .neighbor(Neighbor::new(ip("198.18.0.2"), 1))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = ok.clone().hold_time(2).validate().unwrap_err();
        assert!(e.to_string().contains("hold_time"), "{e}");
    }

    #[test]
    fn states_and_families() {
        assert_eq!(
            SessionState::parse("ESTABLISHED"),
            SessionState::Established
        );
        assert_eq!(SessionState::parse("OpenSent"), SessionState::OpenSent);
        assert_eq!(
            SessionState::parse("Idle (Admin)"),
            SessionState::Other("Idle (Admin)".into())
        );
        let n = Neighbor::new(ip("2001:db8::1"), 1);
        assert_eq!(n.effective_families(), [Afi::Ipv6]);
        assert_eq!(
            n.families(&[Afi::Ipv4, Afi::Ipv6]).effective_families(),
            [Afi::Ipv4, Afi::Ipv6]
        );
        assert_eq!(Origin::parse("incomplete"), Some(Origin::Incomplete));
    }
}
