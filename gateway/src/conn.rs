//! One WebSocket connection on a shard. What an idle connection holds is
//! deliberately tiny: the socket, a 32-byte decoder, an empty outbound queue
//! and a parked task. Reads borrow the shard's buffer for the duration of a
//! synchronous `recv`; a partial frame is the only thing copied into memory
//! owned by the connection, and that memory is released once consumed.

use crate::inbound::{self, Inbound, Origin};
use crate::metrics::ShardMetrics;
use crate::rate::TokenBucket;
use crate::shard::Shard;
use crate::tls::Stream;
use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWriteExt};
use gochat_proto::bus::{session_event, ConnRef, KafkaMessage, SessionEvent};
use gochat_proto::{kind, Message as _};
use gochat_wscodec::{close_code, close_frame, server_frame, server_text, Message, MessageDecoder, OpCode};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;
use tracing::debug;

/// Close reason (1008) of a connection whose outbound queue overflowed.
const OVERFLOW_REASON: &str = "outbound queue overflow: resync after reconnecting";

/// Room above `gateway.outbound_queue_bytes` that only the resync hint may use.
pub const RESYNC_RESERVE_BYTES: usize = 256;

/// Payload of the resync hint sent to a connection whose queue overflowed.
pub const RESYNC_JSON: &str = r#"{"type":"resync","reason":"slow_consumer"}"#;

/// [`RESYNC_JSON`] as a complete server text frame (FIN + text opcode, 7-bit
/// length). A static, so the queue can recognise the hint by address when it
/// has been written, and queueing it allocates nothing.
static RESYNC_FRAME: [u8; 2 + RESYNC_JSON.len()] = {
    let mut f = [0u8; 2 + RESYNC_JSON.len()];
    f[0] = 0x81;
    f[1] = RESYNC_JSON.len() as u8;
    let json = RESYNC_JSON.as_bytes();
    let mut i = 0;
    while i < json.len() {
        f[2 + i] = json[i];
        i += 1;
    }
    f
};

/// The queued frame (or its unwritten rest) is the resync hint.
fn is_resync(frame: &[u8]) -> bool {
    frame.as_ptr_range().end == RESYNC_FRAME.as_ptr_range().end
}

/// What happened to a push offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued for delivery.
    Queued,
    /// Dropped: the connection is lagging (its resync hint is not written yet).
    Dropped,
    /// Dropped because the queue is full: the connection is now lagging and a
    /// resync hint was queued in its place.
    Resync,
    /// Dropped, and not even the hint fitted: the connection closes with 1008.
    Overflow,
    /// Dropped: the connection is already closing.
    Closing,
}

/// Server-side state of a connection, shared between its task and the shard
/// (push delivery, sweeper). Only ever touched from the owning shard's thread.
pub struct Conn {
    pub id: u64,
    pub user_id: u64,
    out: RefCell<VecDeque<Bytes>>,
    /// Bytes in `out`; every change is mirrored in the shard's
    /// `outbound_queued_bytes` gauge.
    out_bytes: Cell<usize>,
    waker: Cell<Option<Waker>>,
    /// A close the server decided on (code, reason); sent after the queue drains.
    close: Cell<Option<(u16, &'static str)>>,
    /// Shard clock (seconds) of the last frame received.
    last_seen: Cell<u32>,
    /// Shard clock (seconds, + 1; 0 = nothing partial) since which an
    /// incomplete message has been buffered without a message completing.
    partial_since: Cell<u32>,
    /// Unix seconds at which the connection's access token expires (0 =
    /// never); renewed by an `auth` frame, checked by the shard's sweep.
    expires_at: Cell<u32>,
    /// The queue overflowed and a resync hint is queued: pushes are dropped
    /// until the hint has been written. (Lives in what was padding.)
    lagging: Cell<bool>,
    /// Source address, for the per-IP connection count.
    peer: Option<IpAddr>,
}

impl Conn {
    pub fn new(id: u64, user_id: u64, now: u32) -> Self {
        Self {
            id,
            user_id,
            out: RefCell::new(VecDeque::new()),
            out_bytes: Cell::new(0),
            waker: Cell::new(None),
            close: Cell::new(None),
            last_seen: Cell::new(now),
            partial_since: Cell::new(0),
            expires_at: Cell::new(0),
            lagging: Cell::new(false),
            peer: None,
        }
    }

