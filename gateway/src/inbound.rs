//! What a shard does with one client text frame: parse it in place with
//! simd-json, validate it against protocol v1, and turn it into either a
//! direct reply (pong, error) or an upstream bus record. Pure: no I/O, so it
//! is unit-tested without sockets.

use bytes::Bytes;
use gochat_common::convid::ConversationId;
use gochat_proto::bus::{ConnRef, KafkaMessage, SendMessage, SyncRequest};
use gochat_proto::{kind, Message as _};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// Longest accepted client_msg_id, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 64;

/// The outcome of one client message.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Send this JSON text back to the same connection.
    Reply(Bytes),
    /// Produce this record to `im.upstream` keyed by `key`; on backpressure,
    /// answer with an error referencing `reference`.
    Upstream { key: String, payload: Bytes, reference: Option<String> },
    /// `{"type":"auth","token":...}`: renew the connection's access token
    /// (verified by the shard, which answers `auth-ok` or an error).
    Auth(String),
}

/// Limits a shard applies to client messages.
#[derive(Debug, Clone)]
pub struct InboundLimits {
    pub max_content_bytes: usize,
}

/// Who sent the frame.
pub struct Origin<'a> {
    pub user_id: u64,
    pub gateway_id: &'a str,
    pub shard: u32,
    pub conn_id: u64,
}

impl Origin<'_> {
    fn conn_ref(&self) -> ConnRef {
        ConnRef { gateway_id: self.gateway_id.to_owned(), shard: self.shard, conn_id: self.conn_id }
    }
}

pub const PONG: &[u8] = br#"{"type":"pong"}"#;

/// `{"type":"error",...}` as JSON text.
pub fn error_json(code: &str, message: &str, reference: Option<&str>) -> Bytes {
    let mut v = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(r) = reference {
        v["ref"] = serde_json::Value::String(r.to_owned());
    }
    Bytes::from(v.to_string())
}

/// A `rate_limited` error frame: retry after `retry_after_ms`.
pub fn rate_limited_json(retry_after_ms: u64, reference: Option<&str>) -> Bytes {
    let mut v = serde_json::json!({
        "type": "error",
        "code": "rate_limited",
        "message": "too many messages on this connection; retry later",
        "retry_after_ms": retry_after_ms,
    });
    if let Some(r) = reference {
        v["ref"] = serde_json::Value::String(r.to_owned());
    }
    Bytes::from(v.to_string())
}

fn reply_error(code: &str, message: &str, reference: Option<&str>) -> Inbound {
    Inbound::Reply(error_json(code, message, reference))
}

thread_local! {
    static JSON_BUFFERS: std::cell::RefCell<simd_json::Buffers> = std::cell::RefCell::new(simd_json::Buffers::default());
}

/// Handle one text message (valid UTF-8, mutable for in-place parsing).
pub fn handle_text(
    text: &mut [u8],
    origin: &Origin<'_>,
    limits: &InboundLimits,
    trace_id: impl FnOnce() -> String,
) -> Inbound {
    // The parser's scratch buffers are kept per shard thread, not allocated per frame.
    let parsed = JSON_BUFFERS.with(|b| simd_json::to_borrowed_value_with_buffers(text, &mut b.borrow_mut()));
    let value = match parsed {
        Ok(v) => v,
        Err(e) => return reply_error("invalid_json", &format!("frame is not valid JSON: {e}"), None),
    };
    if !value.is_object() {
        return reply_error("invalid_message", "a frame must be a JSON object with a \"type\"", None);
    }
    match value.get_str("type") {
        Some("ping") => Inbound::Reply(Bytes::from_static(PONG)),
        Some("send-message") => send_message(&value, origin, limits, trace_id),
        Some("sync") => sync(&value, origin, trace_id),
        Some("auth") => match value.get_str("token") {
            Some(t) if !t.is_empty() => Inbound::Auth(t.to_owned()),
            _ => reply_error("invalid_message", "auth needs a non-empty string field \"token\"", None),
        },
        Some(other) => reply_error("unknown_type", &format!("unknown message type {other:?}"), None),
        None => reply_error("invalid_message", "missing string field \"type\"", None),
    }
}

