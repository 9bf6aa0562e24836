//! Path attributes: the wire form ([`PathAttr`], kept in received order with
//! the received flags so re-encoding is byte-exact) and the semantic form
//! ([`PathAttributes`]) the RIB works with, including AS4_PATH/AS_TRANS
//! reconstruction (RFC 6793) and RFC 7606 error classification.

use super::error::{AttrError, DecodeError, ErrorAction, UpdateMessageError};
use super::{
    AFI_IPV4, AFI_IPV6, AS_TRANS, DecodeCxt, EncodeCxt, SAFI_UNICAST, decode_prefixes_v4,
    decode_prefixes_v6, encode_prefix_v4, encode_prefix_v6,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Attribute flag bits.
pub mod flags {
    /// Optional (set) or well-known (clear).
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial: an optional transitive attribute passed on by a speaker
    /// that did not recognise it.
    pub const PARTIAL: u8 = 0x20;
    /// Two-octet length field.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Attribute type codes.
pub mod type_code {
    /// ORIGIN (RFC 4271).
    pub const ORIGIN: u8 = 1;
    /// AS_PATH (RFC 4271).
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP (RFC 4271).
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC (RFC 4271).
    pub const MED: u8 = 4;
    /// LOCAL_PREF (RFC 4271).
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE (RFC 4271).
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR (RFC 4271).
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITIES: u8 = 32;
}

use type_code as tc;

/// ORIGIN values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Origin {
    /// Learned from an IGP (0), the most preferred.
    #[default]
    Igp,
    /// Learned from EGP (1).
    Egp,
    /// Learned some other way (2).
    Incomplete,
}

impl Origin {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        }
    }
}

/// AS_PATH segment types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentType {
    /// AS_SET (1): unordered, counts as one hop.
    Set,
    /// AS_SEQUENCE (2): ordered.
    Sequence,
    /// AS_CONFED_SEQUENCE (3, RFC 5065): not counted in path length.
    ConfedSequence,
    /// AS_CONFED_SET (4, RFC 5065): not counted in path length.
    ConfedSet,
}

impl SegmentType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        })
    }

    fn to_u8(self) -> u8 {
        match self {
            SegmentType::Set => 1,
            SegmentType::Sequence => 2,
            SegmentType::ConfedSequence => 3,
            SegmentType::ConfedSet => 4,
        }
    }
}

/// One AS_PATH segment; never empty on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentType,
    /// AS numbers (at most 255).
    pub asns: Vec<u32>,
}

