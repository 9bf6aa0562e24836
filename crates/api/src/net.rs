//! Network values as Calico's manifests spell them: CIDRs (strict, or "IP or CIDR"
//! where Calico takes a bare address as a /32 or /128), ports (`80`, `"8000:8080"`,
//! or a named port) and IP protocols (`TCP`, `udp`, or a number).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses `addr/len`; a bare address is not accepted.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    if !s.contains('/') {
        return None;
    }
    IpNet::from_str(s).ok()
}

/// Parses `addr/len` or a bare address (as a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        IpNet::from_str(s).ok()
    } else {
        IpAddr::from_str(s).ok().map(IpNet::from)
    }
}

/// Whether a CIDR has no host bits set (`10.0.0.0/8`, not `10.0.0.1/8`).
pub fn is_masked(net: &IpNet) -> bool {
    net.addr() == net.network()
}

/// The error text for a CIDR with host bits set.
pub(crate) fn host_bits_message(net: &IpNet) -> String {
    format!("{net} has host bits set; the network is {}", net.trunc())
}

/// A strictly parsed CIDR (for serde).
struct StrictCidr(IpNet);

impl<'de> Deserialize<'de> for StrictCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrictCidr, D::Error> {
        let s = String::deserialize(d)?;
        parse_cidr(s.trim()).map(StrictCidr).ok_or_else(|| {
            de::Error::custom(format!("{s:?} is not a CIDR (address/prefix-length)"))
        })
    }
}

/// An address or CIDR (for serde).
struct LenientNet(IpNet);

impl<'de> Deserialize<'de> for LenientNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LenientNet, D::Error> {
        let s = String::deserialize(d)?;
        parse_net(s.trim())
            .map(LenientNet)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not an IP address or CIDR")))
    }
}

/// serde for `Option<IpNet>` fields that must be written as CIDRs.
pub(crate) mod opt_cidr {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<IpNet>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(net) => s.serialize_str(&net.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNet>, D::Error> {
        Ok(Option::<StrictCidr>::deserialize(d)?.map(|c| c.0))
    }
}

/// serde for `Vec<IpNet>` fields of addresses or CIDRs.
pub(crate) mod vec_net {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Ok(Vec::<LenientNet>::deserialize(d)?
            .into_iter()
            .map(|c| c.0)
            .collect())
    }
}

/// A port match: one port, an inclusive range, or a named port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Port {
    /// `80`
    Number(u16),
    /// `"8000:8080"`
    Range {
        /// First port of the range.
        min: u16,
        /// Last port of the range (inclusive).
        max: u16,
    },
    /// `"http"`: whatever port the endpoint names so.
    Named(String),
}

/// Why a port is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Above 65535.
    #[error("{0} is not a port (0..=65535)")]
    OutOfRange(String),
    /// min > max.
    #[error("port range {min}:{max} is backwards")]
    Backwards {
        /// The first number.
        min: u16,
        /// The second number.
        max: u16,
    },
    /// Neither a number, a range nor a valid port name.
    #[error(
        "{0:?} is not a port, a range lo:hi, or a port name (up to 15 lower-case letters, digits and '-')"
    )]
    Syntax(String),
}

fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Port {
    /// Whether this port (or range) contains `port`; named ports never do.
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Port::Number(p) => *p == port,
            Port::Range { min, max } => (*min..=*max).contains(&port),
            Port::Named(_) => false,
        }
    }

    /// The numeric bounds, or `None` for a named port.
    pub fn bounds(&self) -> Option<(u16, u16)> {
        match self {
            Port::Number(p) => Some((*p, *p)),
            Port::Range { min, max } => Some((*min, *max)),
            Port::Named(_) => None,
        }
    }
}

impl FromStr for Port {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Port, PortError> {
        let num = |t: &str| -> Result<u16, PortError> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PortError::Syntax(s.to_string()));
            }
            t.parse::<u16>()
                .map_err(|_| PortError::OutOfRange(t.to_string()))
        };
        if let Some((lo, hi)) = s.split_once(':') {
            let (min, max) = (num(lo)?, num(hi)?);
            if min > max {
                return Err(PortError::Backwards { min, max });
            }
            return Ok(Port::Range { min, max });
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return num(s).map(Port::Number);
        }
        if valid_port_name(s) {
            Ok(Port::Named(s.to_string()))
        } else {
            Err(PortError::Syntax(s.to_string()))
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(p) => write!(f, "{p}"),
            Port::Range { min, max } => write!(f, "{min}:{max}"),
            Port::Named(n) => f.write_str(n),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(p) => s.serialize_u16(*p),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number, a range \"lo:hi\", or a port name")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Number)
                    .map_err(|_| E::custom(PortError::OutOfRange(v.to_string())))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                u16::try_from(v)
                    .map(Port::Number)
                    .map_err(|_| E::custom(PortError::OutOfRange(v.to_string())))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP protocol, by name (`TCP`, `udp`, `ICMPv6`, ...) or number (`6`), kept as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A name (or a number written as a string).
    Name(String),
    /// A protocol number.
    Number(u8),
}