fn send_message(
    v: &BorrowedValue<'_>,
    origin: &Origin<'_>,
    limits: &InboundLimits,
    trace_id: impl FnOnce() -> String,
) -> Inbound {
    let cmid = match v.get("client_msg_id").and_then(|c| c.as_str()) {
        Some(c) if !c.is_empty() && c.len() <= MAX_CLIENT_MSG_ID => c,
        _ => return reply_error("invalid_message", "client_msg_id must be a string of 1-64 bytes", None),
    };
    let r = Some(cmid);
    let to_user = v.get("to_user_id");
    let conv = v.get("conversation_id");
    let cid = match (conv, to_user) {
        (Some(c), None) => match c.as_str().map(ConversationId::parse) {
            Some(Ok(cid)) => cid,
            Some(Err(e)) => return reply_error("invalid_conversation", &e.to_string(), r),
            None => return reply_error("invalid_conversation", "conversation_id must be a string", r),
        },
        (None, Some(t)) => {
            let Some(peer) = t.as_str().and_then(|s| s.parse::<u64>().ok()) else {
                return reply_error("invalid_message", "to_user_id must be a user id string", r);
            };
            match ConversationId::single(origin.user_id, peer) {
                Ok(cid) => cid,
                Err(_) => return reply_error("invalid_conversation", "cannot send a 1:1 message to yourself", r),
            }
        }
        _ => return reply_error("invalid_message", "exactly one of conversation_id or to_user_id is required", r),
    };
    if let ConversationId::Single { .. } = cid {
        if cid.peer_of(origin.user_id).is_none() {
            return reply_error("not_member", "you are not a member of this conversation", r);
        }
    }
    let content_type = match v.get_str("content_type") {
        Some(t @ ("text" | "image" | "file")) => t,
        _ => return reply_error("invalid_message", "content_type must be \"text\", \"image\" or \"file\"", r),
    };
    let Some(content) = v.get("content").filter(|c| c.is_object()) else {
        return reply_error("invalid_message", "content must be an object", r);
    };
    if let Err(m) = validate_content(content_type, content) {
        return reply_error("invalid_content", m, r);
    }
    let content_json = content.encode();
    if content_json.len() > limits.max_content_bytes {
        return reply_error("content_too_large", &format!("content exceeds {} bytes", limits.max_content_bytes), r);
    }
    let key = cid.to_string();
    let msg = SendMessage {
        sender_id: origin.user_id,
        origin: Some(origin.conn_ref()),
        client_msg_id: cmid.to_owned(),
        conversation_id: key.clone(),
        to_user_id: 0,
        content_type: content_type.to_owned(),
        content: Bytes::from(content_json),
        received_at_ms: gochat_common::now_ms(),
    };
    let env = KafkaMessage::wrap(kind::SEND, trace_id(), msg);
    Inbound::Upstream { key, payload: env.encode_to_vec().into(), reference: Some(cmid.to_owned()) }
}

fn non_empty_str(c: &BorrowedValue<'_>, field: &str) -> bool {
    c.get_str(field).is_some_and(|s| !s.is_empty())
}

