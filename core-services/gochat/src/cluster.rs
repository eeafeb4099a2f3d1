//! Cluster mode: each role in its own process. `gochat gateway` (glommio
//! shards talking only to Kafka), `gochat logic` (tokio: Kafka consumer
//! group, Redis, the repo, REST API), `gochat migrate`. The business logic is
//! the same code as `gochat dev`; only the implementations behind the bus,
//! store and session-store traits change.

use crate::bridge::error_response;
use crate::dev::wait_for_signal;
use anyhow::Context;
use futures_util::future::BoxFuture;
use gochat_common::auth::JwtKeys;
use gochat_common::bus::{BusError, Consumer, Producer, Topics};
use gochat_common::config::Config;
use gochat_common::ids::Snowflake;
use gochat_common::telemetry;
use gochat_gateway::api::{ApiBackend, ApiRequest, ApiResponse};
use gochat_gateway::{Gateway, GatewayDeps, GatewaySettings, ShardBus};
use gochat_kafka::{Kafka, KafkaProducer, NaiveRuntime, TokioRuntime};
use gochat_logic::api::{router, ApiState};
use gochat_logic::moderation::Moderator;
use gochat_logic::redis_store::RedisSessionStore;
use gochat_logic::{Logic, LogicDeps};
use gochat_proto::bus::{session_event, ConnRef, KafkaMessage, SessionEvent};
use gochat_proto::{kind, Message as _};
use gochat_repo::mysql::MySqlStore;
use gochat_repo::Store;
use gochat_task::DeadLetters;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

fn jwt(cfg: &Config) -> anyhow::Result<JwtKeys> {
    anyhow::ensure!(
        !cfg.auth.jwt_secret.is_empty(),
        "cluster mode needs auth.jwt_secret (GOCHAT_AUTH__JWT_SECRET), shared by gateways and logic"
    );
    Ok(JwtKeys::new(cfg.auth.jwt_secret.as_bytes(), cfg.auth.token_ttl_secs)?)
}

/// The store logic persists through: the repo service over gRPC when
/// `repo.endpoint` is set, else the database opened in-process.
pub async fn logic_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if cfg.repo.endpoint.is_empty() {
        return open_store(cfg).await;
    }
    let client = gochat_repo_grpc::RepoClient::connect_with_token(&cfg.repo.endpoint, Some(&cfg.repo.auth_token))
        .context("repo endpoint")?;
    info!(endpoint = %cfg.repo.endpoint, "persisting through the repo service");
    Ok(Arc::new(client))
}

/// Open the configured store in-process (MySQL, or SQLite for a single node).
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = &cfg.storage.database_url;
    if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let store = MySqlStore::connect(url, cfg.storage.max_connections).await.context("connecting to MySQL")?;
        Ok(Arc::new(store))
    } else {
        let url = crate::dev::database_url(cfg)?;
        Ok(Arc::new(crate::dev::open_store(cfg, &url).await?))
    }
}

/// `gochat migrate`: create the database if needed and apply migrations.
pub async fn migrate(cfg: &Config) -> anyhow::Result<String> {
    let url = crate::dev::database_url(cfg)?;
    if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        MySqlStore::create_database_if_missing(&url).await.context("creating the database")?;
        let store = MySqlStore::connect(&url, 1).await.context("connecting to MySQL")?;
        store.migrate().await.context("applying migrations/mysql")?;
    } else {
        crate::dev::open_store(cfg, &url).await?;
    }
    Ok(url)
}

// ---------------------------------------------------------------- gateway

/// Kafka as the shards see it: each shard creates its own producer and
/// consumes its own partition of the push topic.
struct KafkaShardBus {
    kafka: Kafka,
    gateway_id: String,
    push_topic: String,
}

impl ShardBus for KafkaShardBus {
    fn producer(&self, shard: u32) -> Result<Arc<dyn Producer>, BusError> {
        Ok(Arc::new(self.kafka.producer::<NaiveRuntime>(&format!("{}-shard-{shard}", self.gateway_id))?))
    }
    fn push_consumer(&self, shard: u32) -> Result<Box<dyn Consumer>, BusError> {
        let client = format!("{}-push-{shard}", self.gateway_id);
        Ok(Box::new(self.kafka.partition_consumer::<NaiveRuntime>(&client, &self.push_topic, shard)?))
    }
}

/// REST forwarded to a logic process over HTTP/1.1 (the gateway's own tokio
/// runtime drives the client; the shard awaits a oneshot).
///
/// The shard forwards only clean origin-form targets under the API's paths
/// ([`gochat_gateway::http::api_target`]); the upstream URL is the configured
/// base with that path and query set through [`reqwest::Url`], so a target can
/// never choose the host, port, scheme or userinfo. Redirects are not
/// followed and the response body is capped.
struct HttpApi {
    client: reqwest::Client,
    base: reqwest::Url,
    max_response_bytes: usize,
    runtime: tokio::runtime::Handle,
}

