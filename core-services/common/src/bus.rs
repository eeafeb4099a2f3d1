//! The bus between the gateway shards and the tokio tier, with Kafka's
//! semantics: named topics split into partitions, records routed by key (or an
//! explicit partition), order kept within a partition, consumers either in a
//! group (logic) or manually assigned one partition (a gateway shard).
//!
//! [`MemoryBus`] is the embedded implementation: one bounded queue per
//! partition. The Kafka implementation (cluster mode) slots in behind the same
//! traits. Futures here are executor-agnostic: glommio shards and tokio tasks
//! both drive them.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Topic names used on the message path, behind an optional prefix
/// (`kafka.topic_prefix`) so several deployments can share one broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    /// Client sends, syncs and session events; key = conversation or user.
    pub fn upstream(&self) -> String {
        format!("{}im.upstream", self.prefix)
    }
    /// Work for the task tier; key = conversation id.
    pub fn task(&self) -> String {
        format!("{}im.task", self.prefix)
    }
    /// Tasks waiting for a retry (header `not_before`).
    pub fn task_retry(&self) -> String {
        format!("{}im.task.retry", self.prefix)
    }
    /// Tasks that failed their last attempt, with header `reason`.
    pub fn task_dead(&self) -> String {
        format!("{}im.task.dlq", self.prefix)
    }
    /// Push topic of one gateway: one partition per shard.
    pub fn push(&self, gateway_id: &str) -> String {
        format!("{}im.push.{gateway_id}", self.prefix)
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BusError {
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("partition {partition} out of range for topic {topic}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("bus queue full")]
    QueueFull,
    #[error("bus closed")]
    Closed,
    #[error("partition {partition} of {topic} is already consumed")]
    AlreadyAssigned { topic: String, partition: u32 },
    #[error("broker error: {0}")]
    Broker(String),
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub key: Bytes,
    pub payload: Bytes,
}

/// Produces records. Shared by every task of a process.
pub trait Producer: Send + Sync + 'static {
    /// Enqueue without waiting; `QueueFull` under backpressure. The gateway's
    /// read path uses this so it never parks while holding a shard buffer.
    fn try_send(&self, topic: &str, key: &[u8], partition: Option<u32>, payload: Bytes) -> Result<(), BusError>;

    /// Enqueue, waiting for room.
    fn send<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        partition: Option<u32>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>>;

    /// Partition count of a topic (for keyed routing decisions and checks).
    fn partitions(&self, topic: &str) -> Result<u32, BusError>;
}

/// Consumes records of one or more partitions, in order per partition.
pub trait Consumer: Send + 'static {
    /// Wait for at least one record, then return up to `max` without waiting more.
    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Record>, BusError>>;
    /// Mark everything returned so far as processed (Kafka: commit offsets).
    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>>;
    /// Wait `pause` (a retry backoff) with the last batch still in hand,
    /// as a live consumer: fetching pauses until the next
    /// [`Self::next_batch`], group membership is serviced (Kafka: no
    /// eviction after `max.poll.interval.ms`, rebalances proceed). Returns
    /// the partitions revoked meanwhile: their records in hand belong to
    /// another member now and must be dropped, neither processed further
    /// nor committed.
    fn hold(&mut self, pause: Duration) -> BoxFuture<'_, Result<Vec<u32>, BusError>>;
}

/// Default partitioner: FNV-1a of the key. Kafka mode uses the broker
/// client's own partitioner; only per-key stability matters.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

struct MemPartition {
    tx: mpsc::Sender<Record>,
    rx: Mutex<Option<mpsc::Receiver<Record>>>,
    next_offset: AtomicU64,
}

struct MemTopic {
    partitions: Vec<MemPartition>,
}

/// In-process bus for `gochat dev`. Topics are declared up front
/// ([`MemoryBus::create_topic`]); producers then see an immutable topic table,
/// so producing takes no lock.
pub struct MemoryBus {
    topics: Mutex<HashMap<String, Arc<MemTopic>>>,
    capacity: usize,
}