fn validate_content(content_type: &str, c: &BorrowedValue<'_>) -> Result<(), &'static str> {
    match content_type {
        "text" => {
            if non_empty_str(c, "text") {
                Ok(())
            } else {
                Err("text content needs a non-empty \"text\" string")
            }
        }
        _ => {
            if !non_empty_str(c, "url")
                || !non_empty_str(c, "name")
                || !non_empty_str(c, "mime")
                || c.get_u64("size").is_none()
            {
                return Err(
                    "image/file content needs \"url\", \"name\", \"mime\" strings and a non-negative integer \"size\"",
                );
            }
            if content_type == "image" {
                for dim in ["width", "height"] {
                    if c.get(dim).is_some() && c.get_u64(dim).is_none() {
                        return Err("image \"width\"/\"height\" must be non-negative integers");
                    }
                }
            }
            Ok(())
        }
    }
}

fn sync(v: &BorrowedValue<'_>, origin: &Origin<'_>, trace_id: impl FnOnce() -> String) -> Inbound {
    let Some(cid_str) = v.get_str("conversation_id") else {
        return reply_error("invalid_message", "sync needs a conversation_id string", None);
    };
    let cid = match ConversationId::parse(cid_str) {
        Ok(c) => c,
        Err(e) => return reply_error("invalid_conversation", &e.to_string(), Some(cid_str)),
    };
    let after_seq = match v.get("after_seq") {
        None => 0,
        Some(a) => match a.as_u64() {
            Some(n) => n,
            None => return reply_error("invalid_message", "after_seq must be a non-negative integer", Some(cid_str)),
        },
    };
    let limit = match v.get("limit") {
        None => 0,
        Some(l) => match l.as_u64() {
            Some(n) => n.min(u32::MAX as u64) as u32,
            None => return reply_error("invalid_message", "limit must be a non-negative integer", Some(cid_str)),
        },
    };
    let key = cid.to_string();
    let req = SyncRequest {
        user_id: origin.user_id,
        origin: Some(origin.conn_ref()),
        conversation_id: key.clone(),
        after_seq,
        limit,
    };
    let env = KafkaMessage::wrap(kind::SYNC, trace_id(), req);
    Inbound::Upstream { key, payload: env.encode_to_vec().into(), reference: Some(cid_str.to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Origin<'static> = Origin { user_id: 5, gateway_id: "gw0", shard: 1, conn_id: 77 };
    fn limits() -> InboundLimits {
        InboundLimits { max_content_bytes: 64 }
    }
    fn run(s: &str) -> Inbound {
        let mut b = s.as_bytes().to_vec();
        handle_text(&mut b, &O, &limits(), || "trace".into())
    }
    fn error_code(i: &Inbound) -> String {
        match i {
            Inbound::Reply(b) => {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["code"].as_str().unwrap_or("").to_owned()
            }
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[test]
    fn ping_gets_pong() {
        assert_eq!(run(r#"{"type":"ping"}"#), Inbound::Reply(Bytes::from_static(PONG)));
    }

    #[test]
    fn send_to_user_becomes_an_upstream_record_keyed_by_conversation() {
        let i = run(
            r#"{"type":"send-message","client_msg_id":"c-1","to_user_id":"3","content_type":"text","content":{"text":"héllo"}}"#,
        );
        let Inbound::Upstream { key, payload, reference } = i else { panic!("{i:?}") };
        assert_eq!(key, "s_3_5");
        assert_eq!(reference.as_deref(), Some("c-1"));
        let env = KafkaMessage::decode(payload).unwrap();
        assert_eq!(env.kind(), kind::SEND);
        assert_eq!(env.trace_id, "trace");
        let m = SendMessage::decode(env.body).unwrap();
        assert_eq!(m.conversation_id, "s_3_5");
        assert_eq!(m.sender_id, 5);
        assert_eq!(m.origin.unwrap().conn_id, 77);
        let content: serde_json::Value = serde_json::from_slice(&m.content).unwrap();
        assert_eq!(content, serde_json::json!({"text": "héllo"}));
    }

    #[test]
    fn file_and_image_metadata_validated() {
        let ok = run(
            r#"{"type":"send-message","client_msg_id":"f","conversation_id":"s_5_9","content_type":"image","content":{"url":"u","name":"n","size":3,"mime":"image/png","width":2}}"#,
        );
        assert!(matches!(ok, Inbound::Upstream { .. }));
        let bad = run(
            r#"{"type":"send-message","client_msg_id":"f","conversation_id":"s_5_9","content_type":"file","content":{"url":"u","name":"n","mime":"x"}}"#,
        );
        assert_eq!(error_code(&bad), "invalid_content");
        let bad_dim = run(
            r#"{"type":"send-message","client_msg_id":"f","conversation_id":"s_5_9","content_type":"image","content":{"url":"u","name":"n","size":1,"mime":"x","height":-1}}"#,
        );
        assert_eq!(error_code(&bad_dim), "invalid_content");
    }

    #[test]
    fn bad_input_gets_precise_error_codes() {
        assert_eq!(error_code(&run("{not json")), "invalid_json");
        assert_eq!(error_code(&run("[1,2]")), "invalid_message");
        assert_eq!(error_code(&run(r#"{"type":"dance"}"#)), "unknown_type");
        assert_eq!(
            error_code(&run(
                r#"{"type":"send-message","to_user_id":"3","content_type":"text","content":{"text":"x"}}"#
            )),
            "invalid_message"
        );
        assert_eq!(
            error_code(&run(
                r#"{"type":"send-message","client_msg_id":"a","conversation_id":"s_1_2","content_type":"text","content":{"text":"x"}}"#
            )),
            "not_member"
        );
        assert_eq!(
            error_code(&run(
                r#"{"type":"send-message","client_msg_id":"a","to_user_id":"5","content_type":"text","content":{"text":"x"}}"#
            )),
            "invalid_conversation"
        );
        assert_eq!(
            error_code(&run(
                r#"{"type":"send-message","client_msg_id":"a","to_user_id":"3","content_type":"text","content":{"text":"this text is far too long for the tiny test limit of 64 bytes"}}"#
            )),
            "content_too_large"
        );
        assert_eq!(
            error_code(&run(
                r#"{"type":"send-message","client_msg_id":"a","to_user_id":"3","content_type":"video","content":{}}"#
            )),
            "invalid_message"
        );
        assert_eq!(error_code(&run(r#"{"type":"sync","conversation_id":"s_2_1"}"#)), "invalid_conversation");
        assert_eq!(error_code(&run(r#"{"type":"sync","conversation_id":"s_1_5","after_seq":-3}"#)), "invalid_message");
    }

    #[test]
    fn sync_is_forwarded_with_paging() {
        let i = run(r#"{"type":"sync","conversation_id":"s_1_5","after_seq":10,"limit":20}"#);
        let Inbound::Upstream { key, payload, .. } = i else { panic!() };
        assert_eq!(key, "s_1_5");
        let req = SyncRequest::decode(KafkaMessage::decode(payload).unwrap().body).unwrap();
        assert_eq!((req.after_seq, req.limit, req.user_id), (10, 20, 5));
    }
}
