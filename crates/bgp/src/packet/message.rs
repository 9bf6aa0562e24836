//! BGP messages (RFC 4271 section 4): header framing, OPEN, UPDATE,
//! NOTIFICATION, KEEPALIVE and ROUTE-REFRESH (RFC 2918/7313), End-of-RIB
//! markers (RFC 4724), and builders that split announcements into UPDATEs
//! of at most the session's message size (4096 bytes, or 65535 with RFC 8654
//! extended messages), counting every attribute export added.

use super::attribute::{
    AttrValue, MpReach, MpUnreach, NextHop, PathAttr, PathAttributes, decode_path_attrs, flags,
    type_code,
};
use super::capability::{Capability, Family};
use super::error::{
    AttrError, DecodeError, EncodeError, ErrorAction, ErrorCode, MessageHeaderError,
    OpenMessageError, UpdateMessageError,
};
use super::{
    AFI_IPV6, AS_TRANS, DecodeCxt, EncodeCxt, decode_prefixes_v4, encode_prefix_v4, prefix_wire_len,
};
use ipnet::{IpNet, Ipv4Net};
use std::net::Ipv4Addr;

/// Size of the fixed header: marker, length, type.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended message capability (RFC 8654),
/// and always for OPEN and KEEPALIVE.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Largest message once both sides negotiated extended messages (RFC 8654).
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;

/// Bytes of an UPDATE announcing routes with `attrs` and `next_hop`, all but
/// the NLRI: header, both length fields, the attributes as
/// [`PathAttributes::to_wire`] encodes them, and NEXT_HOP (IPv4) or the
/// MP_REACH_NLRI header (IPv6, always with a 2-octet length).
pub fn announce_overhead(attrs: &PathAttributes, next_hop: NextHop, cxt: &EncodeCxt) -> usize {
    let next_hop_len = match next_hop {
        // Flags, type, length, address.
        NextHop::Ipv4(_) => 3 + 4,
        // Flags, type, 2-octet length, AFI, SAFI, next hop length, next
        // hop, reserved.
        NextHop::Ipv6 { link_local, .. } => {
            4 + 2 + 1 + 1 + 16 + 1 + 16 * usize::from(link_local.is_some())
        }
    };
    HEADER_LEN + 2 + 2 + attrs.wire_len(cxt) + next_hop_len
}

/// Room left for NLRI in one UPDATE announcing routes with `attrs` and
/// `next_hop` within the session's size limit; `None` when the attributes
/// alone do not fit. A prefix of length `l` takes `1 + ceil(l / 8)` bytes.
pub fn nlri_room(attrs: &PathAttributes, next_hop: NextHop, cxt: &EncodeCxt) -> Option<usize> {
    cxt.max_message_len()
        .checked_sub(announce_overhead(attrs, next_hop, cxt))
}

/// Message type codes.
pub mod msg_type {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH.
    pub const ROUTE_REFRESH: u8 = 5;
}

/// A BGP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(OpenMsg),
    /// UPDATE.
    Update(UpdateMsg),
    /// NOTIFICATION.
    Notification(NotificationMsg),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH.
    RouteRefresh(RouteRefreshMsg),
}

/// OPEN message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenMsg {
    /// "My Autonomous System": AS_TRANS when the real AS needs 4 octets.
    pub asn: u16,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities, one inner list per optional parameter as received
    /// (BIRD sends one parameter with all of them, others one each).
    pub params: Vec<Vec<Capability>>,
}

impl OpenMsg {
    /// Builds an OPEN with all capabilities in one optional parameter.
    pub fn new(asn: u32, hold_time: u16, router_id: Ipv4Addr, caps: Vec<Capability>) -> Self {
        OpenMsg {
            asn: u16::try_from(asn).unwrap_or(AS_TRANS as u16),
            hold_time,
            router_id,
            params: if caps.is_empty() {
                Vec::new()
            } else {
                vec![caps]
            },
        }
    }

    /// All capabilities in order.
    pub fn capabilities(&self) -> impl Iterator<Item = &Capability> {
        self.params.iter().flatten()
    }

    /// The sender's AS: the 4-octet AS capability if present, else `asn`.
    pub fn peer_as(&self) -> u32 {
        self.capabilities()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(u32::from(self.asn))
    }

    fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 10 {
            return Err(DecodeError::header(
                MessageHeaderError::BadMessageLength,
                ((b.len() + HEADER_LEN) as u16).to_be_bytes().to_vec(),
                "OPEN shorter than 29 bytes",
            ));
        }
        if b[0] != 4 {
            return Err(DecodeError::open(
                OpenMessageError::UnsupportedVersionNumber,
                4u16.to_be_bytes().to_vec(),
                format!("OPEN version {} is not 4", b[0]),
            ));
        }
        let asn = u16::from_be_bytes([b[1], b[2]]);
        let hold_time = u16::from_be_bytes([b[3], b[4]]);
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::open(
                OpenMessageError::UnacceptableHoldTime,
                Vec::new(),
                format!("OPEN hold time {hold_time} is neither 0 nor at least 3"),
            ));
        }
        let router_id = Ipv4Addr::new(b[5], b[6], b[7], b[8]);
        if router_id.is_unspecified() {
            return Err(DecodeError::open(
                OpenMessageError::BadBgpIdentifier,
                Vec::new(),
                "OPEN BGP identifier is 0.0.0.0",
            ));
        }
        let opt_len = usize::from(b[9]);
        let mut rest = &b[10..];
        if rest.len() != opt_len {
            return Err(DecodeError::open(
                OpenMessageError::Unspecific,
                Vec::new(),
                format!(
                    "OPEN optional parameters length {opt_len} but {} bytes follow",
                    rest.len()
                ),
            ));
        }
        let mut params = Vec::new();
        while !rest.is_empty() {
            if rest.len() < 2 || rest.len() < 2 + usize::from(rest[1]) {
                return Err(DecodeError::open(
                    OpenMessageError::Unspecific,
                    Vec::new(),
                    "OPEN optional parameter overruns the parameters field",
                ));
            }
            let (ptype, plen) = (rest[0], usize::from(rest[1]));
            let mut pdata = &rest[2..2 + plen];
            rest = &rest[2 + plen..];
            if ptype != 2 {
                return Err(DecodeError::open(
                    OpenMessageError::UnsupportedOptionalParameter,
                    Vec::new(),
                    format!("OPEN optional parameter type {ptype} is not capabilities (2)"),
                ));
            }
            let mut caps = Vec::new();
            while !pdata.is_empty() {
                if pdata.len() < 2 || pdata.len() < 2 + usize::from(pdata[1]) {
                    return Err(DecodeError::open(
                        OpenMessageError::Unspecific,
                        Vec::new(),
                        "OPEN capability overruns its optional parameter",
                    ));
                }
                let clen = usize::from(pdata[1]);
                caps.push(Capability::decode(pdata[0], &pdata[2..2 + clen]));
                pdata = &pdata[2 + clen..];
            }
            params.push(caps);
        }
        Ok(OpenMsg {
            asn,
            hold_time,
            router_id,
            params,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(4);
        out.extend_from_slice(&self.asn.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.router_id.octets());
        let len_at = out.len();
        out.push(0);
        for p in &self.params {
            out.push(2);
            let plen_at = out.len();
            out.push(0);
            for c in p {
                c.encode(out);
            }
            out[plen_at] = (out.len() - plen_at - 1) as u8;
        }
        out[len_at] = (out.len() - len_at - 1) as u8;
    }
}

/// UPDATE message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateMsg {
    /// Withdrawn IPv4 routes.
    pub withdrawn: Vec<Ipv4Net>,
    /// Path attributes in wire order.
    pub attrs: Vec<PathAttr>,
    /// Bytes at the end of the attributes field that could not be parsed as
    /// an attribute (RFC 7606 section 4); non-empty means treat-as-withdraw.
    pub attr_tail: Vec<u8>,
    /// IPv4 NLRI.
    pub nlri: Vec<Ipv4Net>,
    /// Recoverable errors found by decode (empty for built messages).
    /// Encoding ignores this field.
    pub errors: Vec<AttrError>,
}

/// The routing content of an UPDATE after RFC 7606 handling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateRoutes {
    /// Prefixes to remove (including announcements under treat-as-withdraw).
    pub withdrawn: Vec<IpNet>,
    /// Prefixes announced, with their next hop.
    pub announced: Vec<(IpNet, NextHop)>,
    /// Attributes shared by all announced prefixes.
    pub attrs: PathAttributes,
    /// End-of-RIB marker for this family.
    pub end_of_rib: Option<Family>,
}