impl MemoryBus {
    /// `capacity`: records buffered per partition before producers feel backpressure.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { topics: Mutex::new(HashMap::new()), capacity: capacity.max(1) })
    }

    /// Create a topic (idempotent when the partition count matches).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), BusError> {
        let mut topics = self.topics.lock().expect("bus lock");
        if let Some(t) = topics.get(name) {
            if t.partitions.len() as u32 == partitions {
                return Ok(());
            }
            return Err(BusError::Broker(format!("topic {name} exists with {} partitions", t.partitions.len())));
        }
        let parts = (0..partitions.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(self.capacity);
                MemPartition { tx, rx: Mutex::new(Some(rx)), next_offset: AtomicU64::new(0) }
            })
            .collect();
        topics.insert(name.to_owned(), Arc::new(MemTopic { partitions: parts }));
        Ok(())
    }

    /// A producer over the topics that exist now.
    pub fn producer(&self) -> Arc<dyn Producer> {
        let snapshot = self.topics.lock().expect("bus lock").clone();
        Arc::new(MemProducer { topics: snapshot })
    }

    fn topic(&self, name: &str) -> Result<Arc<MemTopic>, BusError> {
        self.topics.lock().expect("bus lock").get(name).cloned().ok_or_else(|| BusError::UnknownTopic(name.into()))
    }

    /// Consume one partition (a gateway shard's push partition).
    pub fn assign(&self, topic: &str, partition: u32) -> Result<Box<dyn Consumer>, BusError> {
        let t = self.topic(topic)?;
        let p = t
            .partitions
            .get(partition as usize)
            .ok_or_else(|| BusError::UnknownPartition { topic: topic.into(), partition })?;
        let rx =
            p.rx.lock()
                .expect("bus lock")
                .take()
                .ok_or_else(|| BusError::AlreadyAssigned { topic: topic.into(), partition })?;
        Ok(Box::new(MemConsumer { receivers: vec![rx], next: 0 }))
    }

    /// Consume every partition of a topic: the embedded consumer group has a
    /// single member, so it owns all partitions (order is per partition).
    pub fn subscribe_all(&self, topic: &str) -> Result<Box<dyn Consumer>, BusError> {
        let t = self.topic(topic)?;
        let mut receivers = Vec::with_capacity(t.partitions.len());
        for (i, p) in t.partitions.iter().enumerate() {
            let rx =
                p.rx.lock()
                    .expect("bus lock")
                    .take()
                    .ok_or_else(|| BusError::AlreadyAssigned { topic: topic.into(), partition: i as u32 })?;
            receivers.push(rx);
        }
        Ok(Box::new(MemConsumer { receivers, next: 0 }))
    }
}

struct MemProducer {
    topics: HashMap<String, Arc<MemTopic>>,
}

impl MemProducer {
    fn route(&self, topic: &str, key: &[u8], partition: Option<u32>) -> Result<&MemPartition, BusError> {
        let t = self.topics.get(topic).ok_or_else(|| BusError::UnknownTopic(topic.into()))?;
        let n = t.partitions.len() as u32;
        let p = partition.unwrap_or_else(|| partition_for_key(key, n));
        t.partitions.get(p as usize).ok_or_else(|| BusError::UnknownPartition { topic: topic.into(), partition: p })
    }
}

fn record(p: &MemPartition, index: u32, key: &[u8], payload: Bytes) -> Record {
    Record {
        partition: index,
        offset: p.next_offset.fetch_add(1, Ordering::Relaxed),
        key: Bytes::copy_from_slice(key),
        payload,
    }
}

impl Producer for MemProducer {
    fn try_send(&self, topic: &str, key: &[u8], partition: Option<u32>, payload: Bytes) -> Result<(), BusError> {
        let p = self.route(topic, key, partition)?;
        let index = partition.unwrap_or_else(|| partition_for_key(key, self.topics[topic].partitions.len() as u32));
        p.tx.try_send(record(p, index, key, payload)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BusError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => BusError::Closed,
        })
    }

    fn send<'a>(
        &'a self,
        topic: &'a str,
        key: &'a [u8],
        partition: Option<u32>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let p = self.route(topic, key, partition)?;
            let index = partition.unwrap_or_else(|| partition_for_key(key, self.topics[topic].partitions.len() as u32));
            p.tx.send(record(p, index, key, payload)).await.map_err(|_| BusError::Closed)
        })
    }

    fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.topics.get(topic).map(|t| t.partitions.len() as u32).ok_or_else(|| BusError::UnknownTopic(topic.into()))
    }
}

