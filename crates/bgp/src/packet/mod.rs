//! The BGP-4 wire codec: pure functions from bytes to typed messages and back,
//! byte-exact for everything real peers send (attribute order, flag bits,
//! capability grouping), with RFC 7606 error classification.

pub mod attribute;
pub mod capability;
pub mod error;
pub mod message;

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Address family identifier for IPv4.
pub const AFI_IPV4: u16 = 1;
/// Address family identifier for IPv6.
pub const AFI_IPV6: u16 = 2;
/// Subsequent address family identifier for unicast.
pub const SAFI_UNICAST: u8 = 1;
/// The 2-octet AS number standing in for a 4-octet one (RFC 6793).
pub const AS_TRANS: u32 = 23456;

/// Decoding context: what was negotiated on the session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecodeCxt {
    /// Both sides announced the 4-octet AS capability, so AS_PATH and
    /// AGGREGATOR carry 4-octet AS numbers.
    pub four_octet_as: bool,
    /// Both sides announced extended messages (RFC 8654): messages other
    /// than OPEN and KEEPALIVE may be up to 65535 bytes.
    pub extended_message: bool,
}

impl DecodeCxt {
    /// The longest message the peer may send.
    pub fn max_message_len(&self) -> usize {
        max_message_len(self.extended_message)
    }
}

/// Encoding context, mirroring [`DecodeCxt`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EncodeCxt {
    /// Encode AS numbers with 4 octets.
    pub four_octet_as: bool,
    /// Both sides announced extended messages (RFC 8654).
    pub extended_message: bool,
}

impl EncodeCxt {
    /// The longest UPDATE we may send: 4096 bytes (RFC 4271) unless both
    /// sides negotiated extended messages (RFC 8654).
    pub fn max_message_len(&self) -> usize {
        max_message_len(self.extended_message)
    }
}

fn max_message_len(extended: bool) -> usize {
    if extended {
        message::MAX_EXTENDED_MESSAGE_LEN
    } else {
        message::MAX_MESSAGE_LEN
    }
}

/// Decodes a run of (length, prefix) NLRI entries for IPv4. `None` if a
/// length exceeds 32 or a prefix runs past the end. Host bits are cleared.
pub(crate) fn decode_prefixes_v4(mut data: &[u8]) -> Option<Vec<Ipv4Net>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        if len > 32 {
            return None;
        }
        let n = usize::from(len).div_ceil(8);
        if rest.len() < n {
            return None;
        }
        let mut octets = [0u8; 4];
        octets[..n].copy_from_slice(&rest[..n]);
        // The length is checked above, so new() cannot fail.
        out.push(Ipv4Net::new(Ipv4Addr::from(octets), len).ok()?.trunc());
        data = &rest[n..];
    }
    Some(out)
}

/// IPv6 counterpart of [`decode_prefixes_v4`].
pub(crate) fn decode_prefixes_v6(mut data: &[u8]) -> Option<Vec<Ipv6Net>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        if len > 128 {
            return None;
        }
        let n = usize::from(len).div_ceil(8);
        if rest.len() < n {
            return None;
        }
        let mut octets = [0u8; 16];
        octets[..n].copy_from_slice(&rest[..n]);
        out.push(Ipv6Net::new(Ipv6Addr::from(octets), len).ok()?.trunc());
        data = &rest[n..];
    }
    Some(out)
}

/// Appends one IPv4 prefix in NLRI encoding.
pub(crate) fn encode_prefix_v4(p: &Ipv4Net, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    out.push(len);
    out.extend_from_slice(&p.network().octets()[..usize::from(len).div_ceil(8)]);
}

/// Appends one IPv6 prefix in NLRI encoding.
pub(crate) fn encode_prefix_v6(p: &Ipv6Net, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    out.push(len);
    out.extend_from_slice(&p.network().octets()[..usize::from(len).div_ceil(8)]);
}

/// Encoded size of an IPv4 or IPv6 prefix of length `len` in NLRI.
pub fn prefix_wire_len(len: u8) -> usize {
    1 + usize::from(len).div_ceil(8)
}
