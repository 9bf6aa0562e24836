//! The BFD Control packet (RFC 5880 section 4): a pure codec from bytes to a
//! typed [`ControlPacket`] and back. Decoding applies every check of section
//! 6.8.6 that needs no session state, so the state machine only ever sees
//! packets a correct peer could have sent; the checks that do need a session
//! (authentication, demultiplexing) are the session's and the instance's.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this codec speaks.
pub const VERSION: u8 = 1;
/// Length of the mandatory section.
pub const HEADER_LEN: usize = 24;
/// Longest packet this implementation sends (keyed SHA-1 authentication).
pub const MAX_LEN: usize = HEADER_LEN + SHA1_AUTH_LEN;
/// Length of a keyed MD5 authentication section.
pub const MD5_AUTH_LEN: usize = 24;
/// Length of a keyed SHA-1 authentication section.
pub const SHA1_AUTH_LEN: usize = 28;
/// Longest simple password (section 4.2).
pub const MAX_PASSWORD_LEN: usize = 16;

const FLAG_POLL: u8 = 0x20;
const FLAG_FINAL: u8 = 0x10;
const FLAG_CPI: u8 = 0x08;
const FLAG_AUTH: u8 = 0x04;
const FLAG_DEMAND: u8 = 0x02;
const FLAG_MULTIPOINT: u8 = 0x01;

/// Session state, as carried in the Sta field and kept by the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum State {
    /// 0: held down by the operator.
    AdminDown,
    /// 1: down, or not yet up.
    Down,
    /// 2: the remote is seen, waiting for it to see us.
    Init,
    /// 3: both ends see each other.
    Up,
}

impl State {
    /// The two-bit wire value.
    pub fn to_bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    /// Parses the two-bit wire value (higher bits are ignored).
    pub fn from_bits(v: u8) -> State {
        match v & 0x3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// Name as shown in status output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Diagnostic code (section 4.1): why the sender's session last left Up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Diag {
    /// 0.
    None,
    /// 1: nothing heard from the peer for a detection time.
    ControlDetectionTimeExpired,
    /// 2.
    EchoFunctionFailed,
    /// 3: the peer said its session went down.
    NeighborSignaledSessionDown,
    /// 4.
    ForwardingPlaneReset,
    /// 5.
    PathDown,
    /// 6.
    ConcatenatedPathDown,
    /// 7: the operator took the session down.
    AdministrativelyDown,
    /// 8.
    ReverseConcatenatedPathDown,
    /// 9..=31: reserved values, kept verbatim.
    Reserved(u8),
}

impl Diag {
    /// The five-bit wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::ControlDetectionTimeExpired => 1,
            Diag::EchoFunctionFailed => 2,
            Diag::NeighborSignaledSessionDown => 3,
            Diag::ForwardingPlaneReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdministrativelyDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(v) => v & 0x1f,
        }
    }

    /// Parses the five-bit wire value (higher bits are ignored).
    pub fn from_u8(v: u8) -> Diag {
        match v & 0x1f {
            0 => Diag::None,
            1 => Diag::ControlDetectionTimeExpired,
            2 => Diag::EchoFunctionFailed,
            3 => Diag::NeighborSignaledSessionDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            other => Diag::Reserved(other),
        }
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Diag::None => "no diagnostic",
            Diag::ControlDetectionTimeExpired => "control detection time expired",
            Diag::EchoFunctionFailed => "echo function failed",
            Diag::NeighborSignaledSessionDown => "neighbor signaled session down",
            Diag::ForwardingPlaneReset => "forwarding plane reset",
            Diag::PathDown => "path down",
            Diag::ConcatenatedPathDown => "concatenated path down",
            Diag::AdministrativelyDown => "administratively down",
            Diag::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Diag::Reserved(v) => return write!(f, "diagnostic {v}"),
        };
        f.write_str(s)
    }
}

