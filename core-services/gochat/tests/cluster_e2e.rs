//! Cluster mode end to end: separate `gochat logic` and `gochat gateway`
//! processes over real Apache Kafka, real Redis and real
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
    logic_ports: Vec<u16>,
    repo_port: Option<u16>,
    repo: Option<Server>,
    pub logic: Vec<Server>,
    pub gateways: Vec<Server>,
    pub task: Option<Server>,
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
        let mut c = Cluster {
            env,
            prefix,
            logic_ports: Vec::new(),
            repo_port: None,
            repo: None,
            logic: Vec::new(),
            gateways: Vec::new(),
            task: None,
        };
        let status = Command::new(env!("CARGO_BIN_EXE_gochat"))
            .args(["migrate", "--log-format", "json"])
            .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .status()
            .unwrap();
        assert!(status.success(), "gochat migrate failed");
        for i in 0..logic_count {
            c.start_logic_on(i);
        }
        for i in 0..gateway_count {
            c.start_gateway(i);
        }
        c
    }

    /// Start the task-tier process (`gochat task`).
    fn start_task(&mut self) {
        let mut env = self.env_refs();
        env.push(("GOCHAT_WORKER_ID", "900"));
        env.push(("GOCHAT_TASK__HTTP_LISTEN", "127.0.0.1:0"));
        let (child, ready) = spawn_ready(&["task"], &env);
        self.task = Some(Server::attach(child, ready["http"].as_str().unwrap().parse().unwrap()));
    }

    /// Start (or restart) gateway `i` with 2 shards.
    fn start_gateway(&mut self, i: usize) {
        let id = format!("gw{i}");
        let api = format!("http://{}", self.logic[0].addr);
        let mut env = self.env_refs();
        env.push(("GOCHAT_GATEWAY__ID", &id));
        env.push(("GOCHAT_GATEWAY__API_UPSTREAM", &api));
        let (child, ready) = spawn_ready(&["gateway", "--listen", "127.0.0.1:0", "--shards", "2"], &env);
        let server = Server::attach_gateway(child, &ready);
        if i < self.gateways.len() {
            self.gateways[i] = server;
        } else {
            self.gateways.push(server);
        }
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
    // image/file metadata round-trip untouched across gateways
    let image =
        json!({"url":"https://cdn.example/p.png","name":"p.png","size":2048,"mime":"image/png","width":64,"height":48});
    send(
        &mut a1,
        json!({"type":"send-message","client_msg_id":"c-img","to_user_id":bob,"content_type":"image","content":image}),
    )
    .await;
    assert_eq!(recv(&mut a1).await["seq"], 22);
    let m = recv(&mut b1).await;
    assert_eq!((m["content_type"].as_str(), &m["content"]), (Some("image"), &image));
    recv(&mut a2).await;
    // malformed JSON: an error frame, the connection stays usable; oversized: 1009
    use futures_util::SinkExt as _;
    a2.send(tokio_tungstenite::tungstenite::Message::text("{oops")).await.unwrap();
    assert_eq!(recv(&mut a2).await["code"], "invalid_json");
    send(&mut a2, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut a2).await["type"], "pong");
    a2.send(tokio_tungstenite::tungstenite::Message::text("x".repeat((1 << 20) + 1))).await.unwrap();
    assert_eq!(recv_close(&mut a2).await, tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Size);
    // a non-member, bad JSON, health
    let (_, carol_tok) = a.user("carol").await;
    let (s, _) = a.get(&format!("/api/v1/conversations/{cid}/messages"), &carol_tok).await;
    assert_eq!(s, 403);
    let mut c1 = b.connect(&carol_tok).await;
    send(&mut c1, json!({"type":"sync","conversation_id":cid})).await;
    assert_eq!(recv(&mut c1).await["code"], "not_member");
    for g in &c.gateways {
        assert_eq!(g.http.get(g.admin_url("/readyz")).send().await.unwrap().status(), 200);
    }
    let persisted = a.metric("gochat_logic_messages_persisted_total").await;
    assert_eq!(persisted[0].1, 22.0);
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

// ------------------------------------------------------------ crash safety

use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeSet, HashMap};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// Start with a repo process (logic persists through gRPC) and logic on
    /// fixed ports, so restarted processes are found at the same addresses.
    fn start_fixed(name: &str, logic_count: usize, gateway_count: usize) -> Self {
        Cluster::start_fixed_with(name, logic_count, gateway_count, &[])
    }

    /// [`Self::start_fixed`] with extra settings for every process.
    fn start_fixed_with(name: &str, logic_count: usize, gateway_count: usize, extra: &[(&str, &str)]) -> Self {
        let mut c = Cluster::start(name, 0, 0);
        c.env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let repo_port = free_port();
        c.repo_port = Some(repo_port);
        c.env.push(("GOCHAT_REPO__ENDPOINT".into(), format!("http://127.0.0.1:{repo_port}")));
        c.start_repo();
        c.logic_ports = (0..logic_count).map(|_| free_port()).collect();
        for i in 0..logic_count {
            c.start_logic_on(i);
        }
        for i in 0..gateway_count {
            c.start_gateway(i);
        }
        c
    }

    /// Start (or restart) logic process `i`, on its fixed port if it has one.
    fn start_logic_on(&mut self, i: usize) {
        let worker = (i + 1).to_string();
        let listen = format!("127.0.0.1:{}", self.logic_ports.get(i).copied().unwrap_or(0));
        let mut env = self.env_refs();
        env.push(("GOCHAT_WORKER_ID", &worker));
        env.push(("GOCHAT_LOGIC__HTTP_LISTEN", &listen));
        let (child, ready) = spawn_ready(&["logic"], &env);
        let server = Server::attach(child, ready["http"].as_str().unwrap().parse().unwrap());
        if i < self.logic.len() {
            self.logic[i] = server;
        } else {
            self.logic.push(server);
        }
    }

    fn start_repo(&mut self) {
        let listen = format!("127.0.0.1:{}", self.repo_port.unwrap());
        let mut env = self.env_refs();
        env.push(("GOCHAT_REPO__LISTEN", &listen));
        let (child, ready) = spawn_ready(&["repo"], &env);
        self.repo = Some(Server::attach(child, ready["grpc"].as_str().unwrap().parse().unwrap()));
    }

    fn database_url(&self) -> String {
        self.env.iter().find(|(k, _)| k == "GOCHAT_STORAGE__DATABASE_URL").unwrap().1.clone()
    }
}