/// An AS path, always held with 4-octet AS numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    /// Segments in wire order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path made of one AS_SEQUENCE (empty input gives an empty path).
    pub fn from_sequence(asns: &[u32]) -> Self {
        let mut p = AsPath::default();
        for asn in asns.iter().rev() {
            p.prepend(*asn);
        }
        p
    }

    /// Path length for the decision process: each AS in a sequence counts,
    /// an AS_SET counts once, confederation segments do not count.
    pub fn length(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                _ => 0,
            })
            .sum()
    }

    /// Prepends `asn` to the leading AS_SEQUENCE (creating one if needed).
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(s) if s.kind == SegmentType::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentType::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }

    /// How many times `asn` appears anywhere in the path.
    pub fn count(&self, asn: u32) -> usize {
        self.segments
            .iter()
            .flat_map(|s| s.asns.iter())
            .filter(|a| **a == asn)
            .count()
    }

    /// The first AS of a leading AS_SEQUENCE: the neighbouring AS for MED
    /// comparison (RFC 4271 9.1.2.2 c).
    pub fn neighbor_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(s) if s.kind == SegmentType::Sequence => s.asns.first().copied(),
            _ => None,
        }
    }

    /// Whether any AS number needs 4 octets.
    pub fn needs_four_octets(&self) -> bool {
        self.segments
            .iter()
            .flat_map(|s| s.asns.iter())
            .any(|a| *a > 0xffff)
    }

    fn decode(mut data: &[u8], four: bool) -> Option<AsPath> {
        let width = if four { 4 } else { 2 };
        let mut segments = Vec::new();
        while !data.is_empty() {
            if data.len() < 2 {
                return None;
            }
            let kind = SegmentType::from_u8(data[0])?;
            let count = usize::from(data[1]);
            // RFC 7606 7.2: a zero-length segment is malformed.
            if count == 0 || data.len() < 2 + count * width {
                return None;
            }
            let asns = data[2..2 + count * width]
                .chunks_exact(width)
                .map(|c| {
                    if four {
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                    } else {
                        u32::from(u16::from_be_bytes([c[0], c[1]]))
                    }
                })
                .collect();
            segments.push(AsSegment { kind, asns });
            data = &data[2 + count * width..];
        }
        Some(AsPath { segments })
    }

    fn encode(&self, four: bool, out: &mut Vec<u8>) {
        for s in &self.segments {
            // Segments longer than 255 are split; decode never yields them.
            for chunk in s.asns.chunks(255) {
                out.push(s.kind.to_u8());
                out.push(chunk.len() as u8);
                for asn in chunk {
                    if four {
                        out.extend_from_slice(&asn.to_be_bytes());
                    } else {
                        let two = u16::try_from(*asn).unwrap_or(AS_TRANS as u16);
                        out.extend_from_slice(&two.to_be_bytes());
                    }
                }
            }
        }
    }

    /// Number of ASes for RFC 6793 merging (sets count one, confederation
    /// segments do not).
    fn merge_count(&self) -> usize {
        self.length()
    }

    /// RFC 6793 section 4.2.3: the leading part of the 2-octet AS_PATH that
    /// AS4_PATH does not cover, followed by AS4_PATH.
    pub fn reconstruct(as_path: &AsPath, as4_path: &AsPath) -> AsPath {
        let (n2, n4) = (as_path.merge_count(), as4_path.merge_count());
        if n2 < n4 {
            return as_path.clone();
        }
        let mut keep = n2 - n4;
        let mut out = AsPath::default();
        for s in &as_path.segments {
            if keep == 0 {
                break;
            }
            match s.kind {
                SegmentType::Sequence => {
                    let take = keep.min(s.asns.len());
                    out.segments.push(AsSegment {
                        kind: s.kind,
                        asns: s.asns[..take].to_vec(),
                    });
                    keep -= take;
                }
                SegmentType::Set => {
                    out.segments.push(s.clone());
                    keep -= 1;
                }
                _ => out.segments.push(s.clone()),
            }
        }
        for s in &as4_path.segments {
            // Join the two halves of a sequence split by the merge.
            match out.segments.last_mut() {
                Some(last)
                    if last.kind == SegmentType::Sequence
                        && s.kind == SegmentType::Sequence
                        && last.asns.len() + s.asns.len() <= 255 =>
                {
                    last.asns.extend_from_slice(&s.asns)
                }
                _ => out.segments.push(s.clone()),
            }
        }
        out
    }
}

/// AGGREGATOR / AS4_AGGREGATOR value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Aggregator {
    /// AS of the aggregating speaker.
    pub asn: u32,
    /// Its BGP identifier.
    pub address: Ipv4Addr,
}

/// A large community (RFC 8092).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// Global administrator (an AS number).
    pub global: u32,
    /// First local data part.
    pub local1: u32,
    /// Second local data part.
    pub local2: u32,
}

/// Next hop of a route: NEXT_HOP for IPv4 NLRI, or the one in MP_REACH_NLRI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// 4-octet next hop (AFI 1).
    Ipv4(Ipv4Addr),
    /// 16-octet global, optionally followed by a link-local (RFC 2545).
    Ipv6 {
        /// Global address.
        global: Ipv6Addr,
        /// Link-local address, when the 32-octet form was sent.
        link_local: Option<Ipv6Addr>,
    },
}

/// MP_REACH_NLRI for a supported family (IPv4/IPv6 unicast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    /// Next hop.
    pub next_hop: NextHop,
    /// Reachable prefixes, all of the next hop's family.
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI for a supported family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpUnreach {
    /// Address family identifier (1 or 2).
    pub afi: u16,
    /// Withdrawn prefixes of that family.
    pub withdrawn: Vec<IpNet>,
}