/// Authentication types (section 4.1, Auth Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthType {
    /// 1: a cleartext password.
    SimplePassword,
    /// 2.
    KeyedMd5,
    /// 3.
    MeticulousKeyedMd5,
    /// 4: SHA-1 over the packet and key, sequence number may repeat.
    KeyedSha1,
    /// 5: as 4, sequence number increments with every packet.
    MeticulousKeyedSha1,
}

impl AuthType {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            AuthType::SimplePassword => 1,
            AuthType::KeyedMd5 => 2,
            AuthType::MeticulousKeyedMd5 => 3,
            AuthType::KeyedSha1 => 4,
            AuthType::MeticulousKeyedSha1 => 5,
        }
    }

    /// Parses the wire value.
    pub fn from_u8(v: u8) -> Option<AuthType> {
        Some(match v {
            1 => AuthType::SimplePassword,
            2 => AuthType::KeyedMd5,
            3 => AuthType::MeticulousKeyedMd5,
            4 => AuthType::KeyedSha1,
            5 => AuthType::MeticulousKeyedSha1,
            _ => return None,
        })
    }

    /// True for the types whose sequence number must grow with every packet.
    pub fn is_meticulous(self) -> bool {
        matches!(
            self,
            AuthType::MeticulousKeyedMd5 | AuthType::MeticulousKeyedSha1
        )
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthType::SimplePassword => "simple password",
            AuthType::KeyedMd5 => "keyed MD5",
            AuthType::MeticulousKeyedMd5 => "meticulous keyed MD5",
            AuthType::KeyedSha1 => "keyed SHA-1",
            AuthType::MeticulousKeyedSha1 => "meticulous keyed SHA-1",
        })
    }
}

/// The optional authentication section (sections 4.2-4.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Auth {
    /// Type 1.
    SimplePassword {
        /// Auth Key ID.
        key_id: u8,
        /// 1..=16 bytes.
        password: Vec<u8>,
    },
    /// Types 2 and 3.
    Md5 {
        /// Type 3 rather than 2.
        meticulous: bool,
        /// Auth Key ID.
        key_id: u8,
        /// Sequence Number.
        seq: u32,
        /// Auth Key/Digest.
        digest: [u8; 16],
    },
    /// Types 4 and 5.
    Sha1 {
        /// Type 5 rather than 4.
        meticulous: bool,
        /// Auth Key ID.
        key_id: u8,
        /// Sequence Number.
        seq: u32,
        /// Auth Key/Hash.
        hash: [u8; 20],
    },
}

impl Auth {
    /// The Auth Type of this section.
    pub fn auth_type(&self) -> AuthType {
        match self {
            Auth::SimplePassword { .. } => AuthType::SimplePassword,
            Auth::Md5 { meticulous, .. } => {
                if *meticulous {
                    AuthType::MeticulousKeyedMd5
                } else {
                    AuthType::KeyedMd5
                }
            }
            Auth::Sha1 { meticulous, .. } => {
                if *meticulous {
                    AuthType::MeticulousKeyedSha1
                } else {
                    AuthType::KeyedSha1
                }
            }
        }
    }

    /// The Auth Key ID.
    pub fn key_id(&self) -> u8 {
        match self {
            Auth::SimplePassword { key_id, .. }
            | Auth::Md5 { key_id, .. }
            | Auth::Sha1 { key_id, .. } => *key_id,
        }
    }

    /// The Sequence Number (none for simple passwords).
    pub fn seq(&self) -> Option<u32> {
        match self {
            Auth::SimplePassword { .. } => None,
            Auth::Md5 { seq, .. } | Auth::Sha1 { seq, .. } => Some(*seq),
        }
    }

    /// Encoded length of the section (the Auth Len field).
    pub fn wire_len(&self) -> usize {
        match self {
            Auth::SimplePassword { password, .. } => 3 + password.len(),
            Auth::Md5 { .. } => MD5_AUTH_LEN,
            Auth::Sha1 { .. } => SHA1_AUTH_LEN,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.auth_type().to_u8());
        // The password length is bounded by the decoder and by validation of
        // the configuration, so this fits a byte.
        out.push(self.wire_len() as u8);
        out.push(self.key_id());
        match self {
            Auth::SimplePassword { password, .. } => out.extend_from_slice(password),
            Auth::Md5 { seq, digest, .. } => {
                out.push(0);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(digest);
            }
            Auth::Sha1 { seq, hash, .. } => {
                out.push(0);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(hash);
            }
        }
    }