/// Connect to the first gateway that accepts, trying each in turn.
async fn connect_any(addrs: &[std::net::SocketAddr], token: &str) -> Ws {
    for _ in 0..200 {
        for a in addrs {
            let attempt = tokio_tungstenite::connect_async(format!("ws://{a}/ws?token={token}"));
            if let Ok(Ok((ws, _))) = tokio::time::timeout(Duration::from_secs(5), attempt).await {
                return ws;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no gateway accepted a connection");
}

enum Got {
    Frame(serde_json::Value),
    Timeout,
    Broken,
}

async fn next_frame(ws: &mut Ws, within: Duration) -> Got {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return Got::Timeout,
            Ok(Some(Ok(WsMessage::Text(t)))) => return Got::Frame(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(_) => return Got::Broken,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_mid_stream_lose_nothing_and_duplicate_nothing() {
    const TOTAL: usize = 2000;
    const WINDOW: usize = 64;
    let mut c = Cluster::start_fixed("crash", 1, 2);
    let (alice, alice_tok) = c.gateways[0].user("sender").await;
    let (bob, bob_tok) = c.gateways[1].user("receiver").await;
    let cid = conv_id(&alice, &bob);

    let mut ws = c.gateways[0].connect(&alice_tok).await;
    let mut acked: HashMap<usize, (u64, String)> = HashMap::new();
    let mut inflight: BTreeSet<usize> = BTreeSet::new();
    let mut next = 0usize;
    let (mut killed_logic, mut killed_gateway, mut killed_repo) = (false, false, false);
    let msg = |i: usize| text_msg(&format!("crash-{i}"), &bob, &format!("payload {i}"));

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acked.len() < TOTAL {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled: {} acked, {} in flight, next {next}, logic killed {killed_logic}, gateway killed {killed_gateway}",
            acked.len(),
            inflight.len()
        );
        if !killed_logic && acked.len() >= TOTAL / 4 {
            killed_logic = true;
            // kill -9 between receive and ack, wherever it is, and restart at
            // once: the replacement (same worker id, so the same static
            // group.instance.id) takes the partitions back without waiting
            // out the dead member's session.
            c.logic[0].crash();
            c.start_logic_on(0);
        }
        if !killed_gateway && acked.len() >= TOTAL / 2 {
            killed_gateway = true;
            // the sender's gateway dies; the client reconnects elsewhere and retries
            c.gateways[0].crash();
            c.start_gateway(0);
        }
        if !killed_repo && acked.len() >= TOTAL * 3 / 4 {
            killed_repo = true;
            c.repo.as_mut().unwrap().crash(); // logic keeps retrying its batch until the repo is back
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.start_repo();
        }
        let mut broken = false;
        while inflight.len() < WINDOW && next < TOTAL {
            if ws.send(WsMessage::text(msg(next).to_string())).await.is_err() {
                broken = true;
            }
            inflight.insert(next);
            next += 1;
        }
        if !broken {
            match next_frame(&mut ws, Duration::from_secs(3)).await {
                Got::Frame(f) if f["type"] == "message-ack" => {
                    let i: usize = f["client_msg_id"].as_str().unwrap().trim_start_matches("crash-").parse().unwrap();
                    let seen = (f["seq"].as_u64().unwrap(), f["msg_id"].as_str().unwrap().to_owned());
                    if let Some(prev) = acked.get(&i) {
                        assert_eq!(prev, &seen, "a retry must get the original ack");
                    }
                    acked.insert(i, seen);
                    inflight.remove(&i);
                    continue;
                }
                Got::Frame(_) => continue, // e.g. server_busy: the retry below covers it
                Got::Timeout => {
                    // no ack for a while: resend everything unacknowledged, same ids
                    for &i in &inflight {
                        if ws.send(WsMessage::text(msg(i).to_string())).await.is_err() {
                            broken = true;
                            break;
                        }
                    }
                    if !broken {
                        continue;
                    }
                }
                Got::Broken => {}
            }
        }
        // the connection is gone: reconnect to whichever gateway answers and resend
        let addrs: Vec<_> = c.gateways.iter().map(|g| g.addr).collect();
        ws = connect_any(&addrs, &alice_tok).await;
        for &i in &inflight {
            let _ = ws.send(WsMessage::text(msg(i).to_string())).await;
        }
    }
    assert!(killed_logic && killed_gateway && killed_repo);

    // the database holds each acknowledged message exactly once, seqs 1..=N without gaps
    let pool = sqlx::MySqlPool::connect(&c.database_url()).await.unwrap();
    let (count, distinct, min, max): (i64, i64, Option<u64>, Option<u64>) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT client_msg_id), MIN(seq), MAX(seq) FROM messages WHERE conversation_id = ?",
    )
    .bind(&cid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((count, distinct, min, max), (TOTAL as i64, TOTAL as i64, Some(1), Some(TOTAL as u64)));
    let mut seqs: Vec<u64> = acked.values().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TOTAL as u64).collect::<Vec<_>>(), "acked seqs are exactly 1..=N");

    // the recipient, after sync, has every message exactly once, in seq order
    let addrs: Vec<_> = c.gateways.iter().map(|g| g.addr).collect();
    let mut b = connect_any(&addrs, &bob_tok).await;
    let mut after = 0u64;
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut stale_pages = 0;
    loop {
        send(&mut b, json!({"type":"sync","conversation_id":cid,"after_seq":after,"limit":100})).await;
        let page = loop {
            match next_frame(&mut b, Duration::from_secs(20)).await {
                // A page answers this request when it starts right after
                // `after`. A repeated answer to an earlier request (a sync
                // re-run after a batch retry) is counted, not appended.
                Got::Frame(f) if f["type"] == "sync-result" => {
                    let first = f["messages"][0]["seq"].as_u64();
                    if first.is_none_or(|s| s == after + 1) {
                        break f;
                    }
                    stale_pages += 1;
                }
                Got::Frame(_) => continue, // live new-message frames
                _ => panic!("sync failed"),
            }
        };
        for m in page["messages"].as_array().unwrap() {
            got.push((m["seq"].as_u64().unwrap(), m["client_msg_id"].as_str().unwrap().to_owned()));
        }
        after = got.last().map(|g| g.0).unwrap_or(0);
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (1..=TOTAL as u64).collect::<Vec<_>>());
    let ids: BTreeSet<&String> = got.iter().map(|g| &g.1).collect();
    assert_eq!(ids.len(), TOTAL, "every message exactly once");
    if stale_pages > 0 {
        eprintln!("note: {stale_pages} repeated sync-result pages were skipped");
    }
}

/// Everything this test deployment keeps in Redis is lost (as on a Redis
/// restart without persistence).
async fn wipe_redis(c: &Cluster) {
    let url = c.env.iter().find(|(k, _)| k == "GOCHAT_REDIS__URL").unwrap().1.clone();
    let prefix = c.env.iter().find(|(k, _)| k == "GOCHAT_REDIS__KEY_PREFIX").unwrap().1.clone();
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap();
    assert!(keys.iter().any(|k| k.contains("msg_dedup:")), "acks were cached in Redis: {keys:?}");
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_data_loss_never_duplicates_seqs_or_messages() {
    let c = Cluster::start("redis", 1, 1);
    let g = &c.gateways[0];
    let (_, alice_tok) = g.user("ruth").await;
    let (bob, _) = g.user("sam").await;
    let mut a = g.connect(&alice_tok).await;
    let mut acks = Vec::new();
    for i in 0..10 {
        send(&mut a, text_msg(&format!("r-{i}"), &bob, "before")).await;
        acks.push(recv(&mut a).await);
    }
    assert_eq!(acks[9]["seq"], 10);
    wipe_redis(&c).await;
    // dedup survives through the database's unique key
    send(&mut a, text_msg("r-4", &bob, "before")).await;
    assert_eq!(recv(&mut a).await, acks[4]);
    // seqs continue from the database's counter
    for i in 10..15 {
        send(&mut a, text_msg(&format!("r-{i}"), &bob, "after")).await;
        assert_eq!(recv(&mut a).await["seq"], i + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logic_processes_share_the_partitions_and_keep_order() {
    let c = Cluster::start("scale", 2, 1);
    let g = &c.gateways[0];
    let mut senders = Vec::new();
    let (hub, _) = g.user("hub").await;
    for i in 0..6 {
        let (_, tok) = g.user(&format!("spoke{i}")).await;
        senders.push(g.connect(&tok).await);
    }
    // six conversations, interleaved: 30 messages each, sent back to back
    for round in 0..30 {
        for ws in senders.iter_mut() {
            send(ws, text_msg(&format!("s-{round}"), &hub, &format!("{round}"))).await;
        }
    }
    for ws in senders.iter_mut() {
        let mut got = Vec::new();
        for _ in 0..30 {
            let a = recv(ws).await;
            assert_eq!(a["type"], "message-ack", "{a}");
            got.push((a["client_msg_id"].as_str().unwrap().to_owned(), a["seq"].as_u64().unwrap()));
        }
        // per conversation: seq order is send order, contiguous from 1
        let expected: Vec<(String, u64)> = (0..30).map(|r| (format!("s-{r}"), r as u64 + 1)).collect();
        assert_eq!(got, expected);
    }
    // both logic processes did part of the work
    let mut records = Vec::new();
    for l in &c.logic {
        records.push(l.metric("gochat_logic_records_total").await[0].1);
    }
    assert!(records.iter().all(|r| *r > 0.0), "a logic process got no records: {records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_more_shards_than_push_partitions_refuses_to_start() {
    let mut c = Cluster::start("parts", 1, 1); // gw0 created im.push.gw0 with 2 partitions
    c.gateways[0].crash();
    let api = format!("http://{}", c.logic[0].addr);
    let out = Command::new(env!("CARGO_BIN_EXE_gochat"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--shards", "3", "--log-format", "json"])
        .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("GOCHAT_GATEWAY__ID", "gw0")
        .env("GOCHAT_GATEWAY__API_UPSTREAM", api)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has 2 partitions but this gateway runs 3 shards"), "{stderr}");
}

/// A 2,000-member group over 2 gateways x 2 shards: every online member gets
/// each message once and in order, offline members sync everything, a member
/// removed mid-stream stops receiving. `threshold` decides whether logic fans
/// out inline or hands the group to `gochat task`.
async fn big_group_in_cluster(name: &str, threshold: &str) -> Cluster {
    raise_nofile();
    let mut c = Cluster::start(name, 0, 0);
    c.env.push(("GOCHAT_LOGIC__GROUP_FANOUT_THRESHOLD".into(), threshold.into()));
    for (k, v) in CHEAP_ARGON2 {
        c.env.push((k.into(), v.into()));
    }
    c.start_logic_on(0);
    c.start_task();
    c.start_gateway(0);
    c.start_gateway(1);
    let base = c.gateways[0].url("");
    let addrs = [c.gateways[0].addr, c.gateways[1].addr];
    let delivered = support::groups::big_group(base.trim_end_matches('/'), &addrs, name, 2000, 150).await;
    assert!(delivered > 1800 * 15, "{delivered}");
    // all four shards delivered
    for g in &c.gateways {
        let per_shard = g.metric("gochat_gateway_push_deliveries_total").await;
        assert!(per_shard.iter().filter(|(_, v)| *v > 1000.0).count() >= 2, "{per_shard:?}");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_group_across_gateways_inline() {
    let c = big_group_in_cluster("bgci", "5000").await;
    assert!(c.logic[0].metric("gochat_logic_fanout_inline_total").await[0].1 >= 20.0);
    assert_eq!(c.logic[0].metric("gochat_logic_fanout_delegated_total").await[0].1, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_group_across_gateways_through_the_task_process() {
    let c = big_group_in_cluster("bgct", "100").await;
    assert!(c.logic[0].metric("gochat_logic_fanout_delegated_total").await[0].1 >= 20.0);
    let task = c.task.as_ref().unwrap();
    assert!(task.metric("gochat_task_processed_total").await[0].1 >= 20.0);
    assert_eq!(task.metric("gochat_task_dead_lettered_total").await[0].1, 0.0);
}

/// The task tier in cluster mode: an offline-push webhook that always fails
/// is retried through im.task.retry, then parked in im.task.dlq with its
/// reason and the original task; the message itself is stored and synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_offline_push_is_retried_then_dead_lettered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move || {
            let c = c2.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::BAD_GATEWAY
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut c = Cluster::start("tdlq", 0, 0);
    for (k, v) in [
        ("GOCHAT_TASK__PUSH_WEBHOOK_URL", hook.as_str()),
        ("GOCHAT_TASK__MAX_ATTEMPTS", "3"),
        ("GOCHAT_TASK__BACKOFF_BASE_MS", "50"),
    ] {
        c.env.push((k.into(), v.into()));
    }
    c.start_logic_on(0);
    c.start_task();
    c.start_gateway(0);
    let g = &c.gateways[0];
    let (alice, alice_tok) = g.user("tdlq-a").await;
    let bob = g.register("tdlq-b").await;
    let mut a1 = g.connect(&alice_tok).await;
    g.wait_online(&alice_tok, &alice, 1).await;
    send(&mut a1, text_msg("offline-1", &bob, "bob is offline")).await;
    assert_eq!(recv(&mut a1).await["type"], "message-ack");

    let kafka = c.kafka();
    let mut dlq = kafka
        .group_consumer::<TokioRuntime>(
            "tdlq-reader",
            &format!("{}tdlq-reader", c.prefix),
            &format!("{}im.task.dlq", c.prefix),
        )
        .unwrap();
    let batch =
        tokio::time::timeout(Duration::from_secs(60), dlq.next_batch(10)).await.expect("a dead letter").unwrap();
    let env = <gochat_proto::bus::KafkaMessage as gochat_proto::Message>::decode(batch[0].payload.clone()).unwrap();
    assert_eq!(env.kind(), "task");
    assert_eq!(env.header["task"], "offline_push");
    assert_eq!(env.header["attempt"], "3");
    assert!(env.header["reason"].contains("502"), "{:?}", env.header);
    let task = <gochat_proto::bus::OfflinePushTask as gochat_proto::Message>::decode(env.body.clone()).unwrap();
    assert_eq!(task.recipients, vec![bob.parse::<u64>().unwrap()], "the original task is kept");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "max_attempts webhook calls");
    let task_srv = c.task.as_ref().unwrap();
    assert_eq!(task_srv.metric("gochat_task_dead_lettered_total").await[0].1, 1.0);
    assert_eq!(task_srv.metric("gochat_task_retried_total").await[0].1, 2.0);
    // nothing lost: bob reads the message
    let bob_tok = g.login("tdlq-b").await;
    let (s, h) = g.get(&format!("/api/v1/conversations/{}/messages", conv_id(&alice, &bob)), &bob_tok).await;
    assert_eq!(s, 200);
    assert_eq!(h["messages"][0]["content"]["text"], "bob is offline");
}

/// One raw HTTP/1.1 request with a verbatim request-target; returns the
/// status and the whole response text.
fn raw_request(addr: std::net::SocketAddr, method: &str, target: &str, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// The gateway forwards REST to logic only for clean origin-form targets
/// under `/api/` and `/readyz`: no crafted target (userinfo, absolute-form,
/// `//host`, backslashes, dot segments, percent-encoded variants, a hostile
/// Host header) makes it connect anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_is_not_an_open_proxy() {
    let c = Cluster::start("proxy", 1, 1);
    let gw = c.gateways[0].addr;
    // A listener on another port, standing in for a metadata service or an
    // internal admin port: it must never see a connection.
    let canary = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = canary.local_addr().unwrap().port();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut s in canary.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nCANARY");
        }
    });
    let host = format!("127.0.0.1:{port}");
    let targets = [
        format!("@{host}/x"),
        format!("@{host}/api/v1/users/me"),
        format!("@{host}"),
        format!(":{port}/x"),
        format!("http://{host}/api/v1/users/me"),
        format!("https://{host}/api/v1/users/me"),
        format!("//{host}/api/v1/users/me"),
        format!("/\\{host}/api/v1/users/me"),
        format!("\\\\{host}/api/v1/users/me"),
        format!("%40{host}/x"),
        format!("/%40{host}/x"),
        format!("/api/..%2f..%2f@{host}/x"),
        format!("/api/%2e%2e/%2e%2e/@{host}/x"),
        format!("/api/v1/../../@{host}/x"),
        format!("/api/v1/users/me@{host}"),
        format!("/api/v1/users/me#@{host}"),
        format!("/readyz@{host}"),
        host.clone(),
        "*".to_owned(),
    ];
    for target in &targets {
        for method in ["GET", "POST", "CONNECT"] {
            let (status, text) = raw_request(gw, method, target, &host);
            assert!(
                matches!(status, 400 | 401 | 404 | 405),
                "{method} {target}: expected a refusal, got {status}: {text}"
            );
            assert!(!text.contains("CANARY"), "{method} {target} reached the canary");
        }
        // The Host header is never where the request goes.
        let (status, _) = raw_request(gw, "GET", "/api/v1/users/me", &host);
        assert_eq!(status, 401, "a clean API path goes to logic, whatever the Host header");
    }
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "the canary listener was reached");
    // Control: clean targets are forwarded (logic answers), other paths are 404s.
    assert_eq!(raw_request(gw, "GET", "/readyz", "x").0, 404, "operational endpoints are on the admin listener");
    assert_eq!(
        raw_request(c.gateways[0].admin, "GET", "/readyz", "x").0,
        200,
        "readiness is the tier's, through the admin listener"
    );
    assert_eq!(raw_request(gw, "GET", "/api/v1/users/me", "x").0, 401);
    assert_eq!(raw_request(gw, "GET", "/latest/meta-data/", "x").0, 404);
    let bad: f64 = c.gateways[0].metric("gochat_gateway_http_bad_targets_total").await.iter().map(|(_, v)| v).sum();
    assert!(bad >= 10.0, "refused targets are counted ({bad})");
}

/// Stream `total` messages (`{tag}-{i}`) to `to`, one every `pace`, at most
/// `window` unacked; after 2 s without an ack, or a reconnect, every unacked
/// one is resent (same client_msg_id), until each is acked. Returns each
/// message's ack: (seq, msg_id).
struct Stream {
    addrs: Vec<std::net::SocketAddr>,
    token: String,
    to: String,
    tag: String,
    total: usize,
    window: usize,
    pace: Duration,
    deadline: std::time::Instant,
}

async fn stream_until_acked(st: Stream) -> HashMap<usize, (u64, String)> {
    use std::time::Instant;
    let Stream { addrs, token, to, tag, total, window, pace, deadline } = st;
    let msg =
        |i: usize| WsMessage::text(text_msg(&format!("{tag}-{i}"), &to, &format!("{tag} payload {i}")).to_string());
    let mut ws = connect_any(&addrs, &token).await;
    let mut acked: HashMap<usize, (u64, String)> = HashMap::new();
    let mut inflight: BTreeSet<usize> = BTreeSet::new();
    let (mut next, mut next_send, mut progress) = (0usize, Instant::now(), Instant::now());
    while acked.len() < total {
        assert!(Instant::now() < deadline, "{tag} stalled: {} of {total} acked", acked.len());
        let may_send = inflight.len() < window && next < total;
        let mut broken = false;
        if may_send && Instant::now() >= next_send {
            broken = ws.send(msg(next)).await.is_err();
            inflight.insert(next);
            next += 1;
            next_send = Instant::now() + pace;
        }
        let wait =
            if may_send { next_send.saturating_duration_since(Instant::now()) } else { Duration::from_millis(200) };
        if !broken {
            match next_frame(&mut ws, wait.max(Duration::from_millis(1))).await {
                Got::Frame(f) if f["type"] == "message-ack" => {
                    let cmid = f["client_msg_id"].as_str().unwrap();
                    let i: usize = cmid.strip_prefix(&format!("{tag}-")).unwrap().parse().unwrap();
                    let seen = (f["seq"].as_u64().unwrap(), f["msg_id"].as_str().unwrap().to_owned());
                    if let Some(prev) = acked.get(&i) {
                        assert_eq!(prev, &seen, "{cmid}: a retry must get the original ack");
                    }
                    acked.insert(i, seen);
                    inflight.remove(&i);
                    progress = Instant::now();
                    continue;
                }
                // server_busy / rate_limited: not accepted; the resend on timeout covers it.
                Got::Frame(f) if f["type"] == "error" && f["code"] != "server_busy" && f["code"] != "rate_limited" => {
                    panic!("{tag}: unexpected error frame {f}")
                }
                Got::Frame(_) => continue,
                Got::Timeout => {
                    if inflight.is_empty() || progress.elapsed() < Duration::from_secs(2) {
                        continue;
                    }
                    progress = Instant::now();
                    for &i in &inflight {
                        if ws.send(msg(i)).await.is_err() {
                            broken = true;
                            break;
                        }
                    }
                    if !broken {
                        continue;
                    }
                }
                Got::Broken => {}
            }
        }
        ws = connect_any(&addrs, &token).await;
        for &i in &inflight {
            let _ = ws.send(msg(i)).await;
        }
        progress = Instant::now();
    }
    acked
}

/// Every message of `cid`, by `sync` from `token`'s user, in the order received.
async fn sync_all(addrs: &[std::net::SocketAddr], token: &str, cid: &str) -> Vec<(u64, String)> {
    let mut ws = connect_any(addrs, token).await;
    let mut got: Vec<(u64, String)> = Vec::new();
    loop {
        let after = got.last().map(|g| g.0).unwrap_or(0);
        send(&mut ws, json!({"type":"sync","conversation_id":cid,"after_seq":after,"limit":100})).await;
        let page = loop {
            match next_frame(&mut ws, Duration::from_secs(20)).await {
                Got::Frame(f) if f["type"] == "sync-result" && f["conversation_id"] == cid => {
                    let first = f["messages"][0]["seq"].as_u64();
                    if first.is_none_or(|s| s == after + 1) {
                        break f;
                    }
                }
                Got::Frame(_) => continue,
                _ => panic!("sync of {cid} failed"),
            }
        };
        for m in page["messages"].as_array().unwrap() {
            got.push((m["seq"].as_u64().unwrap(), m["client_msg_id"].as_str().unwrap().to_owned()));
        }
        if page["has_more"] != true {
            return got;
        }
    }
}

/// `cid` holds seqs 1..=`n` in the database, and each acked `{tag}-{i}` is
/// stored at its acked seq with its acked msg_id. Returns the seqs.
async fn assert_stored_as_acked(
    pool: &sqlx::MySqlPool,
    cid: &str,
    tag: &str,
    acks: &HashMap<usize, (u64, String)>,
    n: usize,
) -> Vec<u64> {
    let rows: Vec<(u64, u64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, id, client_msg_id FROM messages WHERE conversation_id = ? ORDER BY seq")
            .bind(cid)
            .fetch_all(pool)
            .await
            .unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "{cid}: seqs 1..N, no gap");
    for (i, (seq, msg_id)) in acks {
        let row = &rows[(*seq - 1) as usize];
        assert_eq!(
            (row.1.to_string(), String::from_utf8_lossy(&row.2).into_owned()),
            (msg_id.clone(), format!("{tag}-{i}")),
            "{cid}: acked seq {seq} holds the acked message"
        );
    }
    seqs
}

/// The seq promise under a crash loop: logic and the repo are `kill -9`ed at
/// random moments (at least 10 times in all, restarted at once) while 4
/// senders stream 3,200 messages into 8 conversations. Every conversation
/// ends with seqs 1..N contiguous, every acked message stored once with its
/// acked seq, and each recipient's `sync` returning each message once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_of_logic_and_repo_leaves_no_seq_gap() {
    const SENDERS: usize = 4;
    const PER_CONVERSATION: usize = 400;
    const KILLS: usize = 10;
    let mut c = Cluster::start_fixed("loop", 1, 2);
    let addrs: Vec<_> = c.gateways.iter().map(|g| g.addr).collect();
    let (r1, r1_tok) = c.gateways[1].user("loop-r1").await;
    let (r2, r2_tok) = c.gateways[1].user("loop-r2").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut streams = Vec::new();
    let mut conversations = Vec::new();
    for s in 0..SENDERS {
        let (sender, tok) = c.gateways[s % 2].user(&format!("loop-s{s}")).await;
        for (r, rtok) in [(&r1, &r1_tok), (&r2, &r2_tok)] {
            let tag = format!("s{s}r{}", if r == &r1 { 1 } else { 2 });
            conversations.push((conv_id(&sender, r), tag.clone(), rtok.clone()));
            streams.push(tokio::spawn(stream_until_acked(Stream {
                addrs: addrs.clone(),
                token: tok.clone(),
                to: r.clone(),
                tag,
                total: PER_CONVERSATION,
                window: 16,
                // 400 messages over at least 20 s: the kills land mid-stream.
                pace: Duration::from_millis(50),
                deadline,
            })));
        }
    }
    // The killer: pseudo-random pauses (50-900 ms) and victims, each
    // restarted at once; logic's consumer-group membership is static, so
    // its replacement gets the partitions back without a rebalance wait.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut logic_kills, mut repo_kills) = (0, 0);
    while logic_kills + repo_kills < KILLS || streams.iter().any(|s| !s.is_finished()) {
        tokio::time::sleep(Duration::from_millis(50 + rand(850))).await;
        if streams.iter().all(|s| s.is_finished()) {
            break;
        }
        if rand(2) == 0 {
            c.logic[0].crash();
            c.start_logic_on(0);
            logic_kills += 1;
        } else {
            c.repo.as_mut().unwrap().crash();
            c.start_repo();
            repo_kills += 1;
        }
        if logic_kills + repo_kills >= KILLS * 3 {
            break; // enough; let the streams finish
        }
    }
    let mut acked = Vec::new();
    for s in streams {
        acked.push(s.await.expect("a sender failed"));
    }
    eprintln!("crash loop: {logic_kills} logic and {repo_kills} repo kills");
    assert!(
        logic_kills + repo_kills >= KILLS,
        "only {} kills happened before the streams ended",
        logic_kills + repo_kills
    );

    let pool = sqlx::MySqlPool::connect(&c.database_url()).await.unwrap();
    for ((cid, tag, rtok), acks) in conversations.iter().zip(&acked) {
        let seqs = assert_stored_as_acked(&pool, cid, tag, acks, PER_CONVERSATION).await;
        let got = sync_all(&addrs, rtok, cid).await;
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), seqs, "{cid}: sync returns each seq once, in order");
        let ids: BTreeSet<&String> = got.iter().map(|g| &g.1).collect();
        assert_eq!(ids.len(), PER_CONVERSATION, "{cid}: every message exactly once");
    }
}

/// A `kill -9`ed logic process restarted at once gets every partition back
/// by normal group protocol, without waiting out its dead predecessor's
/// session (static membership: same worker id, same group.instance.id).
/// Bound: ready (assigned) within 8 s of the restart, under the 10 s
/// session timeout a plain rejoin would wait for; measured here: about 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_logic_restarted_at_once_gets_every_partition_back() {
    let mut c = Cluster::start("rejoin", 1, 1);
    let g = c.gateways[0].addr;
    let (_, alice_tok) = c.gateways[0].user("rj-alice").await;
    // 12 peers: their conversations hash onto all 4 partitions of im.upstream.
    let mut peers = Vec::new();
    for i in 0..12 {
        peers.push(c.gateways[0].user(&format!("rj-peer{i}")).await.0);
    }
    let mut ws = connect_any(&[g], &alice_tok).await;
    send(&mut ws, text_msg("before", &peers[0], "x")).await;
    assert_eq!(recv(&mut ws).await["type"], "message-ack");

    c.logic[0].crash();
    let restarted = std::time::Instant::now();
    c.start_logic_on(0); // returns once the group assigned it partitions
    let took = restarted.elapsed();
    eprintln!("logic back with partitions {took:?} after its restart");
    assert!(took < Duration::from_secs(8), "rejoin took {took:?}");

    for (i, p) in peers.iter().enumerate() {
        send(&mut ws, text_msg(&format!("after-{i}"), p, "y")).await;
    }
    let mut acked = BTreeSet::new();
    while acked.len() < peers.len() {
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Got::Frame(f) if f["type"] == "message-ack" => {
                acked.insert(f["client_msg_id"].as_str().unwrap().to_owned());
            }
            Got::Frame(f) => panic!("unexpected {f}"),
            _ => panic!("only {} of {} conversations were served after the restart", acked.len(), peers.len()),
        }
    }
}

/// Rebalance while a batch is stuck: the repo is frozen (SIGSTOP) with
/// batches in flight, a second logic process joins and takes over some
/// partitions, then the repo resumes. Whatever both members did with the
/// records in between, every message is stored once, its seq is the one
/// acked (a retry always gets the same ack), and seqs stay 1..N.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_while_the_repo_is_frozen_acks_nothing_twice() {
    const PER_CONVERSATION: usize = 150;
    let mut c = Cluster::start_fixed("fence", 1, 1);
    let addrs = vec![c.gateways[0].addr];
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let mut conversations = Vec::new();
    let mut streams = Vec::new();
    for s in 0..3 {
        let (sender, tok) = c.gateways[0].user(&format!("fence-s{s}")).await;
        let (peer, _) = c.gateways[0].user(&format!("fence-r{s}")).await;
        conversations.push((conv_id(&sender, &peer), format!("f{s}")));
        streams.push(tokio::spawn(stream_until_acked(Stream {
            addrs: addrs.clone(),
            token: tok,
            to: peer,
            tag: format!("f{s}"),
            total: PER_CONVERSATION,
            window: 8,
            pace: Duration::from_millis(20),
            deadline,
        })));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let repo_pid = c.repo.as_ref().unwrap().pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &repo_pid]).status().unwrap().success());
    // Thaw the repo a few seconds later, while the new member waits for its share.
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        Command::new("kill").args(["-CONT", &repo_pid]).status().unwrap();
    });
    c.start_logic_on(1); // joins the group: a rebalance with logic#1 stuck mid-batch
    thaw.join().unwrap();
    let mut acked = Vec::new();
    for s in streams {
        acked.push(s.await.expect("a sender failed"));
    }
    let pool = sqlx::MySqlPool::connect(&c.database_url()).await.unwrap();
    for ((cid, tag), acks) in conversations.iter().zip(&acked) {
        assert_stored_as_acked(&pool, cid, tag, acks, PER_CONVERSATION).await;
    }
    let records: Vec<f64> = {
        let mut v = Vec::new();
        for l in &c.logic {
            v.push(l.metric("gochat_logic_records_total").await[0].1);
        }
        v
    };
    eprintln!("records per logic process: {records:?}");
}

