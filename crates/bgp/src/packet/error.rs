//! Errors of the BGP codec: NOTIFICATION error codes (RFC 4271 section 4.5 and
//! later RFCs), the session-level decode error that turns into a NOTIFICATION,
//! and the per-attribute errors of RFC 7606 with the action each one demands.

use std::fmt;

/// NOTIFICATION error code (RFC 4271 section 4.5, RFC 7313 for ROUTE-REFRESH,
/// RFC 9687 for the send hold timer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: Message Header Error.
    MessageHeader,
    /// 2: OPEN Message Error.
    OpenMessage,
    /// 3: UPDATE Message Error.
    UpdateMessage,
    /// 4: Hold Timer Expired.
    HoldTimerExpired,
    /// 5: Finite State Machine Error.
    FiniteStateMachine,
    /// 6: Cease.
    Cease,
    /// 7: ROUTE-REFRESH Message Error (RFC 7313).
    RouteRefreshMessage,
    /// 8: Send Hold Timer Expired (RFC 9687): the peer stopped reading.
    SendHoldTimerExpired,
    /// Any code this implementation does not know, kept verbatim.
    Other(u8),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            ErrorCode::MessageHeader => 1,
            ErrorCode::OpenMessage => 2,
            ErrorCode::UpdateMessage => 3,
            ErrorCode::HoldTimerExpired => 4,
            ErrorCode::FiniteStateMachine => 5,
            ErrorCode::Cease => 6,
            ErrorCode::RouteRefreshMessage => 7,
            ErrorCode::SendHoldTimerExpired => 8,
            ErrorCode::Other(v) => v,
        }
    }

    /// Parses the wire value; unknown values become [`ErrorCode::Other`].
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => ErrorCode::MessageHeader,
            2 => ErrorCode::OpenMessage,
            3 => ErrorCode::UpdateMessage,
            4 => ErrorCode::HoldTimerExpired,
            5 => ErrorCode::FiniteStateMachine,
            6 => ErrorCode::Cease,
            7 => ErrorCode::RouteRefreshMessage,
            8 => ErrorCode::SendHoldTimerExpired,
            other => ErrorCode::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::MessageHeader => "message header error",
            ErrorCode::OpenMessage => "OPEN message error",
            ErrorCode::UpdateMessage => "UPDATE message error",
            ErrorCode::HoldTimerExpired => "hold timer expired",
            ErrorCode::FiniteStateMachine => "finite state machine error",
            ErrorCode::Cease => "cease",
            ErrorCode::RouteRefreshMessage => "ROUTE-REFRESH message error",
            ErrorCode::SendHoldTimerExpired => "send hold timer expired",
            ErrorCode::Other(v) => return write!(f, "error code {v}"),
        };
        f.write_str(name)
    }
}

/// Subcodes of [`ErrorCode::MessageHeader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageHeaderError {
    /// Marker is not all ones.
    ConnectionNotSynchronized = 1,
    /// Length outside 19..=4096 or wrong for the type.
    BadMessageLength = 2,
    /// Unknown message type.
    BadMessageType = 3,
}

/// Subcodes of [`ErrorCode::OpenMessage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpenMessageError {
    /// No subcode given.
    Unspecific = 0,
    /// Version is not 4.
    UnsupportedVersionNumber = 1,
    /// The peer's AS is not the configured one.
    BadPeerAs = 2,
    /// BGP identifier is zero or equals ours.
    BadBgpIdentifier = 3,
    /// Optional parameter other than capabilities.
    UnsupportedOptionalParameter = 4,
    /// Hold time 1 or 2 seconds.
    UnacceptableHoldTime = 6,
    /// A required capability is missing (RFC 5492).
    UnsupportedCapability = 7,
}

