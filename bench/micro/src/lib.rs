//! Fixtures shared by the `gochat-bench` criterion benches, and faithful
//! copies of the two production code paths they measure that live in crates
//! too heavy to link into a micro-benchmark:
//!
//! - [`gateway_send_message`]: what `gochat-gateway`'s `inbound::handle_text`
//!   does with a `send-message` frame (simd-json in place, protocol v1
//!   validation, compact re-encode of `content`), minus the protobuf envelope.
//! - [`new_message`]: `gochat-logic`'s `frames::new_message` (serde, ids as
//!   strings, `content` embedded as stored raw JSON).
//!
//! The WebSocket codec (`gochat-wscodec`) is light and is benched directly.
//! Keep these copies in step with the originals when those change.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// The sending user of the fixtures (a realistic snowflake id, > 2^53).
pub const SENDER_ID: u64 = 170_138_718_433_280_000;
/// The recipient of the 1:1 fixtures.
pub const PEER_ID: u64 = 170_138_719_172_608_000;
/// Mask key used for the client frames (any key costs the same).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A short client `send-message` frame (135 B: about the smallest a real
/// client sends with a snowflake `to_user_id`), the common case on the wire.
pub const SMALL_SEND_MESSAGE: &str = r#"{"type":"send-message","client_msg_id":"m-1042","to_user_id":"170138719172608000","content_type":"text","content":{"text":"on my way"}}"#;

/// A typical client `send-message` frame (protocol v1 §3.3): UUID
/// `client_msg_id`, snowflake `to_user_id`, a sentence of text with non-ASCII.
pub const SEND_MESSAGE: &str = r#"{"type":"send-message","client_msg_id":"5f1c9d0e-8a7b-4c1e-9a43-0b8e2f6d7a21","to_user_id":"170138719172608000","content_type":"text","content":{"text":"Running ten minutes late, grab us a table by the window? I'll bring the slides for Thursday 🙂"}}"#;

/// Chat-like filler text: mostly ASCII with some multi-byte UTF-8.
const FILLER: &str = "Here are the notes from today's sync — rollout is at 40 %, p99 latency looks fine, \
                      nothing blocking. Größere Änderungen kommen nächste Woche. 🙂 ";

/// A `send-message` frame whose JSON is exactly `len` bytes (a long text
/// message; 64 KiB is the protocol's `content` limit).
pub fn large_send_message(len: usize) -> Vec<u8> {
    let head = r#"{"type":"send-message","client_msg_id":"5f1c9d0e-8a7b-4c1e-9a43-0b8e2f6d7a21","to_user_id":"170138719172608000","content_type":"text","content":{"text":""#;
    let tail = r#""}}"#;
    let text_len = len.checked_sub(head.len() + tail.len()).expect("len too small for the frame skeleton");
    let mut text = String::with_capacity(text_len);
    while text.len() < text_len {
        for ch in FILLER.chars() {
            if text.len() + ch.len_utf8() > text_len {
                break;
            }
            text.push(ch);
        }
        // Pad with ASCII when the next multi-byte char does not fit.
        if text.len() + FILLER.len() > text_len {
            while text.len() < text_len {
                text.push('.');
            }
        }
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(tail.as_bytes());
    debug_assert_eq!(out.len(), len);
    out
}

// ---------------------------------------------------------------------------
// Client frame parsing (gateway)

/// Longest accepted client_msg_id, in bytes (gateway `inbound::MAX_CLIENT_MSG_ID`).
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Default `logic.max_content_bytes`.
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// What the gateway extracts from a valid `send-message` before wrapping it
/// into the upstream bus record.
#[derive(Debug, PartialEq, Eq)]
pub struct AcceptedSend {
    pub client_msg_id: String,
    /// Canonical conversation id (the bus key).
    pub conversation_id: String,
    pub content_type: String,
    /// `content` re-encoded as compact JSON.
    pub content: String,
}

fn canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// Members `(lo, hi)` of a canonical `s_{lo}_{hi}` id, `None` for groups.
fn parse_conversation(s: &str) -> Result<Option<(u64, u64)>, &'static str> {
    if let Some(rest) = s.strip_prefix("s_") {
        let (a, b) = rest.split_once('_').ok_or("invalid_conversation")?;
        match (canonical_u64(a), canonical_u64(b)) {
            (Some(lo), Some(hi)) if lo < hi => Ok(Some((lo, hi))),
            _ => Err("invalid_conversation"),
        }
    } else if s.strip_prefix("g_").and_then(canonical_u64).is_some() {
        Ok(None)
    } else {
        Err("invalid_conversation")
    }
}

