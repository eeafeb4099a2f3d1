//! Single-frame parsing, masking and encoding (RFC 6455 section 5.2).

use bytes::Bytes;

use crate::error::ProtocolError;

/// Longest possible frame header: 2 fixed + 8 extended length + 4 mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0F;
const MASK_BIT: u8 = 0x80;
const LEN7_BITS: u8 = 0x7F;
const LEN_16BIT: u8 = 126;
const LEN_64BIT: u8 = 127;

/// Frame opcode. Reserved opcodes (0x3-0x7, 0xB-0xF) are rejected while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Parse the low 4 bits of the first header byte; `None` for reserved opcodes.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// Wire value of the opcode.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// Which side of the connection is decoding, which fixes the masking rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the server decoding client frames: every frame must be masked.
    Server,
    /// We are a client decoding server frames: no frame may be masked.
    Client,
}

/// A parsed and validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: usize,
    /// Bytes the header occupies; the payload starts at this offset.
    pub header_len: usize,
}

impl FrameHeader {
    /// Header plus payload length. Cannot overflow: `payload_len <= max_frame`
    /// was checked against a `usize` and the header is at most 14 bytes, but we
    /// saturate anyway so a huge `max_frame` can never wrap.
    pub fn frame_len(&self) -> usize {
        self.header_len.saturating_add(self.payload_len)
    }
}

/// Parse one frame header at the start of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold the whole header. Validation
/// runs on whatever prefix is present, so a bad first byte or an oversized
/// length is reported without waiting for the rest: RSV1-3 must be 0, reserved
/// opcodes are rejected, control frames must have FIN set and a payload of at
/// most 125 bytes, masking must match `role`, the 64-bit length must have its
/// MSB clear, and `payload_len <= max_frame` ([`ProtocolError::FrameTooLarge`]).
pub fn decode_header(buf: &[u8], role: Role, max_frame: usize) -> Result<Option<FrameHeader>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first & RSV_BITS != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode_bits = first & OPCODE_BITS;
    let opcode = OpCode::from_bits(opcode_bits).ok_or(ProtocolError::ReservedOpCode(opcode_bits))?;
    let fin = first & FIN_BIT != 0;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControlFrame);
    }

    let Some(&second) = buf.get(1) else {
        return Ok(None);
    };
    let masked = second & MASK_BIT != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
        _ => {}
    }
    let len7 = second & LEN7_BITS;
    if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(ProtocolError::ControlFrameTooLong);
    }

    let (payload_len, mut header_len) = match len7 {
        LEN_16BIT => match buf.get(2..).and_then(<[u8]>::first_chunk::<2>) {
            Some(bytes) => (u64::from(u16::from_be_bytes(*bytes)), 4),
            None => return Ok(None),
        },
        LEN_64BIT => match buf.get(2..).and_then(<[u8]>::first_chunk::<8>) {
            Some(bytes) => (u64::from_be_bytes(*bytes), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if payload_len & (1 << 63) != 0 {
        return Err(ProtocolError::InvalidPayloadLength);
    }
    let payload_len = match usize::try_from(payload_len) {
        Ok(len) if len <= max_frame => len,
        _ => return Err(ProtocolError::FrameTooLarge { len: payload_len, max: max_frame }),
    };

    let mask = if masked {
        match buf.get(header_len..).and_then(<[u8]>::first_chunk::<4>) {
            Some(key) => {
                header_len += 4;
                Some(*key)
            }
            None => return Ok(None),
        }
    } else {
        None
    };

    Ok(Some(FrameHeader { fin, opcode, mask, payload_len, header_len }))
}

/// XOR `buf` with the mask `key` in place. `offset` is the position of
/// `buf[0]` within the frame payload, so a payload can be unmasked in chunks.
/// Masking is an involution: applying it twice restores the input.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let key_word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    // Every chunk starts at a multiple of 8 (a multiple of 4) from `buf[0]`,
    // so the same rotated key word applies to each one.
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(*<&[u8; 8]>::try_from(&*chunk).expect("chunks_exact yields 8 bytes"));
        chunk.copy_from_slice(&(word ^ key_word).to_ne_bytes());
    }
    for (byte, key_byte) in chunks.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= key_byte;
    }
}

fn rotate_key(mut key: [u8; 4], offset: usize) -> [u8; 4] {
    key.rotate_left(offset % 4);
    key
}

/// Encode a frame header into `out` and return its length (2..=14).
/// Server-to-client frames pass `mask: None`.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = if fin { FIN_BIT } else { 0 } | opcode.bits();
    let mask_bit = if mask.is_some() { MASK_BIT } else { 0 };
    let mut len = 2;
    if payload_len < usize::from(LEN_16BIT) {
        // Fits in 7 bits by the check above.
        out[1] = mask_bit | payload_len as u8;
    } else if let Ok(len16) = u16::try_from(payload_len) {
        out[1] = mask_bit | LEN_16BIT;
        out[2..4].copy_from_slice(&len16.to_be_bytes());
        len = 4;
    } else {
        out[1] = mask_bit | LEN_64BIT;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        len = 10;
    }
    if let Some(key) = mask {
        out[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    len
}

/// Encode an unmasked, final server frame (header + payload) in one allocation.
///
/// The result is cheap to clone, so a fan-out message is encoded once and the
/// same `Bytes` is queued on every recipient's socket.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut header = [0; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, true, opcode, payload.len(), None);
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// [`server_frame`] with [`OpCode::Text`]; `payload` must be valid UTF-8.
pub fn server_text(payload: &[u8]) -> Bytes {
    server_frame(OpCode::Text, payload)
}

/// Encode a server close frame with status `code` and `reason`, truncating the
/// reason at a char boundary so the payload fits the 125-byte control limit.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut reason_len = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    server_frame(OpCode::Close, &payload[..2 + reason_len])
}

/// Encode a masked client frame with the given key (tests and load generators).
pub fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut header = [0; MAX_HEADER_LEN];
    let header_len = encode_header(&mut header, fin, opcode, payload.len(), Some(mask));
    let mut frame = Vec::with_capacity(header_len + payload.len());
    frame.extend_from_slice(&header[..header_len]);
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[header_len..], mask, 0);
    frame
}
