//! BGP capabilities carried in the OPEN message (RFC 5492): multiprotocol
//! (RFC 4760), route refresh (RFC 2918), enhanced route refresh (RFC 7313),
//! extended messages (RFC 8654), graceful restart (RFC 4724) and 4-octet AS
//! (RFC 6793). Anything else, or a known capability with a malformed value,
//! is kept verbatim.

use super::{AFI_IPV4, AFI_IPV6, SAFI_UNICAST};

/// Capability codes this implementation understands.
pub mod code {
    /// Multiprotocol extensions (RFC 4760).
    pub const MULTIPROTOCOL: u8 = 1;
    /// Route refresh (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 2;
    /// Extended messages, up to 65535 bytes (RFC 8654).
    pub const EXTENDED_MESSAGE: u8 = 6;
    /// Graceful restart (RFC 4724).
    pub const GRACEFUL_RESTART: u8 = 64;
    /// 4-octet AS numbers (RFC 6793).
    pub const FOUR_OCTET_AS: u8 = 65;
    /// Enhanced route refresh (RFC 7313).
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

/// An address family / subsequent address family pair the speaker supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AFI 1, SAFI 1.
    Ipv4Unicast,
    /// AFI 2, SAFI 1.
    Ipv6Unicast,
}

impl Family {
    /// Maps an AFI/SAFI pair to a supported family.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Family::Ipv4Unicast),
            (AFI_IPV6, SAFI_UNICAST) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    /// The AFI/SAFI pair.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (AFI_IPV4, SAFI_UNICAST),
            Family::Ipv6Unicast => (AFI_IPV6, SAFI_UNICAST),
        }
    }
}

/// Per-family entry of the graceful restart capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrFamily {
    /// Address family identifier.
    pub afi: u16,
    /// Subsequent address family identifier.
    pub safi: u8,
    /// Flags; bit 0x80 = forwarding state preserved.
    pub flags: u8,
}

/// One capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for one AFI/SAFI.
    MultiProtocol {
        /// Address family identifier.
        afi: u16,
        /// Subsequent address family identifier.
        safi: u8,
    },
    /// Route refresh (code 2).
    RouteRefresh,
    /// Enhanced route refresh (code 70).
    EnhancedRouteRefresh,
    /// Extended messages (code 6, RFC 8654).
    ExtendedMessage,
    /// 4-octet AS number of the speaker.
    FourOctetAs(u32),
    /// Graceful restart.
    GracefulRestart {
        /// Upper four bits of the first octet: 0x8 = restart state (R),
        /// 0x4 = graceful notification (N, RFC 8538).
        flags: u8,
        /// Restart time in seconds (12 bits).
        time: u16,
        /// Families whose state is preserved.
        families: Vec<GrFamily>,
    },
    /// Any other capability, or a known one whose value was malformed.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value, verbatim.
        data: Vec<u8>,
    },
}

impl Capability {
    /// The capability code.
    pub fn code(&self) -> u8 {
        match self {
            Capability::MultiProtocol { .. } => code::MULTIPROTOCOL,
            Capability::RouteRefresh => code::ROUTE_REFRESH,
            Capability::EnhancedRouteRefresh => code::ENHANCED_ROUTE_REFRESH,
            Capability::ExtendedMessage => code::EXTENDED_MESSAGE,
            Capability::FourOctetAs(_) => code::FOUR_OCTET_AS,
            Capability::GracefulRestart { .. } => code::GRACEFUL_RESTART,
            Capability::Unknown { code, .. } => *code,
        }
    }

