//! The connection tier of GoChat: WebSocket gateway shards, one glommio
//! executor pinned per core, each with its own SO_REUSEPORT listener. A shard
//! authenticates upgrades locally (JWT), validates client frames and produces
//! them to `im.upstream`, and delivers the pushes of its own partition of
//! `im.push.{gateway_id}` to its own connections, encoding each frame once.
//!
//! Invariants: no locks and no shared maps between shards; the gateway talks
//! to the rest of the system only through the bus and the [`api::ApiBackend`]
//! (never SQL, never the session store); every queue is bounded.

pub mod api;
pub mod conn;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod rate;
pub mod shard;
pub mod tls;
pub mod tokens;

use glommio::{LocalExecutorBuilder, Placement};
use gochat_common::auth::JwtKeys;
use gochat_common::bus::{BusError, Consumer, Producer};
use gochat_common::config::Config;
use metrics::ShardMetrics;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

/// What a shard needs from the configuration.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub gateway_id: String,
    /// Where client sends, syncs and session events are produced.
    pub upstream_topic: String,
    pub shards: usize,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_content_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub read_buffer_bytes: usize,
    pub max_http_head_bytes: usize,
    pub max_http_body_bytes: usize,
    pub handshake_timeout_ms: u64,
    pub http_body_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    pub frame_timeout_secs: u64,
    /// Upstream records (sends, syncs) one connection may produce per
    /// second, sustained (0 = unlimited), and at once.
    pub client_messages_per_sec: u32,
    pub client_message_burst: u32,
    /// Serve /metrics and /readyz on the client port too.
    pub public_ops_endpoints: bool,
    /// Per shard: ⌈gateway.max_connections_per_ip / shards⌉ (0 = no cap).
    pub max_connections_per_ip_per_shard: usize,
    /// Period of the shard's sweep for idle connections and expired tokens.
    pub sweep_interval_secs: u64,
    pub write_timeout_ms: u64,
    pub ring_depth: usize,
    /// Sockets the whole process may hold (split evenly over shards).
    pub max_connections: usize,
}

impl GatewaySettings {
    /// Settings from config; `max_connections` 0 means: open-file limit minus reserve.
    pub fn from_config(cfg: &Config, nofile: u64) -> Self {
        let g = &cfg.gateway;
        let max_connections = if g.max_connections > 0 {
            g.max_connections
        } else {
            (nofile as usize).saturating_sub(g.fd_reserve).max(1)
        };
        Self {
            gateway_id: g.id.clone(),
            upstream_topic: gochat_common::bus::Topics::new(&cfg.kafka.topic_prefix).upstream(),
            shards: cfg.effective_shards(),
            max_frame_bytes: g.max_frame_bytes,
            max_message_bytes: g.max_message_bytes,
            max_content_bytes: cfg.logic.max_content_bytes,
            outbound_queue_bytes: g.outbound_queue_bytes,
            read_buffer_bytes: g.read_buffer_bytes,
            max_http_head_bytes: g.max_http_head_bytes,
            max_http_body_bytes: g.max_http_body_bytes,
            handshake_timeout_ms: g.handshake_timeout_ms,
            http_body_timeout_ms: g.http_body_timeout_ms,
            idle_timeout_secs: g.idle_timeout_secs,
            frame_timeout_secs: g.frame_timeout_secs,
            client_messages_per_sec: g.client_messages_per_sec,
            client_message_burst: g.client_message_burst,
            public_ops_endpoints: g.public_ops_endpoints,
            max_connections_per_ip_per_shard: g.max_connections_per_ip.div_ceil(cfg.effective_shards().max(1)),
            // Default: a quarter of the shorter of the idle and frame deadlines.
            sweep_interval_secs: match g.sweep_interval_secs {
                0 => [g.idle_timeout_secs, g.frame_timeout_secs]
                    .into_iter()
                    .filter(|t| *t > 0)
                    .min()
                    .map_or(30, |t| (t / 4).clamp(1, 30)),
                set => set,
            },
            write_timeout_ms: g.write_timeout_ms,
            ring_depth: g.ring_depth.clamp(16, 32_768),
            max_connections,
        }
    }
}

