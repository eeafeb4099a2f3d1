//! The WebSocket endpoint: token check before the upgrade, then one task per
//! connection that reads client frames and writes its bounded queue.

use crate::api::{bearer, parse_id, ApiError, AppState};
use crate::frames::{self, Id, NewMessage};
use crate::state::{lk, now_ms, rd, Conn, State};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State as St};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// GoChat's limits: 1 MiB per frame and per assembled message.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
const MAX_CLIENT_MSG_ID: usize = 64;
const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Queued frames written per batch before the socket is flushed.
const WRITE_BATCH: usize = 256;

pub async fn upgrade(
    St(st): St<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    // The header wins when it is a Bearer header; otherwise ?token=.
    let token =
        bearer(&headers).or_else(|| q.as_deref().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))));
    let Some(user) = token.and_then(|t| st.jwt.verify(t)) else {
        st.metrics.upgrades_unauthorized.fetch_add(1, Relaxed);
        return ApiError::unauthorized().into_response();
    };
    st.metrics.upgrades.fetch_add(1, Relaxed);
    ws.read_buffer_size(st.read_buffer_bytes)
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| conn(st, user, socket))
}

async fn conn(st: AppState, user: u64, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(st.queue_frames);
    let me = Arc::new(Conn::new(st.next_conn_id(), tx));
    st.sessions.add(user, me.clone());
    st.metrics.connections.fetch_add(1, Relaxed);
    loop {
        tokio::select! {
            biased;
            _ = me.kill.notified() => {
                // Slow reader: the queue overflowed. Say why if the socket takes it at once.
                let close = CloseFrame { code: 1008, reason: "outbound queue overflow: resync after reconnecting".into() };
                let _ = tokio::time::timeout(Duration::from_millis(100), socket.send(Message::Close(Some(close)))).await;
                break;
            }
            Some(first) = rx.recv() => {
                // Write what is queued (up to a batch), then flush once.
                let write = async {
                    socket.feed(Message::Text(first)).await?;
                    for _ in 1..WRITE_BATCH {
                        let Ok(f) = rx.try_recv() else { break };
                        socket.feed(Message::Text(f)).await?;
                    }
                    socket.flush().await
                };
                // A write that blocks until the queue overflows ends with the kill.
                let ok = tokio::select! {
                    biased;
                    _ = me.kill.notified() => false,
                    r = write => r.is_ok(),
                };
                if !ok {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    st.metrics.frames_in.fetch_add(1, Relaxed);
                    let reply = handle_text(&st, user, me.id, &t);
                    st.metrics.frames_out.fetch_add(1, Relaxed);
                    let ok = tokio::select! {
                        biased;
                        _ = me.kill.notified() => false,
                        r = socket.send(Message::Text(reply)) => r.is_ok(),
                    };
                    if !ok {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    // Protocol v1 is JSON text only (GoChat closes with 1003).
                    let close = CloseFrame { code: 1003, reason: "binary frames are not supported".into() };
                    let _ = socket.send(Message::Close(Some(close))).await;
                    break;
                }
                // Pings are answered by tungstenite itself; a close is answered
                // on the next poll, which then ends the stream.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    st.sessions.remove(user, me.id);
    st.metrics.connections.fetch_sub(1, Relaxed);
}

fn error(code: &str, message: &str, reference: Option<&str>) -> Utf8Bytes {
    frames::error(code, message, reference)
}

/// One client text frame -> the reply for this connection.
fn handle_text(st: &State, user: u64, conn_id: u64, text: &str) -> Utf8Bytes {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error("invalid_json", &format!("frame is not valid JSON: {e}"), None),
    };
    if !v.is_object() {
        return error("invalid_message", "a frame must be a JSON object with a \"type\"", None);
    }
    match v.get("type").and_then(Value::as_str) {
        Some("ping") => Utf8Bytes::from_static(frames::PONG),
        Some("send-message") => send_message(st, user, conn_id, &v),
        Some("sync") => {
            let r = v.get("conversation_id").and_then(Value::as_str);
            error("unsupported", "the benchmark peer keeps no history: sync is not implemented", r)
        }
        Some(other) => error("unknown_type", &format!("unknown message type {other:?}"), None),
        None => error("invalid_message", "missing string field \"type\"", None),
    }
}

enum Target {
    Group(u64),
    Single { lo: u64, hi: u64 },
}

fn parse_conversation(s: &str) -> Option<Target> {
    if let Some(rest) = s.strip_prefix("g_") {
        return parse_id(rest).map(Target::Group);
    }
    let (a, b) = s.strip_prefix("s_")?.split_once('_')?;
    let (lo, hi) = (parse_id(a)?, parse_id(b)?);
    (lo < hi).then_some(Target::Single { lo, hi })
}

fn non_empty_str(c: &Value, field: &str) -> bool {
    c.get(field).and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

fn validate_content(content_type: &str, c: &Value) -> Result<(), &'static str> {
    if content_type == "text" {
        return if non_empty_str(c, "text") { Ok(()) } else { Err("text content needs a non-empty \"text\" string") };
    }
    if !non_empty_str(c, "url")
        || !non_empty_str(c, "name")
        || !non_empty_str(c, "mime")
        || c.get("size").and_then(Value::as_u64).is_none()
    {
        return Err("image/file content needs \"url\", \"name\", \"mime\" strings and a non-negative integer \"size\"");
    }
    if content_type == "image" && ["width", "height"].iter().any(|d| c.get(d).is_some_and(|v| v.as_u64().is_none())) {
        return Err("image \"width\"/\"height\" must be non-negative integers");
    }
    Ok(())
}

/// Validate, deduplicate, assign the seq, fan out, and return the ack (or error).
fn send_message(st: &State, me: u64, conn_id: u64, v: &Value) -> Utf8Bytes {
    let cmid = match v.get("client_msg_id").and_then(Value::as_str) {
        Some(c) if !c.is_empty() && c.len() <= MAX_CLIENT_MSG_ID => c,
        _ => return error("invalid_message", "client_msg_id must be a string of 1-64 bytes", None),
    };
    let r = Some(cmid);
    let target = match (v.get("conversation_id"), v.get("to_user_id")) {
        (Some(c), None) => match c.as_str().map(parse_conversation) {
            Some(Some(t)) => t,
            _ => return error("invalid_conversation", "conversation_id is malformed or not canonical", r),
        },
        (None, Some(t)) => {
            let Some(peer) = t.as_str().and_then(parse_id) else {
                return error("invalid_message", "to_user_id must be a user id string", r);
            };
            if peer == me {
                return error("invalid_conversation", "cannot send a 1:1 message to yourself", r);
            }
            Target::Single { lo: me.min(peer), hi: me.max(peer) }
        }
        _ => return error("invalid_message", "exactly one of conversation_id or to_user_id is required", r),
    };
    if let Target::Single { lo, hi } = target {
        if me != lo && me != hi {
            return error("not_member", "you are not a member of this conversation", r);
        }
    }
    let content_type = match v.get("content_type").and_then(Value::as_str) {
        Some(t @ ("text" | "image" | "file")) => t,
        _ => return error("invalid_message", "content_type must be \"text\", \"image\" or \"file\"", r),
    };
    let Some(content) = v.get("content").filter(|c| c.is_object()) else {
        return error("invalid_message", "content must be an object", r);
    };
    if let Err(m) = validate_content(content_type, content) {
        return error("invalid_content", m, r);
    }
    // Compact re-encoding, as GoChat stores and forwards it.
    let content = serde_json::value::to_raw_value(content).expect("a JSON value serialises");
    if content.get().len() > MAX_CONTENT_BYTES {
        return error("content_too_large", &format!("content exceeds {MAX_CONTENT_BYTES} bytes"), r);
    }
    let msg = Outgoing { sender: me, origin: conn_id, cmid, content_type, content: &content };
    match target {
        Target::Group(gid) => {
            let Some(g) = st.group(gid) else {
                return error("unknown_conversation", "no such group", r);
            };
            if !g.is_member(me) {
                return error("not_member", "you are not a member of this conversation", r);
            }
            let mut seq = lk(&g.seq);
            deliver(st, &mut seq, &g.conversation_id, &g.members, &msg)
        }
        Target::Single { lo, hi } => {
            let peer = if me == lo { hi } else { lo };
            if !rd(&st.users).exists(peer) {
                return error("unknown_user", "the recipient does not exist", r);
            }
            let cid = format!("s_{lo}_{hi}");
            let mut shard = lk(&st.singles[(lo ^ hi) as usize % st.singles.len()]);
            let seq = shard.entry((lo, hi)).or_insert(0);
            deliver(st, seq, &cid, &[lo, hi], &msg)
        }
    }
}

struct Outgoing<'a> {
    sender: u64,
    origin: u64,
    cmid: &'a str,
    content_type: &'a str,
    content: &'a RawValue,
}

/// Called with the conversation's seq locked, so deliveries leave in seq order.
fn deliver(st: &State, last_seq: &mut u64, conversation_id: &str, members: &[u64], m: &Outgoing<'_>) -> Utf8Bytes {
    let (ack, new_message) = {
        let mut dedup = st.dedup.shard(m.sender);
        if let Some(ack) = dedup.get(m.sender, m.cmid) {
            st.metrics.dedup_hits.fetch_add(1, Relaxed);
            return ack.clone();
        }
        *last_seq += 1;
        let (msg_id, ts, seq) = (st.next_id(), now_ms(), *last_seq);
        let ack = frames::message_ack(m.cmid, msg_id, conversation_id, seq, ts);
        st.dedup.insert(&mut dedup, m.sender, m.cmid, ack.clone());
        let frame = frames::new_message(&NewMessage {
            kind: "new-message",
            msg_id: Id(msg_id),
            conversation_id,
            seq,
            sender_id: Id(m.sender),
            client_msg_id: m.cmid,
            content_type: m.content_type,
            content: m.content,
            ts,
        });
        (ack, frame)
    };
    let n = st.sessions.deliver(members, m.origin, &new_message, &st.metrics);
    st.metrics.messages.fetch_add(1, Relaxed);
    st.metrics.deliveries.fetch_add(n, Relaxed);
    st.metrics.frames_out.fetch_add(n, Relaxed);
    ack
}