fn non_empty_str(c: &BorrowedValue<'_>, field: &str) -> bool {
    c.get_str(field).is_some_and(|s| !s.is_empty())
}

fn validate_content(content_type: &str, c: &BorrowedValue<'_>) -> Result<(), &'static str> {
    if content_type == "text" {
        return if non_empty_str(c, "text") { Ok(()) } else { Err("invalid_content") };
    }
    if !non_empty_str(c, "url") || !non_empty_str(c, "name") || !non_empty_str(c, "mime") || c.get_u64("size").is_none()
    {
        return Err("invalid_content");
    }
    if content_type == "image" {
        for dim in ["width", "height"] {
            if c.get(dim).is_some() && c.get_u64(dim).is_none() {
                return Err("invalid_content");
            }
        }
    }
    Ok(())
}

/// The gateway's handling of one client text frame carrying a `send-message`
/// (`gochat-gateway` `inbound::handle_text` + `send_message`): parse in place
/// with simd-json into a borrowed DOM, validate against protocol v1 and
/// re-encode `content`. `text` is clobbered, as in the gateway's read buffer.
/// Errors are the protocol error codes.
pub fn gateway_send_message(text: &mut [u8], user_id: u64) -> Result<AcceptedSend, &'static str> {
    let v = simd_json::to_borrowed_value(text).map_err(|_| "invalid_json")?;
    if !v.is_object() {
        return Err("invalid_message");
    }
    if v.get_str("type") != Some("send-message") {
        return Err("unknown_type");
    }
    let cmid = match v.get("client_msg_id").and_then(|c| c.as_str()) {
        Some(c) if !c.is_empty() && c.len() <= MAX_CLIENT_MSG_ID => c,
        _ => return Err("invalid_message"),
    };
    let (lo, hi) = match (v.get("conversation_id"), v.get("to_user_id")) {
        (Some(c), None) => match parse_conversation(c.as_str().ok_or("invalid_conversation")?)? {
            Some((lo, hi)) if lo == user_id || hi == user_id => (lo, hi),
            Some(_) => return Err("not_member"),
            None => return Err("group conversations are not part of this fixture"),
        },
        (None, Some(t)) => {
            let peer = t.as_str().and_then(|s| s.parse::<u64>().ok()).ok_or("invalid_message")?;
            if peer == user_id {
                return Err("invalid_conversation");
            }
            (peer.min(user_id), peer.max(user_id))
        }
        _ => return Err("invalid_message"),
    };
    let content_type = match v.get_str("content_type") {
        Some(t @ ("text" | "image" | "file")) => t,
        _ => return Err("invalid_message"),
    };
    let content = v.get("content").filter(|c| c.is_object()).ok_or("invalid_message")?;
    validate_content(content_type, content)?;
    let content_json = content.encode();
    if content_json.len() > MAX_CONTENT_BYTES {
        return Err("content_too_large");
    }
    Ok(AcceptedSend {
        client_msg_id: cmid.to_owned(),
        conversation_id: format!("s_{lo}_{hi}"),
        content_type: content_type.to_owned(),
        content: content_json,
    })
}

/// A typed view of a text `send-message`, for the serde comparisons.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct SendMessageFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub client_msg_id: String,
    pub to_user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub content_type: String,
    pub content: TextContent,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct TextContent {
    pub text: String,
}

// ---------------------------------------------------------------------------
// Server frame encoding (logic)

/// `gochat-repo`'s `StoredMessage`.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub msg_id: u64,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: u64,
    pub client_msg_id: String,
    pub content_type: String,
    pub content: String,
    pub created_at: i64,
}

/// A stored group text message as the logic pushes it (realistic ids).
pub fn stored_group_message() -> StoredMessage {
    StoredMessage {
        msg_id: 170_138_725_350_817_792,
        conversation_id: "g_170138745112412160".to_owned(),
        seq: 48_213,
        sender_id: SENDER_ID,
        client_msg_id: "5f1c9d0e-8a7b-4c1e-9a43-0b8e2f6d7a21".to_owned(),
        content_type: "text".to_owned(),
        content: r#"{"text":"Running ten minutes late, grab us a table by the window? I'll bring the slides for Thursday 🙂"}"#
            .to_owned(),
        created_at: 1_766_620_800_000,
    }
}

#[derive(Serialize)]
struct MessageView<'a> {
    msg_id: String,
    conversation_id: &'a str,
    seq: u64,
    sender_id: String,
    client_msg_id: &'a str,
    content_type: &'a str,
    content: &'a RawValue,
    ts: i64,
}

