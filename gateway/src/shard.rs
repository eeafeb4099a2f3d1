//! A shard: one glommio executor pinned to one core, with its own
//! SO_REUSEPORT listener, its own connections, its own read buffer, its own
//! push partition and its own metrics. Nothing here is shared with another
//! shard; the connection that a shard accepts lives and dies on it.

use crate::api::{is_hop_by_hop, ApiBackend, ApiRequest};
use crate::conn::{self, Conn, PushOutcome};
use crate::http::{self, RequestHead};
use crate::inbound::InboundLimits;
use crate::metrics::{self, ShardMetrics};
use crate::tls::{ShardTls, Stream};
use crate::GatewaySettings;
use bytes::Bytes;
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use gochat_common::auth::JwtKeys;
use gochat_common::bus::{Consumer, Producer};
use gochat_proto::bus::{session_event, KafkaMessage, Push};
use gochat_proto::{kind, Message as _};
use gochat_wscodec::{close_code, server_text};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Everything one shard owns.
pub struct Shard {
    pub index: u32,
    pub gateway_id: Rc<str>,
    pub settings: Rc<GatewaySettings>,
    pub limits: InboundLimits,
    pub producer: Arc<dyn Producer>,
    pub jwt: JwtKeys,
    pub api: Arc<dyn ApiBackend>,
    pub metrics: Arc<ShardMetrics>,
    /// Every shard's metrics, read-only, for /metrics.
    pub all_metrics: Arc<Vec<Arc<ShardMetrics>>>,
    pub conns: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Read buffer lent to whichever connection is reading right now.
    pub scratch: RefCell<Box<[u8]>>,
    next_conn_id: Cell<u64>,
    /// Sockets open on this shard (HTTP and WebSocket), against `max_open`.
    open: Cell<usize>,
    max_open: usize,
    /// Sockets open per source address, against
    /// `settings.max_connections_per_ip_per_shard` (entries removed at 0).
    per_ip: RefCell<HashMap<IpAddr, u32>>,
    started: Instant,
    /// TLS on the client listener; None = plaintext.
    pub tls: Option<ShardTls>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u32,
        settings: Rc<GatewaySettings>,
        producer: Arc<dyn Producer>,
        jwt: JwtKeys,
        api: Arc<dyn ApiBackend>,
        all_metrics: Arc<Vec<Arc<ShardMetrics>>>,
        max_open: usize,
    ) -> Self {
        // Connection ids never repeat across restarts: start from the clock.
        let first_id = (gochat_common::now_ms() as u64) << 16;
        Self {
            index,
            gateway_id: settings.gateway_id.as_str().into(),
            limits: InboundLimits { max_content_bytes: settings.max_content_bytes },
            scratch: RefCell::new(vec![0u8; settings.read_buffer_bytes].into_boxed_slice()),
            settings,
            producer,
            jwt,
            api,
            metrics: all_metrics[index as usize].clone(),
            all_metrics,
            conns: RefCell::new(HashMap::new()),
            next_conn_id: Cell::new(first_id),
            open: Cell::new(0),
            max_open,
            per_ip: RefCell::new(HashMap::new()),
            started: Instant::now(),
            tls: None,
        }
    }

    /// Terminate TLS on this shard's listener.
    pub fn with_tls(mut self, tls: Option<ShardTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Seconds since the shard started (cheap, coarse clock for idleness).
    pub fn clock(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// Milliseconds since the shard started (rate limits).
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A socket counted against `max_open` (and its source address's
    /// share) closed.
    pub fn release_slot(&self, peer: Option<IpAddr>) {
        self.open.set(self.open.get().saturating_sub(1));
        if let Some(ip) = peer {
            let mut per_ip = self.per_ip.borrow_mut();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }

    /// Count a new socket from `ip`; false when the address holds its share.
    fn take_ip_slot(&self, ip: IpAddr) -> bool {
        let cap = self.settings.max_connections_per_ip_per_shard;
        let mut per_ip = self.per_ip.borrow_mut();
        let n = per_ip.entry(ip).or_insert(0);
        if cap > 0 && *n as usize >= cap {
            return false;
        }
        *n += 1;
        true
    }

    fn next_conn_id(&self) -> u64 {
        let id = self.next_conn_id.get();
        self.next_conn_id.set(id + 1);
        id
    }
}

/// Accept until shutdown, then close every connection with 1001.
pub async fn run(
    shard: Rc<Shard>,
    listener: TcpListener,
    push: Box<dyn Consumer>,
    mut shutdown: watch::Receiver<bool>,
) {
    glommio::spawn_local(push_loop(shard.clone(), push)).detach();
    glommio::spawn_local(idle_sweeper(shard.clone())).detach();
    info!(shard = shard.index, max_connections = shard.max_open, "shard accepting");
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = shutdown.wait_for(|v| *v).await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                if shard.open.get() >= shard.max_open {
                    shard.metrics.refused_at_capacity.inc();
                    if shard.tls.is_none() {
                        let body =
                            http::error_response(503, "over_capacity", "connection limit reached; retry later", false);
                        glommio::spawn_local(refuse(stream, body)).detach();
                    }
                    continue;
                }
                let peer = stream.peer_addr().ok().map(|a| a.ip());
                if peer.is_some_and(|ip| !shard.take_ip_slot(ip)) {
                    shard.metrics.refused_per_ip.inc();
                    // A plaintext answer means nothing to a TLS client: just close.
                    if shard.tls.is_none() {
                        let body = http::error_response(
                            429,
                            "too_many_connections",
                            "too many connections from this address; retry later",
                            false,
                        );
                        glommio::spawn_local(refuse(stream, body)).detach();
                    }
                    continue;
                }
                shard.open.set(shard.open.get() + 1);
                let s = shard.clone();
                glommio::spawn_local(async move {
                    // An upgraded socket lives on in its own task and releases
                    // its slot when it closes (conn::finish).
                    if !serve(s.clone(), stream).await {
                        s.release_slot(peer);
                    }
                })
                .detach();
            }
            Some(Err(e)) => {
                // EMFILE/ENFILE and friends: back off, never crash.
                shard.metrics.accept_errors.inc();
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(shard = shard.index, error = %e, open = shard.open.get(), "accept failed; backing off");
                    last_error_log = Some(Instant::now());
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let conns: Vec<Rc<Conn>> = shard.conns.borrow().values().cloned().collect();
    info!(shard = shard.index, connections = conns.len(), "shard shutting down");
    for c in &conns {
        c.request_close(close_code::GOING_AWAY, "server shutting down");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

async fn refuse(mut stream: TcpStream, body: Vec<u8>) {
    use futures_lite::AsyncWriteExt;
    let _ = futures_lite::future::or(async { stream.write_all(&body).await.ok() }, async {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        None
    })
    .await;
}

/// Deliver pushes from this shard's partition: the frame is encoded once and
/// the same bytes are queued to every local recipient.
async fn push_loop(shard: Rc<Shard>, mut consumer: Box<dyn Consumer>) {
    loop {
        let batch = match consumer.next_batch(256).await {
            Ok(b) => b,
            Err(gochat_common::bus::BusError::Closed) => return,
            Err(e) => {
                warn!(shard = shard.index, error = %e, "push consume failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for rec in batch {
            let push = KafkaMessage::decode(rec.payload)
                .ok()
                .filter(|env| env.kind() == kind::PUSH)
                .and_then(|env| Push::decode(env.body).ok());
            let Some(push) = push else {
                warn!(shard = shard.index, offset = rec.offset, "undecodable push record skipped");
                continue;
            };
            shard.metrics.pushes.inc();
            if let Some(close) = &push.close {
                crate::tokens::kick(&shard, &push.recipients, close);
                continue;
            }
            let frame = server_text(&push.frame);
            let limit = shard.settings.outbound_queue_bytes;
            let mut pressure = false;
            {
                let conns = shard.conns.borrow();
                for r in &push.recipients {
                    let Some(c) = conns.get(&r.conn_id).filter(|c| c.user_id == r.user_id) else {
                        shard.metrics.push_recipients_gone.inc();
                        continue;
                    };
                    // Never waits: a slow reader is dropped from delivery
                    // (and hinted to resync), it never holds up the others.
                    match c.enqueue_push(frame.clone(), limit, &shard.metrics) {
                        PushOutcome::Queued => {
                            shard.metrics.push_deliveries.inc();
                            shard.metrics.frames_out.inc();
                            pressure |= c.queued_bytes() > limit / 2;
                        }
                        PushOutcome::Resync => {
                            shard.metrics.push_dropped.inc();
                            shard.metrics.resync_hints.inc();
                            shard.metrics.frames_out.inc();
                        }
                        PushOutcome::Dropped | PushOutcome::Overflow => shard.metrics.push_dropped.inc(),
                        PushOutcome::Closing => {}
                    }
                }
            }
            if pressure {
                // A recipient's queue is filling up: let the connection tasks
                // write before queueing more of this batch, so a burst does
                // not overflow readers that keep up.
                futures_lite::future::yield_now().await;
            }
        }
        if let Err(e) = consumer.commit().await {
            warn!(shard = shard.index, error = %e, "push offset commit failed");
        }
    }
}

/// Close connections that have been silent longer than the idle timeout
/// (1001), connections whose access token expired (1008 `token expired`),
/// and those with a message started longer ago than the frame timeout (1008
/// `frame timeout`: a client trickling a frame byte by byte keeps
/// `last_seen` fresh but not its partial message), every
/// `sweep_interval_secs`. One pass over the shard's map: no timer per
/// connection.
async fn idle_sweeper(shard: Rc<Shard>) {
    let (idle, frame) = (shard.settings.idle_timeout_secs, shard.settings.frame_timeout_secs);
    let period = Duration::from_secs(shard.settings.sweep_interval_secs.max(1));
    loop {
        glommio::timer::sleep(period).await;
        let now = shard.clock();
        let unix = crate::tokens::unix_now();
        for c in shard.conns.borrow().values() {
            if idle > 0 && now.saturating_sub(c.last_seen()) as u64 >= idle {
                shard.metrics.idle_closes.inc();
                c.request_close(close_code::GOING_AWAY, "idle timeout");
            } else if crate::tokens::expired(c, unix) {
                shard.metrics.token_expired_closes.inc();
                c.request_close(close_code::POLICY, gochat_common::auth::CLOSE_TOKEN_EXPIRED);
            } else if frame > 0 && c.partial_for(now).is_some_and(|s| s as u64 >= frame) {
                shard.metrics.frame_timeouts.inc();
                c.request_close(close_code::POLICY, "frame timeout");
            }
        }
    }
}

/// Read until a full request head is buffered (or the deadline passes).
async fn read_head(shard: &Shard, stream: &mut Stream, buf: &mut Vec<u8>) -> Result<Option<RequestHead>, Vec<u8>> {
    let max = shard.settings.max_http_head_bytes;
    let deadline = Duration::from_millis(shard.settings.handshake_timeout_ms);
    let read = async {
        loop {
            match RequestHead::parse(buf, max) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(http::HttpError::HeadTooLarge(_)) => {
                    return Err(http::error_response(431, "head_too_large", "request head too large", false))
                }
                Err(e) => return Err(http::error_response(400, "bad_request", &e.to_string(), false)),
            }
            let len = buf.len();
            buf.resize(len + 2048, 0);
            let n = stream.read(&mut buf[len..]).await.unwrap_or(0);
            buf.truncate(len + n);
            if n == 0 {
                return Ok(None);
            }
        }
    };
    futures_lite::future::or(read, async {
        glommio::timer::sleep(deadline).await;
        Ok(None)
    })
    .await
}

/// One accepted socket: HTTP/1.1 requests until it upgrades or closes.
/// Returns true when the socket became a WebSocket (now owned by its own task).
async fn serve(shard: Rc<Shard>, tcp: TcpStream) -> bool {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(Duration::from_millis(shard.settings.write_timeout_ms.max(1))));
    let mut stream = match &shard.tls {
        None => Stream::Plain(tcp),
        Some(tls) => match tls.accept(tcp).await {
            Ok(s) => s,
            Err(e) => {
                shard.metrics.tls_handshake_failures.inc();
                debug!(shard = shard.index, error = %e, "tls handshake failed");
                return false;
            }
        },
    };
    shard.metrics.http_connections.inc();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let upgraded = loop {
        let head = match read_head(&shard, &mut stream, &mut buf).await {
            Ok(Some(h)) => h,
            Ok(None) => break None,
            Err(response) => {
                let _ = stream.send(&response).await;
                break None;
            }
        };
        if head.path() == "/ws" {
            break Some(head);
        }
        shard.metrics.http_requests.inc();
        let keep_alive = head.keep_alive();
        let body_len = match head.content_length() {
            Ok(n) if n <= shard.settings.max_http_body_bytes => n,
            Ok(_) => {
                let r = http::error_response(413, "body_too_large", "request body too large", false);
                let _ = stream.send(&r).await;
                break None;
            }
            Err(e) => {
                let r = http::error_response(411, "length_required", &e.to_string(), false);
                let _ = stream.send(&r).await;
                break None;
            }
        };
        match read_body(&shard, &mut stream, &mut buf, head.head_len + body_len).await {
            BodyRead::Complete => {}
            BodyRead::Closed => break None,
            BodyRead::TimedOut => {
                shard.metrics.http_body_timeouts.inc();
                let r = http::error_response(408, "request_timeout", "request body not received in time", false);
                let _ = stream.send(&r).await;
                break None;
            }
        }
        let body = Bytes::copy_from_slice(&buf[head.head_len..head.head_len + body_len]);
        buf.drain(..head.head_len + body_len);
        let response = route(&shard, &head, body, keep_alive).await;
        if stream.send(&response).await.is_err() || !keep_alive {
            break None;
        }
    };
    shard.metrics.http_connections.dec();
    match upgraded {
        Some(head) => upgrade(shard, stream, head, buf).await,
        None => false,
    }
}

/// How reading a request body ended.
enum BodyRead {
    Complete,
    Closed,
    TimedOut,
}

/// Largest step the buffer grows by per read while a body arrives: memory
/// follows the bytes actually received, never the announced Content-Length.
const BODY_READ_STEP: usize = 16 << 10;

/// Read until `buf` holds `total` bytes, within `gateway.http_body_timeout_ms`
/// for the whole body.
async fn read_body(shard: &Shard, stream: &mut Stream, buf: &mut Vec<u8>, total: usize) -> BodyRead {
    let deadline = Duration::from_millis(shard.settings.http_body_timeout_ms);
    let read = async {
        while buf.len() < total {
            let len = buf.len();
            buf.resize(len + (total - len).min(BODY_READ_STEP), 0);
            let n = stream.read(&mut buf[len..]).await.unwrap_or(0);
            buf.truncate(len + n);
            if n == 0 {
                return BodyRead::Closed;
            }
        }
        BodyRead::Complete
    };
    futures_lite::future::or(read, async {
        glommio::timer::sleep(deadline).await;
        BodyRead::TimedOut
    })
    .await
}

/// Plain HTTP: health and metrics here, the rest forwarded to the tokio tier.
async fn route(shard: &Shard, head: &RequestHead, body: Bytes, keep_alive: bool) -> Vec<u8> {
    match (head.method.as_str(), head.path()) {
        ("GET", "/healthz") => http::response(200, "text/plain; charset=utf-8", &[], b"ok\n", keep_alive),
        ("GET", "/metrics") if shard.settings.public_ops_endpoints => {
            let text = metrics::scrape(&shard.gateway_id, &shard.all_metrics, shard.api.as_ref()).await;
            http::response(200, metrics::CONTENT_TYPE, &[], &text, keep_alive)
        }
        (_, "/metrics" | "/readyz") if !shard.settings.public_ops_endpoints => http::error_response(
            404,
            "not_found",
            "operational endpoints are served on gateway.admin_listen",
            keep_alive,
        ),
        _ => match http::api_target(&head.target) {
            Ok(_) => {
                let headers = head.headers.iter().filter(|(n, _)| !is_hop_by_hop(n)).cloned().collect();
                let req = ApiRequest { method: head.method.clone(), target: head.target.clone(), headers, body };
                let resp = shard.api.call(req).await;
                http::response(resp.status, resp.content_type(), &resp.headers, &resp.body, keep_alive)
            }
            Err(e @ http::TargetError::NotApi) => http::error_response(404, "not_found", &e.to_string(), keep_alive),
            Err(e) => {
                shard.metrics.http_bad_targets.inc();
                http::error_response(400, "bad_request", &e.to_string(), keep_alive)
            }
        },
    }
}

/// Authenticate and upgrade; then hand the socket to the connection loop.
async fn upgrade(shard: Rc<Shard>, mut stream: Stream, head: RequestHead, mut buf: Vec<u8>) -> bool {
    let accept = match http::websocket_accept(&head) {
        Ok(a) => a,
        Err(e) => {
            shard.metrics.upgrades_rejected.inc();
            let status = if e == http::UpgradeError::BadVersion { 426 } else { 400 };
            let mut r = http::error_response(status, "bad_upgrade", &e.to_string(), false);
            if status == 426 {
                // Tell the client which version we speak.
                let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                r.splice(at..at, b"\r\nSec-WebSocket-Version: 13".iter().copied());
            }
            let _ = stream.send(&r).await;
            return false;
        }
    };
    let token =
        head.header("authorization").and_then(JwtKeys::bearer).map(str::to_owned).or_else(|| head.query_param("token"));
    let claims = match token.as_deref().map(|t| shard.jwt.verify_claims(t)) {
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            unauthorized(&shard, &mut stream, &e.to_string()).await;
            return false;
        }
        None => {
            unauthorized(&shard, &mut stream, "missing token (Authorization: Bearer or ?token=)").await;
            return false;
        }
    };
    let user_id = claims.user_id;
    let conn_id = shard.next_conn_id();
    // Registered before logic hears of it, so no push can miss it.
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let conn = Rc::new(Conn::new(conn_id, user_id, shard.clock()).with_peer(peer));
    conn.set_expires_at(claims.expires_at);
    shard.conns.borrow_mut().insert(conn_id, conn.clone());
    // Register the session with logic before the client can send anything.
    // Logic checks the token's version (revocation) and the per-user cap.
    let ev = conn::session_event(&shard, user_id, conn_id, session_event::Kind::Connect, claims.version);
    if let Err(e) =
        shard.producer.send(&shard.settings.upstream_topic, format!("u{user_id}").as_bytes(), None, ev).await
    {
        shard.conns.borrow_mut().remove(&conn_id);
        conn.discard(&shard.metrics); // pushes may have arrived meanwhile
        warn!(shard = shard.index, error = %e, "connect event not produced; refusing upgrade");
        let _ = stream.send(&http::error_response(503, "unavailable", "message bus unavailable", false)).await;
        return false;
    }
    shard.metrics.upgrades.inc();
    shard.metrics.websockets.inc();
    if stream.send(http::switching_protocols(&accept).as_slice()).await.is_err() {
        conn::finish(&shard, &conn).await; // releases the slot
        return true;
    }
    debug!(shard = shard.index, conn_id, user_id, "websocket open");
    // Bytes pipelined behind the request head belong to the WebSocket.
    buf.drain(..head.head_len);
    let pending = if buf.is_empty() {
        drop(buf);
        Vec::new()
    } else {
        buf
    };
    // The connection gets a task of its own, sized for the WebSocket loop
    // only: everything the handshake needed is freed with this task.
    glommio::spawn_local(conn::run(shard, stream, conn, pending)).detach();
    true
}

async fn unauthorized(shard: &Shard, stream: &mut Stream, message: &str) {
    shard.metrics.upgrades_unauthorized.inc();
    let _ = stream.send(&http::error_response(401, "unauthorized", message, false)).await;
}
