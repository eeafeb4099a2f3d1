//! Feeds arbitrary bytes, delivered in two reads, to a server-side
//! `MessageDecoder` with small limits. Checks it never panics, always makes
//! progress, never touches a partial frame, and upholds message invariants.

#![no_main]

use gochat_wscodec::{Message, MessageDecoder, MAX_CONTROL_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    // Low nibble picks the limits (small, so the size checks are exercised);
    // high nibble picks where the input is split between the two reads.
    let max_frame = 1 + usize::from(control & 0x03) * 64;
    let max_message = max_frame * (1 + usize::from((control >> 2) & 0x03));
    let split = input.len() * usize::from(control >> 4) / 15;

    let mut decoder = MessageDecoder::new(max_frame, max_message);
    let mut buf = Vec::with_capacity(input.len());
    for read in [&input[..split], &input[split..]] {
        buf.extend_from_slice(read);
        let mut pos = 0;
        loop {
            let remaining = buf.len() - pos;
            let before = buf[pos..].to_vec();
            match decoder.decode(&mut buf[pos..]) {
                Err(_) => return,
                Ok(None) => {
                    assert_eq!(&buf[pos..], &before[..], "Ok(None) modified the buffer");
                    break;
                }
                Ok(Some(decoded)) => {
                    assert!(decoded.consumed > 0, "no progress");
                    assert!(decoded.consumed <= remaining, "consumed past the buffer");
                    pos += decoded.consumed;
                    match decoded.message {
                        Some(Message::Text(text)) => {
                            assert!(text.len() <= max_message);
                            assert!(std::str::from_utf8(text).is_ok(), "text is not utf-8");
                        }
                        Some(Message::Binary(data)) => assert!(data.len() <= max_message),
                        Some(Message::Ping(data) | Message::Pong(data)) => {
                            assert!(data.len() <= MAX_CONTROL_PAYLOAD)
                        }
                        Some(Message::Close(_)) | None => {}
                    }
                }
            }
        }
        buf.drain(..pos);
    }
});
