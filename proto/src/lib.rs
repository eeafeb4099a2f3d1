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
    /// A group membership change to record in the group's sequence.
    pub const SYSTEM: &str = "system";
    /// Work for the task tier; header `task` names the kind.
    pub const TASK: &str = "task";
    /// A record logic could not process, with the reason in header `reason`.
    pub const DEAD_LETTER: &str = "dead-letter";
}

/// Headers and kinds of task records (`type` = "task").
pub mod task {
    /// Names the task kind.
    pub const HEADER_TASK: &str = "task";
    /// Identifies a task across its retries (idempotency key).
    pub const HEADER_TASK_ID: &str = "task_id";
    /// 1 for the first run.
    pub const HEADER_ATTEMPT: &str = "attempt";
    /// Unix ms before which a retry must not run.
    pub const HEADER_NOT_BEFORE: &str = "not_before";
    /// Why a record was dead-lettered.
    pub const HEADER_REASON: &str = "reason";
    pub const FANOUT: &str = "fanout";
    pub const OFFLINE_PUSH: &str = "offline_push";
}

impl bus::KafkaMessage {
    /// A first attempt of a task.
    pub fn task(task_kind: &str, task_id: &str, trace_id: String, body: impl prost::Message) -> Self {
        let mut env = Self::wrap(kind::TASK, trace_id, body);
        env.header.insert(task::HEADER_TASK.to_owned(), task_kind.to_owned());
        env.header.insert(task::HEADER_TASK_ID.to_owned(), task_id.to_owned());
        env.header.insert(task::HEADER_ATTEMPT.to_owned(), "1".to_owned());
        env
    }

    pub fn header_value(&self, key: &str) -> Option<&str> {
        self.header.get(key).map(String::as_str)
    }

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
            close: None,
        };
        let env = bus::KafkaMessage::wrap(kind::PUSH, "t1".into(), push.clone());
        let bytes = env.encode_to_vec();
        let back = bus::KafkaMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.kind(), kind::PUSH);
        assert_eq!(back.trace_id, "t1");
        assert_eq!(bus::Push::decode(back.body).unwrap(), push);
    }
}
