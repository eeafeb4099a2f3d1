//! Starts the built `peer-tokio` binary and drives it over real HTTP and
//! WebSockets: register, login, create a group, ack + new-message round trip.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Start the peer on a free port; returns the child (killed on drop) and its address.
async fn start_peer(extra: &[&str]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_peer-tokio"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn peer-tokio");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "peer ready" {
                    return v["addr"].as_str().expect("addr").to_owned();
                }
            }
        }
        panic!("peer-tokio exited before it was ready");
    })
    .await
    .expect("ready line within 10 s");
    // Keep draining stderr so the peer never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Register and log in; returns (user_id, token).
async fn user(http: &reqwest::Client, base: &str, name: &str) -> (String, String) {
    let (s, v) =
        post(http, format!("{base}/api/v1/auth/register"), None, json!({"username": name, "password": "password-1"}))
            .await;
    assert_eq!(s, 201, "register {name}: {v}");
    let id = v["user_id"].as_str().expect("user_id").to_owned();
    let (s, v) =
        post(http, format!("{base}/api/v1/auth/login"), None, json!({"username": name, "password": "password-1"}))
            .await;
    assert_eq!(s, 200, "login {name}: {v}");
    assert_eq!(v["user_id"], id.as_str());
    (id, v["token"].as_str().expect("token").to_owned())
}

async fn connect(addr: &str, token: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await.expect("ws connect").0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("ws send");
}

/// The next text frame as JSON (2 s timeout).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(2), ws.next()).await.expect("a frame within 2 s");
        match m.expect("stream open").expect("ws ok") {
            Message::Text(t) => return serde_json::from_str(&t).expect("server frames are JSON"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn group_message_round_trip() {
    let (_child, addr) = start_peer(&[]).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let (alice, ta) = user(&http, &base, "alice").await;
    let (bob, tb) = user(&http, &base, "bob").await;
    let (_carol, tc) = user(&http, &base, "carol").await;
    let (s, v) = post(
        &http,
        format!("{base}/api/v1/auth/register"),
        None,
        json!({"username": "ALICE", "password": "password-2"}),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("username_taken")));

    let me: Value =
        http.get(format!("{base}/api/v1/users/me")).bearer_auth(&tb).send().await.unwrap().json().await.unwrap();
    assert_eq!(me, json!({"user_id": bob, "username": "bob", "nickname": "bob", "avatar_url": ""}));

    let (s, g) =
        post(&http, format!("{base}/api/v1/groups"), Some(&ta), json!({"name": "team", "member_ids": [bob]})).await;
    assert_eq!(s, 201, "{g}");
    let cid = g["conversation_id"].as_str().expect("conversation_id").to_owned();
    assert_eq!(cid, format!("g_{}", g["group_id"].as_str().unwrap()));
    assert_eq!(g["owner_id"], alice.as_str());
    assert_eq!(g["members"].as_array().map(Vec::len), Some(2));

    // A bad token is refused before the upgrade.
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=nope")).await {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    // Alice on two devices, Bob on one.
    let mut a1 = connect(&addr, &ta).await;
    let mut a2 = connect(&addr, &ta).await;
    let mut b1 = connect(&addr, &tb).await;
    for ws in [&mut a1, &mut a2, &mut b1] {
        // A connection is registered once it answers.
        send(ws, json!({"type": "ping"})).await;
        assert_eq!(recv(ws).await, json!({"type": "pong"}));
    }
    let p: Value = http
        .get(format!("{base}/api/v1/users/{alice}/presence"))
        .bearer_auth(&tb)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p, json!({"user_id": alice, "online": true, "connections": 2}));

    let content = json!({"text": "hi team", "sched_us": 12345});
    let msg = json!({"type": "send-message", "client_msg_id": "m-1", "conversation_id": cid, "content_type": "text", "content": content});
    send(&mut a1, msg.clone()).await;
    let ack = recv(&mut a1).await;
    assert_eq!(ack["type"], "message-ack");
    assert_eq!(ack["client_msg_id"], "m-1");
    assert_eq!(ack["conversation_id"], cid.as_str());
    assert_eq!(ack["seq"], 2, "seq 1 is the group's member_joined system message");
    for ws in [&mut b1, &mut a2] {
        let m = recv(ws).await;
        assert_eq!(m["type"], "new-message");
        assert_eq!(m["msg_id"], ack["msg_id"]);
        assert_eq!(m["seq"], 2);
        assert_eq!(m["ts"], ack["ts"]);
        assert_eq!(m["sender_id"], alice.as_str());
        assert_eq!(m["client_msg_id"], "m-1");
        assert_eq!(m["content_type"], "text");
        assert_eq!(m["content"], content);
    }

    // A retry gets the original ack and pushes nothing; the next message is seq 3.
    send(&mut a1, msg).await;
    assert_eq!(recv(&mut a1).await, ack);
    send(&mut a1, json!({"type": "send-message", "client_msg_id": "m-2", "conversation_id": cid, "content_type": "text", "content": {"text": "again"}})).await;
    assert_eq!(recv(&mut a1).await["seq"], 3);
    assert_eq!(recv(&mut b1).await["seq"], 3);

    // Errors keep the connection.
    send(&mut b1, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut b1).await, json!({"type": "pong"}));
    b1.send(Message::text("{not json")).await.unwrap();
    assert_eq!(recv(&mut b1).await["code"], "invalid_json");
    let mut c1 = connect(&addr, &tc).await;
    send(&mut c1, json!({"type": "send-message", "client_msg_id": "c-1", "conversation_id": cid, "content_type": "text", "content": {"text": "let me in"}})).await;
    let e = recv(&mut c1).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("not_member"), Some("c-1"))
    );

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("peer_connections 4"), "{metrics}");
    assert!(metrics.contains("peer_frames_out_total"), "{metrics}");
}