struct MemConsumer {
    receivers: Vec<mpsc::Receiver<Record>>,
    /// Round-robin start so one busy partition cannot starve the others.
    next: usize,
}

impl Consumer for MemConsumer {
    fn hold(&mut self, pause: Duration) -> BoxFuture<'_, Result<Vec<u32>, BusError>> {
        // One member owns every partition of an in-process topic: nothing is revoked.
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            Ok(Vec::new())
        })
    }

    fn next_batch(&mut self, max: usize) -> BoxFuture<'_, Result<Vec<Record>, BusError>> {
        Box::pin(async move {
            let max = max.max(1);
            let first = std::future::poll_fn(|cx| {
                let n = self.receivers.len();
                let mut closed = 0;
                for i in 0..n {
                    let idx = (self.next + i) % n;
                    match self.receivers[idx].poll_recv(cx) {
                        std::task::Poll::Ready(Some(r)) => {
                            self.next = (idx + 1) % n;
                            return std::task::Poll::Ready(Some(r));
                        }
                        std::task::Poll::Ready(None) => closed += 1,
                        std::task::Poll::Pending => {}
                    }
                }
                if closed == n {
                    std::task::Poll::Ready(None)
                } else {
                    std::task::Poll::Pending
                }
            })
            .await
            .ok_or(BusError::Closed)?;
            let mut batch = Vec::with_capacity(max.min(64));
            batch.push(first);
            // Drain what is already there, partition by partition, keeping order.
            let n = self.receivers.len();
            'outer: for i in 0..n {
                let idx = (self.next + i) % n;
                while batch.len() < max {
                    match self.receivers[idx].try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => continue 'outer,
                    }
                }
                break;
            }
            Ok(batch)
        })
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<(), BusError>> {
        // In-process: nothing survives the process, so there is nothing to commit.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_records_keep_order_within_their_partition() {
        let bus = MemoryBus::new(1024);
        bus.create_topic("t", 4).unwrap();
        let producer = bus.producer();
        for i in 0..100u32 {
            let key = format!("k{}", i % 7);
            producer.send("t", key.as_bytes(), None, Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
        }
        let mut consumer = bus.subscribe_all("t").unwrap();
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(consumer.next_batch(16).await.unwrap());
        }
        for k in 0..7u32 {
            let key = format!("k{k}");
            let expected_partition = partition_for_key(key.as_bytes(), 4);
            let seq: Vec<u32> = got
                .iter()
                .filter(|r| r.key == key.as_bytes())
                .inspect(|r| assert_eq!(r.partition, expected_partition))
                .map(|r| u32::from_be_bytes(r.payload[..4].try_into().unwrap()))
                .collect();
            let mut sorted = seq.clone();
            sorted.sort();
            assert_eq!(seq, sorted, "key {key} out of order");
            assert_eq!(seq.len(), (0..100).filter(|i| i % 7 == k).count());
        }
    }

    #[tokio::test]
    async fn explicit_partition_assignment_and_backpressure() {
        let bus = MemoryBus::new(2);
        bus.create_topic("push", 2).unwrap();
        let producer = bus.producer();
        producer.try_send("push", b"", Some(1), Bytes::from_static(b"a")).unwrap();
        producer.try_send("push", b"", Some(1), Bytes::from_static(b"b")).unwrap();
        assert_eq!(producer.try_send("push", b"", Some(1), Bytes::from_static(b"c")), Err(BusError::QueueFull));
        assert!(matches!(
            producer.try_send("push", b"", Some(2), Bytes::new()),
            Err(BusError::UnknownPartition { .. })
        ));
        assert!(matches!(producer.try_send("nope", b"", None, Bytes::new()), Err(BusError::UnknownTopic(_))));
        let mut c1 = bus.assign("push", 1).unwrap();
        assert!(matches!(bus.assign("push", 1), Err(BusError::AlreadyAssigned { .. })));
        let batch = c1.next_batch(10).await.unwrap();
        assert_eq!(
            batch.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(batch[1].offset, 1);
    }
}