/// Decoded value of one attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// ORIGIN.
    Origin(Origin),
    /// AS_PATH with the session's AS width.
    AsPath(AsPath),
    /// NEXT_HOP.
    NextHop(Ipv4Addr),
    /// MULTI_EXIT_DISC.
    Med(u32),
    /// LOCAL_PREF.
    LocalPref(u32),
    /// ATOMIC_AGGREGATE.
    AtomicAggregate,
    /// AGGREGATOR with the session's AS width.
    Aggregator(Aggregator),
    /// COMMUNITIES.
    Communities(Vec<u32>),
    /// ORIGINATOR_ID.
    OriginatorId(Ipv4Addr),
    /// CLUSTER_LIST.
    ClusterList(Vec<Ipv4Addr>),
    /// MP_REACH_NLRI for IPv4/IPv6 unicast.
    MpReach(MpReach),
    /// MP_UNREACH_NLRI for IPv4/IPv6 unicast.
    MpUnreach(MpUnreach),
    /// AS4_PATH.
    As4Path(AsPath),
    /// AS4_AGGREGATOR.
    As4Aggregator(Aggregator),
    /// LARGE_COMMUNITY.
    LargeCommunities(Vec<LargeCommunity>),
    /// The value verbatim: unknown attributes, MP attributes of families we
    /// do not handle, and malformed or duplicate attributes that RFC 7606
    /// lets us keep the session for.
    Raw(Vec<u8>),
}

/// One attribute as on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathAttr {
    /// Flags as received (encode only adds EXTENDED_LENGTH when needed).
    pub flags: u8,
    /// Type code; matches `value` unless `value` is [`AttrValue::Raw`].
    pub type_code: u8,
    /// Value.
    pub value: AttrValue,
}

/// Expected (OPTIONAL, TRANSITIVE) bits and RFC 7606 action per known type.
fn known_attr(code: u8) -> Option<(u8, Option<ErrorAction>)> {
    use ErrorAction::{AttributeDiscard as D, TreatAsWithdraw as W};
    const WK: u8 = flags::TRANSITIVE;
    const ON: u8 = flags::OPTIONAL;
    const OT: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    // `None` action means session reset.
    Some(match code {
        tc::ORIGIN | tc::AS_PATH | tc::NEXT_HOP | tc::LOCAL_PREF => (WK, Some(W)),
        tc::ATOMIC_AGGREGATE => (WK, Some(D)),
        tc::MED | tc::ORIGINATOR_ID | tc::CLUSTER_LIST => (ON, Some(W)),
        tc::MP_REACH_NLRI | tc::MP_UNREACH_NLRI => (ON, None),
        tc::AGGREGATOR | tc::AS4_PATH | tc::AS4_AGGREGATOR => (OT, Some(D)),
        tc::COMMUNITIES | tc::LARGE_COMMUNITIES => (OT, Some(W)),
        _ => return None,
    })
}

fn ipv4(d: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(d[0], d[1], d[2], d[3])
}

fn ipv6(d: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&d[..16]);
    Ipv6Addr::from(o)
}