impl HttpApi {
    fn new(cfg: &Config, runtime: tokio::runtime::Handle) -> anyhow::Result<Self> {
        let base = upstream_base(&cfg.gateway.api_upstream)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, base, max_response_bytes: cfg.gateway.max_api_response_bytes, runtime })
    }

    /// The upstream URL of a request-target; None for one the shard should
    /// not have forwarded. `/metrics` is the shard's own scrape of logic.
    fn url(&self, target: &str) -> Option<reqwest::Url> {
        let (path, query) = match target {
            "/metrics" => ("/metrics", None),
            t => gochat_gateway::http::api_target(t).ok()?,
        };
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(query);
        Some(url)
    }
}

/// `gateway.api_upstream` as a URL: http(s), a host, no path, query or userinfo.
fn upstream_base(raw: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(raw).with_context(|| format!("gateway.api_upstream {raw:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && matches!(url.path(), "" | "/")
            && url.query().is_none()
            && url.fragment().is_none(),
        "gateway.api_upstream {raw:?} must be http(s)://host[:port] with no path, query or credentials"
    );
    Ok(url)
}

/// Read a response body, refusing one larger than `max` bytes.
async fn capped_body(mut resp: reqwest::Response, max: usize) -> Result<bytes::Bytes, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("upstream response larger than {max} bytes"));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("upstream response larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

impl ApiBackend for HttpApi {
    fn call(&self, req: ApiRequest) -> BoxFuture<'static, ApiResponse> {
        let Some(url) = self.url(&req.target) else {
            let resp = error_response(400, "bad_request", "request target is not forwarded");
            return Box::pin(async move { resp });
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let client = self.client.clone();
        let max = self.max_response_bytes;
        self.runtime.spawn(async move {
            let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap_or(reqwest::Method::GET);
            let mut rb = client.request(method, url).body(req.body);
            for (k, v) in &req.headers {
                if k != "host" && k != "content-length" {
                    rb = rb.header(k.as_str(), v.as_slice());
                }
            }
            let resp = match rb.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let headers = r
                        .headers()
                        .iter()
                        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
                        .filter(|(k, _)| k != "content-length" && k != "transfer-encoding" && k != "connection")
                        .collect();
                    match capped_body(r, max).await {
                        Ok(body) => ApiResponse { status, headers, body },
                        Err(e) => error_response(502, "bad_gateway", &e),
                    }
                }
                Err(e) => error_response(503, "unavailable", &format!("logic unreachable: {e}")),
            };
            let _ = tx.send(resp);
        });
        Box::pin(
            async move { rx.await.unwrap_or_else(|_| error_response(503, "unavailable", "gateway runtime stopped")) },
        )
    }
}

pub fn run_gateway(cfg: Config) -> anyhow::Result<()> {
    let (soft, hard) = telemetry::nofile_limit();
    let raised = telemetry::raise_nofile_limit();
    let shards = cfg.effective_shards();
    let settings = GatewaySettings::from_config(&cfg, raised);
    info!(gateway = %cfg.gateway.id, nofile_soft = soft, nofile_hard = hard, nofile_now = raised, shards,
          max_connections = settings.max_connections, "starting gochat gateway");
    let jwt = jwt(&cfg)?;
    let topics = Topics::new(&cfg.kafka.topic_prefix);
    let kafka = Kafka::new(cfg.kafka.clone());
    // A small runtime for admin calls and the REST forwarder; shards never block on it.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().thread_name("gw-tokio").build()?;
    let push_topic = topics.push(&cfg.gateway.id);
    runtime
        .block_on(async {
            kafka.ensure_topic(&topics.upstream(), cfg.logic.upstream_partitions).await?;
            kafka.ensure_topic(&push_topic, shards as u32).await?;
            // Sessions this gateway registered in an earlier life are gone: tell
            // logic, before any new connection registers (conn ids are >= boot).
            let boot = (gochat_common::now_ms() as u64) << 16;
            let ev = SessionEvent {
                kind: session_event::Kind::GatewayReset as i32,
                user_id: 0,
                conn: Some(ConnRef { gateway_id: cfg.gateway.id.clone(), shard: 0, conn_id: boot }),
                at_ms: gochat_common::now_ms(),
                token_version: 0,
            };
            let env = KafkaMessage::wrap(kind::SESSION, String::new(), ev);
            let producer = kafka.producer::<TokioRuntime>(&format!("{}-admin", cfg.gateway.id))?;
            // A topic created earlier for fewer shards would leave shards without a partition.
            let partitions = producer.partitions(&push_topic)?;
            anyhow::ensure!(
                partitions as usize >= shards,
                "push topic {push_topic} has {partitions} partitions but this gateway runs {shards} shards: \
             add partitions to the topic or run fewer shards"
            );
            producer
                .send(&topics.upstream(), format!("gw:{}", cfg.gateway.id).as_bytes(), None, env.encode_to_vec().into())
                .await?;
            anyhow::Ok(())
        })
        .context("preparing kafka topics")?;

    let api = Arc::new(HttpApi::new(&cfg, runtime.handle().clone())?);
    let bus = Arc::new(KafkaShardBus { kafka, gateway_id: cfg.gateway.id.clone(), push_topic });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let tls = {
        let _rt = runtime.enter();
        crate::tls::gateway_tls(&cfg)?
    };
    let tls_on = tls.is_some();
    let gateway =
        Gateway::start(settings, cfg.listen, GatewayDeps { bus, jwt, api: api.clone(), tls }, shutdown_rx.clone())?;
    let admin = runtime.block_on(crate::admin::serve(
        cfg.gateway.admin_listen,
        &cfg.gateway.id,
        gateway.metrics.clone(),
        api,
        shutdown_rx,
    ))?;
    info!(addr = %gateway.local_addr, admin = %admin, gateway = %cfg.gateway.id, shards, tls = tls_on, "gochat ready");
    runtime.block_on(wait_for_signal());
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    gateway.join();
    info!("stopped");
    Ok(())
}