#[tokio::test]
async fn slow_reader_is_dropped() {
    let (_child, addr) = start_peer(&["--queue-frames", "16"]).await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let (_alice, ta) = user(&http, &base, "alice").await;
    let (bob, tb) = user(&http, &base, "bob").await;
    let (_, g) =
        post(&http, format!("{base}/api/v1/groups"), Some(&ta), json!({"name": "t", "member_ids": [bob]})).await;
    let cid = g["conversation_id"].as_str().unwrap().to_owned();
    let mut a = connect(&addr, &ta).await;
    let mut b = connect(&addr, &tb).await; // never reads until the end
    send(&mut b, json!({"type": "ping"})).await;
    let presence = |http: reqwest::Client, url: String, t: String| async move {
        let v: Value = http.get(url).bearer_auth(t).send().await.unwrap().json().await.unwrap();
        v["connections"].as_u64().unwrap()
    };
    let url = format!("{base}/api/v1/users/{bob}/presence");
    while presence(http.clone(), url.clone(), ta.clone()).await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ~50 KB frames: kernel buffers fill, then the 16-frame queue overflows.
    let text = "x".repeat(50_000);
    for i in 0..1000 {
        let m = json!({"type": "send-message", "client_msg_id": format!("f-{i}"), "conversation_id": cid, "content_type": "text", "content": {"text": text}});
        send(&mut a, m).await;
        assert_eq!(recv(&mut a).await["type"], "message-ack");
        if i % 50 == 49 && presence(http.clone(), url.clone(), ta.clone()).await == 0 {
            break;
        }
    }
    assert_eq!(presence(http.clone(), url, ta).await, 0, "the slow reader was dropped");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("peer_slow_consumer_drops_total 1"), "{metrics}");
    // What was written before the drop is still readable; then the stream ends.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let mut frames = 0;
        while let Some(Ok(m)) = b.next().await {
            frames += m.is_text() as usize;
        }
        frames
    })
    .await
    .expect("the dropped connection ends");
    assert!(drained > 0);
}
