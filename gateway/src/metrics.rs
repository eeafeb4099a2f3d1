//! Per-shard counters. Each shard owns its [`ShardMetrics`] and is the only
//! writer; `/metrics` reads every shard's atomics at scrape time, so the hot
//! path shares no cache line with another core.

use gochat_common::metrics::{Counter, Gauge, TextEncoder};

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub websockets: Gauge,
    pub http_connections: Gauge,
    pub upgrades: Counter,
    pub upgrades_unauthorized: Counter,
    pub upgrades_rejected: Counter,
    pub refused_at_capacity: Counter,
    pub accept_errors: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub protocol_errors: Counter,
    pub client_errors: Counter,
    pub upstream_records: Counter,
    pub upstream_backpressure: Counter,
    pub pushes: Counter,
    pub push_deliveries: Counter,
    pub push_recipients_gone: Counter,
    pub slow_reader_closes: Counter,
    /// Pushes dropped because their connection was lagging (slow reader).
    pub push_dropped: Counter,
    /// Resync hints queued to connections whose outbound queue overflowed.
    pub resync_hints: Counter,
    /// Bytes queued towards this shard's connections and not yet written.
    /// Written only by the owning shard: see [`ShardMetrics::queued_add`].
    pub outbound_queued_bytes: Gauge,
    pub idle_closes: Counter,
    /// Connections closed (1008) because a started message did not complete in time.
    pub frame_timeouts: Counter,
    /// Sends and syncs refused with `rate_limited` (per-connection bucket).
    pub rate_limited: Counter,
    /// Sockets refused because their source IP holds its share already.
    pub refused_per_ip: Counter,
    /// Connections closed (1008) because their access token expired.
    pub token_expired_closes: Counter,
    /// Connections closed on logic's request (revoked, over the per-user cap).
    pub kicks: Counter,
    /// `auth` frames that renewed a connection's token, and ones refused.
    pub reauths: Counter,
    pub reauth_failures: Counter,
    pub http_requests: Counter,
    /// HTTP requests refused with 400 because their target was not a clean
    /// origin-form path (never forwarded).
    pub http_bad_targets: Counter,
    /// HTTP requests whose body did not arrive within the deadline (408).
    pub http_body_timeouts: Counter,
    /// TLS handshakes that failed or timed out (plaintext on the TLS port included).
    pub tls_handshake_failures: Counter,
}

impl ShardMetrics {
    /// `n` bytes were queued on one of this shard's connections. The shard
    /// is the gauge's only writer, so a plain load and store suffice.
    #[inline]
    pub fn queued_add(&self, n: usize) {
        let g = &self.outbound_queued_bytes;
        g.set(g.get() + n as u64);
    }

    /// `n` queued bytes were written or discarded.
    #[inline]
    pub fn queued_sub(&self, n: usize) {
        let g = &self.outbound_queued_bytes;
        g.set(g.get().saturating_sub(n as u64));
    }
}

/// Render every shard's metrics, labelled by gateway and shard.
/// Content type of a Prometheus text scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A whole scrape: this gateway's families, then the tier's (`GET /metrics`
/// through `api`: in-process logic and task in embedded mode, a logic
/// process in cluster mode), left out if it does not answer 200.
pub async fn scrape(gateway_id: &str, shards: &[std::sync::Arc<ShardMetrics>], api: &dyn crate::ApiBackend) -> Vec<u8> {
    let mut enc = TextEncoder::new();
    render(gateway_id, shards, &mut enc);
    let mut text = enc.finish().into_bytes();
    let tier = api
        .call(crate::api::ApiRequest {
            method: "GET".into(),
            target: "/metrics".into(),
            headers: vec![],
            body: bytes::Bytes::new(),
        })
        .await;
    if tier.status == 200 {
        text.extend_from_slice(&tier.body);
    }
    text
}

