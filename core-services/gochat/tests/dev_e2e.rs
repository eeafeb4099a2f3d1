//! End to end through a real `gochat dev` process: REST over HTTP, chat over
//! real WebSockets, state in a real SQLite file.

mod support;

use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn one_to_one_chat_end_to_end() {
    let dir = temp_dir("e2e");
    let srv = Server::start(&dir, 2);
    let (alice, alice_tok) = srv.user("alice").await;
    let (bob, bob_tok) = srv.user("bob").await;
    let cid = conv_id(&alice, &bob);

    let mut a1 = srv.connect(&alice_tok).await;
    let mut a2 = srv.connect(&alice_tok).await;
    let mut b1 = srv.connect(&bob_tok).await;
    srv.wait_online(&alice_tok, &alice, 2).await;
    // bob's own token: alice and bob share no conversation yet, so alice
    // may not see bob's presence (docs/protocol.md §2.4).
    srv.wait_online(&bob_tok, &bob, 1).await;

    // send -> ack to the sending device, new-message to the peer and to alice's other device
    send(&mut a1, text_msg("m-1", &bob, "hello bob")).await;
    let ack = recv(&mut a1).await;
    assert_eq!(ack["type"], "message-ack", "{ack}");
    assert_eq!(ack["client_msg_id"], "m-1");
    assert_eq!(ack["conversation_id"], cid.as_str());
    assert_eq!(ack["seq"], 1);
    let msg_id = ack["msg_id"].as_str().unwrap().to_owned();
    assert!(msg_id.parse::<u64>().is_ok(), "ids are decimal strings");
    for dev in [&mut b1, &mut a2] {
        let m = recv(dev).await;
        assert_eq!(m["type"], "new-message");
        assert_eq!(m["msg_id"], msg_id.as_str());
        assert_eq!(m["seq"], 1);
        assert_eq!(m["sender_id"], alice.as_str());
        assert_eq!(m["client_msg_id"], "m-1");
        assert_eq!(m["content"], json!({"text": "hello bob"}));
        assert!(m["ts"].as_i64().unwrap() > 1_700_000_000_000);
    }

    // a retry of the same client_msg_id: the same ack, no second message
    send(&mut a1, text_msg("m-1", &bob, "hello bob")).await;
    let again = recv(&mut a1).await;
    assert_eq!(again, ack, "a retry gets the original ack");

    // bob replies using the conversation id; alice's two devices get it
    send(&mut b1, json!({"type":"send-message","client_msg_id":"b-1","conversation_id":cid,"content_type":"text","content":{"text":"hi alice"}})).await;
    let back = recv(&mut b1).await;
    assert_eq!(back["type"], "message-ack");
    assert_eq!(back["seq"], 2, "the retry did not consume a seq");
    for dev in [&mut a1, &mut a2] {
        let m = recv(dev).await;
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64(), m["sender_id"].as_str()),
            (Some("new-message"), Some(2), Some(bob.as_str()))
        );
    }
    // bob's only device sent it, so bob gets no echo; nothing else is pending for bob
    assert!(recv_within(&mut b1, Duration::from_millis(300)).await.is_none(), "no duplicate delivery to bob");

    // 20 messages arrive in seq order, each exactly once
    for i in 0..20 {
        send(&mut a1, text_msg(&format!("burst-{i}"), &bob, &format!("n{i}"))).await;
    }
    let mut acked = Vec::new();
    for _ in 0..20 {
        let a = recv(&mut a1).await;
        assert_eq!(a["type"], "message-ack");
        acked.push(a["seq"].as_u64().unwrap());
    }
    assert_eq!(acked, (3..23).collect::<Vec<_>>());
    for i in 0..20u64 {
        let m = recv(&mut b1).await;
        assert_eq!(m["seq"], 3 + i);
        assert_eq!(m["content"]["text"], format!("n{i}"));
    }
    for _ in 0..20 {
        recv(&mut a2).await;
    }

    // image and file metadata round-trip untouched
    let image = json!({"url":"https://cdn.example/p.png","name":"p.png","size":2048,"mime":"image/png","width":640,"height":480});
    let file = json!({"url":"https://cdn.example/r.pdf","name":"r.pdf","size":99,"mime":"application/pdf"});
    send(
        &mut a1,
        json!({"type":"send-message","client_msg_id":"img","to_user_id":bob,"content_type":"image","content":image}),
    )
    .await;
    send(
        &mut a1,
        json!({"type":"send-message","client_msg_id":"doc","to_user_id":bob,"content_type":"file","content":file}),
    )
    .await;
    recv(&mut a1).await;
    recv(&mut a1).await;
    let (mi, mf) = (recv(&mut b1).await, recv(&mut b1).await);
    assert_eq!((mi["content_type"].as_str(), &mi["content"]), (Some("image"), &image));
    assert_eq!((mf["content_type"].as_str(), &mf["content"]), (Some("file"), &file));
    recv(&mut a2).await;
    recv(&mut a2).await;

    // history over REST, paged
    let (s, page) = srv.get(&format!("/api/v1/conversations/{cid}/messages?after_seq=0&limit=10"), &bob_tok).await;
    assert_eq!(s, 200);
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["msg_id"], msg_id.as_str());
    let (_, last) = srv.get(&format!("/api/v1/conversations/{cid}/messages?after_seq=20&limit=10"), &alice_tok).await;
    let seqs: Vec<u64> = last["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![21, 22, 23, 24]);
    assert_eq!(last["has_more"], false);
    assert_eq!(last["messages"][3]["content"], file);

    // sync over the WebSocket, paged
    send(&mut b1, json!({"type":"sync","conversation_id":cid,"after_seq":5,"limit":3})).await;
    let sr = recv(&mut b1).await;
    assert_eq!(sr["type"], "sync-result");
    assert_eq!(sr["conversation_id"], cid.as_str());
    assert_eq!(sr["has_more"], true);
    let seqs: Vec<u64> = sr["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![6, 7, 8]);
    send(&mut b1, json!({"type":"sync","conversation_id":cid,"after_seq":22})).await;
    let sr = recv(&mut b1).await;
    assert_eq!((sr["messages"].as_array().unwrap().len(), &sr["has_more"]), (2, &json!(false)));

    // a non-member is refused everywhere
    let (_carol, carol_tok) = srv.user("carol").await;
    let (s, err) = srv.get(&format!("/api/v1/conversations/{cid}/messages"), &carol_tok).await;
    assert_eq!(s, 403);
    assert_eq!(err["error"]["code"], "not_member");
    let mut c1 = srv.connect(&carol_tok).await;
    send(&mut c1, json!({"type":"sync","conversation_id":cid,"after_seq":0})).await;
    let e = recv(&mut c1).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("not_member")));
    send(&mut c1, json!({"type":"send-message","client_msg_id":"x","conversation_id":cid,"content_type":"text","content":{"text":"intrude"}})).await;
    let e = recv(&mut c1).await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("not_member"), Some("x")));
    // sending to a user that does not exist
    send(&mut c1, text_msg("ghost", "12345", "anyone?")).await;
    let e = recv(&mut c1).await;
    assert_eq!(e["code"], "unknown_user");

    // malformed JSON gets an error frame and the connection stays usable
    c1.send(Message::text("{\"type\": \"send-message\", oops")).await.unwrap();
    let e = recv(&mut c1).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("invalid_json")));
    send(&mut c1, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut c1).await, json!({"type":"pong"}));

    // an oversized frame is refused with 1009 (default limit 1 MiB)
    let huge = "x".repeat((1 << 20) + 10);
    c1.send(Message::text(huge)).await.unwrap();
    assert_eq!(recv_close(&mut c1).await, CloseCode::Size);

    // nothing leaked to bob from carol's attempts, and the server is healthy
    assert!(recv_within(&mut b1, Duration::from_millis(200)).await.is_none());
    let health = srv.http.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = srv.http.get(srv.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Operational endpoints are not on the public port (gateway.admin_listen, loopback).
    for path in ["/metrics", "/readyz"] {
        let r = srv.http.get(srv.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} on the client port");
    }
    let scrape = srv.http.get(srv.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(scrape.contains("gochat_gateway_websockets") && scrape.contains("gochat_logic_records_total"), "{scrape}");
    send(&mut a1, text_msg("after", &bob, "still alive")).await;
    assert_eq!(recv(&mut a1).await["seq"], 25);
    let stored = srv.metric("gochat_logic_messages_persisted_total").await;
    assert_eq!(stored[0].1, 25.0, "exactly 25 messages stored");
}

#[tokio::test]
async fn upgrade_without_valid_token_is_refused_with_401() {
    let dir = temp_dir("auth");
    let srv = Server::start(&dir, 1);
    for url in [format!("ws://{}/ws", srv.addr), format!("ws://{}/ws?token=not-a-jwt", srv.addr)] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized");
            }
            other => panic!("expected HTTP 401, got {:?}", other.map(|r| r.1.status())),
        }
    }
    let unauth = srv.metric("gochat_gateway_upgrades_unauthorized_total").await;
    assert_eq!(unauth.iter().map(|(_, v)| v).sum::<f64>(), 2.0);
}