fn be32(d: &[u8]) -> u32 {
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Decodes the value of a known attribute; `None` if malformed.
fn decode_value(code: u8, d: &[u8], cxt: &DecodeCxt) -> Result<Option<AttrValue>, String> {
    let v = match code {
        tc::ORIGIN => match d {
            [0] => AttrValue::Origin(Origin::Igp),
            [1] => AttrValue::Origin(Origin::Egp),
            [2] => AttrValue::Origin(Origin::Incomplete),
            _ => return Ok(None),
        },
        tc::AS_PATH => match AsPath::decode(d, cxt.four_octet_as) {
            Some(p) => AttrValue::AsPath(p),
            None => return Ok(None),
        },
        tc::AS4_PATH => match AsPath::decode(d, true) {
            Some(p) => AttrValue::As4Path(p),
            None => return Ok(None),
        },
        tc::NEXT_HOP if d.len() == 4 => AttrValue::NextHop(ipv4(d)),
        tc::MED if d.len() == 4 => AttrValue::Med(be32(d)),
        tc::LOCAL_PREF if d.len() == 4 => AttrValue::LocalPref(be32(d)),
        tc::ATOMIC_AGGREGATE if d.is_empty() => AttrValue::AtomicAggregate,
        tc::AGGREGATOR if d.len() == 8 && cxt.four_octet_as => AttrValue::Aggregator(Aggregator {
            asn: be32(d),
            address: ipv4(&d[4..]),
        }),
        tc::AGGREGATOR if d.len() == 6 && !cxt.four_octet_as => AttrValue::Aggregator(Aggregator {
            asn: u32::from(u16::from_be_bytes([d[0], d[1]])),
            address: ipv4(&d[2..]),
        }),
        tc::AS4_AGGREGATOR if d.len() == 8 => AttrValue::As4Aggregator(Aggregator {
            asn: be32(d),
            address: ipv4(&d[4..]),
        }),
        tc::COMMUNITIES if !d.is_empty() && d.len().is_multiple_of(4) => {
            AttrValue::Communities(d.chunks_exact(4).map(be32).collect())
        }
        tc::LARGE_COMMUNITIES if !d.is_empty() && d.len().is_multiple_of(12) => {
            AttrValue::LargeCommunities(
                d.chunks_exact(12)
                    .map(|c| LargeCommunity {
                        global: be32(c),
                        local1: be32(&c[4..]),
                        local2: be32(&c[8..]),
                    })
                    .collect(),
            )
        }
        tc::ORIGINATOR_ID if d.len() == 4 => AttrValue::OriginatorId(ipv4(d)),
        tc::CLUSTER_LIST if !d.is_empty() && d.len().is_multiple_of(4) => {
            AttrValue::ClusterList(d.chunks_exact(4).map(ipv4).collect())
        }
        tc::MP_REACH_NLRI => return decode_mp_reach(d),
        tc::MP_UNREACH_NLRI => return decode_mp_unreach(d),
        _ => return Ok(None),
    };
    Ok(Some(v))
}

/// `Err` means the session must be reset; `Ok(None)` an unsupported family.
fn decode_mp_reach(d: &[u8]) -> Result<Option<AttrValue>, String> {
    if d.len() < 5 {
        return Err(format!("MP_REACH_NLRI: {} bytes is too short", d.len()));
    }
    let afi = u16::from_be_bytes([d[0], d[1]]);
    let safi = d[2];
    if safi != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6) {
        return Ok(None);
    }
    let nh_len = usize::from(d[3]);
    // Next hop, then one reserved octet.
    if d.len() < 4 + nh_len + 1 {
        return Err(format!(
            "MP_REACH_NLRI: next hop length {nh_len} overruns the attribute"
        ));
    }
    let nh = &d[4..4 + nh_len];
    let next_hop = match (afi, nh_len) {
        (AFI_IPV4, 4) => NextHop::Ipv4(ipv4(nh)),
        (AFI_IPV6, 16) => NextHop::Ipv6 {
            global: ipv6(nh),
            link_local: None,
        },
        (AFI_IPV6, 32) => NextHop::Ipv6 {
            global: ipv6(nh),
            link_local: Some(ipv6(&nh[16..])),
        },
        _ => {
            return Err(format!(
                "MP_REACH_NLRI: next hop length {nh_len} is invalid for AFI {afi}"
            ));
        }
    };
    let rest = &d[4 + nh_len + 1..];
    let nlri = decode_nlri(afi, rest)
        .ok_or_else(|| format!("MP_REACH_NLRI: malformed NLRI for AFI {afi}"))?;
    Ok(Some(AttrValue::MpReach(MpReach { next_hop, nlri })))
}

fn decode_mp_unreach(d: &[u8]) -> Result<Option<AttrValue>, String> {
    if d.len() < 3 {
        return Err(format!("MP_UNREACH_NLRI: {} bytes is too short", d.len()));
    }
    let afi = u16::from_be_bytes([d[0], d[1]]);
    if d[2] != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6) {
        return Ok(None);
    }
    let withdrawn = decode_nlri(afi, &d[3..])
        .ok_or_else(|| format!("MP_UNREACH_NLRI: malformed withdrawn routes for AFI {afi}"))?;
    Ok(Some(AttrValue::MpUnreach(MpUnreach { afi, withdrawn })))
}

