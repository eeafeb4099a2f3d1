//! The bus on Kafka (cluster mode): rdkafka implementations of
//! [`gochat_common::bus::Producer`] and [`gochat_common::bus::Consumer`],
//! plus topic administration. Only the Kafka protocol is assumed: production
//! runs Apache Kafka or Redpanda; tests run the tansu broker.
//!
//! The runtime parameter `R` is rdkafka's async runtime: `TokioRuntime` in the
//! tokio tier, `NaiveRuntime` inside glommio shards (rdkafka's own futures are
//! executor-agnostic; the runtime is only used to sleep while a full producer
//! queue drains).
//!
//! Settings chosen for chat latency (see [`KafkaConfig`] and
//! ARCHITECTURE.md): idempotent producer with `acks=all`, `linger.ms` 1,
//! manual offset commits after processing, a short `fetch.wait.max.ms`.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use gochat_common::bus::{BusError, Consumer, Producer, Record};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::AsyncRuntime;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, warn};

pub use rdkafka::util::{NaiveRuntime, TokioRuntime};

pub use gochat_common::config::KafkaConfig;

/// Builds rdkafka clients from the `[kafka]` settings.
#[derive(Debug, Clone)]
pub struct Kafka {
    cfg: KafkaConfig,
}

fn broker_err(e: KafkaError) -> BusError {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => BusError::QueueFull,
        other => BusError::Broker(other.to_string()),
    }
}

impl Kafka {
    pub fn new(cfg: KafkaConfig) -> Self {
        Self { cfg }
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.cfg
    }

    fn base(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.brokers).set("client.id", client_id).set("log_level", "4");
        c
    }

    fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.cfg.linger_ms.to_string())
            .set("message.timeout.ms", self.cfg.message_timeout_ms.to_string())
            .set("queue.buffering.max.messages", self.cfg.queue_buffering_max_messages.to_string())
            .set("compression.type", "none");
        c
    }

    fn consumer_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.cfg.fetch_wait_max_ms.to_string())
            .set("fetch.min.bytes", "1")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky");
        c
    }

    /// A producer for runtime `R`.
    pub fn producer<R: AsyncRuntime>(&self, client_id: &str) -> Result<KafkaProducer<R>, BusError> {
        let inner: FutureProducer<DefaultClientContext, R> =
            self.producer_config(client_id).create().map_err(broker_err)?;
        Ok(KafkaProducer { inner, partitions: Mutex::new(HashMap::new()) })
    }

    /// A consumer-group member of `topic` (partitions are balanced across members).
    pub fn group_consumer<R: AsyncRuntime>(
        &self,
        client_id: &str,
        group: &str,
        topic: &str,
    ) -> Result<KafkaConsumer<R>, BusError> {
        let inner: StreamConsumer<GroupContext, R> =
            self.consumer_config(client_id, group).create_with_context(GroupContext::default()).map_err(broker_err)?;
        inner.subscribe(&[topic]).map_err(broker_err)?;
        Ok(KafkaConsumer { inner, pending: HashMap::new(), commits: true })
    }

    /// A consumer of exactly one partition, starting at its end (a gateway
    /// shard's push partition: pushes for connections that no longer exist
    /// are worthless, so nothing is committed or replayed).
    pub fn partition_consumer<R: AsyncRuntime>(
        &self,
        client_id: &str,
        topic: &str,
        partition: u32,
    ) -> Result<KafkaConsumer<R>, BusError> {
        let inner: StreamConsumer<GroupContext, R> = self
            .consumer_config(client_id, &format!("{client_id}-assign"))
            .create_with_context(GroupContext::default())
            .map_err(broker_err)?;
        // Start at the partition's end as of now, resolved before returning:
        // `Offset::End` would be resolved lazily on the first fetch, and a
        // record produced between "ready" and that fetch would be skipped.
        let (_, high) = inner.fetch_watermarks(topic, partition as i32, Duration::from_secs(10)).map_err(broker_err)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(high)).map_err(broker_err)?;
        inner.assign(&tpl).map_err(broker_err)?;
        Ok(KafkaConsumer { inner, pending: HashMap::new(), commits: false })
    }

    /// Create `topic` with `partitions` partitions unless it exists.
    pub async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self.base("gochat-admin").create().map_err(broker_err)?;
        let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(self.cfg.replication_factor));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin.create_topics([&new], &opts).await.map_err(broker_err)?;
        for r in results {
            match r {
                Ok(_) => debug!(topic, partitions, "topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(BusError::Broker(format!("creating topic {t}: {code}"))),
            }
        }
        Ok(())
    }
}