#[tokio::test]
async fn rest_errors_are_json_with_codes() {
    let dir = temp_dir("rest");
    let srv = Server::start(&dir, 1);
    let post = |path: &str, body: Value| srv.http.post(srv.url(path)).json(&body).send();
    let r = post("/api/v1/auth/register", json!({"username":"x","password":"correct-horse"})).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_username");
    let r = post("/api/v1/auth/register", json!({"username":"dave","password":"short"})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_password");
    srv.register("dave").await;
    let r = post("/api/v1/auth/register", json!({"username":"DAVE","password":"correct-horse"})).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "username_taken");
    let r = post("/api/v1/auth/login", json!({"username":"dave","password":"wrong-horse"})).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_credentials");
    let r = post("/api/v1/auth/login", json!({"username":"nobody","password":"wrong-horse"})).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .http
        .post(srv.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{bad")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_json");
    let r = srv.http.get(srv.url("/api/v1/users/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let token = srv.login("dave").await;
    let (s, me) = srv.get("/api/v1/users/me", &token).await;
    assert_eq!(s, 200);
    assert_eq!(
        (me["username"].as_str(), me["nickname"].as_str(), me["avatar_url"].as_str()),
        (Some("dave"), Some("dave nick"), Some(""))
    );
    let (s, e) = srv.get("/api/v1/nope", &token).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, e) = srv.get("/api/v1/conversations/s_2_1/messages", &token).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_conversation")));
}

#[tokio::test]
async fn connections_spread_over_shards() {
    let dir = temp_dir("shards");
    // 24 sockets of one account: above the default per-user cap (16).
    let srv = Server::start_with(&dir, 2, &[("GOCHAT_LOGIC__MAX_CONNECTIONS_PER_USER", "0")]);
    let (_, tok) = srv.user("erin").await;
    let mut conns = Vec::new();
    for _ in 0..24 {
        conns.push(srv.connect(&tok).await);
    }
    let per_shard = srv.metric("gochat_gateway_websockets{").await;
    assert_eq!(per_shard.len(), 2, "{per_shard:?}");
    assert_eq!(per_shard.iter().map(|(_, v)| v).sum::<f64>(), 24.0);
    assert!(per_shard.iter().all(|(_, v)| *v > 0.0), "both shards hold connections: {per_shard:?}");
    // each connection still works whatever shard it landed on
    for ws in conns.iter_mut() {
        send(ws, json!({"type":"ping"})).await;
        assert_eq!(recv(ws).await["type"], "pong");
    }
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_users_history_and_dedup() {
    let dir = temp_dir("restart");
    let srv = Server::start(&dir, 1);
    let (frank, frank_tok) = srv.user("frank").await;
    let (grace, _) = srv.user("grace").await;
    let mut f = srv.connect(&frank_tok).await;
    let mut acks = Vec::new();
    for i in 0..3 {
        send(&mut f, text_msg(&format!("r-{i}"), &grace, "before restart")).await;
        acks.push(recv(&mut f).await);
    }
    drop(f);
    let status = srv.stop();
    assert!(status.success(), "clean shutdown on SIGTERM: {status:?}");

    let srv = Server::start(&dir, 1);
    let frank_tok = srv.login("frank").await; // password hash survived
    let cid = conv_id(&frank, &grace);
    let (s, page) = srv.get(&format!("/api/v1/conversations/{cid}/messages"), &frank_tok).await;
    assert_eq!(s, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    let mut f = srv.connect(&frank_tok).await;
    // the retry of an acked message is recognised from the database
    send(&mut f, text_msg("r-2", &grace, "before restart")).await;
    assert_eq!(recv(&mut f).await, acks[2]);
    // seq allocation resumes from the stored maximum
    send(&mut f, text_msg("r-3", &grace, "after restart")).await;
    assert_eq!(recv(&mut f).await["seq"], 4);
}

#[tokio::test]
async fn the_connection_cap_refuses_cleanly_with_503() {
    let dir = temp_dir("cap");
    // 2 shards x 3 sockets each
    let srv = Server::start_with(&dir, 2, &[("GOCHAT_GATEWAY__MAX_CONNECTIONS", "6")]);
    let (_, tok) = srv.user("capped").await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match tokio_tungstenite::connect_async(format!("ws://{}/ws?token={tok}", srv.addr)).await {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "over_capacity");
                refused += 1;
            }
            Err(e) => panic!("expected 101 or 503, got {e}"),
        }
    }
    assert!(open.len() <= 6 && open.len() >= 2, "{} connections accepted", open.len());
    assert_eq!(open.len() + refused, 20);
    let at_cap = srv.metric("gochat_gateway_refused_at_capacity_total").await;
    assert_eq!(at_cap.iter().map(|(_, v)| v).sum::<f64>(), refused as f64);
    // the accepted ones work; closing them frees their slots
    for ws in open.iter_mut() {
        send(ws, json!({"type":"ping"})).await;
        assert_eq!(recv(ws).await["type"], "pong");
    }
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = srv.connect(&tok).await;
    send(&mut again, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut again).await["type"], "pong");
}