fn decode_nlri(afi: u16, d: &[u8]) -> Option<Vec<IpNet>> {
    if afi == AFI_IPV4 {
        decode_prefixes_v4(d).map(|v| v.into_iter().map(IpNet::V4).collect())
    } else {
        decode_prefixes_v6(d).map(|v| v.into_iter().map(IpNet::V6).collect())
    }
}

fn encode_nlri(nlri: &[IpNet], out: &mut Vec<u8>) {
    for p in nlri {
        match p {
            IpNet::V4(p) => encode_prefix_v4(p, out),
            IpNet::V6(p) => encode_prefix_v6(p, out),
        }
    }
}

impl AttrValue {
    fn encode(&self, cxt: &EncodeCxt, out: &mut Vec<u8>) {
        match self {
            AttrValue::Origin(o) => out.push(o.to_u8()),
            AttrValue::AsPath(p) => p.encode(cxt.four_octet_as, out),
            AttrValue::As4Path(p) => p.encode(true, out),
            AttrValue::NextHop(a) | AttrValue::OriginatorId(a) => {
                out.extend_from_slice(&a.octets())
            }
            AttrValue::Med(v) | AttrValue::LocalPref(v) => out.extend_from_slice(&v.to_be_bytes()),
            AttrValue::AtomicAggregate => {}
            AttrValue::Aggregator(a) => {
                if cxt.four_octet_as {
                    out.extend_from_slice(&a.asn.to_be_bytes());
                } else {
                    let two = u16::try_from(a.asn).unwrap_or(AS_TRANS as u16);
                    out.extend_from_slice(&two.to_be_bytes());
                }
                out.extend_from_slice(&a.address.octets());
            }
            AttrValue::As4Aggregator(a) => {
                out.extend_from_slice(&a.asn.to_be_bytes());
                out.extend_from_slice(&a.address.octets());
            }
            AttrValue::Communities(c) => {
                for v in c {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            AttrValue::LargeCommunities(c) => {
                for v in c {
                    out.extend_from_slice(&v.global.to_be_bytes());
                    out.extend_from_slice(&v.local1.to_be_bytes());
                    out.extend_from_slice(&v.local2.to_be_bytes());
                }
            }
            AttrValue::ClusterList(c) => {
                for a in c {
                    out.extend_from_slice(&a.octets());
                }
            }
            AttrValue::MpReach(r) => {
                match r.next_hop {
                    NextHop::Ipv4(a) => {
                        out.extend_from_slice(&AFI_IPV4.to_be_bytes());
                        out.extend_from_slice(&[SAFI_UNICAST, 4]);
                        out.extend_from_slice(&a.octets());
                    }
                    NextHop::Ipv6 { global, link_local } => {
                        out.extend_from_slice(&AFI_IPV6.to_be_bytes());
                        out.push(SAFI_UNICAST);
                        out.push(if link_local.is_some() { 32 } else { 16 });
                        out.extend_from_slice(&global.octets());
                        if let Some(ll) = link_local {
                            out.extend_from_slice(&ll.octets());
                        }
                    }
                }
                out.push(0);
                encode_nlri(&r.nlri, out);
            }
            AttrValue::MpUnreach(u) => {
                out.extend_from_slice(&u.afi.to_be_bytes());
                out.push(SAFI_UNICAST);
                encode_nlri(&u.withdrawn, out);
            }
            AttrValue::Raw(d) => out.extend_from_slice(d),
        }
    }
}

impl PathAttr {
    /// Creates an attribute with the canonical flags of its type.
    pub fn new(type_code: u8, value: AttrValue) -> Self {
        let flags = match known_attr(type_code) {
            Some((f, _)) => f,
            None => flags::OPTIONAL | flags::TRANSITIVE,
        };
        PathAttr {
            flags,
            type_code,
            value,
        }
    }

    /// Bytes the attribute takes on the wire, header included, as
    /// [`PathAttr::encode`] writes it.
    pub fn wire_len(&self, cxt: &EncodeCxt) -> usize {
        let mut value = Vec::new();
        self.value.encode(cxt, &mut value);
        let extended = self.flags & flags::EXTENDED_LENGTH != 0 || value.len() > 255;
        value.len() + if extended { 4 } else { 3 }
    }

    /// Appends the attribute. The extended-length bit is kept as given and
    /// forced on when the value does not fit in one octet.
    pub fn encode(&self, cxt: &EncodeCxt, out: &mut Vec<u8>) {
        let mut value = Vec::new();
        self.value.encode(cxt, &mut value);
        let mut f = self.flags;
        if value.len() > 255 {
            f |= flags::EXTENDED_LENGTH;
        }
        out.push(f);
        out.push(self.type_code);
        if f & flags::EXTENDED_LENGTH != 0 {
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        } else {
            out.push(value.len() as u8);
        }
        out.extend_from_slice(&value);
    }
}

/// Result of decoding the path attributes field of an UPDATE.
#[derive(Debug, Default)]
pub(crate) struct DecodedAttrs {
    pub attrs: Vec<PathAttr>,
    pub tail: Vec<u8>,
    pub errors: Vec<AttrError>,
}

/// Decodes the path attributes field. `Err` is a session reset.
pub(crate) fn decode_path_attrs(
    mut data: &[u8],
    cxt: &DecodeCxt,
) -> Result<DecodedAttrs, DecodeError> {
    let mut out = DecodedAttrs::default();
    let mut seen = [false; 256];
    while !data.is_empty() {
        let ext = data[0] & flags::EXTENDED_LENGTH != 0;
        let hdr = if ext { 4 } else { 3 };
        let len = if data.len() < hdr {
            None
        } else if ext {
            Some(usize::from(u16::from_be_bytes([data[2], data[3]])))
        } else {
            Some(usize::from(data[2]))
        };
        let Some(len) = len.filter(|l| hdr + l <= data.len()) else {
            // RFC 7606 section 4: an attribute overrunning the field is
            // treat-as-withdraw; the rest is kept so the message re-encodes.
            out.errors.push(AttrError {
                type_code: data.get(1).copied().unwrap_or(0),
                action: ErrorAction::TreatAsWithdraw,
                reason: format!(
                    "path attribute at the last {} bytes overruns the path attributes field",
                    data.len()
                ),
            });
            out.tail = data.to_vec();
            break;
        };
        let (fl, code) = (data[0], data[1]);
        let value = &data[hdr..hdr + len];
        data = &data[hdr + len..];
        let raw = |v: &[u8]| PathAttr {
            flags: fl,
            type_code: code,
            value: AttrValue::Raw(v.to_vec()),
        };
        let Some((expected, action)) = known_attr(code) else {
            if fl & flags::OPTIONAL == 0 {
                return Err(DecodeError::update(
                    UpdateMessageError::UnrecognizedWellKnownAttribute,
                    attr_bytes(fl, code, value),
                    format!("unrecognized well-known attribute type {code}"),
                ));
            }
            out.attrs.push(raw(value));
            continue;
        };
        if seen[usize::from(code)] {
            match action {
                None => {
                    return Err(DecodeError::update(
                        UpdateMessageError::MalformedAttributeList,
                        Vec::new(),
                        format!("attribute type {code} (MP_REACH/MP_UNREACH) appears twice"),
                    ));
                }
                Some(_) => {
                    // RFC 7606 3.g: keep the first, discard the others.
                    out.errors.push(AttrError {
                        type_code: code,
                        action: ErrorAction::AttributeDiscard,
                        reason: format!("attribute type {code} appears more than once"),
                    });
                    out.attrs.push(raw(value));
                    continue;
                }
            }
        }
        seen[usize::from(code)] = true;
        let flag_ok = fl & (flags::OPTIONAL | flags::TRANSITIVE) == expected;
        let decoded = if flag_ok {
            decode_value(code, value, cxt)
        } else {
            Err(format!(
                "attribute type {code}: flags {fl:#04x} conflict with its type"
            ))
        };
        let decoded = decoded.and_then(|v| {
            v.ok_or_else(|| format!("attribute type {code}: malformed value of {len} bytes"))
        });
        match (decoded, action) {
            (Ok(v), _) => out.attrs.push(PathAttr {
                flags: fl,
                type_code: code,
                value: v,
            }),
            // MP attributes of families we do not handle are kept raw.
            (Err(_), None) if flag_ok && is_unsupported_mp(code, value) => {
                out.attrs.push(raw(value))
            }
            (Err(reason), None) => {
                return Err(DecodeError::update(
                    UpdateMessageError::OptionalAttributeError,
                    attr_bytes(fl, code, value),
                    reason,
                ));
            }
            (Err(reason), Some(action)) => {
                out.errors.push(AttrError {
                    type_code: code,
                    action,
                    reason,
                });
                out.attrs.push(raw(value));
            }
        }
    }
    Ok(out)
}

fn is_unsupported_mp(code: u8, d: &[u8]) -> bool {
    let min = if code == tc::MP_REACH_NLRI { 5 } else { 3 };
    d.len() >= min && {
        let afi = u16::from_be_bytes([d[0], d[1]]);
        d[2] != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6)
    }
}

fn attr_bytes(fl: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![fl, code];
    if fl & flags::EXTENDED_LENGTH != 0 {
        v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        v.push(value.len() as u8);
    }
    v.extend_from_slice(value);
    v
}

/// An optional transitive attribute this speaker does not understand,
/// passed on to other peers with the partial bit set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UnknownAttr {
    /// Flags as received.
    pub flags: u8,
    /// Type code.
    pub type_code: u8,
    /// Value verbatim.
    pub data: Vec<u8>,
}

