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
    /// Address of the public port: /ws, REST, /healthz, /readyz, /metrics.
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
    /// Bytes queued towards one connection before it counts as a slow reader
    /// and is closed with 1008.
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
    /// A WebSocket that sends nothing (not even a ping) for this long is closed (1001).
    pub idle_timeout_secs: u64,
    /// A write that cannot make progress for this long drops the connection
    /// (a peer that stopped reading entirely).
    pub write_timeout_ms: u64,
    /// Records buffered per push partition in embedded mode.
    pub push_queue_records: usize,
    /// Cluster mode: base URL of a logic process's REST API, where the
    /// gateway forwards `/api/*`, `/readyz` and the logic half of `/metrics`.
    pub api_upstream: String,
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
    /// and Redpanda answer as soon as data arrives; tansu (the test broker)
    /// always waits the full time, so keep this small.
    pub fetch_wait_max_ms: u32,
    /// Producer delivery timeout (`message.timeout.ms`).
    pub message_timeout_ms: u32,
    /// Records librdkafka buffers per producer before `QueueFull`
    /// (clients then get `server_busy`).
    pub queue_buffering_max_messages: u32,
    /// Replication factor of topics this process creates.
    pub replication_factor: i32,
    /// Consumer group of the logic processes on `im.upstream`.
    pub logic_group: String,
    /// Where undecodable upstream records go, with the reason in a header.
    pub dead_letter_topic: String,
    /// Prepended to every topic name (`{prefix}im.upstream`, ...).
    pub topic_prefix: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            linger_ms: 1,
            fetch_wait_max_ms: 5,
            message_timeout_ms: 30_000,
            queue_buffering_max_messages: 100_000,
            replication_factor: 1,
            logic_group: "gochat-logic".into(),
            dead_letter_topic: "im.upstream.dlq".into(),
            topic_prefix: String::new(),
        }
    }
}

/// Cluster mode: Redis holds sessions, seq counters and dedup entries.
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
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9100".parse().expect("static addr"), endpoint: String::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret (>= 32 bytes). Empty in `dev`: one is generated and kept
    /// in `{data_dir}/jwt.secret`.
    pub jwt_secret: String,
    /// Token lifetime.
    pub token_ttl_secs: u64,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Database URL; empty in `dev` = `sqlite://{data_dir}/gochat.db`.
    pub database_url: String,
    /// Connection pool size.
    pub max_connections: u32,
    /// SQLite `synchronous` pragma: "normal" survives process crashes (WAL),
    /// "full" also survives power loss at some write cost.
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
            idle_timeout_secs: 300,
            write_timeout_ms: 10_000,
            push_queue_records: 65_536,
            api_upstream: "http://127.0.0.1:8081".into(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { jwt_secret: String::new(), token_ttl_secs: 7 * 24 * 3600 }
    }
}

impl Default for LogicConfig {
    fn default() -> Self {
        Self {
            upstream_partitions: 8,
            upstream_queue_records: 65_536,
            batch_max: 256,
            max_content_bytes: 64 << 10,
            page_max: 100,
            page_default: 50,
            dedup_ttl_secs: 7 * 24 * 3600,
            http_listen: "127.0.0.1:8081".parse().expect("static addr"),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { database_url: String::new(), max_connections: 4, sqlite_synchronous: "normal".into() }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto, filter: "info".into() }
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
        if self.gateway.read_buffer_bytes < 1024 {
            return bad("gateway.read_buffer_bytes must be >= 1024");
        }
        if self.logic.upstream_partitions == 0 || self.logic.batch_max == 0 {
            return bad("logic.upstream_partitions and logic.batch_max must be > 0");
        }
        if self.logic.page_default == 0 || self.logic.page_default > self.logic.page_max {
            return bad("logic.page_default must be 1..=page_max");
        }
        if !matches!(self.storage.sqlite_synchronous.as_str(), "normal" | "full") {
            return bad("storage.sqlite_synchronous must be \"normal\" or \"full\"");
        }
        if !self.gateway.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || self.gateway.id.is_empty()
        {
            return bad("gateway.id must be non-empty [A-Za-z0-9_-]");
        }
        Ok(())
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
}
