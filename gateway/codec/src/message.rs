//! Message assembly on top of frame parsing: fragmentation, control frames
//! interleaved between fragments, UTF-8 and close-payload validation.

use crate::error::{is_valid_close_code, ProtocolError};
use crate::frame::{apply_mask, decode_header, OpCode, Role};

/// A complete message. Payloads are already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Guaranteed valid UTF-8. Mutable so a JSON parser (simd-json) can parse in place.
    Text(&'a mut [u8]),
    Binary(&'a mut [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// `None` when the close frame had an empty payload (no status code).
    Close(Option<CloseFrame<'a>>),
}

/// Status code and reason of a received close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: u16,
    pub reason: &'a str,
}

impl<'a> CloseFrame<'a> {
    /// Validate an (unmasked) close payload: empty, or a 2-byte big-endian
    /// valid close code followed by a UTF-8 reason.
    pub fn parse(payload: &'a [u8]) -> Result<Option<Self>, ProtocolError> {
        let Some((code, reason)) = payload.split_first_chunk::<2>() else {
            return if payload.is_empty() { Ok(None) } else { Err(ProtocolError::InvalidClosePayload) };
        };
        let code = u16::from_be_bytes(*code);
        if !is_valid_close_code(code) {
            return Err(ProtocolError::InvalidCloseCode(code));
        }
        let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
        Ok(Some(Self { code, reason }))
    }
}

/// Result of one successful [`MessageDecoder::decode`] step.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of the frame just decoded; drop them from the front of the buffer.
    pub consumed: usize,
    /// `None` when the frame was a non-final fragment of a data message.
    pub message: Option<Message<'a>>,
}

/// A fragmented data message being assembled. Boxed so an idle decoder stays
/// three words plus a role.
#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    data: Vec<u8>,
    /// Prefix of `data` known to be valid UTF-8 (text only); lets each fragment
    /// be validated once as it arrives, with a char split across fragments
    /// carried over instead of rejected.
    utf8_valid_len: usize,
    /// Set once the final fragment arrived and the message was handed out; the
    /// buffer is freed at the start of the next `decode` call.
    complete: bool,
}

/// Turns a stream of frames into messages, per connection.
#[derive(Debug)]
pub struct MessageDecoder {
    role: Role,
    max_frame: usize,
    max_message: usize,
    fragmented: Option<Box<Partial>>,
}

impl MessageDecoder {
    /// Decoder for client frames (the gateway side): frames must be masked.
    ///
    /// `max_frame` bounds a single frame's payload, `max_message` the assembled
    /// message (fragmented or not). The caller's read buffer must be able to
    /// hold `max_frame + MAX_HEADER_LEN` bytes, since a frame is only decoded
    /// once it is entirely buffered.
    pub fn new(max_frame: usize, max_message: usize) -> Self {
        Self::with_role(Role::Server, max_frame, max_message)
    }

    /// Decoder for either side; [`Role::Client`] decodes unmasked server frames.
    pub fn with_role(role: Role, max_frame: usize, max_message: usize) -> Self {
        Self { role, max_frame, max_message, fragmented: None }
    }

    /// True when no fragmented message is in flight (nothing buffered here).
    pub fn is_idle(&self) -> bool {
        self.fragmented.as_ref().is_none_or(|partial| partial.complete)
    }

    #[cfg(test)]
    pub(crate) fn holds_fragment_buffer(&self) -> bool {
        self.fragmented.is_some()
    }

    /// Decode one frame from the front of `buf`, unmasking it in place.
    ///
    /// - `Ok(None)`: `buf` holds no complete frame; nothing was modified. Keep
    ///   the bytes, append more, call again.
    /// - `Ok(Some(d))`: drop `d.consumed` bytes from the front of `buf`.
    ///   `d.message` is set when a whole message (or control frame) is ready.
    ///   Unfragmented and control messages borrow from `buf`; a reassembled
    ///   fragmented message borrows from the decoder and is freed on the next call.
    /// - `Err(e)`: fatal; close with `e.close_code()`. The decoder and `buf`
    ///   are unspecified afterwards.
    ///
    /// Size and sequencing errors are reported from the header alone, before
    /// the payload arrives.
    pub fn decode<'a>(&'a mut self, buf: &'a mut [u8]) -> Result<Option<Decoded<'a>>, ProtocolError> {
        if self.fragmented.as_ref().is_some_and(|partial| partial.complete) {
            self.fragmented = None;
        }
        let Some(header) = decode_header(buf, self.role, self.max_frame)? else {
            return Ok(None);
        };
        let message_too_large = |len: u64| ProtocolError::MessageTooLarge { len, max: self.max_message };
        match (header.opcode, &self.fragmented) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(partial)) => {
                let total = partial.data.len() as u64 + header.payload_len as u64;
                if total > self.max_message as u64 {
                    return Err(message_too_large(total));
                }
            }
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (OpCode::Text | OpCode::Binary, None) if header.payload_len > self.max_message => {
                return Err(message_too_large(header.payload_len as u64));
            }
            _ => {}
        }

        let frame_len = header.frame_len();
        if buf.len() < frame_len {
            return Ok(None);
        }
        let payload = &mut buf[header.header_len..frame_len];
        if let Some(key) = header.mask {
            apply_mask(payload, key, 0);
        }

        let message = match header.opcode {
            OpCode::Ping => Some(Message::Ping(payload)),
            OpCode::Pong => Some(Message::Pong(payload)),
            OpCode::Close => Some(Message::Close(CloseFrame::parse(payload)?)),
            OpCode::Text if header.fin => {
                std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?;
                Some(Message::Text(payload))
            }
            OpCode::Binary if header.fin => Some(Message::Binary(payload)),
            OpCode::Text | OpCode::Binary => {
                let mut partial =
                    Box::new(Partial { opcode: header.opcode, data: Vec::new(), utf8_valid_len: 0, complete: false });
                partial.append(payload, self.max_message)?;
                self.fragmented = Some(partial);
                None
            }
            OpCode::Continuation => {
                let Some(partial) = self.fragmented.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                partial.append(payload, self.max_message)?;
                if header.fin {
                    partial.finish()?;
                    Some(match partial.opcode {
                        OpCode::Text => Message::Text(&mut partial.data),
                        _ => Message::Binary(&mut partial.data),
                    })
                } else {
                    None
                }
            }
        };
        Ok(Some(Decoded { consumed: frame_len, message }))
    }
}

impl Partial {
    /// Append a fragment; the caller already checked the total against `max_message`.
    fn append(&mut self, fragment: &[u8], max_message: usize) -> Result<(), ProtocolError> {
        let needed = self.data.len() + fragment.len();
        if needed > self.data.capacity() {
            // Grow geometrically but never past the limit, so capacity stays
            // bounded by max_message whatever the peer's fragment sizes.
            let target = needed.max(self.data.capacity() * 2).min(max_message).max(needed);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(fragment);
        if self.opcode == OpCode::Text {
            self.validate_utf8_prefix()?;
        }
        Ok(())
    }

    fn validate_utf8_prefix(&mut self) -> Result<(), ProtocolError> {
        match std::str::from_utf8(&self.data[self.utf8_valid_len..]) {
            Ok(_) => self.utf8_valid_len = self.data.len(),
            // error_len() == None: the tail is an incomplete char that the next
            // fragment may finish.
            Err(err) if err.error_len().is_none() => self.utf8_valid_len += err.valid_up_to(),
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ProtocolError> {
        if self.opcode == OpCode::Text && self.utf8_valid_len != self.data.len() {
            return Err(ProtocolError::InvalidUtf8);
        }
        self.complete = true;
        Ok(())
    }
}