/// The semantic attribute set of a route, independent of the wire form and
/// of the peer's AS width. Next hops live with the route, not here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Origin,
    /// AS path with 4-octet ASNs (AS4_PATH already merged in).
    pub as_path: AsPath,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE present.
    pub atomic_aggregate: bool,
    /// AGGREGATOR (AS4_AGGREGATOR merged in).
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY.
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognised optional transitive attributes.
    pub unknown: Vec<UnknownAttr>,
}

impl PathAttributes {
    /// Builds the semantic view from decoded wire attributes, skipping raw
    /// (malformed/duplicate) ones and merging AS4_PATH and AS4_AGGREGATOR
    /// per RFC 6793 section 4.2.3 when the session is 2-octet.
    pub fn from_wire(attrs: &[PathAttr], four_octet_as: bool) -> Self {
        let mut pa = PathAttributes::default();
        let (mut as4_path, mut as4_aggr) = (None, None);
        for a in attrs {
            match &a.value {
                AttrValue::Origin(o) => pa.origin = *o,
                AttrValue::AsPath(p) => pa.as_path = p.clone(),
                AttrValue::Med(v) => pa.med = Some(*v),
                AttrValue::LocalPref(v) => pa.local_pref = Some(*v),
                AttrValue::AtomicAggregate => pa.atomic_aggregate = true,
                AttrValue::Aggregator(g) => pa.aggregator = Some(*g),
                AttrValue::Communities(c) => pa.communities = c.clone(),
                AttrValue::LargeCommunities(c) => pa.large_communities = c.clone(),
                AttrValue::OriginatorId(o) => pa.originator_id = Some(*o),
                AttrValue::ClusterList(c) => pa.cluster_list = c.clone(),
                AttrValue::As4Path(p) => as4_path = Some(p),
                AttrValue::As4Aggregator(g) => as4_aggr = Some(*g),
                AttrValue::Raw(d)
                    if known_attr(a.type_code).is_none()
                        && a.flags & flags::OPTIONAL != 0
                        && a.flags & flags::TRANSITIVE != 0 =>
                {
                    pa.unknown.push(UnknownAttr {
                        flags: a.flags,
                        type_code: a.type_code,
                        data: d.clone(),
                    })
                }
                _ => {}
            }
        }
        // A 4-octet session must not carry AS4_*; they are ignored there.
        if !four_octet_as {
            let mut use_as4_path = true;
            if let Some(g) = pa.aggregator {
                if g.asn != AS_TRANS {
                    // The aggregator is a 2-octet speaker after the AS4 one:
                    // both AS4 attributes are stale (RFC 6793 4.2.3).
                    use_as4_path = false;
                } else if let Some(g4) = as4_aggr {
                    pa.aggregator = Some(g4);
                }
            }
            if use_as4_path && let Some(p4) = as4_path {
                pa.as_path = AsPath::reconstruct(&pa.as_path, p4);
            }
        }
        pa
    }