/// rdkafka producer behind the bus trait.
pub struct KafkaProducer<R: AsyncRuntime> {
    inner: FutureProducer<DefaultClientContext, R>,
    partitions: Mutex<HashMap<String, u32>>,
}

impl<R: AsyncRuntime> KafkaProducer<R> {
    /// Wait for every queued record to be delivered (graceful shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner.flush(timeout).map_err(broker_err)
    }
}

fn record<'a>(
    topic: &'a str,
    key: &'a [u8],
    partition: Option<u32>,
    payload: &'a [u8],
) -> FutureRecord<'a, [u8], [u8]> {
    let mut r = FutureRecord::to(topic).payload(payload);
    if !key.is_empty() {
        r = r.key(key);
    }
    if let Some(p) = partition {
        r = r.partition(p as i32);
    }
    r
}

impl<R: AsyncRuntime> Producer for KafkaProducer<R> {
    fn try_send(&self, topic: &str, key: &[u8], partition: Option<u32>, payload: Bytes) -> Result<(), BusError> {
        // The delivery report is not awaited: the client learns of success
        // from logic's ack, and retries without one.
        self.inner.send_result(record(topic, key, partition, &payload)).map(drop).map_err(|(e, _)| broker_err(e))
    }

    fn send<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        partition: Option<u32>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.inner
                .send(record(topic, key, partition, &payload), Duration::from_secs(5))
                .await
                .map(drop)
                .map_err(|(e, _)| broker_err(e))
        })
    }

    fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        if let Some(n) = self.partitions.lock().expect("partition cache").get(topic) {
            return Ok(*n);
        }
        let md = self.inner.client().fetch_metadata(Some(topic), Duration::from_secs(5)).map_err(broker_err)?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as u32)
            .filter(|n| *n > 0)
            .ok_or_else(|| BusError::UnknownTopic(topic.into()))?;
        self.partitions.lock().expect("partition cache").insert(topic.to_owned(), n);
        Ok(n)
    }
}

/// Records the group's first assignment, so a process can report ready
/// only once it really consumes.
#[derive(Default, Clone)]
pub struct GroupContext {
    assigned: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            debug!(partitions = tpl.count(), "partitions assigned");
            self.assigned.store(true, Ordering::Release);
            self.notify.notify_waiters();
        }
    }
}

impl GroupContext {
    /// Wait until the group assigned this member its partitions (possibly
    /// none); false on timeout. The consumer must be polled meanwhile.
    pub async fn wait_assigned(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.assigned.load(Ordering::Acquire) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.assigned.load(Ordering::Acquire);
            }
        }
    }
}

/// rdkafka consumer behind the bus trait. Offsets are committed only by
/// [`Consumer::commit`], i.e. after the caller processed the batch.
pub struct KafkaConsumer<R> {
    inner: StreamConsumer<GroupContext, R>,
    /// Next offset to commit per (topic, partition), from batches handed out.
    pending: HashMap<(String, i32), i64>,
    commits: bool,
}

fn to_record(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        partition: m.partition().max(0) as u32,
        offset: m.offset().max(0) as u64,
        key: m.key().map(Bytes::copy_from_slice).unwrap_or_default(),
        payload: m.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
    }
}

impl<R> KafkaConsumer<R> {
    /// Handle to learn when the group assigned this member its partitions.
    pub fn group_context(&self) -> GroupContext {
        GroupContext::clone(self.inner.context())
    }
}

impl<R: AsyncRuntime + Send + Sync + 'static> Consumer for KafkaConsumer<R> {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            let mut batch = Vec::new();
            loop {
                match self.inner.recv().await {
                    Ok(m) => {
                        self.pending.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                        batch.push(to_record(&m));
                        break;
                    }
                    Err(e) => {
                        // Transient broker errors surface here; librdkafka reconnects by itself.
                        warn!(error = %e, "kafka consume error");
                        R::delay_for(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            // Take whatever is already fetched, without waiting.
            while batch.len() < max {
                match self.inner.recv().now_or_never() {
                    Some(Ok(m)) => {
                        self.pending.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                        batch.push(to_record(&m));
                    }
                    _ => break,
                }
            }
            Ok(batch)
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if !self.commits || self.pending.is_empty() {
                self.pending.clear();
                return Ok(());
            }
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in self.pending.drain() {
                tpl.add_partition_offset(&topic, partition, Offset::Offset(next)).map_err(broker_err)?;
            }
            self.inner.commit(&tpl, CommitMode::Async).map_err(broker_err)
        })
    }
}