#[tokio::test]
async fn running_out_of_file_descriptors_never_crashes_the_gateway() {
    let dir = temp_dir("emfile");
    // A cap far above what 256 descriptors allow: accept() itself hits EMFILE.
    let args = ["dev", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", dir.to_str().unwrap()];
    // Hundreds of sockets of one account: no per-user cap.
    let env = [("GOCHAT_GATEWAY__MAX_CONNECTIONS", "5000"), ("GOCHAT_LOGIC__MAX_CONNECTIONS_PER_USER", "0")];
    let (child, ready) = spawn_ready_with_nofile(&args, &env, Some(256));
    let srv = Server::attach_gateway(child, &ready);
    assert_eq!(ready["shards"], 1);
    let (_, tok) = srv.user("fdhog").await;
    let url = format!("ws://{}/ws?token={tok}", srv.addr);
    let mut open = Vec::new();
    let mut failed = 0;
    for _ in 0..400 {
        match tokio::time::timeout(Duration::from_millis(500), tokio_tungstenite::connect_async(url.as_str())).await {
            Ok(Ok((ws, _))) => open.push(ws),
            _ => {
                failed += 1;
                if failed == 5 {
                    break; // out of descriptors: enough
                }
            }
        }
    }
    assert_eq!(failed, 5, "256 descriptors cannot hold 400 sockets");
    assert!(open.len() > 100, "only {} connections before EMFILE", open.len());
    // existing connections still work while the process is out of descriptors
    send(&mut open[0], json!({"type":"ping"})).await;
    assert_eq!(recv(&mut open[0]).await["type"], "pong");
    drop(open);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // descriptors are back: new connections and REST work again
    let mut ws = srv.connect(&tok).await;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    let errors = srv.metric("gochat_gateway_accept_errors_total").await;
    assert!(errors.iter().map(|(_, v)| v).sum::<f64>() > 0.0, "accept errors were counted: {errors:?}");
}

/// A client_msg_id is one message: repeated in its conversation it is a
/// retry (the original ack), reused in another conversation it is refused
/// and nothing is stored; the `sys:` prefix belongs to the server.
#[tokio::test]
async fn client_msg_id_reuse_and_the_reserved_prefix() {
    let dir = temp_dir("cmid");
    let srv = Server::start(&dir, 1);
    let (alice, alice_tok) = srv.user("alice").await;
    let (bob, bob_tok) = srv.user("bob").await;
    let (carol, _) = srv.user("carol").await;
    let mut a = srv.connect(&alice_tok).await;

    send(&mut a, text_msg("once", &bob, "to bob")).await;
    let ack = recv(&mut a).await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("message-ack"), Some(1)), "{ack}");
    send(&mut a, text_msg("once", &bob, "to bob again")).await;
    assert_eq!(recv(&mut a).await, ack, "a retry gets the original ack");

    send(&mut a, text_msg("once", &carol, "to carol")).await;
    let err = recv(&mut a).await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), err["ref"].as_str()),
        (Some("error"), Some("duplicate_client_msg_id"), Some("once")),
        "{err}"
    );
    let cid_carol = conv_id(&alice, &carol);
    let (s, page) = srv.get(&format!("/api/v1/conversations/{cid_carol}/messages"), &alice_tok).await;
    assert_eq!((s, page["messages"].as_array().map(Vec::len)), (200, Some(0)), "nothing stored for carol: {page}");

    send(&mut a, text_msg("sys:1", &bob, "spoofed")).await;
    let err = recv(&mut a).await;
    assert_eq!((err["code"].as_str(), err["ref"].as_str()), (Some("invalid_message"), Some("sys:1")), "{err}");

    // The connection stays usable and the conversation has no gap.
    send(&mut a, text_msg("next", &bob, "still fine")).await;
    assert_eq!(recv(&mut a).await["seq"], 2);
    let cid_bob = conv_id(&alice, &bob);
    let (_, page) = srv.get(&format!("/api/v1/conversations/{cid_bob}/messages"), &bob_tok).await;
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2]);
}

