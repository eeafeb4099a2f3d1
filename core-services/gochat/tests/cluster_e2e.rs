//! Cluster mode end to end: separate `gochat logic` and `gochat gateway`
//! processes over a real Kafka-protocol broker (tansu), real Redis and real
//! MariaDB, all started by deploy/test-services.sh (the tests fail without
//! them). Each test isolates itself with its own database, Redis key prefix
//! and topic prefix.

mod support;

use bytes::Bytes;
use gochat_common::bus::{Consumer, Producer};
use gochat_kafka::{Kafka, KafkaConfig, TokioRuntime};
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::*;

const SECRET: &str = "cluster-test-secret-cluster-test-secret-0123";

struct Cluster {
    env: Vec<(String, String)>,
    prefix: String,
    pub logic: Vec<Server>,
    pub gateways: Vec<Server>,
}

fn service(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn reachable(what: &str, addr: &str) {
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{what} at {addr} unreachable ({e}); run deploy/test-services.sh up"));
}

impl Cluster {
    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Migrate a fresh database, start `logic_count` logic processes and
    /// `gateway_count` gateways of 2 shards each.
    fn start(name: &str, logic_count: usize, gateway_count: usize) -> Self {
        let mysql = service("GOCHAT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:13306");
        let redis = service("GOCHAT_TEST_REDIS_URL", "redis://127.0.0.1:16379");
        let kafka = service("GOCHAT_TEST_KAFKA_BROKERS", "127.0.0.1:19092");
        reachable("MySQL", mysql.rsplit('@').next().unwrap().trim_end_matches('/'));
        reachable("Redis", redis.trim_start_matches("redis://").trim_end_matches('/'));
        reachable("Kafka", kafka.split(',').next().unwrap());
        let n = format!(
            "{name}{}x{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000
        );
        let prefix = format!("t{n}.");
        let env: Vec<(String, String)> = vec![
            ("GOCHAT_STORAGE__DATABASE_URL".into(), format!("{mysql}/gochat_c_{n}")),
            ("GOCHAT_REDIS__URL".into(), redis),
            ("GOCHAT_REDIS__KEY_PREFIX".into(), format!("t{n}:")),
            ("GOCHAT_KAFKA__BROKERS".into(), kafka),
            ("GOCHAT_KAFKA__TOPIC_PREFIX".into(), prefix.clone()),
            ("GOCHAT_LOGIC__UPSTREAM_PARTITIONS".into(), "4".into()),
            ("GOCHAT_AUTH__JWT_SECRET".into(), SECRET.into()),
        ];
        let mut c = Cluster { env, prefix, logic: Vec::new(), gateways: Vec::new() };
        let status = Command::new(env!("CARGO_BIN_EXE_gochat"))
            .args(["migrate", "--log-format", "json"])
            .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
            .unwrap();
        assert!(status.success(), "gochat migrate failed");
        for i in 0..logic_count {
            c.start_logic(i);
        }
        for i in 0..gateway_count {
            c.start_gateway(i);
        }
        c
    }

    fn start_logic(&mut self, i: usize) {
        let worker = (i + 1).to_string();
        let mut env = self.env_refs();
        env.push(("GOCHAT_WORKER_ID", &worker));
        env.push(("GOCHAT_LOGIC__HTTP_LISTEN", "127.0.0.1:0"));
        let (child, ready) = spawn_ready(&["logic"], &env);
        let addr = ready["http"].as_str().unwrap().parse().unwrap();
        self.logic.push(Server::attach(child, addr));
    }

    fn start_gateway(&mut self, i: usize) {
        let id = format!("gw{i}");
        let api = format!("http://{}", self.logic[0].addr);
        let mut env = self.env_refs();
        env.push(("GOCHAT_GATEWAY__ID", &id));
        env.push(("GOCHAT_GATEWAY__API_UPSTREAM", &api));
        let (child, ready) = spawn_ready(&["gateway", "--listen", "127.0.0.1:0", "--shards", "2"], &env);
        let addr = ready["addr"].as_str().unwrap().parse().unwrap();
        self.gateways.push(Server::attach(child, addr));
    }

    fn kafka(&self) -> Kafka {
        let brokers = self.env.iter().find(|(k, _)| k == "GOCHAT_KAFKA__BROKERS").unwrap().1.clone();
        Kafka::new(KafkaConfig { brokers, ..Default::default() })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_across_gateways() {
    let c = Cluster::start("e2e", 1, 2);
    let (a, b) = (&c.gateways[0], &c.gateways[1]);
    // REST through either gateway reaches logic
    let (alice, alice_tok) = a.user("alice").await;
    let (bob, bob_tok) = b.user("bob").await;
    let cid = conv_id(&alice, &bob);

    let mut a1 = a.connect(&alice_tok).await; // sender on gateway A
    let mut a2 = a.connect(&alice_tok).await; // sender's second device on gateway A
    let mut b1 = b.connect(&bob_tok).await; // recipient on gateway B
    a.wait_online(&alice_tok, &alice, 2).await;
    b.wait_online(&bob_tok, &bob, 1).await;

    send(&mut a1, text_msg("c-1", &bob, "hello across gateways")).await;
    let ack = recv(&mut a1).await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("message-ack"), Some(1)), "{ack}");
    for dev in [&mut b1, &mut a2] {
        let m = recv(dev).await;
        assert_eq!((m["type"].as_str(), m["msg_id"].as_str()), (Some("new-message"), ack["msg_id"].as_str()));
        assert_eq!(m["content"], json!({"text": "hello across gateways"}));
    }
    // retry: same ack, no second message
    send(&mut a1, text_msg("c-1", &bob, "hello across gateways")).await;
    assert_eq!(recv(&mut a1).await, ack);
    // 20 in order
    for i in 0..20 {
        send(&mut a1, text_msg(&format!("c-burst-{i}"), &bob, &format!("n{i}"))).await;
    }
    for i in 0..20u64 {
        assert_eq!(recv(&mut a1).await["seq"], 2 + i);
        let m = recv(&mut b1).await;
        assert_eq!((m["seq"].as_u64(), m["content"]["text"].as_str()), (Some(2 + i), Some(format!("n{i}").as_str())));
        assert_eq!(recv(&mut a2).await["seq"], 2 + i);
    }
    assert!(recv_within(&mut b1, Duration::from_millis(300)).await.is_none(), "no duplicates");
    // history (MySQL) and sync over the bus
    let (s, page) = b.get(&format!("/api/v1/conversations/{cid}/messages?after_seq=15&limit=100"), &bob_tok).await;
    assert_eq!(s, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 6);
    send(&mut b1, json!({"type":"sync","conversation_id":cid,"after_seq":0,"limit":5})).await;
    let sr = recv(&mut b1).await;
    assert_eq!(
        (sr["type"].as_str(), sr["messages"].as_array().unwrap().len(), &sr["has_more"]),
        (Some("sync-result"), 5, &json!(true))
    );
    // a non-member, bad JSON, health
    let (_, carol_tok) = a.user("carol").await;
    let (s, _) = a.get(&format!("/api/v1/conversations/{cid}/messages"), &carol_tok).await;
    assert_eq!(s, 403);
    let mut c1 = b.connect(&carol_tok).await;
    send(&mut c1, json!({"type":"sync","conversation_id":cid})).await;
    assert_eq!(recv(&mut c1).await["code"], "not_member");
    for g in &c.gateways {
        assert_eq!(g.http.get(g.url("/readyz")).send().await.unwrap().status(), 200);
    }
    let persisted = a.metric("gochat_logic_messages_persisted_total").await;
    assert_eq!(persisted[0].1, 21.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_upstream_records_are_dead_lettered_and_consumption_continues() {
    let c = Cluster::start("dlq", 1, 1);
    let g = &c.gateways[0];
    let (alice, alice_tok) = g.user("dana").await;
    let (bob, bob_tok) = g.user("eve").await;
    let kafka = c.kafka();
    let producer = kafka.producer::<TokioRuntime>("dlq-test").unwrap();
    let upstream = format!("{}im.upstream", c.prefix);
    producer.send(&upstream, b"s_1_2", None, Bytes::from_static(b"\x08\xff\xff garbage")).await.unwrap();

    let mut b1 = g.connect(&bob_tok).await;
    g.wait_online(&bob_tok, &bob, 1).await;
    let mut a1 = g.connect(&alice_tok).await;
    send(&mut a1, text_msg("after-garbage", &bob, "still flowing")).await;
    assert_eq!(recv(&mut a1).await["type"], "message-ack");
    assert_eq!(recv(&mut b1).await["content"]["text"], "still flowing");

    let mut dlq = kafka
        .group_consumer::<TokioRuntime>(
            "dlq-reader",
            &format!("{}dlq-reader", c.prefix),
            &format!("{}im.upstream.dlq", c.prefix),
        )
        .unwrap();
    let batch =
        tokio::time::timeout(Duration::from_secs(30), dlq.next_batch(10)).await.expect("a dead letter").unwrap();
    let env = <gochat_proto::bus::KafkaMessage as gochat_proto::Message>::decode(batch[0].payload.clone()).unwrap();
    assert_eq!(env.kind(), "dead-letter");
    assert!(env.header["reason"].contains("undecodable"), "{:?}", env.header);
    assert_eq!(env.header["source_topic"], upstream);
    assert_eq!(&env.body[..], b"\x08\xff\xff garbage", "the original bytes are kept");
    let _ = alice;
}
