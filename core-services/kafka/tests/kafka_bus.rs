//! The Kafka bus against a real broker (Apache Kafka, started by
//! deploy/test-services.sh; GOCHAT_TEST_KAFKA_BROKERS overrides the address).
//! These tests fail, never skip, when the broker is missing.

use bytes::Bytes;
use gochat_common::bus::{Consumer, Producer, Record};
use gochat_kafka::{Kafka, KafkaConfig, NaiveRuntime, TokioRuntime};
use std::time::Duration;

fn settings() -> Kafka {
    let brokers = std::env::var("GOCHAT_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let addr: std::net::SocketAddr =
        brokers.split(',').next().unwrap().parse().expect("GOCHAT_TEST_KAFKA_BROKERS host:port");
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("kafka broker at {brokers} unreachable ({e}); run deploy/test-services.sh up"));
    Kafka::new(KafkaConfig { brokers, fetch_wait_max_ms: 5, ..Default::default() })
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t.{name}.{}.{n}", std::process::id())
}

async fn collect(consumer: &mut dyn Consumer, want: usize, within: Duration) -> Vec<Record> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < want {
        match tokio::time::timeout_at(deadline, consumer.next_batch(64)).await {
            Ok(Ok(b)) => got.extend(b),
            Ok(Err(e)) => panic!("consume failed: {e}"),
            Err(_) => panic!("only {} of {want} records within {within:?}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_order_per_partition_and_committed_offsets_are_honoured() {
    let s = settings();
    let topic = unique("order");
    s.ensure_topic(&topic, 4).await.unwrap();
    s.ensure_topic(&topic, 4).await.expect("ensure_topic is idempotent");
    let producer = s.producer::<TokioRuntime>("test-producer").unwrap();
    assert_eq!(producer.partitions(&topic).unwrap(), 4);
    for i in 0..200u32 {
        let key = format!("conv-{}", i % 10);
        producer.send(&topic, key.as_bytes(), None, Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    let group = unique("group");
    let mut consumer = s.group_consumer::<TokioRuntime>("test-consumer-1", &group, &topic).unwrap();
    let got = collect(&mut consumer, 200, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 200);
    for k in 0..10u32 {
        let key = format!("conv-{k}");
        let mine: Vec<&Record> = got.iter().filter(|r| r.key == key.as_bytes()).collect();
        assert_eq!(mine.len(), 20);
        assert!(mine.iter().all(|r| r.partition == mine[0].partition), "one key, one partition");
        let values: Vec<u32> = mine.iter().map(|r| u32::from_be_bytes(r.payload[..4].try_into().unwrap())).collect();
        assert_eq!(values, (0..20).map(|j| j * 10 + k).collect::<Vec<_>>(), "per-key order");
    }
    consumer.commit().await.unwrap();
    // let the async commit reach the broker, then leave the group
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(consumer);

    for i in 200..205u32 {
        producer.send(&topic, b"conv-0", None, Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    let mut again = s.group_consumer::<TokioRuntime>("test-consumer-2", &group, &topic).unwrap();
    let rest = collect(&mut again, 5, Duration::from_secs(60)).await;
    let values: Vec<u32> = rest.iter().map(|r| u32::from_be_bytes(r.payload[..4].try_into().unwrap())).collect();
    assert_eq!(values, vec![200, 201, 202, 203, 204], "a new member resumes after the committed offsets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_consumer_sees_only_its_partition() {
    let s = settings();
    let topic = unique("push");
    s.ensure_topic(&topic, 2).await.unwrap();
    let producer = s.producer::<TokioRuntime>("push-producer").unwrap();
    // Records from before the consumer exists are not its business.
    producer.send(&topic, b"", Some(1), Bytes::from_static(b"old")).await.unwrap();
    let mut shard1 = s.partition_consumer::<TokioRuntime>("shard-1", &topic, 1).unwrap();
    // Produced right after creation, before any fetch: the start offset was
    // resolved when the consumer was made, so nothing is skipped.
    for i in 0..10u8 {
        producer.send(&topic, b"", Some((i % 2) as u32), Bytes::from(vec![i])).await.unwrap();
    }
    let got = collect(&mut shard1, 5, Duration::from_secs(30)).await;
    assert!(got.iter().all(|r| r.partition == 1));
    assert_eq!(got.iter().map(|r| r.payload[0]).collect::<Vec<_>>(), vec![1, 3, 5, 7, 9]);
}

#[test]
fn produce_and_consume_from_a_glommio_executor() {
    let s = settings();
    let topic = unique("glommio");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(s.ensure_topic(&topic, 1)).unwrap();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let producer = s.producer::<NaiveRuntime>("glommio-producer").unwrap();
            let mut consumer = s.group_consumer::<NaiveRuntime>("glommio-consumer", &unique("g"), &topic).unwrap();
            producer.try_send(&topic, b"k", None, Bytes::from_static(b"fire-and-forget")).unwrap();
            producer.send(&topic, b"k", None, Bytes::from_static(b"awaited")).await.unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                got.extend(consumer.next_batch(10).await.unwrap());
            }
            got.into_iter().map(|r| r.payload).collect::<Vec<_>>()
        })
        .unwrap();
    let payloads = handle.join().unwrap();
    assert_eq!(payloads, vec![Bytes::from_static(b"fire-and-forget"), Bytes::from_static(b"awaited")]);
}

/// Several producers (like a gateway's shards) append to ONE partition at
/// once while a member consumes it live: every record must be consumed, at
/// contiguous offsets. tansu 0.6's memory engine advances the high watermark
/// before the batch is stored, so a fetch can return offset n+1 while n is
/// still being written; the consumer's gap guard must go back for n.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_on_one_partition_lose_nothing() {
    const PRODUCERS: u32 = 8;
    const EACH: u32 = 1500;
    let s = settings();
    let topic = unique("race");
    s.ensure_topic(&topic, 1).await.unwrap();
    let group = unique("race-group");
    let mut consumer = s.group_consumer::<TokioRuntime>("race-consumer", &group, &topic).unwrap();
    let ctx = consumer.group_context();
    let reader = tokio::spawn(async move {
        let got = collect(&mut consumer, (PRODUCERS * EACH) as usize, Duration::from_secs(120)).await;
        consumer.commit().await.unwrap();
        (got, consumer.gaps_repaired())
    });
    assert!(ctx.wait_assigned(Duration::from_secs(30)).await, "no assignment");
    let writers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let producer = s.producer::<TokioRuntime>(&format!("race-producer-{p}")).unwrap();
            let topic = topic.clone();
            tokio::spawn(async move {
                let key = format!("k{p}");
                // Windows of concurrent sends, like a shard with many connections.
                for chunk in (0..EACH).collect::<Vec<_>>().chunks(16) {
                    let sends = chunk.iter().map(|i| {
                        let v = Bytes::from(format!("{p}:{i}"));
                        producer.send(&topic, key.as_bytes(), None, v)
                    });
                    for r in futures_util::future::join_all(sends).await {
                        r.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (got, repaired) = reader.await.unwrap();
    eprintln!("skipped offsets fetched again: {repaired}");
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    let odd: Vec<(usize, u64)> =
        offsets.iter().copied().enumerate().filter(|(i, o)| *i as u64 != *o).take(10).collect();
    assert!(odd.is_empty(), "offsets out of place (index, offset): {odd:?}");
    assert_eq!(offsets, (0..(PRODUCERS * EACH) as u64).collect::<Vec<_>>(), "every offset, once, in order");
    let mut values: Vec<String> = got.iter().map(|r| String::from_utf8(r.payload.to_vec()).unwrap()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), (PRODUCERS * EACH) as usize);
}

/// Conversation and user keys built from snowflake ids (taken from a run
/// where librdkafka's default CRC32 partitioner put all of them on
/// partitions 2 and 3 of 4) spread over every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_keys_spread_over_every_partition() {
    let s = settings();
    let topic = unique("spread");
    s.ensure_topic(&topic, 4).await.unwrap();
    let producer = s.producer::<TokioRuntime>("spread-producer").unwrap();
    let hub = "383058467738357760";
    let spokes = [
        "383058468124233728",
        "383058472947683328",
        "383058473438416896",
        "383058471521619968",
        "383058472003964928",
        "383058472444366848",
    ];
    let mut keys: Vec<String> = spokes.iter().map(|u| format!("s_{hub}_{u}")).collect();
    keys.extend(spokes.iter().map(|u| format!("u{u}")));
    for k in &keys {
        producer.send(&topic, k.as_bytes(), None, Bytes::from_static(b"x")).await.unwrap();
    }
    let group = unique("spread-group");
    let mut consumer = s.group_consumer::<TokioRuntime>("spread-consumer", &group, &topic).unwrap();
    let got = collect(&mut consumer, keys.len(), Duration::from_secs(60)).await;
    let used: std::collections::BTreeSet<u32> = got.iter().map(|r| r.partition).collect();
    assert_eq!(used.len(), 4, "partitions used: {used:?}");
}

/// A real, unhealable gap: a foreign transactional writer aborts a
/// transaction on partition 0, so offsets 10..=15 (five aborted records and
/// the abort marker) are never readable. On a group topic (im.upstream,
/// im.task) the consumer halts partition 0 at the gap: nothing past it is
/// handed out or committed, it is counted, and partition 1 keeps flowing.
/// A push partition's consumer accepts the gap and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealable_gap_halts_a_group_partition_but_not_a_push_partition() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    // Members leave on drop (no static membership), so the second member
    // below is assigned at once.
    let s = Kafka::new(KafkaConfig { static_membership: false, ..settings().config().clone() });
    let topic = unique("gap");
    s.ensure_topic(&topic, 2).await.unwrap();
    let producer = s.producer::<TokioRuntime>("gap-producer").unwrap();
    let mut push = s.partition_consumer::<TokioRuntime>("gap-push", &topic, 0).unwrap();
    let send = |p: u32, v: String| producer.send(&topic, b"", Some(p), Bytes::from(v));
    for i in 0..10 {
        send(0, format!("before-{i}")).await.unwrap();
    }
    let txn: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.config().brokers)
        .set("transactional.id", format!("gap-txn-{}", std::process::id()))
        .create()
        .unwrap();
    txn.init_transactions(Duration::from_secs(30)).unwrap();
    txn.begin_transaction().unwrap();
    for i in 0..5 {
        txn.send(BaseRecord::<[u8], str>::to(&topic).partition(0).payload(&format!("aborted-{i}"))).unwrap();
    }
    txn.flush(Duration::from_secs(10)).unwrap();
    txn.abort_transaction(Duration::from_secs(30)).unwrap();
    for i in 0..5 {
        send(0, format!("after-{i}")).await.unwrap();
    }

    let group = unique("gap-group");
    let mut member = s.group_consumer::<TokioRuntime>("gap-member", &group, &topic).unwrap();
    let before = collect(&mut member, 10, Duration::from_secs(60)).await;
    assert!(before.iter().all(|r| r.partition == 0 && r.offset < 10), "{before:?}");
    // Partition 1 keeps flowing while partition 0 is stuck at its gap.
    let flowing = tokio::spawn({
        let topic = topic.clone();
        let producer = s.producer::<TokioRuntime>("gap-producer-1").unwrap();
        async move {
            for i in 0..20 {
                producer.send(&topic, b"", Some(1), Bytes::from(format!("p1-{i}"))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut later = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while let Ok(batch) = tokio::time::timeout_at(until, member.next_batch(64)).await {
        later.extend(batch.unwrap());
    }
    flowing.await.unwrap();
    assert!(later.iter().all(|r| r.partition == 1), "nothing past the gap on partition 0: {later:?}");
    assert!(later.len() >= 15, "partition 1 flowed meanwhile: {} records", later.len());
    let counts = member.gap_counts();
    assert_eq!((counts.unhealed, counts.halted), (1, 1), "{counts:?}");
    member.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the commit is asynchronous
    drop(member);
    // Nothing past the gap was committed: a new member starts at the gap,
    // sees it (its expectation is the committed offset), and halts too.
    let mut next = s.group_consumer::<TokioRuntime>("gap-member-2", &group, &topic).unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(batch) = tokio::time::timeout_at(until, next.next_batch(64)).await {
        assert!(batch.unwrap().iter().all(|r| r.partition == 1), "the next member resumed past the gap");
    }
    assert_eq!(next.gap_counts().halted, 1, "{:?}", next.gap_counts());

    // The push partition takes the records after the gap.
    let pushed = collect(&mut push, 15, Duration::from_secs(30)).await;
    let values: Vec<String> = pushed.iter().map(|r| String::from_utf8(r.payload.to_vec()).unwrap()).collect();
    let want: Vec<String> =
        (0..10).map(|i| format!("before-{i}")).chain((0..5).map(|i| format!("after-{i}"))).collect();
    assert_eq!(values, want);
    assert_eq!(push.gap_counts().unhealed, 1);
}