/// Subcodes of [`ErrorCode::UpdateMessage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum UpdateMessageError {
    /// Lengths of withdrawn routes / attributes do not add up.
    MalformedAttributeList = 1,
    /// Unknown well-known attribute.
    UnrecognizedWellKnownAttribute = 2,
    /// Mandatory attribute missing.
    MissingWellKnownAttribute = 3,
    /// Flags conflict with the attribute type.
    AttributeFlagsError = 4,
    /// Attribute length wrong for its type.
    AttributeLengthError = 5,
    /// ORIGIN value undefined.
    InvalidOriginAttribute = 6,
    /// NEXT_HOP syntactically wrong.
    InvalidNextHopAttribute = 8,
    /// Optional attribute malformed.
    OptionalAttributeError = 9,
    /// NLRI or withdrawn prefix malformed.
    InvalidNetworkField = 10,
    /// AS_PATH malformed.
    MalformedAsPath = 11,
}

/// Subcodes of [`ErrorCode::Cease`] (RFC 4486, RFC 8203).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CeaseSubcode {
    /// Maximum number of prefixes reached.
    MaximumPrefixes = 1,
    /// Administrative shutdown.
    AdministrativeShutdown = 2,
    /// Peer de-configured.
    PeerDeconfigured = 3,
    /// Administrative reset.
    AdministrativeReset = 4,
    /// Connection rejected.
    ConnectionRejected = 5,
    /// Other configuration change.
    OtherConfigurationChange = 6,
    /// Connection collision resolution (RFC 4271 section 6.8).
    ConnectionCollisionResolution = 7,
    /// Out of resources.
    OutOfResources = 8,
    /// The BFD session protecting the BGP session went down (RFC 9384).
    BfdDown = 10,
}

/// A message that cannot be accepted at all: the session must be reset with the
/// NOTIFICATION this error describes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} (subcode {subcode}): {reason}")]
pub struct DecodeError {
    /// NOTIFICATION error code to send.
    pub code: ErrorCode,
    /// NOTIFICATION subcode to send.
    pub subcode: u8,
    /// NOTIFICATION data to send (often the offending field).
    pub data: Vec<u8>,
    /// Human readable description naming the field at fault.
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn header(
        sub: MessageHeaderError,
        data: Vec<u8>,
        reason: impl Into<String>,
    ) -> Self {
        DecodeError {
            code: ErrorCode::MessageHeader,
            subcode: sub as u8,
            data,
            reason: reason.into(),
        }
    }

    pub(crate) fn open(sub: OpenMessageError, data: Vec<u8>, reason: impl Into<String>) -> Self {
        DecodeError {
            code: ErrorCode::OpenMessage,
            subcode: sub as u8,
            data,
            reason: reason.into(),
        }
    }

    pub(crate) fn update(
        sub: UpdateMessageError,
        data: Vec<u8>,
        reason: impl Into<String>,
    ) -> Self {
        DecodeError {
            code: ErrorCode::UpdateMessage,
            subcode: sub as u8,
            data,
            reason: reason.into(),
        }
    }
}

/// An UPDATE that cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The path attributes (as exported, next hop included) leave no room
    /// for the prefix within the largest message the session allows.
    #[error(
        "{prefix}: path attributes of {attrs_len} bytes leave no room for it in a {max}-byte message"
    )]
    AttributesTooLarge {
        /// A prefix that does not fit.
        prefix: ipnet::IpNet,
        /// Bytes the UPDATE takes without its NLRI.
        attrs_len: usize,
        /// The session's message size limit.
        max: usize,
    },
}

/// What RFC 7606 says to do with an UPDATE carrying a bad attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorAction {
    /// Ignore the attribute, use the rest of the UPDATE.
    AttributeDiscard,
    /// Treat every prefix of the UPDATE as withdrawn (RFC 7606 section 2).
    TreatAsWithdraw,
}

/// A recoverable attribute error found while decoding an UPDATE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrError {
    /// Type code of the attribute at fault (0 when an attribute is missing
    /// and `missing` names it).
    pub type_code: u8,
    /// What to do about it.
    pub action: ErrorAction,
    /// Description naming the attribute and the problem.
    pub reason: String,
}