    /// Decodes one capability value. Never fails: a malformed known capability
    /// is kept as [`Capability::Unknown`] so the OPEN survives (RFC 5492 lets a
    /// speaker ignore capabilities it cannot use).
    pub fn decode(code: u8, data: &[u8]) -> Capability {
        let unknown = || Capability::Unknown {
            code,
            data: data.to_vec(),
        };
        match code {
            code::MULTIPROTOCOL if data.len() == 4 => Capability::MultiProtocol {
                afi: u16::from_be_bytes([data[0], data[1]]),
                // data[2] is reserved and ignored on receipt.
                safi: data[3],
            },
            code::ROUTE_REFRESH if data.is_empty() => Capability::RouteRefresh,
            code::ENHANCED_ROUTE_REFRESH if data.is_empty() => Capability::EnhancedRouteRefresh,
            code::EXTENDED_MESSAGE if data.is_empty() => Capability::ExtendedMessage,
            code::FOUR_OCTET_AS if data.len() == 4 => {
                Capability::FourOctetAs(u32::from_be_bytes([data[0], data[1], data[2], data[3]]))
            }
            code::GRACEFUL_RESTART if data.len() >= 2 && (data.len() - 2).is_multiple_of(4) => {
                let families = data[2..]
                    .chunks_exact(4)
                    .map(|c| GrFamily {
                        afi: u16::from_be_bytes([c[0], c[1]]),
                        safi: c[2],
                        flags: c[3],
                    })
                    .collect();
                Capability::GracefulRestart {
                    flags: data[0] & 0xf0,
                    time: u16::from_be_bytes([data[0] & 0x0f, data[1]]),
                    families,
                }
            }
            _ => unknown(),
        }
    }

    /// Appends code, length and value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.code());
        let len_at = out.len();
        out.push(0);
        match self {
            Capability::MultiProtocol { afi, safi } => {
                out.extend_from_slice(&afi.to_be_bytes());
                out.push(0);
                out.push(*safi);
            }
            Capability::RouteRefresh
            | Capability::EnhancedRouteRefresh
            | Capability::ExtendedMessage => {}
            Capability::FourOctetAs(asn) => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::GracefulRestart {
                flags,
                time,
                families,
            } => {
                let t = (time & 0x0fff).to_be_bytes();
                out.push((flags & 0xf0) | t[0]);
                out.push(t[1]);
                for f in families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.push(f.safi);
                    out.push(f.flags);
                }
            }
            Capability::Unknown { data, .. } => out.extend_from_slice(data),
        }
        // Capability values are at most 255 bytes; callers build them from
        // small structures, and decode only produces values that fit.
        out[len_at] = (out.len() - len_at - 1) as u8;
    }
}

/// What two speakers agreed on, from both OPENs' capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Both sides sent the 4-octet AS capability.
    pub four_octet_as: bool,
    /// Both sides support route refresh.
    pub route_refresh: bool,
    /// Both sides announced extended messages (RFC 8654): UPDATE,
    /// NOTIFICATION and ROUTE-REFRESH may be up to 65535 bytes.
    pub extended_message: bool,
    /// Families both sides announced. When neither side sends any MP
    /// capability, IPv4 unicast is implied (RFC 4760 section 8).
    pub families: Vec<Family>,
    /// The peer's graceful restart capability, if it sent one.
    pub peer_graceful_restart: Option<PeerGracefulRestart>,
}

/// The graceful restart capability a peer sent (RFC 4724 section 3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerGracefulRestart {
    /// Seconds the peer asks us to keep its routes after it goes away.
    pub restart_time: u16,
    /// The peer has restarted (R bit).
    pub restarting: bool,
    /// Supported families, with whether forwarding state was preserved
    /// across the restart (F bit).
    pub families: Vec<(Family, bool)>,
}