pub fn render(gateway_id: &str, shards: &[std::sync::Arc<ShardMetrics>], enc: &mut TextEncoder) {
    type Get = fn(&ShardMetrics) -> u64;
    let rows: &[(&str, &str, &str, Get)] = &[
        ("gochat_gateway_websockets", "gauge", "open WebSocket connections", |m| m.websockets.get()),
        ("gochat_gateway_http_connections", "gauge", "open connections not (yet) upgraded", |m| {
            m.http_connections.get()
        }),
        ("gochat_gateway_upgrades_total", "counter", "successful WebSocket upgrades", |m| m.upgrades.get()),
        ("gochat_gateway_upgrades_unauthorized_total", "counter", "upgrades refused with 401", |m| {
            m.upgrades_unauthorized.get()
        }),
        ("gochat_gateway_upgrades_rejected_total", "counter", "malformed upgrades refused (400/426)", |m| {
            m.upgrades_rejected.get()
        }),
        (
            "gochat_gateway_refused_at_capacity_total",
            "counter",
            "connections refused with 503 at the connection cap",
            |m| m.refused_at_capacity.get(),
        ),
        ("gochat_gateway_accept_errors_total", "counter", "accept() failures (e.g. EMFILE)", |m| m.accept_errors.get()),
        ("gochat_gateway_frames_in_total", "counter", "WebSocket messages received", |m| m.frames_in.get()),
        ("gochat_gateway_frames_out_total", "counter", "WebSocket frames queued to clients", |m| m.frames_out.get()),
        ("gochat_gateway_bytes_in_total", "counter", "bytes read from WebSockets", |m| m.bytes_in.get()),
        ("gochat_gateway_bytes_out_total", "counter", "bytes written to WebSockets", |m| m.bytes_out.get()),
        ("gochat_gateway_protocol_errors_total", "counter", "connections closed for a protocol violation", |m| {
            m.protocol_errors.get()
        }),
        (
            "gochat_gateway_http_bad_targets_total",
            "counter",
            "HTTP requests refused with 400 for a request-target that is not a clean origin-form path",
            |m| m.http_bad_targets.get(),
        ),
        (
            "gochat_gateway_http_body_timeouts_total",
            "counter",
            "HTTP requests answered 408 because their body did not arrive in time",
            |m| m.http_body_timeouts.get(),
        ),
        (
            "gochat_gateway_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or did not finish within gateway.handshake_timeout_ms",
            |m| m.tls_handshake_failures.get(),
        ),
        ("gochat_gateway_client_errors_total", "counter", "error frames sent for invalid client messages", |m| {
            m.client_errors.get()
        }),
        ("gochat_gateway_upstream_records_total", "counter", "records produced to im.upstream", |m| {
            m.upstream_records.get()
        }),
        (
            "gochat_gateway_upstream_backpressure_total",
            "counter",
            "client messages refused because the bus was full",
            |m| m.upstream_backpressure.get(),
        ),
        ("gochat_gateway_pushes_total", "counter", "push records consumed", |m| m.pushes.get()),
        ("gochat_gateway_push_deliveries_total", "counter", "frames queued to recipients from pushes", |m| {
            m.push_deliveries.get()
        }),
        ("gochat_gateway_push_recipients_gone_total", "counter", "push recipients no longer connected", |m| {
            m.push_recipients_gone.get()
        }),
        (
            "gochat_gateway_slow_reader_closes_total",
            "counter",
            "connections closed (1008) for outbound queue overflow",
            |m| m.slow_reader_closes.get(),
        ),
        (
            "gochat_gateway_push_dropped_total",
            "counter",
            "push frames dropped for lagging (slow-reader) connections",
            |m| m.push_dropped.get(),
        ),
        ("gochat_gateway_resync_hints_total", "counter", "resync hints queued to slow readers", |m| {
            m.resync_hints.get()
        }),
        ("gochat_gateway_outbound_queued_bytes", "gauge", "bytes queued towards connections, not yet written", |m| {
            m.outbound_queued_bytes.get()
        }),
        ("gochat_gateway_idle_closes_total", "counter", "connections closed (1001) for idleness", |m| {
            m.idle_closes.get()
        }),
        (
            "gochat_gateway_frame_timeouts_total",
            "counter",
            "connections closed (1008) because a started message was not completed within gateway.frame_timeout_secs",
            |m| m.frame_timeouts.get(),
        ),
        (
            "gochat_gateway_rate_limited_total",
            "counter",
            "sends and syncs refused with rate_limited (gateway.client_messages_per_sec)",
            |m| m.rate_limited.get(),
        ),
        (
            "gochat_gateway_refused_per_ip_total",
            "counter",
            "sockets refused (429) because their source IP reached gateway.max_connections_per_ip",
            |m| m.refused_per_ip.get(),
        ),
        ("gochat_gateway_http_requests_total", "counter", "plain HTTP requests served", |m| m.http_requests.get()),
        ("gochat_gateway_token_expired_closes_total", "counter", "connections closed (1008) at token expiry", |m| {
            m.token_expired_closes.get()
        }),
        (
            "gochat_gateway_kicks_total",
            "counter",
            "connections closed (1008) on logic's request: revoked sessions, per-user cap",
            |m| m.kicks.get(),
        ),
        ("gochat_gateway_reauths_total", "counter", "auth frames that renewed a connection's token", |m| {
            m.reauths.get()
        }),
        ("gochat_gateway_reauth_failures_total", "counter", "auth frames refused", |m| m.reauth_failures.get()),
    ];
    for (name, kind, help, get) in rows {
        enc.family(name, kind, help);
        for (i, m) in shards.iter().enumerate() {
            let shard = i.to_string();
            enc.sample(name, &[("gateway", gateway_id), ("shard", &shard)], get(m));
        }
    }
}