fn raw(content: &str) -> &RawValue {
    serde_json::from_str(content).unwrap_or_else(|_| serde_json::from_str("null").expect("static json"))
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: T,
}

/// The `new-message` JSON for `m`, exactly as `gochat-logic`'s
/// `frames::new_message` builds it.
pub fn new_message(m: &StoredMessage) -> Bytes {
    let view = MessageView {
        msg_id: m.msg_id.to_string(),
        conversation_id: &m.conversation_id,
        seq: m.seq,
        sender_id: m.sender_id.to_string(),
        client_msg_id: &m.client_msg_id,
        content_type: &m.content_type,
        content: raw(&m.content),
        ts: m.created_at,
    };
    serde_json::to_vec(&Tagged { kind: "new-message", body: view }).expect("frame serialises").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_wscodec::{client_frame, Message, MessageDecoder, OpCode};

    #[test]
    fn fixtures_have_the_advertised_sizes() {
        assert!((100..=140).contains(&SMALL_SEND_MESSAGE.len()), "{}", SMALL_SEND_MESSAGE.len());
        assert!((150..=300).contains(&SEND_MESSAGE.len()), "{}", SEND_MESSAGE.len());
        for len in [300, 4096, 64 * 1024] {
            let large = large_send_message(len);
            assert_eq!(large.len(), len);
            let v: serde_json::Value = serde_json::from_slice(&large).unwrap();
            assert_eq!(v["type"], "send-message");
        }
    }

    #[test]
    fn gateway_path_accepts_the_fixtures() {
        let mut buf = SEND_MESSAGE.as_bytes().to_vec();
        let ok = gateway_send_message(&mut buf, SENDER_ID).unwrap();
        assert_eq!(ok.conversation_id, format!("s_{SENDER_ID}_{PEER_ID}"));
        assert_eq!(ok.client_msg_id, "5f1c9d0e-8a7b-4c1e-9a43-0b8e2f6d7a21");
        let content: serde_json::Value = serde_json::from_str(&ok.content).unwrap();
        assert!(content["text"].as_str().unwrap().ends_with('🙂'));

        let mut small = SMALL_SEND_MESSAGE.as_bytes().to_vec();
        assert!(gateway_send_message(&mut small, SENDER_ID).is_ok());
        let mut large = large_send_message(64 * 1024);
        assert!(gateway_send_message(&mut large, SENDER_ID).is_ok());
    }

    #[test]
    fn gateway_path_rejects_like_the_gateway() {
        let run = |s: &str| gateway_send_message(&mut s.as_bytes().to_vec(), 5);
        assert_eq!(run("{nope"), Err("invalid_json"));
        assert_eq!(
            run(
                r#"{"type":"send-message","client_msg_id":"a","conversation_id":"s_1_2","content_type":"text","content":{"text":"x"}}"#
            ),
            Err("not_member")
        );
        assert_eq!(
            run(
                r#"{"type":"send-message","client_msg_id":"a","to_user_id":"5","content_type":"text","content":{"text":"x"}}"#
            ),
            Err("invalid_conversation")
        );
        assert_eq!(
            run(
                r#"{"type":"send-message","client_msg_id":"a","conversation_id":"s_3_5","content_type":"text","content":{"text":""}}"#
            ),
            Err("invalid_content")
        );
    }

    #[test]
    fn typed_parsers_agree() {
        let a: SendMessageFrame = serde_json::from_str(SEND_MESSAGE).unwrap();
        let b: SendMessageFrame = simd_json::serde::from_slice(&mut SEND_MESSAGE.as_bytes().to_vec()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_user_id.as_deref(), Some("170138719172608000"));
        assert_eq!(a.conversation_id, None);
    }

    #[test]
    fn new_message_matches_protocol_v1() {
        let json = new_message(&stored_group_message());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["type"], "new-message");
        assert_eq!(v["msg_id"], "170138725350817792");
        assert_eq!(v["sender_id"], SENDER_ID.to_string());
        assert_eq!(v["seq"], 48_213);
        assert!(v["content"]["text"].is_string());
    }

    #[test]
    fn client_frames_decode_back_to_the_fixture() {
        let mut frame = client_frame(OpCode::Text, true, SEND_MESSAGE.as_bytes(), MASK);
        let mut decoder = MessageDecoder::new(1 << 20, 1 << 20);
        let d = decoder.decode(&mut frame).unwrap().unwrap();
        assert_eq!(d.message, Some(Message::Text(&mut SEND_MESSAGE.as_bytes().to_vec())));
    }
}
