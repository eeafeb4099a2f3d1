//! The bus on Kafka (cluster mode): rdkafka implementations of
//! [`gochat_common::bus::Producer`] and [`gochat_common::bus::Consumer`],
//! plus topic administration. Only the Kafka protocol is assumed: production
//! runs Apache Kafka or Redpanda; the tests run Apache Kafka 4 (KRaft).
//!
//! The runtime parameter `R` is rdkafka's async runtime: `TokioRuntime` in the
//! tokio tier, `NaiveRuntime` inside glommio shards (rdkafka's own futures are
//! executor-agnostic; the runtime is only used to sleep while a full producer
//! queue drains).
//!
//! Settings chosen for chat latency (see [`KafkaConfig`] and
//! ARCHITECTURE.md): idempotent producer with `acks=all`, `linger.ms` 1,
//! manual offset commits after processing, Nagle off, long fetch waits (the
//! broker answers as soon as data arrives), cooperative-sticky rebalancing and
//! static group membership.

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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

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
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("client.id", client_id)
            .set("log_level", "4")
            // Chat frames are small and latency-bound: no Nagle delay on broker sockets.
            .set("socket.nagle.disable", "true");
        c
    }

    fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.cfg.linger_ms.to_string())
            .set("message.timeout.ms", self.cfg.message_timeout_ms.to_string())
            .set("queue.buffering.max.messages", self.cfg.queue_buffering_max_messages.to_string())
            .set("compression.type", "none")
            // librdkafka's default (CRC32) maps keys that differ only in a
            // few digits, like conversation ids built from snowflake user
            // ids, onto a subset of partitions: seen as 13 keys all on 2 of 4
            // partitions, leaving one logic process idle. murmur2 spreads
            // them, and places keys as the Java client does.
            .set("partitioner", "murmur2_random");
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

    /// A group member's settings: [`Self::consumer_config`] plus static
    /// membership (`group.instance.id` = the client id) when configured.
    fn member_config(&self, client_id: &str, group: &str) -> ClientConfig {
        let mut c = self.consumer_config(client_id, group);
        if self.cfg.static_membership {
            c.set("group.instance.id", client_id);
        }
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
            self.member_config(client_id, group).create_with_context(GroupContext::default()).map_err(broker_err)?;
        inner.subscribe(&[topic]).map_err(broker_err)?;
        Ok(KafkaConsumer::new(inner, topic, true, None))
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
        Ok(KafkaConsumer::new(inner, topic, false, Some((partition as i32, high))))
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
        // The controller has the topic; wait until the broker's metadata
        // shows it too (Apache Kafka propagates it asynchronously), so a
        // producer or consumer created next finds its partitions.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5)).map_err(broker_err)?;
            let known =
                md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            if known {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(BusError::UnknownTopic(topic.into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    /// Bumped on every assignment change: the consumer's expected offsets
    /// are stale after one (a partition may come back at another offset).
    rebalances: Arc<AtomicU64>,
    notify: Arc<tokio::sync::Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Logged at info: a member that stops consuming is first suspected
        // of having lost its partitions.
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = %partition_list(tpl), "partitions assigned");
                self.assigned.store(true, Ordering::Release);
                self.notify.notify_waiters();
            }
            Rebalance::Revoke(tpl) => info!(partitions = %partition_list(tpl), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}

/// `topic[0,1]` for the log.
fn partition_list(tpl: &TopicPartitionList) -> String {
    let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for e in tpl.elements() {
        by_topic.entry(e.topic().to_owned()).or_default().push(e.partition());
    }
    by_topic.iter().map(|(t, p)| format!("{t}{p:?}")).collect::<Vec<_>>().join(" ")
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

/// How often a consumer goes back for a skipped offset before accepting
/// the gap, and the pause before each try (grows linearly).
const GAP_RETRIES: u32 = 20;
const GAP_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// rdkafka consumer behind the bus trait. Offsets are committed only by
/// [`Consumer::commit`], i.e. after the caller processed the batch.
///
/// Gap guard: GoChat's topics are neither compacted nor transactional, so a
/// partition's offsets are contiguous and a record past the next expected
/// offset means the broker answered a fetch before an earlier batch was
/// readable. tansu 0.6 (memory engine) does this when producers append to a
/// partition concurrently: it advances the high watermark before the batch
/// is stored. The consumer then seeks back to the expected offset and
/// fetches again; after [`GAP_RETRIES`] tries it accepts the gap with a
/// warning (a real gap, e.g. a topic someone compacted). Apache Kafka and
/// Redpanda never trigger it.
pub struct KafkaConsumer<R> {
    inner: StreamConsumer<GroupContext, R>,
    /// Next offset to commit per partition of `topic`, from batches handed out.
    pending: HashMap<i32, i64>,
    /// The one topic this consumer reads.
    topic: String,
    commits: bool,
    guard: GapGuard,
}

/// The gap guard's state (see [`KafkaConsumer`]).
#[derive(Default)]
struct GapGuard {
    /// Next offset expected per partition (each consumer reads one
    /// topic), cleared on rebalance.
    expected: HashMap<i32, i64>,
    /// Rebalance count `expected` belongs to.
    generation: u64,
    /// The gap being repaired: partition, expected offset, tries.
    gap: Option<(i32, i64, u32)>,
    repaired: u64,
}

/// What to do with a record, given the offset the partition should be at.
enum Next {
    Take,
    /// Go back to this offset (an earlier batch was not readable yet).
    Refetch(i64),
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
    fn new(inner: StreamConsumer<GroupContext, R>, topic: &str, commits: bool, start: Option<(i32, i64)>) -> Self {
        let topic = topic.to_owned();
        let generation = inner.context().rebalances.load(Ordering::Acquire);
        let guard = GapGuard { expected: start.into_iter().collect(), generation, ..Default::default() };
        Self { inner, pending: HashMap::new(), topic, commits, guard }
    }

    /// Handle to learn when the group assigned this member its partitions.
    pub fn group_context(&self) -> GroupContext {
        GroupContext::clone(self.inner.context())
    }

    /// Skipped offsets this consumer went back for and then read (see the
    /// gap guard on [`KafkaConsumer`]).
    pub fn gaps_repaired(&self) -> u64 {
        self.guard.repaired
    }
}

impl GapGuard {
    /// Check a record of `topic` at (`partition`, `offset`) against the
    /// partition's expected offset; `generation` is the consumer's current
    /// rebalance count. Pure bookkeeping (the caller seeks), so unit-tested.
    fn check(&mut self, generation: u64, topic: &str, partition: i32, offset: i64) -> Next {
        if generation != self.generation {
            self.generation = generation;
            self.expected.clear();
            self.gap = None;
        }
        let key = partition;
        match self.expected.get(&key).copied() {
            Some(want) if offset > want => {
                let tries = match &self.gap {
                    Some((k, at, tries)) if *k == key && *at == want => *tries,
                    _ => 0,
                };
                if tries < GAP_RETRIES {
                    self.gap = Some((key, want, tries + 1));
                    return Next::Refetch(want);
                }
                warn!(
                    topic,
                    partition,
                    expected = want,
                    got = offset,
                    "offsets skipped after {GAP_RETRIES} refetches; accepting the gap"
                );
                self.gap = None;
            }
            _ => {
                if matches!(&self.gap, Some((k, at, _)) if *k == key && *at == offset) {
                    self.repaired += 1;
                    debug!(topic, partition, offset, "skipped offset refetched");
                    self.gap = None;
                }
            }
        }
        // Also when the offset went back (a seek, or a partition resumed
        // from its committed offset): follow the broker.
        self.expected.insert(key, offset + 1);
        Next::Take
    }
}

impl<R: AsyncRuntime> KafkaConsumer<R> {
    /// Add `rec` to `batch`, or, when the gap guard finds offsets missing
    /// before it, return the (partition, offset) to fetch again from.
    fn admit(&mut self, rec: Record, batch: &mut Vec<Record>) -> Result<(), (i32, i64)> {
        let generation = self.inner.context().rebalances.load(Ordering::Acquire);
        let (partition, offset) = (rec.partition as i32, rec.offset as i64);
        match self.guard.check(generation, &self.topic, partition, offset) {
            Next::Take => {
                self.pending.insert(partition, offset + 1);
                batch.push(rec);
                Ok(())
            }
            Next::Refetch(at) => Err((partition, at)),
        }
    }

    /// Pause briefly, then move the partition back to `offset`: librdkafka
    /// drops what it prefetched past it and fetches again from there.
    async fn refetch(&mut self, (partition, offset): (i32, i64)) {
        let topic = self.topic.as_str();
        let tries = self.guard.gap.as_ref().map_or(1, |g| g.2);
        debug!(topic, partition, offset, tries, "offset skipped by the broker; fetching it again");
        R::delay_for(GAP_RETRY_PAUSE * tries).await;
        if let Err(e) = self.inner.seek(topic, partition, Offset::Offset(offset), Duration::from_secs(5)) {
            warn!(topic, partition, offset, error = %e, "seek back to a skipped offset failed");
        }
    }
}

impl<R: AsyncRuntime + Send + Sync + 'static> Consumer for KafkaConsumer<R> {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            let mut batch = Vec::new();
            while batch.is_empty() {
                let rec = match self.inner.recv().await {
                    Ok(m) => to_record(&m),
                    Err(e) => {
                        // Transient broker errors surface here; librdkafka reconnects by itself.
                        warn!(error = %e, "kafka consume error");
                        R::delay_for(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(back) = self.admit(rec, &mut batch) {
                    self.refetch(back).await;
                }
            }
            // Take whatever is already fetched, without waiting.
            while batch.len() < max {
                let rec = match self.inner.recv().now_or_never() {
                    Some(Ok(m)) => to_record(&m),
                    _ => break,
                };
                if let Err(back) = self.admit(rec, &mut batch) {
                    // The batch so far is complete: records are in offset
                    // order per partition.
                    self.refetch(back).await;
                    break;
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
            for (partition, next) in self.pending.drain() {
                tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next)).map_err(broker_err)?;
            }
            self.inner.commit(&tpl, CommitMode::Async).map_err(broker_err)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(n: &Next) -> bool {
        matches!(n, Next::Take)
    }

    #[test]
    fn contiguous_offsets_are_taken() {
        let mut g = GapGuard::default();
        for o in 0..100 {
            assert!(take(&g.check(0, "t", 3, o)));
        }
        assert_eq!(g.repaired, 0);
    }

    #[test]
    fn a_skipped_offset_is_fetched_again_and_counted() {
        let mut g = GapGuard::default();
        assert!(take(&g.check(0, "t", 0, 10)));
        assert!(matches!(g.check(0, "t", 0, 12), Next::Refetch(11)));
        // Still not readable: the broker returns 12 again.
        assert!(matches!(g.check(0, "t", 0, 12), Next::Refetch(11)));
        assert!(take(&g.check(0, "t", 0, 11)));
        assert!(take(&g.check(0, "t", 0, 12)));
        assert_eq!(g.repaired, 1);
        // Other partitions are tracked on their own.
        assert!(take(&g.check(0, "t", 1, 500)));
        assert!(take(&g.check(0, "t", 1, 501)));
    }

    #[test]
    fn a_real_gap_is_accepted_after_the_retries() {
        let mut g = GapGuard::default();
        assert!(take(&g.check(0, "t", 0, 0)));
        for _ in 0..GAP_RETRIES {
            assert!(matches!(g.check(0, "t", 0, 5), Next::Refetch(1)));
        }
        assert!(take(&g.check(0, "t", 0, 5)));
        assert!(take(&g.check(0, "t", 0, 6)));
        assert_eq!(g.repaired, 0);
    }

    #[test]
    fn a_rebalance_or_a_step_back_resets_the_expectation() {
        let mut g = GapGuard::default();
        assert!(take(&g.check(0, "t", 0, 40)));
        // The partition came back after a rebalance at another member's commit.
        assert!(take(&g.check(1, "t", 0, 90)));
        // Resumed from an earlier committed offset: follow the broker.
        assert!(take(&g.check(1, "t", 0, 70)));
        assert!(matches!(g.check(1, "t", 0, 72), Next::Refetch(71)));
    }

    #[test]
    fn a_partition_consumer_checks_its_first_record_against_its_start() {
        let mut g = GapGuard { expected: [(2, 300)].into_iter().collect(), ..Default::default() };
        assert!(matches!(g.check(0, "t", 2, 301), Next::Refetch(300)));
        assert!(take(&g.check(0, "t", 2, 300)));
        assert_eq!(g.repaired, 1);
    }
}