/// Password hashing cannot be used to exhaust the server: failed logins for
/// one username are throttled (429 with Retry-After), and logins beyond the
/// hashing slots wait a bounded time, then get 503 `server_busy`.
#[tokio::test]
async fn login_floods_are_throttled_and_bounded() {
    let dir = temp_dir("logins");
    let env = [
        ("GOCHAT_AUTH__LOGIN_FAILURES_MAX", "3"),
        ("GOCHAT_AUTH__MAX_CONCURRENT_HASHES", "1"),
        ("GOCHAT_AUTH__HASH_QUEUE_TIMEOUT_MS", "1"),
    ];
    let srv = Server::start_with(&dir, 1, &env);
    srv.register("victim").await;
    let login = |user: &'static str, password: &'static str| {
        let (http, url) = (srv.http.clone(), srv.url("/api/v1/auth/login"));
        async move {
            let r = http.post(url).json(&json!({"username": user, "password": password})).send().await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // 20 logins at once against one hashing slot: some wait their turn and
    // fail normally (401), the rest are refused at once with 503.
    let answers = futures_util::future::join_all((0..20).map(|_| login("nobody", "wrong-password"))).await;
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert!(!busy.is_empty(), "a full hasher refuses: {answers:?}");
    assert!(answers.iter().all(|a| matches!(a.0, 401 | 503)), "{answers:?}");
    assert_eq!((busy[0].1.as_deref(), busy[0].2["error"]["code"].as_str()), (Some("1"), Some("server_busy")));

    // Three wrong passwords for the victim, then even the right one waits.
    for _ in 0..3 {
        let mut a = login("victim", "wrong-password").await;
        while a.0 == 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a = login("victim", "wrong-password").await;
        }
        assert_eq!(a.0, 401, "{a:?}");
    }
    let (status, retry_after, body) = login("VICTIM", "correct-horse").await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=300).contains(&secs), "{secs}");
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() <= 300_000);
    // Another username is unaffected.
    srv.register("bystander").await;
    let mut a = login("bystander", "correct-horse").await;
    while a.0 == 503 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        a = login("bystander", "correct-horse").await;
    }
    assert_eq!(a.0, 200);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Slow-body attack: sockets that announce a 1 MiB body and send none of it.
