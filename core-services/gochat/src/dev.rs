//! `gochat dev`: the embedded mode. Gateway shards (glommio, one per core),
//! logic and the REST API (tokio), the in-process bus, SQLite and the
//! in-memory session store, all in one process; the message path is the same
//! code as in cluster mode.

use crate::bridge::TokioApi;
use anyhow::Context;
use gochat_common::auth::JwtKeys;
use gochat_common::bus::{BusError, Consumer, MemoryBus, Producer, Topics};
use gochat_common::config::Config;
use gochat_common::ids::Snowflake;
use gochat_common::telemetry;
use gochat_gateway::{Gateway, GatewayDeps, GatewaySettings, ShardBus};
use gochat_logic::api::{router, ApiState};
use gochat_logic::moderation::Moderator;
use gochat_logic::session::MemorySessionStore;
use gochat_logic::{Logic, LogicDeps};
use gochat_repo::sqlite::SqliteStore;
use gochat_repo::Store;
use gochat_task::DeadLetters;
use std::path::Path;
use std::sync::Arc;
use tracing::info;

/// Dedup entries kept in memory in embedded mode (the database backs it).
const DEDUP_CACHE_ENTRIES: usize = 1 << 20;

pub fn database_url(cfg: &Config) -> anyhow::Result<String> {
    if !cfg.storage.database_url.is_empty() {
        return Ok(cfg.storage.database_url.clone());
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    Ok(format!("sqlite://{}", cfg.data_dir.join("gochat.db").display()))
}

pub async fn open_store(cfg: &Config, url: &str) -> anyhow::Result<SqliteStore> {
    anyhow::ensure!(url.starts_with("sqlite:"), "embedded mode stores in SQLite; got database_url {url:?}");
    SqliteStore::open(url, cfg.storage.max_connections, cfg.storage.sqlite_synchronous == "full")
        .await
        .with_context(|| format!("opening {url}"))
}

/// The configured secret, or the dev secret kept in the data dir (created once).
fn jwt_secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    if !cfg.auth.jwt_secret.is_empty() {
        return Ok(cfg.auth.jwt_secret.as_bytes().to_vec());
    }
    let path = cfg.data_dir.join("jwt.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().as_bytes().to_vec());
    }
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..64).map(|_| format!("{:x}", rng.gen_range(0..16u8))).collect()
    };
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    info!(path = %path.display(), "generated a dev jwt secret");
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let (soft, hard) = telemetry::nofile_limit();
    let raised = telemetry::raise_nofile_limit();
    let shards = cfg.effective_shards();
    info!(
        nofile_soft = soft,
        nofile_hard = hard,
        nofile_now = raised,
        shards,
        version = env!("CARGO_PKG_VERSION"),
        "starting gochat dev"
    );
    let settings = GatewaySettings::from_config(&cfg, raised);
    if raised < 100_000 {
        info!(
            nofile = raised,
            max_connections = settings.max_connections,
            "open-file limit caps connections; raise nofile for more (docs/operations.md)"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tokio-tier").build()?;
    runtime.block_on(async move {
        let url = database_url(&cfg)?;
        let store: Arc<dyn Store> = Arc::new(open_store(&cfg, &url).await?);
        info!(database = %url, "store ready");
        let jwt = JwtKeys::new(&jwt_secret(&cfg)?, cfg.auth.token_ttl_secs).context("jwt secret")?;

        let bus = MemoryBus::new(cfg.logic.upstream_queue_records);
        let topics = Topics::new(&cfg.kafka.topic_prefix);
        bus.create_topic(&topics.upstream(), cfg.logic.upstream_partitions)?;
        let push_bus = MemoryBus::new(cfg.gateway.push_queue_records);
        let push_topic = topics.push(&cfg.gateway.id);
        push_bus.create_topic(&push_topic, shards as u32)?;

        bus.create_topic(&topics.task(), cfg.task.partitions)?;
        bus.create_topic(&topics.task_retry(), 1)?;

        let ids = Arc::new(Snowflake::new(cfg.worker_id)?);
        let sessions = Arc::new(MemorySessionStore::new(DEDUP_CACHE_ENTRIES));
        let logic = Logic::new(LogicDeps {
            store,
            sessions,
            push_producer: push_bus.producer(),
            bus_producer: bus.producer(),
            ids,
            cfg: cfg.logic.clone(),
            task_cfg: cfg.task.clone(),
            moderator: Moderator::new(&cfg.moderation).context("moderation config")?,
            topics: topics.clone(),
            dead_letter: None,
        });
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let logic_task = tokio::spawn(logic.clone().run(bus.subscribe_all(&topics.upstream())?, shutdown_rx.clone()));

        let dead_letters = cfg.data_dir.join("dead-letters.jsonl");
        let tasks = crate::tasks::runner(&cfg, &logic, bus.producer(), DeadLetters::File(dead_letters))?;
        let task_main = tokio::spawn(tasks.clone().run_main(bus.subscribe_all(&topics.task())?, shutdown_rx.clone()));
        let task_retry =
            tokio::spawn(tasks.clone().run_retries(bus.subscribe_all(&topics.task_retry())?, shutdown_rx.clone()));
        let task_metrics = tasks.metrics.clone();

        let (hasher, login_throttle) = crate::tasks::password_guards(&cfg);
        let state = ApiState {
            logic,
            jwt: jwt.clone(),
            refresh_ttl_secs: cfg.auth.refresh_ttl_secs,
            hasher,
            login_throttle,
            extra_metrics: Some(Arc::new(move |enc| task_metrics.render(enc))),
        };
        let api = Arc::new(TokioApi::new(router(state), tokio::runtime::Handle::current()));
        let shard_bus = Arc::new(MemoryShardBus { upstream: bus.producer(), push: push_bus.clone(), push_topic });
        let tls = crate::tls::gateway_tls(&cfg)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let deps = GatewayDeps { bus: shard_bus, jwt, api: api.clone(), tls };
        let gateway = Gateway::start(settings, cfg.listen, deps, shutdown_rx.clone())?;
        let admin =
            crate::admin::serve(cfg.gateway.admin_listen, &cfg.gateway.id, gateway.metrics.clone(), api, shutdown_rx)
                .await?;
        let url = format!("{scheme}://{}", gateway.local_addr);
        info!(addr = %gateway.local_addr, url = %url, admin = %admin, tls = scheme == "https", shards, "gochat ready");

        wait_for_signal().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
        tokio::task::spawn_blocking(move || gateway.join()).await?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), logic_task).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task_main).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task_retry).await;
        info!("stopped");
        anyhow::Ok(())
    })
}

/// The in-process bus as the shards see it.
struct MemoryShardBus {
    upstream: Arc<dyn Producer>,
    push: Arc<MemoryBus>,
    push_topic: String,
}

impl ShardBus for MemoryShardBus {
    fn producer(&self, _shard: u32) -> Result<Arc<dyn Producer>, BusError> {
        Ok(self.upstream.clone())
    }
    fn push_consumer(&self, shard: u32) -> Result<Box<dyn Consumer>, BusError> {
        self.push.assign(&self.push_topic, shard)
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