    fn decode(data: &[u8]) -> Result<Auth, DecodeError> {
        // The caller checked that at least two bytes (type, length) exist.
        let ty = data[0];
        let len = usize::from(data[1]);
        let auth_type = AuthType::from_u8(ty).ok_or(DecodeError::UnknownAuthType(ty))?;
        let (min, max) = match auth_type {
            AuthType::SimplePassword => (4, 3 + MAX_PASSWORD_LEN),
            AuthType::KeyedMd5 | AuthType::MeticulousKeyedMd5 => (MD5_AUTH_LEN, MD5_AUTH_LEN),
            AuthType::KeyedSha1 | AuthType::MeticulousKeyedSha1 => (SHA1_AUTH_LEN, SHA1_AUTH_LEN),
        };
        if len < min || len > max {
            return Err(DecodeError::AuthLen {
                auth_type,
                auth_len: data[1],
            });
        }
        if data.len() != len {
            return Err(DecodeError::AuthSectionLen {
                auth_len: data[1],
                available: data.len(),
            });
        }
        let key_id = data[2];
        let seq = |d: &[u8]| u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        Ok(match auth_type {
            AuthType::SimplePassword => Auth::SimplePassword {
                key_id,
                password: data[3..len].to_vec(),
            },
            AuthType::KeyedMd5 | AuthType::MeticulousKeyedMd5 => {
                let mut digest = [0u8; 16];
                digest.copy_from_slice(&data[8..24]);
                Auth::Md5 {
                    meticulous: auth_type.is_meticulous(),
                    key_id,
                    seq: seq(data),
                    digest,
                }
            }
            AuthType::KeyedSha1 | AuthType::MeticulousKeyedSha1 => {
                let mut hash = [0u8; 20];
                hash.copy_from_slice(&data[8..28]);
                Auth::Sha1 {
                    meticulous: auth_type.is_meticulous(),
                    key_id,
                    seq: seq(data),
                    hash,
                }
            }
        })
    }
}

/// A BFD Control packet. Intervals are in microseconds, as on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    /// Diag.
    pub diag: Diag,
    /// Sta.
    pub state: State,
    /// P: the sender asks for a Final (a parameter change).
    pub poll: bool,
    /// F: the answer to a Poll.
    pub final_: bool,
    /// C: BFD does not share fate with the control plane.
    pub control_plane_independent: bool,
    /// D: the sender wishes to run Demand mode.
    pub demand: bool,
    /// M: reserved for multipoint; never set in a valid packet.
    pub multipoint: bool,
    /// Detect Mult.
    pub detect_mult: u8,
    /// My Discriminator.
    pub my_discriminator: u32,
    /// Your Discriminator (0 while the sender does not know it).
    pub your_discriminator: u32,
    /// Desired Min TX Interval, microseconds.
    pub desired_min_tx: u32,
    /// Required Min RX Interval, microseconds.
    pub required_min_rx: u32,
    /// Required Min Echo RX Interval, microseconds (0: no Echo).
    pub required_min_echo_rx: u32,
    /// The authentication section; its presence is the A bit.
    pub auth: Option<Auth>,
}

