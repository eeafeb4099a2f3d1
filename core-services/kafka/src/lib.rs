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
use gochat_common::metrics::{Counter, Gauge, TextEncoder};
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
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub mod gap;
use gap::{GapCounts, GapGuard, GapPolicy, Next};

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
        let k = &self.cfg;
        let security = [
            ("security.protocol", &k.security_protocol),
            ("sasl.mechanism", &k.sasl_mechanism),
            ("sasl.username", &k.sasl_username),
            ("sasl.password", &k.sasl_password),
            ("ssl.ca.location", &k.ssl_ca_location),
        ];
        for (key, value) in security.into_iter().filter(|(_, v)| !v.is_empty()) {
            c.set(key, value);
        }
        for (key, value) in &k.extra {
            c.set(key, value);
        }
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
            .set("max.poll.interval.ms", self.cfg.max_poll_interval_ms.max(10_000).to_string())
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
        Ok(KafkaConsumer::new(inner, topic, true, GapPolicy::Halt, None))
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
        Ok(KafkaConsumer::new(inner, topic, false, GapPolicy::Accept, Some((partition as i32, high))))
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

/// A consumer's health, shared with whoever renders `/metrics`.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Assignment changes seen by this member.
    pub rebalances: Counter,
    /// Records dropped from a batch in hand because their partition was
    /// revoked before the batch was done (the new owner processes them).
    pub revoked_in_flight: Counter,
    pub gaps_repaired: Gauge,
    pub gaps_unhealed: Gauge,
    pub partitions_halted: Gauge,
}

impl ConsumerStats {
    /// Render as Prometheus families labelled `topic`.
    pub fn render(&self, enc: &mut TextEncoder, topic: &str) {
        let labels = [("topic", topic)];
        let rows: [(&str, &str, &str, u64); 5] = [
            (
                "gochat_kafka_rebalances_total",
                "counter",
                "assignment changes seen by this member",
                self.rebalances.get(),
            ),
            (
                "gochat_kafka_revoked_in_flight_total",
                "counter",
                "records of a batch in hand dropped because their partition was revoked",
                self.revoked_in_flight.get(),
            ),
            (
                "gochat_kafka_gaps_repaired_total",
                "counter",
                "skipped offsets read after going back for them",
                self.gaps_repaired.get(),
            ),
            (
                "gochat_kafka_gaps_unhealed_total",
                "counter",
                "offset gaps that did not heal (accepted on push partitions, halting elsewhere)",
                self.gaps_unhealed.get(),
            ),
            (
                "gochat_kafka_partitions_halted",
                "gauge",
                "partitions stopped at an unhealed gap (alert on > 0)",
                self.partitions_halted.get(),
            ),
        ];
        for (name, kind, help, v) in rows {
            enc.family(name, kind, help).sample(name, &labels, v);
        }
    }
}