    /// Bytes the attributes of [`PathAttributes::to_wire`] take once encoded.
    pub fn wire_len(&self, cxt: &EncodeCxt) -> usize {
        self.to_wire(cxt).iter().map(|a| a.wire_len(cxt)).sum()
    }

    /// Wire attributes in type-code order, without NEXT_HOP/MP attributes.
    /// On a 2-octet session AS_PATH/AGGREGATOR carry AS_TRANS and the real
    /// values go into AS4_PATH/AS4_AGGREGATOR.
    pub fn to_wire(&self, cxt: &EncodeCxt) -> Vec<PathAttr> {
        let mut v = vec![
            PathAttr::new(tc::ORIGIN, AttrValue::Origin(self.origin)),
            PathAttr::new(tc::AS_PATH, AttrValue::AsPath(self.as_path.clone())),
        ];
        if let Some(m) = self.med {
            v.push(PathAttr::new(tc::MED, AttrValue::Med(m)));
        }
        if let Some(l) = self.local_pref {
            v.push(PathAttr::new(tc::LOCAL_PREF, AttrValue::LocalPref(l)));
        }
        if self.atomic_aggregate {
            v.push(PathAttr::new(
                tc::ATOMIC_AGGREGATE,
                AttrValue::AtomicAggregate,
            ));
        }
        if let Some(g) = self.aggregator {
            v.push(PathAttr::new(tc::AGGREGATOR, AttrValue::Aggregator(g)));
        }
        if !self.communities.is_empty() {
            v.push(PathAttr::new(
                tc::COMMUNITIES,
                AttrValue::Communities(self.communities.clone()),
            ));
        }
        if let Some(o) = self.originator_id {
            v.push(PathAttr::new(tc::ORIGINATOR_ID, AttrValue::OriginatorId(o)));
        }
        if !self.cluster_list.is_empty() {
            v.push(PathAttr::new(
                tc::CLUSTER_LIST,
                AttrValue::ClusterList(self.cluster_list.clone()),
            ));
        }
        if !cxt.four_octet_as {
            if self.as_path.needs_four_octets() {
                v.push(PathAttr::new(
                    tc::AS4_PATH,
                    AttrValue::As4Path(self.as_path.clone()),
                ));
            }
            if let Some(g) = self.aggregator.filter(|g| g.asn > 0xffff) {
                v.push(PathAttr::new(
                    tc::AS4_AGGREGATOR,
                    AttrValue::As4Aggregator(g),
                ));
            }
        }
        if !self.large_communities.is_empty() {
            v.push(PathAttr::new(
                tc::LARGE_COMMUNITIES,
                AttrValue::LargeCommunities(self.large_communities.clone()),
            ));
        }
        for u in &self.unknown {
            v.push(PathAttr {
                // Passed on by a speaker that does not understand it.
                flags: (u.flags & !flags::EXTENDED_LENGTH) | flags::PARTIAL,
                type_code: u.type_code,
                value: AttrValue::Raw(u.data.clone()),
            });
        }
        v.sort_by_key(|a| a.type_code);
        v
    }
}

/// Splits mixed prefixes by family.
pub fn split_families(prefixes: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for p in prefixes {
        match p {
            IpNet::V4(p) => v4.push(*p),
            IpNet::V6(p) => v6.push(*p),
        }
    }
    (v4, v6)
}
