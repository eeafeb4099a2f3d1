//! Configuration of every `gochat` role. Precedence, lowest first: built-in
//! defaults, a TOML file (`--config`), `GOCHAT_*` environment variables
//! (`__` separates sections: `GOCHAT_GATEWAY__MAX_FRAME_BYTES=65536`), then
//! command-line flags. Every knob and its default is listed in
//! docs/configuration.md; keep the two in step.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::telemetry::LogFormat;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the public port: /ws, REST and /healthz (operational
    /// endpoints are on `gateway.admin_listen`).
    pub listen: SocketAddr,
    /// Where embedded mode keeps its SQLite database and dev JWT secret.
    pub data_dir: PathBuf,
    /// Gateway shards (one glommio executor pinned per core); 0 = one per core.
    pub shards: usize,
    /// Snowflake worker id of this process (0..=1023), unique per live process.
    pub worker_id: u16,
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
    pub logic: LogicConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub repo: RepoConfig,
    pub task: TaskConfig,
    pub moderation: ModerationConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Identity of this gateway; its push topic is `im.push.{id}`.
    pub id: String,
    /// Largest single WebSocket frame accepted from a client (close 1009 above).
    pub max_frame_bytes: usize,
    /// Largest assembled WebSocket message (across fragments).
    pub max_message_bytes: usize,
    /// Bytes queued towards one connection before it counts as a slow reader:
    /// further pushes are dropped and it gets a `resync` hint (docs/protocol.md).
    pub outbound_queue_bytes: usize,
    /// Connections the whole process accepts; 0 = derive from the open-file
    /// limit (limit minus `fd_reserve`). Above it upgrades get HTTP 503.
    pub max_connections: usize,
    /// File descriptors kept free for the database, the bus and logs.
    pub fd_reserve: usize,
    /// Per-shard read buffer, borrowed by whichever connection is reading.
    pub read_buffer_bytes: usize,
    /// Largest HTTP request head (request line + headers).
    pub max_http_head_bytes: usize,
    /// Largest REST request body.
    pub max_http_body_bytes: usize,
    /// Time allowed to send a complete HTTP request head.
    pub handshake_timeout_ms: u64,
    /// Time allowed to send a whole REST request body once its head arrived
    /// (408 after it). The gateway's buffer grows with the bytes received,
    /// never ahead of them.
    pub http_body_timeout_ms: u64,
    /// A WebSocket that sends nothing (not even a ping) for this long is closed (1001).
    pub idle_timeout_secs: u64,
    /// A WebSocket message that was started (a partial frame or fragment
    /// buffered) must be completed within this long, however steadily its
    /// bytes trickle in, else the connection is closed (1008). 0 disables.
    pub frame_timeout_secs: u64,
    /// Sends and syncs one WebSocket may make per second, sustained (0 =
    /// unlimited); beyond it the client gets `rate_limited` with
    /// `retry_after_ms` and nothing is produced.
    pub client_messages_per_sec: u32,
    /// How many of them at once (a reconnect syncing many conversations).
    pub client_message_burst: u32,
    /// Connections one source IP address may hold on this gateway process,
    /// enforced by each shard for its share (⌈max / shards⌉; shards share
    /// nothing). Over it the socket gets 429 `too_many_connections` and is
    /// closed. 0 disables.
    pub max_connections_per_ip: usize,
    /// Period of each shard's sweep, which closes idle connections and
    /// connections whose access token expired (1008 "token expired"); 0 =
    /// idle_timeout_secs / 4, within 1..=30 (30 without an idle timeout).
    pub sweep_interval_secs: u64,
    /// A write that cannot make progress for this long drops the connection
    /// (a peer that stopped reading entirely).
    pub write_timeout_ms: u64,
    /// io_uring submission-queue depth of each shard. The kernel sizes the
    /// ring's cancellation hash table from it (ilog2(2 x depth) - 5 bits,
    /// 8 at most): every armed poll (one per open connection) sits in that
    /// table, and every cancellation scans a bucket, so a deep ring keeps
    /// cancels cheap with tens of thousands of sockets.
    pub ring_depth: usize,
    /// Records buffered per push partition in embedded mode.
    pub push_queue_records: usize,
    /// Cluster mode: base URL of a logic process's REST API, where the
    /// gateway forwards `/api/*`, `/readyz` and the logic half of `/metrics`.
    pub api_upstream: String,
    /// Cluster mode: largest REST response the gateway relays from logic;
    /// a larger one is answered 502 `bad_gateway`.
    pub max_api_response_bytes: usize,
    /// The operational listener: `/metrics` (the gateway's and the tier's
    /// families), `/readyz` and `/healthz`. Loopback by default: scrape it
    /// locally or bind a private interface; it is never the client port.
    pub admin_listen: SocketAddr,
    /// Also answer `/metrics` and `/readyz` on the public client port (off:
    /// 404 there). Only for setups where the client port is itself private.
    pub public_ops_endpoints: bool,
    /// PEM certificate chain (leaf first) of the client listener; with
    /// `tls_key_path` the gateway serves only TLS (`wss://`, `https://`).
    /// Empty = plaintext. Both files are re-read on SIGHUP.
    pub tls_cert_path: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `tls_cert_path`.
    pub tls_key_path: String,
}