// ------------------------------------------------------------------ logic

/// Topics logic and the task tier produce to; created when missing.
async fn ensure_logic_topics(cfg: &Config, kafka: &Kafka, topics: &Topics) -> anyhow::Result<String> {
    kafka.ensure_topic(&topics.upstream(), cfg.logic.upstream_partitions).await.context("creating im.upstream")?;
    let dlq = format!("{}{}", cfg.kafka.topic_prefix, cfg.kafka.dead_letter_topic);
    kafka.ensure_topic(&dlq, 1).await.context("creating the dead-letter topic")?;
    kafka.ensure_topic(&topics.task(), cfg.task.partitions).await.context("creating im.task")?;
    kafka.ensure_topic(&topics.task_retry(), cfg.task.partitions).await.context("creating im.task.retry")?;
    kafka.ensure_topic(&topics.task_dead(), 1).await.context("creating im.task.dlq")?;
    Ok(dlq)
}

/// Logic's handles in cluster mode: the repo, Redis and one Kafka producer.
async fn cluster_logic(
    cfg: &Config,
    kafka: &Kafka,
    client_id: &str,
    dead_letter: String,
) -> anyhow::Result<(Arc<Logic>, Arc<KafkaProducer<TokioRuntime>>)> {
    let topics = Topics::new(&cfg.kafka.topic_prefix);
    let store: Arc<dyn Store> = logic_store(cfg).await?;
    let sessions = Arc::new(
        RedisSessionStore::connect(&cfg.redis.url, &cfg.redis.key_prefix).await.context("connecting to Redis")?,
    );
    let producer = Arc::new(kafka.producer::<TokioRuntime>(client_id)?);
    let logic = Logic::new(LogicDeps {
        store,
        sessions,
        push_producer: producer.clone(),
        bus_producer: producer.clone(),
        ids: Arc::new(Snowflake::new(cfg.worker_id)?),
        cfg: cfg.logic.clone(),
        task_cfg: cfg.task.clone(),
        moderator: Moderator::new(&cfg.moderation).context("moderation config")?,
        topics,
        dead_letter: Some(dead_letter),
    });
    Ok((logic, producer))
}

pub fn run_logic(cfg: Config) -> anyhow::Result<()> {
    info!(worker_id = cfg.worker_id, version = env!("CARGO_PKG_VERSION"), "starting gochat logic");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("logic").build()?;
    runtime.block_on(async move {
        let jwt = jwt(&cfg)?;
        let topics = Topics::new(&cfg.kafka.topic_prefix);
        let kafka = Kafka::new(cfg.kafka.clone());
        let dlq = ensure_logic_topics(&cfg, &kafka, &topics).await?;
        let client_id = format!("logic-{}", cfg.worker_id);
        let (logic, producer) = cluster_logic(&cfg, &kafka, &client_id, dlq).await?;
        let group = format!("{}{}", cfg.kafka.topic_prefix, cfg.kafka.logic_group);
        let consumer = kafka.group_consumer::<TokioRuntime>(&client_id, &group, &topics.upstream())?;

        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let group_ctx = consumer.group_context();
        let worker = tokio::spawn(logic.clone().run(Box::new(consumer), shutdown_rx.clone()));
        // Ready means consuming: wait for the group's first assignment.
        if !group_ctx.wait_assigned(Duration::from_secs(60)).await {
            tracing::warn!(group, "no partition assignment after 60 s; serving anyway");
        }
        let (hasher, login_throttle) = crate::tasks::password_guards(&cfg);
        let (stats, upstream) = (group_ctx.stats(), topics.upstream());
        let extra_metrics: Option<gochat_logic::api::MetricsRenderer> =
            Some(Arc::new(move |enc| stats.render(enc, &upstream)));
        let app = router(ApiState {
            logic,
            jwt,
            refresh_ttl_secs: cfg.auth.refresh_ttl_secs,
            hasher,
            login_throttle,
            extra_metrics,
        });
        let (http_addr, http) = serve_http(cfg.logic.http_listen, app, shutdown_rx.clone()).await?;
        info!(http = %http_addr, group, "gochat ready");
        wait_for_signal().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
        let _ = producer.flush(Duration::from_secs(5));
        info!("stopped");
        anyhow::Ok(())
    })
}