    /// Record the source address (released from the shard's per-IP count on close).
    pub fn with_peer(mut self, peer: Option<IpAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// Queue a frame the gateway generated in reply to this client (pong,
    /// local error); false when the bound would be exceeded, in which case
    /// the queue is dropped and the connection is closed with 1008. These
    /// frames are bounded by what the client itself sends.
    pub fn enqueue(&self, frame: Bytes, limit: usize, metrics: &ShardMetrics) -> bool {
        if self.close.get().is_some() {
            return false;
        }
        if self.out_bytes.get() + frame.len() > limit {
            self.overflow(metrics);
            return false;
        }
        self.push_back(frame, metrics);
        self.wake();
        true
    }

    /// Queue a push (a frame from logic) without ever waiting. When it does
    /// not fit under `limit`, it is dropped, the connection becomes lagging
    /// and a resync hint is queued instead, using up to
    /// [`RESYNC_RESERVE_BYTES`] above the bound; further pushes are dropped
    /// until the hint has been written. Only if even the hint does not fit is
    /// the connection closed with 1008. A single frame larger than the whole
    /// bound is still queued when the queue is empty, so it can always be
    /// delivered on its own.
    pub fn enqueue_push(&self, frame: Bytes, limit: usize, metrics: &ShardMetrics) -> PushOutcome {
        if self.close.get().is_some() {
            return PushOutcome::Closing;
        }
        if self.lagging.get() {
            return PushOutcome::Dropped;
        }
        let queued = self.out_bytes.get();
        if queued == 0 || queued + frame.len() <= limit {
            self.push_back(frame, metrics);
            self.wake();
            return PushOutcome::Queued;
        }
        if queued + RESYNC_FRAME.len() > limit + RESYNC_RESERVE_BYTES {
            self.overflow(metrics);
            return PushOutcome::Overflow;
        }
        self.lagging.set(true);
        self.push_back(Bytes::from_static(&RESYNC_FRAME), metrics);
        self.wake();
        PushOutcome::Resync
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.out_bytes.get()
    }

    /// Pushes are being dropped until the queued resync hint is written.
    pub fn is_lagging(&self) -> bool {
        self.lagging.get()
    }

    pub fn request_close(&self, code: u16, reason: &'static str) {
        if self.close.get().is_none() {
            self.close.set(Some((code, reason)));
        }
        self.wake();
    }

    pub fn last_seen(&self) -> u32 {
        self.last_seen.get()
    }

    /// Seconds an incomplete message has been pending at shard clock
    /// `now` (None when nothing partial is buffered).
    pub fn partial_for(&self, now: u32) -> Option<u32> {
        match self.partial_since.get() {
            0 => None,
            since => Some(now.saturating_sub(since - 1)),
        }
    }

    /// After a read: `partial` = an incomplete message is buffered. Its
    /// clock starts now unless it was already running (a completed message
    /// stops it, see `process`).
    fn note_partial(&self, partial: bool, now: u32) {
        if !partial {
            self.partial_since.set(0);
        } else if self.partial_since.get() == 0 {
            self.partial_since.set(now.saturating_add(1));
        }
    }

    /// Unix seconds at which the access token expires (0 = never).
    pub fn expires_at(&self) -> u32 {
        self.expires_at.get()
    }

    pub fn set_expires_at(&self, unix_secs: u64) {
        self.expires_at.set(unix_secs.min(u32::MAX as u64) as u32);
    }

    /// Throw away everything queued (the connection is closing or gone).
    pub fn discard(&self, metrics: &ShardMetrics) {
        metrics.queued_sub(self.out_bytes.replace(0));
        self.out.borrow_mut().clear();
        self.lagging.set(false);
    }

    /// The queue bound was exceeded: drop the queue and close with 1008.
    fn overflow(&self, metrics: &ShardMetrics) {
        if self.close.get().is_none() {
            metrics.slow_reader_closes.inc();
        }
        self.discard(metrics);
        self.request_close(close_code::POLICY, OVERFLOW_REASON);
    }

    /// Append a frame, accounted but not checked against any bound.
    fn push_back(&self, frame: Bytes, metrics: &ShardMetrics) {
        self.out_bytes.set(self.out_bytes.get() + frame.len());
        metrics.queued_add(frame.len());
        self.out.borrow_mut().push_back(frame);
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn has_out(&self) -> bool {
        !self.out.borrow().is_empty()
    }

    /// Drop `n` written bytes from the front of the queue. Once the resync
    /// hint (and so everything queued before it) is written, the connection
    /// stops lagging and pushes are queued again.
    fn advance(&self, mut n: usize, metrics: &ShardMetrics) {
        let written = n.min(self.out_bytes.get());
        self.out_bytes.set(self.out_bytes.get() - written);
        metrics.queued_sub(written);
        let mut q = self.out.borrow_mut();
        while n > 0 {
            let Some(front) = q.front_mut() else { break };
            if front.len() <= n {
                n -= front.len();
                if is_resync(front) {
                    self.lagging.set(false);
                }
                q.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if q.is_empty() {
            self.lagging.set(false);
            if q.capacity() > 16 {
                *q = VecDeque::new();
            }
        }
    }
}

enum Event {
    Data(usize),
    Outbound,
    Eof,
    Failed(io::Error),
}

/// What reading a buffer of frames decided.
enum Flow {
    Continue,
    /// We close: protocol violation or unsupported data (code, reason).
    Close(u16, String),
    /// The peer sent a close frame (its code, if any).
    PeerClosed(Option<u16>),
}

const IOV_MAX_BATCH: usize = 64;

/// Write as much of the queue as the socket takes, in one `sendmsg` per
/// batch of frames; when the socket is full, wait for it through glommio.
async fn flush(shard: &Shard, stream: &mut Stream, conn: &Conn) -> io::Result<()> {
    let Some(fd) = stream.plain_fd() else { return flush_tls(shard, stream, conn).await };
    loop {
        let sent = {
            let q = conn.out.borrow();
            if q.is_empty() {
                return Ok(());
            }
            let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_MAX_BATCH];
            let mut count = 0;
            for (slot, b) in iov.iter_mut().zip(q.iter()) {
                *slot = libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() };
                count += 1;
            }
            // SAFETY: msghdr is plain data; iov points at `count` live Bytes
            // borrowed from the queue for the duration of the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = count;
            let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if rc >= 0 {
                Ok(rc as usize)
            } else {
                Err(io::Error::last_os_error())
            }
        };
        match sent {
            Ok(n) => {
                shard.metrics.bytes_out.add(n as u64);
                conn.advance(n, &shard.metrics);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Socket buffer full: let glommio park us until it is writable
                // (bounded by the stream's write timeout).
                let front = conn.out.borrow().front().cloned().expect("queue is non-empty");
                let n = stream.write(&front).await?;
                shard.metrics.bytes_out.add(n as u64);
                conn.advance(n, &shard.metrics);
            }
            Err(e) => return Err(e),
        }
    }
}

/// TLS: hand queued frames to rustls (encrypted into its bounded send
/// buffer), write the records out, repeat until the queue is empty.
async fn flush_tls(shard: &Shard, stream: &mut Stream, conn: &Conn) -> io::Result<()> {
    loop {
        let taken = {
            let q = conn.out.borrow();
            let mut taken = 0;
            for b in q.iter() {
                let n = stream.buffer_plain(b)?;
                taken += n;
                if n < b.len() {
                    break;
                }
            }
            taken
        };
        shard.metrics.bytes_out.add(taken as u64);
        conn.advance(taken, &shard.metrics);
        stream.flush().await?;
        if !conn.has_out() {
            return Ok(());
        }
    }
}

/// Decode and act on every complete message in `buf`; returns bytes consumed.
fn process(
    shard: &Shard,
    conn: &Conn,
    decoder: &mut MessageDecoder,
    bucket: &mut TokenBucket,
    buf: &mut [u8],
) -> (usize, Flow) {
    let mut pos = 0;
    loop {
        let decoded = match decoder.decode(&mut buf[pos..]) {
            Ok(Some(d)) => d,
            Ok(None) => return (pos, Flow::Continue),
            Err(e) => {
                shard.metrics.protocol_errors.inc();
                return (pos, Flow::Close(e.close_code(), e.to_string()));
            }
        };
        pos += decoded.consumed;
        let Some(message) = decoded.message else { continue };
        match message {
            Message::Text(text) => {
                shard.metrics.frames_in.inc();
                conn.partial_since.set(0); // a message completed: the frame deadline restarts
                on_text(shard, conn, bucket, text);
            }
            Message::Binary(_) => {
                shard.metrics.protocol_errors.inc();
                return (
                    pos,
                    Flow::Close(close_code::UNSUPPORTED, "binary frames are not supported; send JSON text".into()),
                );
            }
            Message::Ping(payload) => {
                conn.enqueue(server_frame(OpCode::Pong, payload), shard.settings.outbound_queue_bytes, &shard.metrics);
            }
            Message::Pong(_) => {}
            Message::Close(frame) => return (pos, Flow::PeerClosed(frame.map(|f| f.code))),
        }
    }
}

fn on_text(shard: &Shard, conn: &Conn, bucket: &mut TokenBucket, text: &mut [u8]) {
    let origin = Origin { user_id: conn.user_id, gateway_id: &shard.gateway_id, shard: shard.index, conn_id: conn.id };
    match inbound::handle_text(text, &origin, &shard.limits, gochat_common::new_trace_id) {
        Inbound::Reply(json) => {
            if json.as_ref() != inbound::PONG {
                shard.metrics.client_errors.inc();
            }
            shard.metrics.frames_out.inc();
            conn.enqueue(server_text(&json), shard.settings.outbound_queue_bytes, &shard.metrics);
        }
        Inbound::Auth(token) => {
            let json = crate::tokens::reauth(shard, conn, &token);
            shard.metrics.frames_out.inc();
            conn.enqueue(server_text(&json), shard.settings.outbound_queue_bytes, &shard.metrics);
        }
        Inbound::Upstream { key, payload, reference } => {
            let (rate, burst) = (shard.settings.client_messages_per_sec, shard.settings.client_message_burst);
            if let Err(retry_after_ms) = bucket.take(rate, burst, shard.clock_ms()) {
                shard.metrics.rate_limited.inc();
                let json = inbound::rate_limited_json(retry_after_ms, reference.as_deref());
                conn.enqueue(server_text(&json), shard.settings.outbound_queue_bytes, &shard.metrics);
                return;
            }
            match shard.producer.try_send(&shard.settings.upstream_topic, key.as_bytes(), None, payload) {
                Ok(()) => shard.metrics.upstream_records.inc(),
                Err(e) => {
                    shard.metrics.upstream_backpressure.inc();
                    let json = inbound::error_json(
                        "server_busy",
                        &format!("message not accepted, retry later: {e}"),
                        reference.as_deref(),
                    );
                    conn.enqueue(server_text(&json), shard.settings.outbound_queue_bytes, &shard.metrics);
                }
            }
        }
    }
}

/// Drive one upgraded connection until it closes. `pending` holds bytes the
/// client sent right behind its upgrade request.
pub async fn run(shard: Rc<Shard>, mut stream: Stream, conn: Rc<Conn>, mut pending: Vec<u8>) {
    let mut decoder = MessageDecoder::new(shard.settings.max_frame_bytes, shard.settings.max_message_bytes);
    let mut bucket = TokenBucket::full(shard.settings.client_message_burst, shard.clock_ms());
    let mut peer_closed: Option<Option<u16>> = None;
    let mut flow = Flow::Continue;
    if !pending.is_empty() {
        let (used, f) = process(&shard, &conn, &mut decoder, &mut bucket, &mut pending);
        pending.drain(..used);
        flow = f;
    }
    loop {
        match flow {
            Flow::Continue => {}
            Flow::Close(code, ref reason) => {
                debug!(conn_id = conn.id, code, reason = %reason, "closing connection");
                // Replies already queued go out first, then the close frame.
                conn.push_back(close_frame(code, reason), &shard.metrics);
                break;
            }
            Flow::PeerClosed(code) => {
                peer_closed = Some(code);
                break;
            }
        }
        if conn.has_out() && flush(&shard, &mut stream, &conn).await.is_err() {
            break;
        }
        if let Some((code, reason)) = conn.close.get() {
            flow = Flow::Close(code, reason.into());
            continue;
        }
        let event = std::future::poll_fn(|cx| {
            if conn.has_out() || conn.close.get().is_some() {
                return Poll::Ready(Event::Outbound);
            }
            let mut scratch = shard.scratch.borrow_mut();
            match Pin::new(&mut stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) => Poll::Ready(Event::Eof),
                Poll::Ready(Ok(n)) => Poll::Ready(Event::Data(n)),
                Poll::Ready(Err(e)) => Poll::Ready(Event::Failed(e)),
                Poll::Pending => {
                    conn.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            }
        })
        .await;
        conn.waker.take();
        match event {
            Event::Outbound => continue,
            Event::Eof => return finish(&shard, &conn).await,
            Event::Failed(e) => {
                debug!(conn_id = conn.id, error = %e, "read failed");
                return finish(&shard, &conn).await;
            }
            Event::Data(n) => {
                shard.metrics.bytes_in.add(n as u64);
                conn.last_seen.set(shard.clock());
                // Nothing awaits between the read and here, so the shard
                // buffer still holds exactly what this connection read.
                let mut scratch = shard.scratch.borrow_mut();
                if pending.is_empty() {
                    let (used, f) = process(&shard, &conn, &mut decoder, &mut bucket, &mut scratch[..n]);
                    if used < n && matches!(f, Flow::Continue) {
                        pending.extend_from_slice(&scratch[used..n]);
                    }
                    flow = f;
                } else {
                    pending.extend_from_slice(&scratch[..n]);
                    drop(scratch);
                    let (used, f) = process(&shard, &conn, &mut decoder, &mut bucket, &mut pending);
                    pending.drain(..used);
                    if pending.is_empty() {
                        pending = Vec::new(); // give the frame buffer back
                    }
                    flow = f;
                }
                // A message started and not finished has a deadline
                // (gateway.frame_timeout_secs), checked by the sweeper.
                let partial = !pending.is_empty() || !decoder.is_idle();
                conn.note_partial(partial, shard.clock());
            }
        }
    }

    // Close handshake.
    if let Some(code) = peer_closed {
        // Frames already queued (acks, replies) go out before our close reply.
        let echo = code.filter(|c| gochat_wscodec::is_valid_close_code(*c)).unwrap_or(close_code::NORMAL);
        conn.push_back(close_frame(echo, ""), &shard.metrics);
        let _ = flush(&shard, &mut stream, &conn).await;
    } else if flush(&shard, &mut stream, &conn).await.is_ok() {
        // We initiated: stop writing, then give the peer a moment to answer
        // with its close frame (or EOF) before dropping the socket.
        // Boxed: the close phase's state must not enlarge the future every
        // idle connection keeps parked.
        Box::pin(linger(&mut stream)).await;
    }
    finish(&shard, &conn).await
}

/// After our close frame: stop writing and give the peer a moment to answer
/// with its own close frame (or EOF) before the socket is dropped.
async fn linger(stream: &mut Stream) {
    let _ = stream.shutdown_write().await;
    let drain = async {
        let mut sink = [0u8; 64];
        loop {
            match futures_lite::AsyncReadExt::read(stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(Duration::from_secs(2))).await;
}

/// Unregister the connection and tell logic it is gone.
pub async fn finish(shard: &Shard, conn: &Conn) {
    shard.conns.borrow_mut().remove(&conn.id);
    shard.metrics.websockets.dec();
    shard.release_slot(conn.peer);
    conn.discard(&shard.metrics);
    let ev = session_event(shard, conn.user_id, conn.id, session_event::Kind::Disconnect, 0);
    if let Err(e) =
        shard.producer.send(&shard.settings.upstream_topic, format!("u{}", conn.user_id).as_bytes(), None, ev).await
    {
        tracing::warn!(conn_id = conn.id, user_id = conn.user_id, error = %e, "disconnect event not produced");
    }
    debug!(conn_id = conn.id, user_id = conn.user_id, "connection closed");
}

/// Encoded session event for this shard's connection.
pub fn session_event(
    shard: &Shard,
    user_id: u64,
    conn_id: u64,
    event: session_event::Kind,
    token_version: u64,
) -> Bytes {
    let ev = SessionEvent {
        kind: event as i32,
        user_id,
        conn: Some(ConnRef { gateway_id: shard.gateway_id.to_string(), shard: shard.index, conn_id }),
        at_ms: gochat_common::now_ms(),
        token_version,
    };
    KafkaMessage::wrap(kind::SESSION, String::new(), ev).encode_to_vec().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiBackend, ApiRequest, ApiResponse};
    use crate::metrics::ShardMetrics;
    use crate::GatewaySettings;
    use futures_util::future::BoxFuture;
    use std::sync::Arc;

    struct NoApi;
    impl ApiBackend for NoApi {
        fn call(&self, _: ApiRequest) -> BoxFuture<'static, ApiResponse> {
            Box::pin(async { ApiResponse { status: 404, headers: vec![], body: Bytes::new() } })
        }
    }

    fn settings() -> GatewaySettings {
        GatewaySettings {
            gateway_id: "gw0".into(),
            upstream_topic: "im.upstream".into(),
            shards: 1,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            max_content_bytes: 1 << 16,
            outbound_queue_bytes: 1 << 20,
            read_buffer_bytes: 1 << 16,
            max_http_head_bytes: 8192,
            max_http_body_bytes: 1 << 20,
            handshake_timeout_ms: 1000,
            http_body_timeout_ms: 1000,
            idle_timeout_secs: 0,
            frame_timeout_secs: 0,
            client_messages_per_sec: 0,
            client_message_burst: 0,
            public_ops_endpoints: false,
            max_connections_per_ip_per_shard: 0,
            sweep_interval_secs: 30,
            write_timeout_ms: 1000,
            ring_depth: 128,
            max_connections: 10,
        }
    }

    #[test]
    fn resync_hint_is_a_text_frame() {
        assert_eq!(&RESYNC_FRAME[..], &server_text(RESYNC_JSON.as_bytes())[..]);
        let v: serde_json::Value = serde_json::from_str(RESYNC_JSON).unwrap();
        assert_eq!((v["type"].as_str(), v["reason"].as_str()), (Some("resync"), Some("slow_consumer")));
        assert!(RESYNC_FRAME.len() <= RESYNC_RESERVE_BYTES);
    }

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    #[test]
    fn overflowing_push_is_dropped_and_replaced_by_a_resync_hint() {
        let m = ShardMetrics::default();
        let conn = Conn::new(1, 1, 0);
        let limit = 1000;
        for _ in 0..3 {
            assert_eq!(conn.enqueue_push(frame(300), limit, &m), PushOutcome::Queued);
        }
        // 900 + 300 > 1000: dropped, hint queued above the bound.
        assert_eq!(conn.enqueue_push(frame(300), limit, &m), PushOutcome::Resync);
        assert!(conn.is_lagging());
        assert_eq!(conn.queued_bytes(), 900 + RESYNC_FRAME.len());
        // Lagging: even a tiny push is dropped; the queue does not grow.
        assert_eq!(conn.enqueue_push(frame(1), limit, &m), PushOutcome::Dropped);
        assert_eq!(conn.queued_bytes(), 900 + RESYNC_FRAME.len());
        assert!(conn.queued_bytes() <= limit + RESYNC_RESERVE_BYTES);
        assert_eq!(m.outbound_queued_bytes.get(), conn.queued_bytes() as u64);
        assert!(conn.close.get().is_none(), "a slow reader is not closed");

        // A local reply after the hint (bounded by the client's own sends).
        conn.advance(500, &m);
        assert!(conn.enqueue(frame(10), limit, &m));
        assert!(conn.is_lagging(), "the hint is not written yet");
        assert_eq!(conn.enqueue_push(frame(1), limit, &m), PushOutcome::Dropped);
        // Written up to the end of the hint: delivery resumes, although the
        // reply behind it is still queued.
        conn.advance(400 + RESYNC_FRAME.len() - 3, &m);
        assert!(conn.is_lagging());
        conn.advance(3, &m);
        assert!(!conn.is_lagging());
        assert_eq!(conn.queued_bytes(), 10);
        assert_eq!(conn.enqueue_push(frame(300), limit, &m), PushOutcome::Queued);
        assert_eq!(m.outbound_queued_bytes.get(), 310);
        conn.advance(310, &m);
        assert_eq!((conn.queued_bytes(), m.outbound_queued_bytes.get()), (0, 0));
        assert!(!conn.has_out());
    }

    #[test]
    fn overflow_closes_with_1008_when_not_even_the_hint_fits() {
        let m = ShardMetrics::default();
        let conn = Conn::new(1, 1, 0);
        // A frame larger than the whole bound still goes out alone...
        assert_eq!(conn.enqueue_push(frame(5000), 1000, &m), PushOutcome::Queued);
        // ...but then there is no room for a hint.
        assert_eq!(conn.enqueue_push(frame(10), 1000, &m), PushOutcome::Overflow);
        assert_eq!(conn.close.get().map(|c| c.0), Some(close_code::POLICY));
        assert_eq!((conn.queued_bytes(), m.outbound_queued_bytes.get()), (0, 0));
        assert_eq!(conn.enqueue_push(frame(10), 1000, &m), PushOutcome::Closing);
    }

    #[test]
    fn local_replies_keep_closing_on_overflow() {
        let m = ShardMetrics::default();
        let conn = Conn::new(1, 1, 0);
        assert!(conn.enqueue(frame(600), 1000, &m));
        assert!(!conn.enqueue(frame(600), 1000, &m));
        assert_eq!(conn.close.get().map(|c| c.0), Some(close_code::POLICY));
        assert_eq!(m.outbound_queued_bytes.get(), 0);
        // The close frame is accounted like any other frame.
        conn.push_back(close_frame(close_code::POLICY, "x"), &m);
        assert_eq!(m.outbound_queued_bytes.get(), conn.queued_bytes() as u64);
        conn.discard(&m);
        assert_eq!(m.outbound_queued_bytes.get(), 0);
    }

    /// What every idle connection keeps parked: the task's future and its
    /// `Conn`. A regression here multiplies by a million sockets.
    #[test]
    fn idle_connection_state_stays_small() {
        let sizes = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(|| async {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let client = glommio::net::TcpStream::connect(addr).await.unwrap();
                let server = listener.accept().await.unwrap();
                let bus = gochat_common::bus::MemoryBus::new(4);
                bus.create_topic("im.upstream", 1).unwrap();
                let metrics = Arc::new(vec![Arc::new(ShardMetrics::default())]);
                let jwt = gochat_common::auth::JwtKeys::new(&[7u8; 32], 60).unwrap();
                let shard =
                    Rc::new(Shard::new(0, Rc::new(settings()), bus.producer(), jwt, Arc::new(NoApi), metrics, 10));
                let conn = Rc::new(Conn::new(1, 1, 0));
                let fut = run(shard, Stream::Plain(server), conn.clone(), Vec::new());
                let sizes = (std::mem::size_of_val(&fut), std::mem::size_of::<Conn>(), std::mem::size_of::<Stream>());
                drop(fut);
                drop(client);
                sizes
            })
            .unwrap()
            .join()
            .unwrap();
        let (future, conn, stream) = sizes;
        eprintln!("connection future {future} B, Conn {conn} B, TcpStream {stream} B");
        assert!(future <= 640, "the parked connection future grew to {future} bytes");
        // 112 B until the frame deadline (4 B) and the source address for
        // the per-IP cap (17 B) came in; each must stay per connection.
        assert!(conn <= 136, "Conn grew to {conn} bytes");
    }
}
