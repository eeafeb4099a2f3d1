//! Wire format of the GoChat bus: the `KafkaMessage` envelope and the
//! payloads that travel between the gateway shards and the tokio tier
//! (upstream sends and syncs, session events, per-(gateway, shard) pushes).
//! Both the in-process bus and Kafka carry exactly these encoded bytes.

pub mod bus {
    include!(concat!(env!("OUT_DIR"), "/gochat.bus.v1.rs"));
}

pub use prost::Message;

/// Header key naming the payload type inside a [`bus::KafkaMessage`].
pub const HEADER_TYPE: &str = "type";

/// Payload type names carried in the `type` header.
pub mod kind {
    pub const SEND: &str = "send";
    pub const SYNC: &str = "sync";
    pub const SESSION: &str = "session";
    pub const PUSH: &str = "push";
    /// A record logic could not process, with the reason in header `reason`.
    pub const DEAD_LETTER: &str = "dead-letter";
}

impl bus::KafkaMessage {
    /// Wrap an encoded payload with its type and trace id.
    pub fn wrap(kind: &str, trace_id: String, body: impl prost::Message) -> Self {
        let mut header = std::collections::HashMap::with_capacity(1);
        header.insert(HEADER_TYPE.to_owned(), kind.to_owned());
        Self { trace_id, header, body: body.encode_to_vec().into() }
    }

    /// The payload type, or "" when the header is missing.
    pub fn kind(&self) -> &str {
        self.header.get(HEADER_TYPE).map(String::as_str).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_a_push() {
        let push = bus::Push {
            recipients: vec![bus::Recipient { conn_id: 7, user_id: 42 }],
            frame: bytes::Bytes::from_static(br#"{"type":"pong"}"#),
        };
        let env = bus::KafkaMessage::wrap(kind::PUSH, "t1".into(), push.clone());
        let bytes = env.encode_to_vec();
        let back = bus::KafkaMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.kind(), kind::PUSH);
        assert_eq!(back.trace_id, "t1");
        assert_eq!(bus::Push::decode(back.body).unwrap(), push);
    }
}