/// Bind `addr` and serve `app` until `shutdown` turns true.
async fn serve_http(
    addr: std::net::SocketAddr,
    app: axum::Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|v| *v).await;
            })
            .await
    });
    Ok((local, task))
}

// ------------------------------------------------------------------- task

pub fn run_task(cfg: Config) -> anyhow::Result<()> {
    info!(worker_id = cfg.worker_id, version = env!("CARGO_PKG_VERSION"), "starting gochat task");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("task").build()?;
    runtime.block_on(async move {
        let topics = Topics::new(&cfg.kafka.topic_prefix);
        let kafka = Kafka::new(cfg.kafka.clone());
        let dlq = ensure_logic_topics(&cfg, &kafka, &topics).await?;
        let client_id = format!("task-{}", cfg.worker_id);
        let (logic, producer) = cluster_logic(&cfg, &kafka, &client_id, dlq).await?;
        let tasks = crate::tasks::runner(&cfg, &logic, producer.clone(), DeadLetters::Topic(topics.task_dead()))?;
        let group = format!("{}{}", cfg.kafka.topic_prefix, cfg.kafka.task_group);
        let retry_group = format!("{group}-retry");
        let main = kafka.group_consumer::<TokioRuntime>(&client_id, &group, &topics.task())?;
        let retries = kafka.group_consumer::<TokioRuntime>(&client_id, &retry_group, &topics.task_retry())?;
        let (main_ctx, retry_ctx) = (main.group_context(), retries.group_context());

        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let w1 = tokio::spawn(tasks.clone().run_main(Box::new(main), shutdown_rx.clone()));
        let w2 = tokio::spawn(tasks.clone().run_retries(Box::new(retries), shutdown_rx.clone()));
        for ctx in [&main_ctx, &retry_ctx] {
            if !ctx.wait_assigned(Duration::from_secs(60)).await {
                tracing::warn!(group, "no partition assignment after 60 s; running anyway");
            }
        }
        let metrics = tasks.metrics.clone();
        let logic_metrics = logic.metrics.clone();
        let ready_logic = logic.clone();
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let logic = ready_logic.clone();
                    async move {
                        // Ready = the store answers (Redis failures surface per task).
                        match logic.store.ping().await {
                            Ok(()) => (axum::http::StatusCode::OK, "ready\n"),
                            Err(_) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (metrics, logic_metrics) = (metrics.clone(), logic_metrics.clone());
                    async move {
                        let mut enc = gochat_common::metrics::TextEncoder::new();
                        metrics.render(&mut enc);
                        logic_metrics.render(&mut enc);
                        enc.finish()
                    }
                }),
            );
        let (http_addr, http) = serve_http(cfg.task.http_listen, app, shutdown_rx.clone()).await?;
        info!(http = %http_addr, group, "gochat ready");
        wait_for_signal().await;
        info!("shutting down");
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), w1).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), w2).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
        let _ = producer.flush(Duration::from_secs(5));
        info!("stopped");
        anyhow::Ok(())
    })
}

// ------------------------------------------------------------------- repo

pub fn run_repo(cfg: Config) -> anyhow::Result<()> {
    info!(version = env!("CARGO_PKG_VERSION"), "starting gochat repo");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("repo").build()?;
    runtime.block_on(async move {
        let store = open_store(&cfg).await?;
        let listener = tokio::net::TcpListener::bind(cfg.repo.listen)
            .await
            .with_context(|| format!("binding {}", cfg.repo.listen))?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let token = Some(cfg.repo.auth_token.clone());
        let server = tokio::spawn(gochat_repo_grpc::serve_with_token(store, listener, token, async move {
            let _ = stop_rx.await;
        }));
        info!(grpc = %addr, "gochat ready");
        wait_for_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        info!("stopped");
        anyhow::Ok(())
    })
}