/// Records the group's assignments: a process reports ready only once it
/// really consumes; revoked partitions are remembered until the consumer
/// drops their records; while the consumer holds a batch, newly assigned
/// partitions are paused too.
#[derive(Default, Clone)]
pub struct GroupContext {
    assigned: Arc<AtomicBool>,
    /// Bumped on every assignment change: the consumer's expected offsets
    /// are stale after one (a partition may come back at another offset).
    rebalances: Arc<AtomicU64>,
    /// Partitions revoked and not yet dropped by the consumer.
    revoked: Arc<Mutex<Vec<i32>>>,
    /// The consumer holds its batch: fetching is paused.
    held: Arc<AtomicBool>,
    stats: Arc<ConsumerStats>,
    notify: Arc<tokio::sync::Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Logged at info: a member that stops consuming is first suspected
        // of having lost its partitions.
        self.rebalances.fetch_add(1, Ordering::AcqRel);
        self.stats.rebalances.inc();
        match rebalance {
            Rebalance::Assign(tpl) => {
                info!(partitions = %partition_list(tpl), "partitions assigned");
                if self.held.load(Ordering::Acquire) {
                    if let Err(e) = consumer.pause(tpl) {
                        warn!(error = %e, "pausing newly assigned partitions failed");
                    }
                }
                self.assigned.store(true, Ordering::Release);
                self.notify.notify_waiters();
            }
            Rebalance::Revoke(tpl) => {
                info!(partitions = %partition_list(tpl), "partitions revoked");
                self.revoked.lock().expect("revoked list").extend(tpl.elements().iter().map(|e| e.partition()));
            }
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

    /// The consumer's counters, for `/metrics`.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }
}

/// rdkafka consumer behind the bus trait. Offsets are committed only by
/// [`Consumer::commit`], i.e. after the caller processed the batch, and
/// never for a partition revoked meanwhile. Every record passes the gap
/// guard ([`gap`]).
pub struct KafkaConsumer<R> {
    inner: StreamConsumer<GroupContext, R>,
    /// Next offset to commit per partition of `topic`, from batches handed out.
    pending: HashMap<i32, i64>,
    /// The one topic this consumer reads.
    topic: String,
    commits: bool,
    guard: GapGuard,
    /// Records received while holding a batch (normally none: fetching is
    /// paused), handed out next.
    stash: VecDeque<Record>,
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
    fn new(
        inner: StreamConsumer<GroupContext, R>,
        topic: &str,
        commits: bool,
        policy: GapPolicy,
        start: Option<(i32, i64)>,
    ) -> Self {
        let topic = topic.to_owned();
        let generation = inner.context().rebalances.load(Ordering::Acquire);
        let guard = GapGuard::new(policy, generation, start);
        Self { inner, pending: HashMap::new(), topic, commits, guard, stash: VecDeque::new() }
    }

    /// Handle to learn when the group assigned this member its partitions.
    pub fn group_context(&self) -> GroupContext {
        GroupContext::clone(self.inner.context())
    }

    /// Skipped offsets this consumer went back for and then read (see [`gap`]).
    pub fn gaps_repaired(&self) -> u64 {
        self.guard.counts().repaired
    }

    /// The gap guard's counters.
    pub fn gap_counts(&self) -> GapCounts {
        self.guard.counts()
    }

    fn publish_gap_counts(&self) {
        let (c, s) = (self.guard.counts(), &self.inner.context().stats);
        s.gaps_repaired.set(c.repaired);
        s.gaps_unhealed.set(c.unhealed);
        s.partitions_halted.set(c.halted);
    }

    /// Forget revoked partitions: no commit for them, and report them so
    /// their records in hand are dropped.
    fn drain_revoked(&mut self) -> Vec<u32> {
        let revoked = std::mem::take(&mut *self.inner.context().revoked.lock().expect("revoked list"));
        for p in &revoked {
            self.pending.remove(p);
        }
        revoked.into_iter().map(|p| p.max(0) as u32).collect()
    }
}

impl<R: AsyncRuntime> KafkaConsumer<R> {
    /// Add `rec` to `batch` if the gap guard takes it; start going back
    /// for a gap it finds.
    fn admit(&mut self, rec: Record, batch: &mut Vec<Record>) {
        let generation = self.inner.context().rebalances.load(Ordering::Acquire);
        let (partition, offset) = (rec.partition as i32, rec.offset as i64);
        if self.commits && self.guard.needs_seed(generation, partition) {
            self.seed_from_commit(partition);
        }
        match self.guard.check(generation, Instant::now(), &self.topic, partition, offset) {
            Next::Take => {
                self.pending.insert(partition, offset + 1);
                batch.push(rec);
            }
            Next::Drop => {}
            Next::Seek(at) => self.seek(partition, at),
        }
        self.publish_gap_counts();
    }

    /// Tell the gap guard where `partition` should continue: the group's
    /// committed offset (one broker round trip, once per partition and
    /// rebalance, on a group member only).
    fn seed_from_commit(&mut self, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        match self.inner.committed_offsets(tpl, Duration::from_secs(5)) {
            Ok(c) => {
                if let Some(Offset::Offset(at)) = c.find_partition(&self.topic, partition).map(|e| e.offset()) {
                    self.guard.seed(partition, at);
                }
            }
            Err(e) => warn!(topic = %self.topic, partition, error = %e, "reading the committed offset failed"),
        }
    }

