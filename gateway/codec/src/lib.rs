//! Sans-IO RFC 6455 WebSocket codec: decodes client frames and encodes server
//! frames for the gateway shards; no executor dependency, no allocation for
//! unfragmented frames.
//!
//! # Decoding
//!
//! The gateway owns a read buffer per connection and feeds it to a
//! [`MessageDecoder`]. Frames are unmasked in place, so unfragmented messages
//! and control frames are handed out as slices of that buffer (zero copy).
//! Only a fragmented data message allocates, and only while it is in flight.
//!
//! - [`MessageDecoder::new`]`(max_frame, max_message)` — server side (client
//!   frames must be masked); [`MessageDecoder::with_role`] for the client side.
//! - [`MessageDecoder::decode`]`(&mut self, &mut [u8]) -> Result<Option<Decoded>, ProtocolError>`
//!   — `Ok(None)` means "need more bytes" (the buffer is untouched); otherwise
//!   [`Decoded::consumed`] bytes must be dropped and [`Decoded::message`] holds
//!   a [`Message`] when one is complete.
//! - [`MessageDecoder::is_idle`] — no fragmented message in flight.
//! - A [`ProtocolError`] is fatal: reply with [`ProtocolError::close_code`]
//!   (1002, 1007 or 1009) and drop the connection.
//!
//! ```
//! use gochat_wscodec::{client_frame, Message, MessageDecoder, OpCode};
//!
//! let mut buf = client_frame(OpCode::Text, true, b"hello", [1, 2, 3, 4]);
//! buf.extend(client_frame(OpCode::Ping, true, b"p", [5, 6, 7, 8]));
//! buf.extend(&client_frame(OpCode::Binary, true, b"tail", [9, 9, 9, 9])[..3]); // partial
//!
//! let mut decoder = MessageDecoder::new(64 * 1024, 1024 * 1024);
//! let mut pos = 0;
//! let mut seen = Vec::new();
//! loop {
//!     match decoder.decode(&mut buf[pos..])? {
//!         None => break, // keep buf[pos..], append more bytes from the socket
//!         Some(decoded) => {
//!             pos += decoded.consumed;
//!             if let Some(message) = decoded.message {
//!                 seen.push(format!("{message:?}"));
//!             }
//!         }
//!     }
//! }
//! buf.drain(..pos);
//! assert_eq!(seen.len(), 2);
//! assert_eq!(buf.len(), 3);
//! # Ok::<(), gochat_wscodec::ProtocolError>(())
//! ```
//!
//! Lower level: [`decode_header`] parses and validates one header (reporting
//! oversized or malformed frames before their payload arrives) and
//! [`apply_mask`] unmasks a payload, optionally in chunks.
//!
//! # Encoding
//!
//! - [`server_frame`], [`server_text`], [`close_frame`] build a complete
//!   unmasked frame in one allocation as [`bytes::Bytes`], so a fan-out frame
//!   is encoded once and shared by every recipient.
//! - [`encode_header`] writes just a header (2..=14 bytes) for vectored writes.
//! - [`client_frame`] builds a masked client frame (tests, load generators).

#![forbid(unsafe_code)]

mod error;
mod frame;
mod message;

pub use error::{close_code, is_valid_close_code, ProtocolError};
pub use frame::{
    apply_mask, client_frame, close_frame, decode_header, encode_header, server_frame, server_text, FrameHeader,
    OpCode, Role, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
pub use message::{CloseFrame, Decoded, Message, MessageDecoder};

#[cfg(test)]
mod tests;