/// Cluster mode: the Kafka-protocol broker between gateway and logic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Producer batching delay (`linger.ms`): 1 ms keeps latency low while
    /// still batching bursts.
    pub linger_ms: u32,
    /// How long a fetch may wait for data (`fetch.wait.max.ms`). Apache Kafka
    /// and Redpanda answer as soon as data arrives, so a long wait costs no
    /// latency and keeps idle consumers (one per gateway shard) nearly free.
    pub fetch_wait_max_ms: u32,
    /// Consumer-group members identify themselves with `group.instance.id`
    /// = their client id (`logic-{worker_id}`, `task-{worker_id}`): a member
    /// restarted with the same worker id gets its partitions back at once,
    /// without a rebalance. Worker ids must then be unique per group (a
    /// second live process with the same id is fenced by the broker).
    pub static_membership: bool,
    /// Longest a group member may go without polling before the broker
    /// evicts it (`max.poll.interval.ms`, at least the 10 s session
    /// timeout). Logic keeps polling while it retries a failing batch, so
    /// only a single store call hanging this long evicts it.
    pub max_poll_interval_ms: u32,
    /// Producer delivery timeout (`message.timeout.ms`).
    pub message_timeout_ms: u32,
    /// Records librdkafka buffers per producer before `QueueFull`
    /// (clients then get `server_busy`).
    pub queue_buffering_max_messages: u32,
    /// Replication factor of topics this process creates.
    pub replication_factor: i32,
    /// Consumer group of the logic processes on `im.upstream`.
    pub logic_group: String,
    /// Consumer group of `gochat task` processes (on im.task and im.task.retry).
    pub task_group: String,
    /// Where undecodable upstream records go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Prepended to every topic name (`{prefix}im.upstream`, ...).
    pub topic_prefix: String,
    /// librdkafka `security.protocol`: "plaintext", "ssl", "sasl_plaintext"
    /// or "sasl_ssl"; empty = librdkafka's default (plaintext).
    pub security_protocol: String,
    /// librdkafka `sasl.mechanism` ("PLAIN", "SCRAM-SHA-256", ...); empty = unset.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: String,
    /// librdkafka `ssl.ca.location` (PEM file of the brokers' CA); empty = unset.
    pub ssl_ca_location: String,
    /// Any further librdkafka properties, set last (`[kafka.extra]` in TOML:
    /// `"ssl.certificate.location" = "/etc/gochat/kafka.crt"`).
    pub extra: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            linger_ms: 1,
            fetch_wait_max_ms: 500,
            static_membership: true,
            max_poll_interval_ms: 300_000,
            message_timeout_ms: 30_000,
            queue_buffering_max_messages: 100_000,
            replication_factor: 1,
            logic_group: "gochat-logic".into(),
            task_group: "gochat-task".into(),
            dead_letter_topic: "im.upstream.dlq".into(),
            topic_prefix: String::new(),
            security_protocol: String::new(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            extra: Default::default(),
        }
    }
}

/// Cluster mode: Redis holds sessions, recent acks (dedup), cached member lists and task claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key (lets several deployments share one Redis).
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: "redis://127.0.0.1:6379".into(), key_prefix: String::new() }
    }
}