/// How a shard reaches the bus. Called on the shard's own thread, so each
/// shard can own its clients (one Kafka producer per shard: no client shared
/// between cores).
pub trait ShardBus: Send + Sync + 'static {
    /// The producer shard `shard` sends upstream records with.
    fn producer(&self, shard: u32) -> Result<Arc<dyn Producer>, BusError>;
    /// The consumer of partition `shard` of `im.push.{gateway_id}`.
    fn push_consumer(&self, shard: u32) -> Result<Box<dyn Consumer>, BusError>;
}

/// What the gateway is wired to.
pub struct GatewayDeps {
    pub bus: Arc<dyn ShardBus>,
    pub jwt: JwtKeys,
    pub api: Arc<dyn ApiBackend>,
    /// TLS on the client listener (`gateway.tls_cert_path`); None = plaintext.
    pub tls: Option<Arc<tls::TlsReloader>>,
}

pub use api::ApiBackend;

/// Running shards.
pub struct Gateway {
    pub local_addr: SocketAddr,
    pub metrics: Arc<Vec<Arc<ShardMetrics>>>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("shard {shard} cannot reach the bus: {reason}")]
    Bus { shard: usize, reason: String },
    #[error("cannot start shard {shard}: {reason}")]
    Executor { shard: usize, reason: String },
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock)
}

impl Gateway {
    /// Bind one SO_REUSEPORT listener per shard on `listen` (port 0 picks a
    /// free port, shared by all shards) and start the shards. They run until
    /// `shutdown` becomes true.
    pub fn start(
        settings: GatewaySettings,
        listen: SocketAddr,
        deps: GatewayDeps,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, GatewayError> {
        let shards = settings.shards.max(1);
        let first = bind_reuseport(listen).map_err(|source| GatewayError::Bind { addr: listen, source })?;
        let local_addr = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(listen);
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners
                .push(bind_reuseport(local_addr).map_err(|source| GatewayError::Bind { addr: local_addr, source })?);
        }
        let all_metrics: Arc<Vec<Arc<ShardMetrics>>> =
            Arc::new((0..shards).map(|_| Arc::new(ShardMetrics::default())).collect());
        let per_shard_cap = (settings.max_connections / shards).max(1);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut handles = Vec::with_capacity(shards);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), GatewayError>>();
        for (i, listener) in listeners.into_iter().enumerate() {
            let fd = listener.into_raw_fd();
            let tls = deps.tls.clone();
            let (settings, bus, jwt, api, metrics, shutdown, ready) = (
                settings.clone(),
                deps.bus.clone(),
                deps.jwt.clone(),
                deps.api.clone(),
                all_metrics.clone(),
                shutdown.clone(),
                ready_tx.clone(),
            );
            let handle = LocalExecutorBuilder::new(Placement::Fixed(i % cpus))
                .name(&format!("shard-{i}"))
                .ring_depth(settings.ring_depth)
                .spawn(move || async move {
                    // SAFETY: fd is a bound, listening socket whose ownership moved here.
                    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                    let clients = bus.producer(i as u32).and_then(|p| Ok((p, bus.push_consumer(i as u32)?)));
                    let (producer, push) = match clients {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready.send(Err(GatewayError::Bus { shard: i, reason: e.to_string() }));
                            return;
                        }
                    };
                    let handshake_timeout = std::time::Duration::from_millis(settings.handshake_timeout_ms);
                    let tls = tls.map(|t| tls::ShardTls::new(t, handshake_timeout));
                    let settings = Rc::new(settings);
                    let shard = shard::Shard::new(i as u32, settings, producer, jwt, api, metrics, per_shard_cap);
                    let shard = Rc::new(shard.with_tls(tls));
                    let _ = ready.send(Ok(()));
                    // Dropped now, so a shard that dies during start is noticed.
                    drop(ready);
                    shard::run(shard, listener, push, shutdown).await;
                })
                .map_err(|e| GatewayError::Executor { shard: i, reason: e.to_string() })?;
            handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(GatewayError::Executor { shard: 0, reason: "a shard exited during start".into() })
                }
            }
        }
        info!(addr = %local_addr, shards, tls = deps.tls.is_some(), max_connections = settings.max_connections, per_shard_cap, "gateway listening");
        Ok(Self { local_addr, metrics: all_metrics, handles })
    }

    /// Wait for every shard to finish (after shutdown).
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}