impl UpdateMsg {
    /// RFC 7606 treat-as-withdraw: some error demands it.
    pub fn treat_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.action == ErrorAction::TreatAsWithdraw)
    }

    /// End-of-RIB marker (RFC 4724 section 2): an empty UPDATE for IPv4, an
    /// UPDATE with only an empty MP_UNREACH_NLRI for other families.
    pub fn end_of_rib(family: Family) -> Self {
        match family {
            Family::Ipv4Unicast => UpdateMsg::default(),
            Family::Ipv6Unicast => UpdateMsg {
                attrs: vec![PathAttr::new(
                    type_code::MP_UNREACH_NLRI,
                    AttrValue::MpUnreach(MpUnreach {
                        afi: AFI_IPV6,
                        withdrawn: Vec::new(),
                    }),
                )],
                ..Default::default()
            },
        }
    }

    /// Which family this End-of-RIB marker is for, if it is one.
    pub fn is_end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || !self.attr_tail.is_empty() {
            return None;
        }
        match self.attrs.as_slice() {
            [] => Some(Family::Ipv4Unicast),
            [
                PathAttr {
                    value: AttrValue::MpUnreach(u),
                    ..
                },
            ] if u.withdrawn.is_empty() => Family::from_afi_safi(u.afi, 1),
            _ => None,
        }
    }

    /// Routing content. Announcements of a treat-as-withdraw UPDATE come
    /// back as withdrawals.
    pub fn routes(&self, four_octet_as: bool) -> UpdateRoutes {
        let mut r = UpdateRoutes {
            end_of_rib: self.is_end_of_rib(),
            withdrawn: self.withdrawn.iter().map(|p| IpNet::V4(*p)).collect(),
            ..Default::default()
        };
        let mut next_hop = None;
        let mut reach = Vec::new();
        for a in &self.attrs {
            match &a.value {
                AttrValue::NextHop(nh) => next_hop = Some(NextHop::Ipv4(*nh)),
                AttrValue::MpReach(m) => reach.extend(m.nlri.iter().map(|p| (*p, m.next_hop))),
                AttrValue::MpUnreach(u) => r.withdrawn.extend(u.withdrawn.iter().copied()),
                _ => {}
            }
        }
        if self.treat_as_withdraw() || next_hop.is_none() {
            r.withdrawn.extend(self.nlri.iter().map(|p| IpNet::V4(*p)));
        } else if let Some(nh) = next_hop {
            reach.extend(self.nlri.iter().map(|p| (IpNet::V4(*p), nh)));
        }
        if self.treat_as_withdraw() {
            r.withdrawn.extend(reach.iter().map(|(p, _)| *p));
        } else {
            r.announced = reach;
            r.attrs = PathAttributes::from_wire(&self.attrs, four_octet_as);
        }
        r
    }

    /// Builds UPDATEs announcing `prefixes` (all of the next hop's family)
    /// with `attrs`, each within the session's message size limit
    /// ([`EncodeCxt::max_message_len`]) once NEXT_HOP or MP_REACH_NLRI is
    /// added. Prefixes that do not fit in one message go in further ones; if
    /// the attributes leave no room for some prefix, nothing is built and
    /// the error names it (such a route cannot be sent to this peer).
    pub fn announce(
        attrs: &PathAttributes,
        next_hop: NextHop,
        prefixes: &[IpNet],
        cxt: &EncodeCxt,
    ) -> Result<Vec<UpdateMsg>, EncodeError> {
        let overhead = announce_overhead(attrs, next_hop, cxt);
        let room = cxt.max_message_len().saturating_sub(overhead);
        if let Some(p) = prefixes
            .iter()
            .find(|p| prefix_wire_len(p.prefix_len()) > room)
        {
            return Err(EncodeError::AttributesTooLarge {
                prefix: *p,
                attrs_len: overhead,
                max: cxt.max_message_len(),
            });
        }
        let base = attrs.to_wire(cxt);
        let mut out = Vec::new();
        let mut chunk: Vec<IpNet> = Vec::new();
        let mut used = 0;
        let flush = |chunk: &mut Vec<IpNet>, out: &mut Vec<UpdateMsg>| {
            if chunk.is_empty() {
                return;
            }
            let mut attrs = base.clone();
            let mut nlri = Vec::new();
            match next_hop {
                NextHop::Ipv4(nh) => {
                    attrs.push(PathAttr::new(type_code::NEXT_HOP, AttrValue::NextHop(nh)));
                    nlri = chunk
                        .iter()
                        .filter_map(|p| match p {
                            IpNet::V4(p) => Some(*p),
                            IpNet::V6(_) => None,
                        })
                        .collect();
                }
                NextHop::Ipv6 { .. } => {
                    let mut a = PathAttr::new(
                        type_code::MP_REACH_NLRI,
                        AttrValue::MpReach(MpReach {
                            next_hop,
                            nlri: chunk.clone(),
                        }),
                    );
                    a.flags |= flags::EXTENDED_LENGTH;
                    attrs.push(a);
                }
            }
            attrs.sort_by_key(|a| a.type_code);
            out.push(UpdateMsg {
                attrs,
                nlri,
                ..Default::default()
            });
            chunk.clear();
        };
        for p in prefixes {
            let l = prefix_wire_len(p.prefix_len());
            if used + l > room {
                flush(&mut chunk, &mut out);
                used = 0;
            }
            chunk.push(*p);
            used += l;
        }
        flush(&mut chunk, &mut out);
        Ok(out)
    }

    /// Builds UPDATEs withdrawing `prefixes` (IPv4 in the withdrawn field,
    /// IPv6 in MP_UNREACH_NLRI).
    pub fn withdraw(prefixes: &[IpNet]) -> Vec<UpdateMsg> {
        let budget = MAX_MESSAGE_LEN - HEADER_LEN - 4 - 4 - 3;
        let mut out = Vec::new();
        let (v4, v6) = super::attribute::split_families(prefixes);
        let mut used = 0;
        let mut cur: Vec<Ipv4Net> = Vec::new();
        for p in v4 {
            let l = prefix_wire_len(p.prefix_len());
            if used + l > budget {
                out.push(UpdateMsg {
                    withdrawn: std::mem::take(&mut cur),
                    ..Default::default()
                });
                used = 0;
            }
            cur.push(p);
            used += l;
        }
        if !cur.is_empty() {
            out.push(UpdateMsg {
                withdrawn: cur,
                ..Default::default()
            });
        }
        let mut used = 0;
        let mut cur: Vec<IpNet> = Vec::new();
        let push6 = |cur: &mut Vec<IpNet>, out: &mut Vec<UpdateMsg>| {
            let mut a = PathAttr::new(
                type_code::MP_UNREACH_NLRI,
                AttrValue::MpUnreach(MpUnreach {
                    afi: AFI_IPV6,
                    withdrawn: std::mem::take(cur),
                }),
            );
            a.flags |= flags::EXTENDED_LENGTH;
            out.push(UpdateMsg {
                attrs: vec![a],
                ..Default::default()
            });
        };
        for p in v6 {
            let l = prefix_wire_len(p.prefix_len());
            if used + l > budget {
                push6(&mut cur, &mut out);
                used = 0;
            }
            cur.push(IpNet::V6(p));
            used += l;
        }
        if !cur.is_empty() {
            push6(&mut cur, &mut out);
        }
        out
    }

    fn decode(b: &[u8], cxt: &DecodeCxt) -> Result<Self, DecodeError> {
        let malformed = |reason: &str| {
            DecodeError::update(
                UpdateMessageError::MalformedAttributeList,
                Vec::new(),
                reason.to_string(),
            )
        };
        if b.len() < 4 {
            return Err(malformed("UPDATE shorter than its two length fields"));
        }
        let wlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        if 2 + wlen + 2 > b.len() {
            return Err(malformed(
                "UPDATE withdrawn routes length overruns the message",
            ));
        }
        let withdrawn = decode_prefixes_v4(&b[2..2 + wlen]).ok_or_else(|| {
            DecodeError::update(
                UpdateMessageError::InvalidNetworkField,
                Vec::new(),
                "UPDATE withdrawn routes: malformed prefix",
            )
        })?;
        let at = 2 + wlen;
        let alen = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
        if at + 2 + alen > b.len() {
            return Err(malformed(
                "UPDATE total path attribute length overruns the message",
            ));
        }
        let decoded = decode_path_attrs(&b[at + 2..at + 2 + alen], cxt)?;
        let nlri = decode_prefixes_v4(&b[at + 2 + alen..]).ok_or_else(|| {
            DecodeError::update(
                UpdateMessageError::InvalidNetworkField,
                Vec::new(),
                "UPDATE NLRI: malformed prefix",
            )
        })?;
        let mut errors = decoded.errors;
        let has = |code: u8| decoded.attrs.iter().any(|a| a.type_code == code);
        let has_mp_reach = decoded
            .attrs
            .iter()
            .any(|a| matches!(a.value, AttrValue::MpReach(_)));
        // RFC 7606 3.d: a missing well-known mandatory attribute is
        // treat-as-withdraw when there is something to announce.
        if decoded.tail.is_empty() && (!nlri.is_empty() || has_mp_reach) {
            let mut required = vec![
                (type_code::ORIGIN, "ORIGIN"),
                (type_code::AS_PATH, "AS_PATH"),
            ];
            if !nlri.is_empty() {
                required.push((type_code::NEXT_HOP, "NEXT_HOP"));
            }
            for (code, name) in required {
                if !has(code) {
                    errors.push(AttrError {
                        type_code: code,
                        action: ErrorAction::TreatAsWithdraw,
                        reason: format!("mandatory attribute {name} is missing"),
                    });
                }
            }
        }
        Ok(UpdateMsg {
            withdrawn,
            attrs: decoded.attrs,
            attr_tail: decoded.tail,
            nlri,
            errors,
        })
    }

    fn encode(&self, cxt: &EncodeCxt, out: &mut Vec<u8>) {
        let wl_at = out.len();
        out.extend_from_slice(&[0, 0]);
        for p in &self.withdrawn {
            encode_prefix_v4(p, out);
        }
        let wl = (out.len() - wl_at - 2) as u16;
        out[wl_at..wl_at + 2].copy_from_slice(&wl.to_be_bytes());
        let al_at = out.len();
        out.extend_from_slice(&[0, 0]);
        for a in &self.attrs {
            a.encode(cxt, out);
        }
        out.extend_from_slice(&self.attr_tail);
        let al = (out.len() - al_at - 2) as u16;
        out[al_at..al_at + 2].copy_from_slice(&al.to_be_bytes());
        for p in &self.nlri {
            encode_prefix_v4(p, out);
        }
    }
}