/// Cluster mode: the repo service (gRPC in front of MySQL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoConfig {
    /// Where `gochat repo` serves gRPC.
    pub listen: SocketAddr,
    /// How logic reaches the repo: `http://host:port` of a `gochat repo`, or
    /// empty to open `storage.database_url` in-process.
    pub endpoint: String,
    /// Shared secret of the repo's gRPC service: `gochat repo` refuses calls
    /// without `authorization: Bearer {auth_token}` (UNAUTHENTICATED) and
    /// logic sends it. Empty = no check (loopback-only deployments).
    pub auth_token: String,
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9100".parse().expect("static addr"),
            endpoint: String::new(),
            auth_token: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret (>= 32 bytes). Empty in `dev`: one is generated and kept
    /// in `{data_dir}/jwt.secret`.
    pub jwt_secret: String,
    /// Access-token (JWT) lifetime. Short: a client renews it with its
    /// refresh token (`POST /api/v1/auth/refresh`) and hands the new one to
    /// an open WebSocket in an `auth` frame; a socket whose token expires is
    /// closed (1008 "token expired").
    pub token_ttl_secs: u64,
    /// Refresh-token lifetime (each rotation starts a new one).
    pub refresh_ttl_secs: u64,
    /// Argon2id memory cost of new password hashes, KiB (OWASP: 19456).
    /// Existing hashes keep the cost they were made with.
    pub argon2_memory_kib: u32,
    /// Argon2id passes over memory of new password hashes.
    pub argon2_iterations: u32,
    /// Password hashes and checks (register, login) running at once per
    /// process; each holds `argon2_memory_kib`. 0 = 2 per CPU.
    pub max_concurrent_hashes: usize,
    /// How long a register or login waits for a hashing slot before it is
    /// answered 503 `server_busy` (with `Retry-After`).
    pub hash_queue_timeout_ms: u64,
    /// Failed logins for one username, within `login_failure_window_secs`,
    /// after which further attempts are answered 429 `rate_limited` until
    /// the window ends (counted per logic process). 0 = no limit.
    pub login_failures_max: u32,
    pub login_failure_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogicConfig {
    /// Partitions of `im.upstream` (per-conversation order is per partition).
    pub upstream_partitions: u32,
    /// Records buffered per upstream partition in embedded mode.
    pub upstream_queue_records: usize,
    /// Most records logic takes from the bus per batch.
    pub batch_max: usize,
    /// Attempts at a batch that fails with a non-transient error (a statement
    /// the database refuses) before its records are retried one by one and
    /// those that still fail are dead-lettered. Transient failures (store
    /// or repo unreachable) are retried without a bound.
    pub batch_max_attempts: u32,
    /// Largest `content` of a message, as compact JSON bytes.
    pub max_content_bytes: usize,
    /// Largest `limit` of a sync or history page.
    pub page_max: u32,
    /// Default `limit` of a sync or history page.
    pub page_default: u32,
    /// How long a (sender, client_msg_id) ack is remembered in the fast store;
    /// the database's unique key keeps deduplicating after that.
    pub dedup_ttl_secs: u64,
    /// Cluster mode: where a logic process serves the REST API.
    pub http_listen: SocketAddr,
    /// Groups with more members than this are fanned out by the task tier
    /// (`im.task`) instead of inline in logic; the sender's ack never waits.
    pub group_fanout_threshold: usize,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// Live WebSocket connections one user may hold, over all gateways
    /// (counted in the session store); a connection beyond it closes the
    /// user's oldest one (1008 "connection limit reached"). 0 = no limit.
    pub max_connections_per_user: usize,
    /// How long a group's member list stays cached in the fast store
    /// (invalidated on every membership change; the TTL bounds a lost race).
    pub member_cache_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// Attempts per task before it goes to the dead-letter topic.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with equal jitter.
    pub backoff_base_ms: u64,
    /// Largest retry delay.
    pub backoff_max_ms: u64,
    /// Tasks run concurrently (tasks with the same key always run in order).
    pub concurrency: usize,
    /// Members resolved (sessions looked up) per step of a large fan-out.
    pub fanout_chunk: usize,
    /// Most recipients in one push record; a (gateway, shard) with more
    /// live members gets several.
    pub max_push_recipients: usize,
    /// Offline-push webhook (POST JSON); empty = no offline push.
    pub push_webhook_url: String,
    /// HMAC-SHA256 key for the `X-GoChat-Signature` header; empty = unsigned.
    pub push_webhook_secret: String,
    /// Offline recipients per webhook request.
    pub push_batch_size: usize,
    /// Timeout of one webhook request.
    pub push_timeout_ms: u64,
    /// Partitions of `im.task` (created by logic when missing).
    pub partitions: u32,
    /// Cluster mode: where `gochat task` serves /healthz, /readyz, /metrics.
    pub http_listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationConfig {
    /// Words refused (case-insensitive substring match on text content).
    pub blocked_words: Vec<String>,
    /// Regular expressions refused (matched against text content).
    pub blocked_patterns: Vec<String>,
    /// What a match does: "reject" (error frame `message_rejected`) or
    /// "flag" (stored and delivered, counted and logged).
    pub action: String,
    /// Optional external check (POST JSON, answers {"action": ...}); empty = none.
    pub webhook_url: String,
    /// Timeout of one moderation webhook call.
    pub webhook_timeout_ms: u64,
    /// When the webhook fails or times out: false = allow (fail open), true = reject.
    pub webhook_fail_closed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Database URL; empty in `dev` = `sqlite://{data_dir}/gochat.db`.
    pub database_url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// SQLite `synchronous` pragma: "full" (the default) makes an acked
    /// message survive power loss; "normal" (WAL) survives process crashes
    /// only, for cheaper commits.
    pub sqlite_synchronous: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// auto | text | json.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("static addr"),
            data_dir: PathBuf::from("./data"),
            shards: 0,
            worker_id: 0,
            gateway: GatewayConfig::default(),
            auth: AuthConfig::default(),
            logic: LogicConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
            kafka: KafkaConfig::default(),
            redis: RedisConfig::default(),
            repo: RepoConfig::default(),
            task: TaskConfig::default(),
            moderation: ModerationConfig::default(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: "gw0".into(),
            max_frame_bytes: 1 << 20,
            max_message_bytes: 1 << 20,
            outbound_queue_bytes: 1 << 20,
            max_connections: 0,
            fd_reserve: 128,
            read_buffer_bytes: 64 << 10,
            max_http_head_bytes: 8 << 10,
            max_http_body_bytes: 1 << 20,
            handshake_timeout_ms: 10_000,
            http_body_timeout_ms: 10_000,
            idle_timeout_secs: 300,
            frame_timeout_secs: 30,
            client_messages_per_sec: 100,
            client_message_burst: 200,
            max_connections_per_ip: 10_000,
            sweep_interval_secs: 0,
            write_timeout_ms: 10_000,
            ring_depth: 4096,
            push_queue_records: 65_536,
            api_upstream: "http://127.0.0.1:8081".into(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            public_ops_endpoints: false,
            max_api_response_bytes: 16 << 20,
            tls_cert_path: String::new(),
            tls_key_path: String::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            token_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            max_concurrent_hashes: 0,
            hash_queue_timeout_ms: 5_000,
            login_failures_max: 10,
            login_failure_window_secs: 300,
        }
    }
}

impl Default for LogicConfig {
    fn default() -> Self {
        Self {
            upstream_partitions: 8,
            upstream_queue_records: 65_536,
            batch_max: 256,
            batch_max_attempts: 5,
            max_content_bytes: 64 << 10,
            page_max: 100,
            page_default: 50,
            dedup_ttl_secs: 600,
            http_listen: "127.0.0.1:8081".parse().expect("static addr"),
            group_fanout_threshold: 500,
            max_group_members: 100_000,
            max_connections_per_user: 16,
            member_cache_ttl_secs: 600,
        }
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_base_ms: 200,
            backoff_max_ms: 30_000,
            concurrency: 64,
            fanout_chunk: 1000,
            max_push_recipients: 8192,
            push_webhook_url: String::new(),
            push_webhook_secret: String::new(),
            push_batch_size: 100,
            push_timeout_ms: 5_000,
            partitions: 8,
            http_listen: "127.0.0.1:8082".parse().expect("static addr"),
        }
    }
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            blocked_words: Vec::new(),
            blocked_patterns: Vec::new(),
            action: "reject".into(),
            webhook_url: String::new(),
            webhook_timeout_ms: 300,
            webhook_fail_closed: false,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { database_url: String::new(), max_connections: 4, sqlite_synchronous: "full".into() }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto, filter: "info".into() }
    }
}