/// Collects the multiprotocol families of a capability list.
pub fn families(caps: &[Capability]) -> Vec<Family> {
    let mut out: Vec<Family> = caps
        .iter()
        .filter_map(|c| match c {
            Capability::MultiProtocol { afi, safi } => Family::from_afi_safi(*afi, *safi),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Negotiates capabilities from our and the peer's lists.
pub fn negotiate(ours: &[Capability], theirs: &[Capability]) -> Negotiated {
    let has = |caps: &[Capability], code: u8| caps.iter().any(|c| c.code() == code);
    let fams = |caps: &[Capability]| {
        let f = families(caps);
        if f.is_empty() && !caps.iter().any(|c| c.code() == code::MULTIPROTOCOL) {
            vec![Family::Ipv4Unicast]
        } else {
            f
        }
    };
    let (a, b) = (fams(ours), fams(theirs));
    let families = a.iter().copied().filter(|f| b.contains(f)).collect();
    let peer_graceful_restart = theirs.iter().find_map(|c| match c {
        Capability::GracefulRestart {
            flags,
            time,
            families,
        } => Some(PeerGracefulRestart {
            restart_time: *time,
            restarting: flags & 0x80 != 0,
            families: families
                .iter()
                .filter_map(|f| {
                    Family::from_afi_safi(f.afi, f.safi).map(|fam| (fam, f.flags & 0x80 != 0))
                })
                .collect(),
        }),
        _ => None,
    });
    Negotiated {
        four_octet_as: has(ours, code::FOUR_OCTET_AS) && has(theirs, code::FOUR_OCTET_AS),
        route_refresh: has(ours, code::ROUTE_REFRESH) && has(theirs, code::ROUTE_REFRESH),
        extended_message: has(ours, code::EXTENDED_MESSAGE) && has(theirs, code::EXTENDED_MESSAGE),
        families,
        peer_graceful_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> Capability {
        let cap = Capability::decode(bytes[0], &bytes[2..]);
        let mut out = Vec::new();
        cap.encode(&mut out);
        assert_eq!(out, bytes, "{cap:?}");
        cap
    }

    #[test]
    fn known_capabilities_byte_exact() {
        assert_eq!(
            roundtrip(&[1, 4, 0, 2, 0, 1]),
            Capability::MultiProtocol { afi: 2, safi: 1 }
        );
        assert_eq!(roundtrip(&[2, 0]), Capability::RouteRefresh);
        assert_eq!(roundtrip(&[70, 0]), Capability::EnhancedRouteRefresh);
        assert_eq!(roundtrip(&[6, 0]), Capability::ExtendedMessage);
        assert_eq!(
            roundtrip(&[65, 4, 0, 0, 0xfc, 0]),
            Capability::FourOctetAs(64512)
        );
        assert_eq!(
            roundtrip(&[64, 6, 0xc0, 0x78, 0, 1, 1, 0x80]),
            Capability::GracefulRestart {
                flags: 0xc0,
                time: 120,
                families: vec![GrFamily {
                    afi: 1,
                    safi: 1,
                    flags: 0x80
                }],
            }
        );
    }

    #[test]
    fn malformed_known_capability_kept_verbatim() {
        assert_eq!(
            roundtrip(&[65, 2, 1, 2]),
            Capability::Unknown {
                code: 65,
                data: vec![1, 2]
            }
        );
        assert_eq!(
            roundtrip(&[64, 3, 0, 1, 2]),
            Capability::Unknown {
                code: 64,
                data: vec![0, 1, 2]
            }
        );
        assert_eq!(
            roundtrip(&[71, 0]),
            Capability::Unknown {
                code: 71,
                data: vec![]
            }
        );
    }

    #[test]
    fn negotiation() {
        let ours = vec![
            Capability::MultiProtocol { afi: 1, safi: 1 },
            Capability::MultiProtocol { afi: 2, safi: 1 },
            Capability::FourOctetAs(65000),
            Capability::RouteRefresh,
            Capability::ExtendedMessage,
        ];
        let theirs = vec![
            Capability::MultiProtocol { afi: 2, safi: 1 },
            Capability::FourOctetAs(65001),
            Capability::GracefulRestart {
                flags: 0,
                time: 90,
                families: vec![GrFamily {
                    afi: 2,
                    safi: 1,
                    flags: 0x80,
                }],
            },
        ];
        let n = negotiate(&ours, &theirs);
        assert!(n.four_octet_as);
        assert!(!n.route_refresh);
        assert!(!n.extended_message, "only one side offered it");
        assert_eq!(n.families, vec![Family::Ipv6Unicast]);
        assert_eq!(
            n.peer_graceful_restart,
            Some(PeerGracefulRestart {
                restart_time: 90,
                restarting: false,
                families: vec![(Family::Ipv6Unicast, true)]
            })
        );
        let both = negotiate(&ours, &[Capability::ExtendedMessage]);
        assert!(both.extended_message);
        // No MP capability at all on the peer: IPv4 unicast implied.
        let n = negotiate(&ours, &[]);
        assert_eq!(n.families, vec![Family::Ipv4Unicast]);
        assert!(!n.four_octet_as);
    }
}