/// NOTIFICATION message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationMsg {
    /// Error code.
    pub code: ErrorCode,
    /// Subcode (meaning depends on the code).
    pub subcode: u8,
    /// Diagnostic data.
    pub data: Vec<u8>,
}

impl NotificationMsg {
    /// A NOTIFICATION without data.
    pub fn new(code: ErrorCode, subcode: u8) -> Self {
        NotificationMsg {
            code,
            subcode,
            data: Vec::new(),
        }
    }
}

impl From<&DecodeError> for NotificationMsg {
    /// The NOTIFICATION for a decode error. Its data (often the offending
    /// field) is cut to what fits in 4096 bytes, whatever the peer sent.
    fn from(e: &DecodeError) -> Self {
        let fits = MAX_MESSAGE_LEN - HEADER_LEN - 2;
        NotificationMsg {
            code: e.code,
            subcode: e.subcode,
            data: e.data[..e.data.len().min(fits)].to_vec(),
        }
    }
}

impl std::fmt::Display for NotificationMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}/{})", self.code, self.code.to_u8(), self.subcode)
    }
}

/// ROUTE-REFRESH message (RFC 2918, subtypes from RFC 7313).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRefreshMsg {
    /// Address family identifier.
    pub afi: u16,
    /// 0 = request, 1 = beginning of route refresh, 2 = end of route refresh.
    pub subtype: u8,
    /// Subsequent address family identifier.
    pub safi: u8,
}

