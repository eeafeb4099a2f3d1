//! Server -> client frames of protocol v1, each serialised once into a
//! refcounted `Utf8Bytes` that every recipient's queue shares.

use axum::extract::ws::Utf8Bytes;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// A u64 id written as a JSON string (protocol v1 ids are strings).
#[derive(Clone, Copy)]
pub struct Id(pub u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn encode<T: Serialize>(v: &T) -> Utf8Bytes {
    serde_json::to_string(v).expect("frames serialise").into()
}

#[derive(Serialize)]
pub struct NewMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub msg_id: Id,
    pub conversation_id: &'a str,
    pub seq: u64,
    pub sender_id: Id,
    pub client_msg_id: &'a str,
    pub content_type: &'a str,
    pub content: &'a RawValue,
    pub ts: i64,
}

pub fn new_message(m: &NewMessage<'_>) -> Utf8Bytes {
    encode(m)
}

#[derive(Serialize)]
struct Ack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    client_msg_id: &'a str,
    msg_id: Id,
    conversation_id: &'a str,
    seq: u64,
    ts: i64,
}

pub fn message_ack(client_msg_id: &str, msg_id: u64, conversation_id: &str, seq: u64, ts: i64) -> Utf8Bytes {
    encode(&Ack { kind: "message-ack", client_msg_id, msg_id: Id(msg_id), conversation_id, seq, ts })
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

pub fn error(code: &str, message: &str, reference: Option<&str>) -> Utf8Bytes {
    encode(&Error { kind: "error", code, message, reference })
}

pub const PONG: &str = r#"{"type":"pong"}"#;