/// The gateway's memory follows the bytes received (not the announced
/// length), and each socket gets 408 once the body deadline passes.
#[tokio::test]
async fn announced_bodies_that_never_arrive_cost_nothing_and_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SOCKETS: usize = 200;
    let dir = temp_dir("slowbody");
    let srv = Server::start_with(&dir, 1, &[("GOCHAT_GATEWAY__HTTP_BODY_TIMEOUT_MS", "1500")]);
    let before = rss_kib(srv.pid());
    let mut socks = Vec::new();
    for _ in 0..SOCKETS {
        let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{\"us";
        s.write_all(head.as_bytes()).await.unwrap();
        socks.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown_mib = rss_kib(srv.pid()).saturating_sub(before) / 1024;
    // Allocating the announced length would be 200 MiB.
    assert!(grown_mib < 40, "{SOCKETS} announced 1 MiB bodies grew the server by {grown_mib} MiB");
    for mut s in socks {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("closed").unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
    }
    let timeouts: f64 = srv.metric("gochat_gateway_http_body_timeouts_total").await.iter().map(|(_, v)| v).sum();
    assert_eq!(timeouts, SOCKETS as f64);
    // The server still answers.
    let (_, tok) = srv.user("after").await;
    assert_eq!(srv.get("/api/v1/users/me", &tok).await.0, 200);
}

/// One WebSocket may produce gateway.client_messages_per_sec upstream
/// records (5/s here, burst 10): a client firing 30 sends at once gets 10
/// acks and `rate_limited` errors carrying the send's `ref` and a
/// `retry_after_ms`; nothing refused is stored or delivered; after the
/// advised wait a send goes through. Another connection has its own bucket.
#[tokio::test]
async fn a_connection_flooding_sends_is_rate_limited_and_told_when_to_retry() {
    let srv = Server::start_with(
        &temp_dir("ratelimit"),
        1,
        &[("GOCHAT_GATEWAY__CLIENT_MESSAGES_PER_SEC", "5"), ("GOCHAT_GATEWAY__CLIENT_MESSAGE_BURST", "10")],
    );
    let (_, alice_tok) = srv.user("rl-alice").await;
    let (bob, bob_tok) = srv.user("rl-bob").await;
    let mut a = srv.connect(&alice_tok).await;
    for i in 0..30 {
        send(&mut a, text_msg(&format!("flood-{i}"), &bob, "x")).await;
    }
    let (mut acked, mut limited, mut retry_after) = (Vec::new(), Vec::new(), 0u64);
    while acked.len() + limited.len() < 30 {
        let f = recv(&mut a).await;
        match f["type"].as_str().unwrap() {
            "message-ack" => acked.push(f["client_msg_id"].as_str().unwrap().to_owned()),
            "error" => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                retry_after = f["retry_after_ms"].as_u64().expect("retry_after_ms");
                limited.push(f["ref"].as_str().unwrap().to_owned());
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    assert!((10..=12).contains(&acked.len()), "the burst and little more went through: {acked:?}");
    assert!(retry_after > 0 && retry_after <= 200, "retry_after_ms {retry_after}");
    // Refused sends were not stored: bob's history has exactly the acked ones.
    let (_, me) = srv.get("/api/v1/users/me", &alice_tok).await;
    let alice = me["user_id"].as_str().unwrap().to_owned();
    let (status, page) = srv
        .get(&format!("/api/v1/conversations/{}/messages?after_seq=0&limit=100", conv_id(&alice, &bob)), &bob_tok)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), acked.len(), "{page}");
    // Another connection of the same user has its own bucket.
    let mut a2 = srv.connect(&alice_tok).await;
    send(&mut a2, text_msg("other-conn", &bob, "y")).await;
    assert_eq!(recv(&mut a2).await["type"], "message-ack");
    // After the advised wait, the first connection is served again.
    tokio::time::sleep(Duration::from_millis(retry_after + 50)).await;
    send(&mut a, text_msg(&limited[0], &bob, "x")).await;
    let f = loop {
        // The other connection's message reaches this one too (a user's devices stay in sync).
        let f = recv(&mut a).await;
        if f["type"] != "new-message" {
            break f;
        }
    };
    assert_eq!(
        (f["type"].as_str(), f["client_msg_id"].as_str()),
        (Some("message-ack"), Some(limited[0].as_str())),
        "{f}"
    );
    let limited_total: f64 = srv.metric("gochat_gateway_rate_limited_total").await.iter().map(|(_, v)| v).sum();
    assert_eq!(limited_total as usize, limited.len());
}