/// Why a received packet was discarded by the codec (RFC 5880 section 6.8.6
/// and the layout rules of section 4).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the mandatory section.
    #[error("{0} bytes is shorter than the 24-byte mandatory section")]
    Short(usize),
    /// Vers is not 1.
    #[error("version {0} is not 1")]
    Version(u8),
    /// The Length field is below the minimum for the A bit.
    #[error("length field {length} is below the minimum of {min}")]
    LengthTooSmall {
        /// The Length field.
        length: u8,
        /// 24, or 26 with the A bit.
        min: u8,
    },
    /// The Length field is larger than the datagram.
    #[error("length field {length} exceeds the {payload}-byte datagram")]
    LengthTooLarge {
        /// The Length field.
        length: u8,
        /// Bytes received.
        payload: usize,
    },
    /// Detect Mult is zero.
    #[error("detect multiplier is zero")]
    ZeroDetectMult,
    /// The M bit is set.
    #[error("multipoint bit is set")]
    Multipoint,
    /// My Discriminator is zero.
    #[error("my discriminator is zero")]
    ZeroMyDiscriminator,
    /// Your Discriminator is zero while the sender claims to be Init or Up.
    #[error("your discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
    /// Both P and F set (section 4.1 forbids it).
    #[error("both poll and final bits are set")]
    PollAndFinal,
    /// The A bit is clear but the Length field leaves room for more.
    #[error("length field {0} has trailing bytes but the A bit is clear")]
    TrailingWithoutAuth(u8),
    /// Auth Type is not one of 1..=5.
    #[error("authentication type {0} is unknown")]
    UnknownAuthType(u8),
    /// Auth Len is wrong for the Auth Type.
    #[error("authentication length {auth_len} is wrong for {auth_type}")]
    AuthLen {
        /// The Auth Type.
        auth_type: AuthType,
        /// The Auth Len field.
        auth_len: u8,
    },
    /// Auth Len does not match what the Length field leaves.
    #[error(
        "authentication length {auth_len} does not match the {available} bytes after the mandatory section"
    )]
    AuthSectionLen {
        /// The Auth Len field.
        auth_len: u8,
        /// Length field minus 24.
        available: usize,
    },
}