impl Message {
    /// Message type code.
    pub fn msg_type(&self) -> u8 {
        match self {
            Message::Open(_) => msg_type::OPEN,
            Message::Update(_) => msg_type::UPDATE,
            Message::Notification(_) => msg_type::NOTIFICATION,
            Message::Keepalive => msg_type::KEEPALIVE,
            Message::RouteRefresh(_) => msg_type::ROUTE_REFRESH,
        }
    }

    /// Checks the header at the start of `buf` and returns the length of the
    /// whole message, or `None` if fewer than 19 bytes are buffered.
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        Message::frame_len_max(buf, MAX_MESSAGE_LEN)
    }

    /// [`Message::frame_len`] with a limit of `max` bytes: 65535 once both
    /// sides negotiated extended messages.
    pub fn frame_len_max(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if buf[..16].iter().any(|b| *b != 0xff) {
            return Err(DecodeError::header(
                MessageHeaderError::ConnectionNotSynchronized,
                Vec::new(),
                "message header marker is not all ones",
            ));
        }
        let len = u16::from_be_bytes([buf[16], buf[17]]);
        if usize::from(len) < HEADER_LEN || usize::from(len) > max {
            return Err(DecodeError::header(
                MessageHeaderError::BadMessageLength,
                len.to_be_bytes().to_vec(),
                format!("message header length {len} is outside 19..={max}"),
            ));
        }
        Ok(Some(usize::from(len)))
    }

    /// Decodes exactly one message (header included) from `buf`.
    pub fn decode(buf: &[u8], cxt: &DecodeCxt) -> Result<Message, DecodeError> {
        let Some(len) = Message::frame_len_max(buf, cxt.max_message_len())? else {
            return Err(DecodeError::header(
                MessageHeaderError::BadMessageLength,
                (buf.len() as u16).to_be_bytes().to_vec(),
                format!("{} bytes is shorter than a message header", buf.len()),
            ));
        };
        if len != buf.len() {
            return Err(DecodeError::header(
                MessageHeaderError::BadMessageLength,
                (len as u16).to_be_bytes().to_vec(),
                format!(
                    "header length {len} but the buffer holds {} bytes",
                    buf.len()
                ),
            ));
        }
        let ty = buf[18];
        let body = &buf[HEADER_LEN..];
        let bad_len = || {
            DecodeError::header(
                MessageHeaderError::BadMessageLength,
                (len as u16).to_be_bytes().to_vec(),
                format!("length {len} is invalid for message type {ty}"),
            )
        };
        Ok(match ty {
            msg_type::OPEN => {
                // Extended messages never apply to OPEN (RFC 8654 section 3).
                if !(29..=MAX_MESSAGE_LEN).contains(&len) {
                    return Err(bad_len());
                }
                Message::Open(OpenMsg::decode(body)?)
            }
            msg_type::UPDATE => {
                if len < 23 {
                    return Err(bad_len());
                }
                Message::Update(UpdateMsg::decode(body, cxt)?)
            }
            msg_type::NOTIFICATION => {
                if len < 21 {
                    return Err(bad_len());
                }
                Message::Notification(NotificationMsg {
                    code: ErrorCode::from_u8(body[0]),
                    subcode: body[1],
                    data: body[2..].to_vec(),
                })
            }
            msg_type::KEEPALIVE => {
                if len != HEADER_LEN {
                    return Err(bad_len());
                }
                Message::Keepalive
            }
            msg_type::ROUTE_REFRESH => {
                if len != 23 {
                    return Err(bad_len());
                }
                Message::RouteRefresh(RouteRefreshMsg {
                    afi: u16::from_be_bytes([body[0], body[1]]),
                    subtype: body[2],
                    safi: body[3],
                })
            }
            other => {
                return Err(DecodeError::header(
                    MessageHeaderError::BadMessageType,
                    vec![other],
                    format!("unknown message type {other}"),
                ));
            }
        })
    }

    /// Encodes the message with its header.
    pub fn encode(&self, cxt: &EncodeCxt) -> Vec<u8> {
        let mut out = Vec::with_capacity(match self {
            Message::Update(_) => MAX_MESSAGE_LEN,
            _ => 64,
        });
        out.resize(16, 0xff);
        out.extend_from_slice(&[0, 0, self.msg_type()]);
        match self {
            Message::Open(o) => o.encode(&mut out),
            Message::Update(u) => u.encode(cxt, &mut out),
            Message::Notification(n) => {
                out.push(n.code.to_u8());
                out.push(n.subcode);
                out.extend_from_slice(&n.data);
            }
            Message::Keepalive => {}
            Message::RouteRefresh(r) => {
                out.extend_from_slice(&r.afi.to_be_bytes());
                out.push(r.subtype);
                out.push(r.safi);
            }
        }
        let len = out.len() as u16;
        out[16..18].copy_from_slice(&len.to_be_bytes());
        // Messages are queued until written: keep only what they use.
        out.shrink_to_fit();
        out
    }
}
