//! Protocol errors and close codes.

/// RFC 6455 section 7.4.1 status codes the gateway sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Endpoint is going away (shard shutdown, navigation away).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Received a data type the endpoint cannot accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// Payload inconsistent with the message type (e.g. invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server-side condition.
    pub const INTERNAL: u16 = 1011;
    /// Server overloaded; client should retry later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// A violation of RFC 6455 (or of our size limits) by the peer.
///
/// Every variant is fatal for the connection: send a close frame with
/// [`ProtocolError::close_code`] and drop the socket.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProtocolError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    #[error("control frame payload longer than 125 bytes")]
    ControlFrameTooLong,
    #[error("unmasked frame from client")]
    UnmaskedFrame,
    #[error("masked frame from server")]
    MaskedFrame,
    #[error("64-bit payload length has its most significant bit set")]
    InvalidPayloadLength,
    #[error("frame payload of {len} bytes exceeds limit of {max}")]
    FrameTooLarge { len: u64, max: usize },
    #[error("message of at least {len} bytes exceeds limit of {max}")]
    MessageTooLarge { len: u64, max: usize },
    #[error("continuation frame without a fragmented message in flight")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in flight")]
    ExpectedContinuation,
    #[error("invalid utf-8 in text message or close reason")]
    InvalidUtf8,
    #[error("close frame payload of 1 byte")]
    InvalidClosePayload,
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// Close code to send back before dropping the connection.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } => close_code::TOO_BIG,
            _ => close_code::PROTOCOL,
        }
    }
}

/// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4).
///
/// 1004-1006 and 1015 are reserved for local use and never go on the wire;
/// 1012-2999 are reserved for future protocol/extension use.
pub fn is_valid_close_code(code: u16) -> bool {
    // 1012-1014 are IANA-registered (service restart, try again later, bad gateway).
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