/// A secret holding this (in any case) is a placeholder copied from an
/// example and is refused at startup.
pub const PLACEHOLDER: &str = "CHANGE-ME";
/// What [`Config::redacted`] shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// `url` with the password of its userinfo (`scheme://user:password@host`)
/// replaced by `***`; anything else unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) else { return url.to_owned() };
    match url[scheme_end..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..scheme_end + colon], &url[at..]),
        // `redis://secret@host`: a lone userinfo is the password.
        None if url.starts_with("redis") => format!("{}***{}", &url[..scheme_end], &url[at..]),
        None => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (if any), then `GOCHAT_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            fig = fig.merge(Toml::file(path));
        }
        // GOCHAT_CONFIG names the file; GOCHAT_TEST_* and the tooling
        // directories belong to the test scripts, not to the configuration.
        let env = Env::prefixed("GOCHAT_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                k != "config" && !k.starts_with("test_") && k != "services_dir" && k != "tools_dir"
            })
            .split("__");
        fig = fig.merge(env);
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if self.worker_id > crate::ids::MAX_WORKER {
            return bad("worker_id must be 0..=1023");
        }
        if self.gateway.max_frame_bytes < 126 || self.gateway.max_message_bytes < self.gateway.max_frame_bytes.min(1024)
        {
            return bad("gateway.max_frame_bytes must be >= 126 and max_message_bytes >= 1024");
        }
        if self.gateway.tls_cert_path.is_empty() != self.gateway.tls_key_path.is_empty() {
            return bad("gateway.tls_cert_path and gateway.tls_key_path must be set together");
        }
        if self.gateway.read_buffer_bytes < 1024 {
            return bad("gateway.read_buffer_bytes must be >= 1024");
        }
        if self.logic.upstream_partitions == 0 || self.logic.batch_max == 0 || self.logic.batch_max_attempts == 0 {
            return bad("logic.upstream_partitions, logic.batch_max and logic.batch_max_attempts must be > 0");
        }
        if self.logic.page_default == 0 || self.logic.page_default > self.logic.page_max {
            return bad("logic.page_default must be 1..=page_max");
        }
        if self.task.max_attempts == 0 || self.task.concurrency == 0 || self.task.partitions == 0 {
            return bad("task.max_attempts, task.concurrency and task.partitions must be > 0");
        }
        if self.task.fanout_chunk == 0 || self.task.max_push_recipients == 0 || self.task.push_batch_size == 0 {
            return bad("task.fanout_chunk, task.max_push_recipients and task.push_batch_size must be > 0");
        }
        if !matches!(self.moderation.action.as_str(), "reject" | "flag") {
            return bad("moderation.action must be \"reject\" or \"flag\"");
        }
        if self.auth.argon2_memory_kib < 8 || self.auth.argon2_iterations == 0 {
            return bad("auth.argon2_memory_kib must be >= 8 and auth.argon2_iterations >= 1");
        }
        if !matches!(self.storage.sqlite_synchronous.as_str(), "normal" | "full") {
            return bad("storage.sqlite_synchronous must be \"normal\" or \"full\"");
        }
        for (name, value) in self.secrets() {
            if value.to_ascii_uppercase().contains(PLACEHOLDER) {
                return Err(ConfigError::Invalid(format!(
                    "{name} holds a placeholder (\"{PLACEHOLDER}\"): set a real secret (e.g. GOCHAT_AUTH__JWT_SECRET for auth.jwt_secret)"
                )));
            }
        }
        if !self.gateway.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || self.gateway.id.is_empty()
        {
            return bad("gateway.id must be non-empty [A-Za-z0-9_-]");
        }
        Ok(())
    }

    /// Every secret of the configuration (whole values: URLs are checked
    /// whole, their password included), by key.
    fn secrets(&self) -> [(&'static str, &str); 6] {
        [
            ("auth.jwt_secret", &self.auth.jwt_secret),
            ("task.push_webhook_secret", &self.task.push_webhook_secret),
            ("repo.auth_token", &self.repo.auth_token),
            ("kafka.sasl_password", &self.kafka.sasl_password),
            ("storage.database_url", &self.storage.database_url),
            ("redis.url", &self.redis.url),
        ]
    }

    /// The configuration with its secrets masked, for `gochat print-config`
    /// and logs: secrets become [`REDACTED`] (empty ones stay empty, so the
    /// output still tells whether one is set) and URLs lose their password.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let mask = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.into();
            }
        };
        mask(&mut c.auth.jwt_secret);
        mask(&mut c.task.push_webhook_secret);
        mask(&mut c.repo.auth_token);
        mask(&mut c.kafka.sasl_password);
        // librdkafka properties passed through may hold credentials too.
        for (k, v) in c.kafka.extra.iter_mut() {
            if ["password", "secret", "key", "token"].iter().any(|w| k.contains(w)) {
                mask(v);
            }
        }
        c.storage.database_url = redact_url(&c.storage.database_url);
        c.redis.url = redact_url(&c.redis.url);
        c.task.push_webhook_url = redact_url(&c.task.push_webhook_url);
        c.moderation.webhook_url = redact_url(&c.moderation.webhook_url);
        c.gateway.api_upstream = redact_url(&c.gateway.api_upstream);
        c.repo.endpoint = redact_url(&c.repo.endpoint);
        c
    }

    /// Shards to run: the configured count, or one per available core.
    pub fn effective_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        let dir = std::env::temp_dir().join(format!("gochat-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "shards = 3\n[gateway]\nmax_frame_bytes = 4096\nid = \"gw-a\"\n").unwrap();
        // SAFETY: test-local variable name, set before any thread reads it.
        unsafe { std::env::set_var("GOCHAT_GATEWAY__MAX_FRAME_BYTES", "8192") };
        // variables of the test tooling are not configuration
        unsafe { std::env::set_var("GOCHAT_TEST_SOMETHING", "x") };
        let cfg = Config::load(Some(&file)).unwrap();
        unsafe { std::env::remove_var("GOCHAT_GATEWAY__MAX_FRAME_BYTES") };
        assert_eq!(cfg.shards, 3);
        assert_eq!(cfg.gateway.id, "gw-a");
        assert_eq!(cfg.gateway.max_frame_bytes, 8192);
        assert_eq!(cfg.gateway.max_message_bytes, 1 << 20);
        assert_eq!(cfg.listen.port(), 8080);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("gochat-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "shardz = 3\n").unwrap();
        assert!(matches!(Config::load(Some(&file)), Err(ConfigError::Invalid(_))));
        std::fs::write(&file, "worker_id = 5000\n").unwrap();
        assert!(matches!(Config::load(Some(&file)), Err(ConfigError::Invalid(_))));
        assert!(matches!(Config::load(Some(&dir.join("missing.toml"))), Err(ConfigError::MissingFile(_))));
    }

    #[test]
    fn placeholder_secrets_are_refused() {
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        cfg.auth.jwt_secret = "change-me-to-a-real-secret-of-32-bytes".into();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("auth.jwt_secret") && e.contains("placeholder"), "{e}");
        cfg.auth.jwt_secret.clear();
        cfg.storage.database_url = "mysql://gochat:CHANGE-ME@db/gochat".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("storage.database_url"));
    }

    #[test]
    fn redaction_masks_secrets_and_url_passwords() {
        assert_eq!(redact_url("mysql://u:pw@h:3306/db?x=@"), "mysql://u:***@h:3306/db?x=@");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("redis://pw@h"), "redis://***@h");
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact_url("sqlite://./data/x.db"), "sqlite://./data/x.db");
        let mut cfg = Config::default();
        cfg.auth.jwt_secret = "s".repeat(40);
        cfg.storage.database_url = "mysql://u:pw@h/db".into();
        cfg.repo.auth_token = "t".repeat(32);
        cfg.kafka.sasl_password = "kafka-pw".into();
        cfg.kafka.extra.insert("ssl.key.password".into(), "kpw".into());
        cfg.kafka.extra.insert("fetch.min.bytes".into(), "1".into());
        let r = cfg.redacted();
        assert_eq!(r.auth.jwt_secret, REDACTED);
        assert_eq!(r.task.push_webhook_secret, "");
        assert_eq!(r.storage.database_url, "mysql://u:***@h/db");
        assert_eq!((r.repo.auth_token.as_str(), r.kafka.sasl_password.as_str()), (REDACTED, REDACTED));
        assert_eq!(r.kafka.extra["ssl.key.password"], REDACTED);
        assert_eq!(r.kafka.extra["fetch.min.bytes"], "1");
    }
}