/// A logic process retrying a batch against a frozen repo stays in its
/// consumer group: it holds the batch with fetching paused and keeps
/// polling, so the broker does not evict it after `max.poll.interval.ms`
/// (15 s here) even though the repo stays frozen for 25 s. Before, the
/// retry loop slept without polling: the member was evicted, rejoined, and
/// its partitions went through a revoke and a new assignment. Afterwards
/// every message is stored once with its acked seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logic_retrying_a_frozen_repo_stays_in_its_group() {
    const PER_CONVERSATION: usize = 40;
    let c = Cluster::start_fixed_with("hold", 1, 1, &[("GOCHAT_KAFKA__MAX_POLL_INTERVAL_MS", "15000")]);
    let addrs = vec![c.gateways[0].addr];
    let rebalances = || async { c.logic[0].metric("gochat_kafka_rebalances_total").await[0].1 };
    let before = rebalances().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let mut conversations = Vec::new();
    let mut streams = Vec::new();
    for s in 0..2 {
        let (sender, tok) = c.gateways[0].user(&format!("hold-s{s}")).await;
        let (peer, _) = c.gateways[0].user(&format!("hold-r{s}")).await;
        conversations.push((conv_id(&sender, &peer), format!("h{s}")));
        streams.push(tokio::spawn(stream_until_acked(Stream {
            addrs: addrs.clone(),
            token: tok,
            to: peer,
            tag: format!("h{s}"),
            total: PER_CONVERSATION,
            window: 4,
            pace: Duration::from_millis(100),
            deadline,
        })));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let repo_pid = c.repo.as_ref().unwrap().pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &repo_pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(Command::new("kill").args(["-CONT", &repo_pid]).status().unwrap().success());
    let mut acked = Vec::new();
    for s in streams {
        acked.push(s.await.expect("a sender failed"));
    }
    let after = rebalances().await;
    let retries = c.logic[0].metric("gochat_logic_batch_retries_total").await[0].1;
    eprintln!("batch retries during the freeze: {retries}; rebalances before {before}, after {after}");
    assert!(retries >= 2.0, "the freeze made batches fail and retry ({retries})");
    assert_eq!(after, before, "the retrying member was evicted from its group and rejoined");
    let pool = sqlx::MySqlPool::connect(&c.database_url()).await.unwrap();
    for ((cid, tag), acks) in conversations.iter().zip(&acked) {
        assert_stored_as_acked(&pool, cid, tag, acks, PER_CONVERSATION).await;
    }
}