/// Protocol names Calico accepts (any case) and their numbers.
const PROTOCOL_NAMES: [(&str, u8); 6] = [
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
];

impl Protocol {
    /// The protocol number, or `None` for an unknown name.
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Number(n) => Some(*n),
            Protocol::Name(s) => {
                if let Ok(n) = s.parse::<u8>() {
                    return Some(n);
                }
                let lower = s.to_ascii_lowercase();
                PROTOCOL_NAMES
                    .iter()
                    .find(|(name, _)| *name == lower)
                    .map(|(_, n)| *n)
            }
        }
    }

    /// Whether port matches make sense: TCP, UDP and SCTP.
    pub fn supports_ports(&self) -> bool {
        matches!(self.number(), Some(6 | 17 | 132))
    }

    /// Whether this is ICMP (v4).
    pub fn is_icmp(&self) -> bool {
        self.number() == Some(1)
    }

    /// Whether this is ICMPv6.
    pub fn is_icmpv6(&self) -> bool {
        self.number() == Some(58)
    }

    /// Why the protocol is invalid, if it is.
    pub(crate) fn problem(&self) -> Option<String> {
        match self.number() {
            Some(0) => Some("protocol numbers are 1..=255".to_string()),
            Some(_) => None,
            None => Some(format!(
                "{self} is not a protocol (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1..=255)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Name(s) => write!(f, "{s:?}"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Protocol::Name(n) => s.serialize_str(n),
            Protocol::Number(n) => s.serialize_u8(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Protocol;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol name or number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol::Number)
                    .map_err(|_| E::custom(format!("{v} is not a protocol number (1..=255)")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Protocol, E> {
                u8::try_from(v)
                    .map(Protocol::Number)
                    .map_err(|_| E::custom(format!("{v} is not a protocol number (1..=255)")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                Ok(Protocol::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_cidr("10.0.0.0").is_none());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert_eq!(parse_net("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(parse_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(is_masked(&parse_cidr("100.64.0.0/16").unwrap()));
        let bad = parse_cidr("100.66.0.1/16").unwrap();
        assert!(!is_masked(&bad));
        assert_eq!(
            host_bits_message(&bad),
            "100.66.0.1/16 has host bits set; the network is 100.66.0.0/16"
        );
    }

    #[test]
    fn ports() {
        let p: Port = serde_json::from_value(json!(80)).unwrap();
        assert_eq!(p, Port::Number(80));
        let p: Port = serde_json::from_value(json!("80")).unwrap();
        assert_eq!(p, Port::Number(80));
        let p: Port = serde_json::from_value(json!("8000:8080")).unwrap();
        assert_eq!(
            p,
            Port::Range {
                min: 8000,
                max: 8080
            }
        );
        assert!(p.contains(8010) && !p.contains(80));
        assert_eq!(serde_json::to_value(&p).unwrap(), json!("8000:8080"));
        let p: Port = serde_json::from_value(json!("http")).unwrap();
        assert_eq!(p, Port::Named("http".into()));
        for bad in [
            json!(70000),
            json!("2:1"),
            json!("a:b"),
            json!("Not_A_Name"),
            json!(-1),
        ] {
            assert!(
                serde_json::from_value::<Port>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn protocols() {
        let tcp: Protocol = serde_json::from_value(json!("TCP")).unwrap();
        assert!(tcp.supports_ports() && tcp.problem().is_none());
        let udp: Protocol = serde_json::from_value(json!("udp")).unwrap();
        assert_eq!(udp.number(), Some(17));
        let n: Protocol = serde_json::from_value(json!(132)).unwrap();
        assert!(n.supports_ports());
        assert_eq!(serde_json::to_value(&n).unwrap(), json!(132));
        let icmp: Protocol = serde_json::from_value(json!("ICMP")).unwrap();
        assert!(icmp.is_icmp() && !icmp.supports_ports());
        let bad: Protocol = serde_json::from_value(json!("TCPX")).unwrap();
        assert!(bad.problem().unwrap().contains("not a protocol"));
        assert!(serde_json::from_value::<Protocol>(json!(256)).is_err());
    }
}