impl ControlPacket {
    /// Encoded length, the Length field.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.auth.as_ref().map_or(0, Auth::wire_len)
    }

    /// Appends the encoded packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push((VERSION << 5) | self.diag.to_u8());
        let mut flags = self.state.to_bits() << 6;
        for (set, bit) in [
            (self.poll, FLAG_POLL),
            (self.final_, FLAG_FINAL),
            (self.control_plane_independent, FLAG_CPI),
            (self.auth.is_some(), FLAG_AUTH),
            (self.demand, FLAG_DEMAND),
            (self.multipoint, FLAG_MULTIPOINT),
        ] {
            if set {
                flags |= bit;
            }
        }
        out.push(flags);
        out.push(self.detect_mult);
        // At most 24 + 28 (or 24 + 19 for a password).
        out.push(self.wire_len() as u8);
        for v in [
            self.my_discriminator,
            self.your_discriminator,
            self.desired_min_tx,
            self.required_min_rx,
            self.required_min_echo_rx,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(a) = &self.auth {
            a.encode_into(out);
        }
    }

    /// The encoded packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.wire_len());
        self.encode_into(&mut v);
        v
    }

    /// Decodes a datagram's payload. Bytes past the Length field are
    /// ignored, as the RFC only requires Length not to exceed the payload.
    pub fn decode(data: &[u8]) -> Result<ControlPacket, DecodeError> {
        if data.len() < HEADER_LEN {
            return Err(DecodeError::Short(data.len()));
        }
        let version = data[0] >> 5;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let flags = data[1];
        let has_auth = flags & FLAG_AUTH != 0;
        let length = data[3];
        let min = if has_auth { 26 } else { 24 };
        if length < min {
            return Err(DecodeError::LengthTooSmall { length, min });
        }
        if usize::from(length) > data.len() {
            return Err(DecodeError::LengthTooLarge {
                length,
                payload: data.len(),
            });
        }
        if !has_auth && usize::from(length) != HEADER_LEN {
            return Err(DecodeError::TrailingWithoutAuth(length));
        }
        let detect_mult = data[2];
        if detect_mult == 0 {
            return Err(DecodeError::ZeroDetectMult);
        }
        if flags & FLAG_MULTIPOINT != 0 {
            return Err(DecodeError::Multipoint);
        }
        let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        let my_discriminator = word(4);
        if my_discriminator == 0 {
            return Err(DecodeError::ZeroMyDiscriminator);
        }
        let state = State::from_bits(flags >> 6);
        let your_discriminator = word(8);
        if your_discriminator == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(DecodeError::ZeroYourDiscriminator(state));
        }
        let poll = flags & FLAG_POLL != 0;
        let final_ = flags & FLAG_FINAL != 0;
        if poll && final_ {
            return Err(DecodeError::PollAndFinal);
        }
        let auth = if has_auth {
            Some(Auth::decode(&data[HEADER_LEN..usize::from(length)])?)
        } else {
            None
        };
        Ok(ControlPacket {
            diag: Diag::from_u8(data[0]),
            state,
            poll,
            final_,
            control_plane_independent: flags & FLAG_CPI != 0,
            demand: flags & FLAG_DEMAND != 0,
            multipoint: false,
            detect_mult,
            my_discriminator,
            your_discriminator,
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
            auth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ControlPacket {
        ControlPacket {
            diag: Diag::None,
            state: State::Down,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            multipoint: false,
            detect_mult: 3,
            my_discriminator: 1,
            your_discriminator: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
            auth: None,
        }
    }

    #[test]
    fn every_section_6_8_6_check_has_its_error() {
        let good = base().encode();
        assert_eq!(ControlPacket::decode(&good).unwrap(), base());
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            ControlPacket::decode(&b).unwrap_err()
        };
        assert_eq!(
            ControlPacket::decode(&good[..23]).unwrap_err(),
            DecodeError::Short(23)
        );
        assert_eq!(with(&|b| b[0] = 0x40), DecodeError::Version(2));
        assert_eq!(
            with(&|b| b[3] = 23),
            DecodeError::LengthTooSmall {
                length: 23,
                min: 24
            }
        );
        assert_eq!(
            with(&|b| b[3] = 25),
            DecodeError::LengthTooLarge {
                length: 25,
                payload: 24
            }
        );
        assert_eq!(
            with(&|b| {
                b[3] = 25;
                b.push(0)
            }),
            DecodeError::TrailingWithoutAuth(25)
        );
        assert_eq!(with(&|b| b[2] = 0), DecodeError::ZeroDetectMult);
        assert_eq!(with(&|b| b[1] |= FLAG_MULTIPOINT), DecodeError::Multipoint);
        assert_eq!(with(&|b| b[4..8].fill(0)), DecodeError::ZeroMyDiscriminator);
        assert_eq!(
            with(&|b| b[1] = State::Up.to_bits() << 6),
            DecodeError::ZeroYourDiscriminator(State::Up)
        );
        assert_eq!(
            with(&|b| b[1] |= FLAG_POLL | FLAG_FINAL),
            DecodeError::PollAndFinal
        );
        assert_eq!(
            with(&|b| {
                b[1] |= FLAG_AUTH;
                b[3] = 25;
            }),
            DecodeError::LengthTooSmall {
                length: 25,
                min: 26
            }
        );
        assert_eq!(
            with(&|b| {
                b[1] |= FLAG_AUTH;
                b[3] = 26;
                b.extend_from_slice(&[9, 2]);
            }),
            DecodeError::UnknownAuthType(9)
        );
        assert_eq!(
            with(&|b| {
                b[1] |= FLAG_AUTH;
                b[3] = 28;
                b.extend_from_slice(&[4, 4, 1, 0]);
            }),
            DecodeError::AuthLen {
                auth_type: AuthType::KeyedSha1,
                auth_len: 4
            }
        );
        assert_eq!(
            with(&|b| {
                b[1] |= FLAG_AUTH;
                b[3] = 29;
                b.extend_from_slice(&[1, 4, 1, b'x', 0]);
            }),
            DecodeError::AuthSectionLen {
                auth_len: 4,
                available: 5
            }
        );
    }

    #[test]
    fn reserved_diag_and_extra_payload() {
        let mut p = base();
        p.diag = Diag::Reserved(31);
        let mut b = p.encode();
        assert_eq!(b[0], 0x3f);
        b.extend_from_slice(&[0xaa; 4]);
        assert_eq!(ControlPacket::decode(&b).unwrap(), p);
    }
}
