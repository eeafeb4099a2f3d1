//! Server -> client JSON of protocol v1, built once per event. Ids are JSON
//! strings; `content` is embedded as the stored raw JSON, never re-parsed.

use bytes::Bytes;
use gochat_repo::StoredMessage;
use serde::Serialize;
use serde_json::value::RawValue;

/// A stored message as protocol v1 shows it (history, sync, new-message).
#[derive(Serialize)]
pub struct MessageView<'a> {
    pub msg_id: String,
    pub conversation_id: &'a str,
    pub seq: u64,
    pub sender_id: String,
    pub client_msg_id: &'a str,
    pub content_type: &'a str,
    pub content: &'a RawValue,
    pub ts: i64,
}

fn raw(content: &str) -> &RawValue {
    // Content was validated as a JSON object before it was stored.
    serde_json::from_str(content).unwrap_or_else(|_| serde_json::from_str("null").expect("static json"))
}

impl<'a> From<&'a StoredMessage> for MessageView<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        Self {
            msg_id: m.msg_id.to_string(),
            conversation_id: &m.conversation_id,
            seq: m.seq,
            sender_id: m.sender_id.to_string(),
            client_msg_id: &m.client_msg_id,
            content_type: &m.content_type,
            content: raw(&m.content),
            ts: m.created_at,
        }
    }
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: T,
}

fn encode<T: Serialize>(kind: &str, body: T) -> Bytes {
    serde_json::to_vec(&Tagged { kind, body }).expect("frame serialises").into()
}

pub fn new_message(m: &StoredMessage) -> Bytes {
    encode("new-message", MessageView::from(m))
}

#[derive(Serialize)]
struct Ack<'a> {
    client_msg_id: &'a str,
    msg_id: String,
    conversation_id: &'a str,
    seq: u64,
    ts: i64,
}

pub fn message_ack(client_msg_id: &str, msg_id: u64, conversation_id: &str, seq: u64, ts: i64) -> Bytes {
    encode("message-ack", Ack { client_msg_id, msg_id: msg_id.to_string(), conversation_id, seq, ts })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

pub fn error(code: &str, message: &str, reference: Option<&str>) -> Bytes {
    encode("error", ErrorBody { code, message, reference })
}

#[derive(Serialize)]
struct SyncResult<'a> {
    conversation_id: &'a str,
    messages: Vec<MessageView<'a>>,
    has_more: bool,
}

pub fn sync_result(conversation_id: &str, messages: &[StoredMessage], has_more: bool) -> Bytes {
    encode(
        "sync-result",
        SyncResult { conversation_id, messages: messages.iter().map(MessageView::from).collect(), has_more },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_ids_as_strings_and_raw_content() {
        let m = StoredMessage {
            msg_id: 123,
            conversation_id: "s_1_2".into(),
            seq: 7,
            sender_id: 1,
            client_msg_id: "c1".into(),
            content_type: "text".into(),
            content: r#"{"text":"hi \"there\""}"#.into(),
            created_at: 1700000000000,
        };
        let v: serde_json::Value = serde_json::from_slice(&new_message(&m)).unwrap();
        assert_eq!(v["type"], "new-message");
        assert_eq!(v["msg_id"], "123");
        assert_eq!(v["sender_id"], "1");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["content"]["text"], "hi \"there\"");
        let a: serde_json::Value = serde_json::from_slice(&message_ack("c1", 123, "s_1_2", 7, 5)).unwrap();
        assert_eq!(
            a,
            serde_json::json!({"type":"message-ack","client_msg_id":"c1","msg_id":"123","conversation_id":"s_1_2","seq":7,"ts":5})
        );
        let e: serde_json::Value = serde_json::from_slice(&error("not_member", "no", None)).unwrap();
        assert!(e.get("ref").is_none());
    }
}