/// Presence only through a shared conversation, and group history from the
/// join, with logic reaching MySQL through the repo service (gRPC): the
/// same scenarios as embedded mode (support/privacy.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_rules_hold_through_the_repo_service() {
    let c = Cluster::start_fixed("priv", 1, 1);
    let g = &c.gateways[0];
    support::privacy::presence_scenario(g, "cp").await;
    support::privacy::history_from_join_scenario(g, "ch").await;
}

/// A cluster of 1 logic process and 2 gateways, with `extra` settings.
fn token_cluster(name: &str, extra: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::start(name, 0, 0);
    c.env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    c.start_logic_on(0);
    c.start_gateway(0);
    c.start_gateway(1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_closes_sockets_on_every_gateway_and_revokes_old_tokens() {
    use support::tokens::*;
    let c = token_cluster("tokout", &[]);
    let (g0, g1) = (&c.gateways[0], &c.gateways[1]);
    let uid = g0.register("lena").await;
    let a = login_pair(g0, "lena").await;
    let b = login_pair(g1, "lena").await;
    let (ta, tb) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    let mut w0 = g0.connect(ta).await;
    let mut w1 = g1.connect(tb).await;
    g0.wait_online(ta, &uid, 2).await;

    let (status, _) = post(g1, "/api/v1/auth/logout", Some(tb), json!({"all": true})).await;
    assert_eq!(status, 204);
    for w in [&mut w0, &mut w1] {
        assert_eq!(close_of(w, Duration::from_secs(15)).await, (1008, "session revoked".to_owned()));
    }
    for (g, t) in [(g0, ta), (g1, tb)] {
        let (status, e) = g.get("/api/v1/users/me", t).await;
        assert_eq!((status, code(&e)), (401, "token_revoked"), "{e}");
    }
    // An old token that passes a gateway's signature check is closed by logic.
    let mut late = g1.connect(ta).await;
    assert_eq!(close_of(&mut late, Duration::from_secs(15)).await, (1008, "session revoked".to_owned()));
    let fresh = login_pair(g0, "lena").await;
    let t = fresh["token"].as_str().unwrap();
    let mut w = g1.connect(t).await;
    g0.wait_online(t, &uid, 1).await;
    assert!(answers_ping(&mut w).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_connection_cap_counts_connections_on_every_gateway() {
    use support::tokens::*;
    let c = token_cluster("tokcap", &[("GOCHAT_LOGIC__MAX_CONNECTIONS_PER_USER", "3")]);
    let (g0, g1) = (&c.gateways[0], &c.gateways[1]);
    let (uid, token) = g0.user("cappy").await;
    let mut first = g0.connect(&token).await;
    g0.wait_online(&token, &uid, 1).await;
    let mut second = g1.connect(&token).await;
    g0.wait_online(&token, &uid, 2).await;
    let mut third = g0.connect(&token).await;
    g0.wait_online(&token, &uid, 3).await;
    // The 4th, on the other gateway: the oldest (on gw0) is closed.
    let mut fourth = g1.connect(&token).await;
    assert_eq!(close_of(&mut first, Duration::from_secs(15)).await, (1008, "connection limit reached".to_owned()));
    g1.wait_online(&token, &uid, 3).await;
    for w in [&mut second, &mut third, &mut fourth] {
        assert!(answers_ping(w).await, "the 3 newest stay open");
    }
}