    /// Move `partition` back to `offset` without waiting (timeout 0 makes
    /// librdkafka's seek asynchronous): it drops what it prefetched past
    /// the offset and fetches again from there.
    fn seek(&self, partition: i32, offset: i64) {
        let topic = self.topic.as_str();
        debug!(topic, partition, offset, "seeking back to a skipped offset");
        if let Err(e) = self.inner.seek(topic, partition, Offset::Offset(offset), Duration::ZERO) {
            warn!(topic, partition, offset, error = %e, "seek back to a skipped offset failed");
        }
    }

    /// Perform the gap guard's retries that are due.
    fn seek_due(&mut self) {
        let due = self.guard.due(Instant::now(), &self.topic);
        for (partition, offset) in due {
            self.seek(partition, offset);
        }
        self.publish_gap_counts();
    }

    /// Receive one record, or None when the gap guard's next retry is due first.
    async fn recv_or_retry(&mut self) -> Option<Result<Record, KafkaError>> {
        let recv = async { self.inner.recv().await.map(|m| to_record(&m)) };
        match self.guard.next_deadline() {
            None => Some(recv.await),
            Some(at) => {
                let wait = R::delay_for(at.saturating_duration_since(Instant::now()));
                match futures_util::future::select(std::pin::pin!(recv), std::pin::pin!(wait)).await {
                    futures_util::future::Either::Left((r, _)) => Some(r),
                    futures_util::future::Either::Right(_) => None,
                }
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        let ctx = self.inner.context();
        ctx.held.store(paused, Ordering::Release);
        let assignment = match self.inner.assignment() {
            Ok(a) => a,
            Err(e) => return warn!(error = %e, "reading the assignment failed"),
        };
        let r = if paused { self.inner.pause(&assignment) } else { self.inner.resume(&assignment) };
        if let Err(e) = r {
            warn!(paused, error = %e, "pausing or resuming partitions failed");
        }
    }
}

impl<R: AsyncRuntime + Send + Sync + 'static> Consumer for KafkaConsumer<R> {
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            if self.inner.context().held.load(Ordering::Acquire) {
                self.set_paused(false);
            }
            let mut batch = Vec::new();
            while let Some(rec) = self.stash.pop_front() {
                self.admit(rec, &mut batch);
            }
            while batch.is_empty() {
                self.seek_due();
                let rec = match self.recv_or_retry().await {
                    None => continue,
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        // Transient broker errors surface here; librdkafka reconnects by itself.
                        warn!(error = %e, "kafka consume error");
                        R::delay_for(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                self.admit(rec, &mut batch);
            }
            // Take whatever is already fetched, without waiting.
            while batch.len() < max {
                match self.inner.recv().now_or_never() {
                    Some(Ok(m)) => self.admit(to_record(&m), &mut batch),
                    _ => break,
                }
            }
            // A partition revoked while receiving belongs to another member now.
            let revoked = self.drain_revoked();
            if !revoked.is_empty() {
                let before = batch.len();
                batch.retain(|r| !revoked.contains(&r.partition));
                self.inner.context().stats.revoked_in_flight.add((before - batch.len()) as u64);
            }
            Ok(batch)
        })
    }

    fn hold(&mut self, pause: Duration) -> BoxFuture<'_, Result<Vec<u32>, BusError>> {
        Box::pin(async move {
            if !self.inner.context().held.load(Ordering::Acquire) {
                self.set_paused(true);
            }
            // Poll meanwhile: heartbeats, rebalances and max.poll.interval.ms
            // are serviced; fetching is paused, so records are rare (one
            // fetched just before the pause) and kept for the next batch.
            let deadline = Instant::now() + pause;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let recv = async { self.inner.recv().await.map(|m| to_record(&m)) };
                let wait = R::delay_for(left);
                match futures_util::future::select(std::pin::pin!(recv), std::pin::pin!(wait)).await {
                    futures_util::future::Either::Left((Ok(r), _)) => self.stash.push_back(r),
                    futures_util::future::Either::Left((Err(e), _)) => {
                        warn!(error = %e, "kafka consume error while holding a batch");
                        R::delay_for(left.min(Duration::from_millis(100))).await;
                    }
                    futures_util::future::Either::Right(_) => break,
                }
            }
            let revoked = self.drain_revoked();
            self.stash.retain(|r| !revoked.contains(&r.partition));
            Ok(revoked)
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.drain_revoked();
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
