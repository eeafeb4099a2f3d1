//! Groups end to end through a real `gochat dev`: the REST API, system
//! messages, big-group fan-out inline in logic and through the in-process
//! task tier, moderation, and offline push through a real webhook.

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::groups::big_group;
use support::*;

fn env_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = CHEAP_ARGON2.to_vec();
    env.extend_from_slice(extra);
    env
}

use reqwest::Method;

#[tokio::test]
async fn group_rest_api_and_system_messages() {
    let dir = temp_dir("groups-api");
    let srv = Server::start_with(&dir, 2, &env_with(&[]));
    let (owner, owner_tok) = srv.user("owner").await;
    let (adm, adm_tok) = srv.user("adm").await;
    let (mem, mem_tok) = srv.user("mem").await;
    let (late, late_tok) = srv.user("late").await;
    let (_out, out_tok) = srv.user("outsider").await;

    // create: the creator is the owner; ids are strings
    let (s, g) =
        call(&srv, Method::POST, "/api/v1/groups", &owner_tok, Some(json!({"name": "team", "member_ids": [adm, mem]})))
            .await;
    assert_eq!(s, 201, "{g}");
    let gid = g["group_id"].as_str().unwrap().to_owned();
    assert_eq!(g["conversation_id"], format!("g_{gid}"));
    assert_eq!(g["owner_id"], owner.as_str());
    let roles: Vec<(String, String)> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap().into(), m["role"].as_str().unwrap().into()))
        .collect();
    assert!(
        roles.contains(&(owner.clone(), "owner".into())) && roles.contains(&(mem.clone(), "member".into())),
        "{roles:?}"
    );
    let cid = format!("g_{gid}");

    // bad input
    let (s, e) =
        call(&srv, Method::POST, "/api/v1/groups", &owner_tok, Some(json!({"name": "", "member_ids": []}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_name")));
    let (s, e) =
        call(&srv, Method::POST, "/api/v1/groups", &owner_tok, Some(json!({"name": "x", "member_ids": ["99"]}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("unknown_user")));
    let (s, e) =
        call(&srv, Method::POST, "/api/v1/groups", &owner_tok, Some(json!({"name": "x", "member_ids": [1]}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_json")), "ids are strings");

    // get / list: members only
    let (s, _) = call(&srv, Method::GET, &format!("/api/v1/groups/{gid}"), &mem_tok, None).await;
    assert_eq!(s, 200);
    let (s, e) = call(&srv, Method::GET, &format!("/api/v1/groups/{gid}"), &out_tok, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("not_member")));
    let (s, e) = call(&srv, Method::GET, "/api/v1/groups/12345", &out_tok, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (404, Some("unknown_group")));
    let (s, l) = call(&srv, Method::GET, "/api/v1/groups", &mem_tok, None).await;
    assert_eq!(s, 200);
    assert_eq!(l["groups"][0]["group_id"], gid.as_str());
    let (_, l) = call(&srv, Method::GET, "/api/v1/groups", &out_tok, None).await;
    assert_eq!(l["groups"], json!([]));

    // roles: only the owner promotes; an admin then adds members, a member cannot
    let (s, _) = call(
        &srv,
        Method::PATCH,
        &format!("/api/v1/groups/{gid}/members/{adm}"),
        &mem_tok,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, g) = call(
        &srv,
        Method::PATCH,
        &format!("/api/v1/groups/{gid}/members/{adm}"),
        &owner_tok,
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let (s, e) = call(
        &srv,
        Method::PATCH,
        &format!("/api/v1/groups/{gid}/members/{owner}"),
        &owner_tok,
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("invalid_role")));
    let (s, _) =
        call(&srv, Method::POST, &format!("/api/v1/groups/{gid}/members"), &mem_tok, Some(json!({"user_ids": [late]})))
            .await;
    assert_eq!(s, 403);

    // a live member sees the membership events in the group's sequence
    let mut m = srv.connect(&mem_tok).await;
    srv.wait_online(&mem_tok, &mem, 1).await;
    let (s, g) = call(
        &srv,
        Method::POST,
        &format!("/api/v1/groups/{gid}/members"),
        &adm_tok,
        Some(json!({"user_ids": [late, mem]})),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 4);
    let ev = recv(&mut m).await;
    assert_eq!(
        (ev["type"].as_str(), ev["content_type"].as_str(), ev["seq"].as_u64()),
        (Some("new-message"), Some("system"), Some(2)),
        "{ev}"
    );
    assert_eq!(ev["content"], json!({"event": "member_joined", "user_ids": [late]}), "only the new member");

    // a member sends; the late joiner can read it, and nothing from before
    // it joined (it joined at seq 1: history starts with its member_joined)
    send(&mut m, json!({"type":"send-message","client_msg_id":"g1","conversation_id":cid,"content_type":"text","content":{"text":"hello team"}})).await;
    let ack = recv(&mut m).await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_u64()), (Some("message-ack"), Some(3)), "{ack}");
    let (s, h) = call(&srv, Method::GET, &format!("/api/v1/conversations/{cid}/messages"), &late_tok, None).await;
    assert_eq!(s, 200);
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(h["messages"][0]["content"], json!({"event": "member_joined", "user_ids": [late]}));

    // outsiders cannot send, sync or read
    let mut o = srv.connect(&out_tok).await;
    send(&mut o, json!({"type":"send-message","client_msg_id":"x","conversation_id":cid,"content_type":"text","content":{"text":"let me in"}})).await;
    let e = recv(&mut o).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("not_member"), Some("x"))
    );
    send(&mut o, json!({"type":"sync","conversation_id":cid,"after_seq":0})).await;
    assert_eq!(recv(&mut o).await["code"], "not_member");
    let (s, _) = call(&srv, Method::GET, &format!("/api/v1/conversations/{cid}/messages"), &out_tok, None).await;
    assert_eq!(s, 403);
    send(&mut o, json!({"type":"send-message","client_msg_id":"y","conversation_id":"g_777","content_type":"text","content":{"text":"?"}})).await;
    assert_eq!(recv(&mut o).await["code"], "unknown_conversation");

    // removal: an admin cannot remove the owner; a member leaves by itself
    let (s, _) = call(&srv, Method::DELETE, &format!("/api/v1/groups/{gid}/members/{owner}"), &adm_tok, None).await;
    assert_eq!(s, 403);
    let (s, e) = call(&srv, Method::DELETE, &format!("/api/v1/groups/{gid}/members/{owner}"), &owner_tok, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("owner_cannot_leave")));
    let (s, _) = call(&srv, Method::DELETE, &format!("/api/v1/groups/{gid}/members/{late}"), &late_tok, None).await;
    assert_eq!(s, 204);
    let ev = recv(&mut m).await;
    assert_eq!((ev["seq"].as_u64(), &ev["content"]), (Some(4), &json!({"event": "member_left", "user_ids": [late]})));
    let (s, _) = call(&srv, Method::GET, &format!("/api/v1/conversations/{cid}/messages"), &late_tok, None).await;
    assert_eq!(s, 403, "a member who left can no longer read");

    // dissolve: owner only; members are told, then the group is gone
    let (s, _) = call(&srv, Method::DELETE, &format!("/api/v1/groups/{gid}"), &adm_tok, None).await;
    assert_eq!(s, 403);
    let (s, _) = call(&srv, Method::DELETE, &format!("/api/v1/groups/{gid}"), &owner_tok, None).await;
    assert_eq!(s, 204);
    let ev = recv(&mut m).await;
    assert_eq!((ev["seq"].as_u64(), ev["content"]["event"].as_str()), (Some(5), Some("group_dissolved")), "{ev}");
    let (s, _) = call(&srv, Method::GET, &format!("/api/v1/groups/{gid}"), &owner_tok, None).await;
    assert_eq!(s, 404);
    send(&mut m, json!({"type":"send-message","client_msg_id":"g2","conversation_id":cid,"content_type":"text","content":{"text":"anyone?"}})).await;
    assert_eq!(recv(&mut m).await["code"], "unknown_conversation");
}

async fn big_group_embedded(threshold: &str, tag: &str) -> Server {
    raise_nofile();
    let dir = temp_dir(tag);
    let srv = Server::start_with(&dir, 2, &env_with(&[("GOCHAT_LOGIC__GROUP_FANOUT_THRESHOLD", threshold)]));
    let base = srv.url("");
    let delivered = big_group(base.trim_end_matches('/'), &[srv.addr], tag, 2000, 150).await;
    assert!(delivered > 1800 * 15, "{delivered}");
    srv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_group_fans_out_inline_across_shards() {
    let srv = big_group_embedded("5000", "bginl").await;
    let inline = srv.metric("gochat_logic_fanout_inline_total").await;
    assert!(inline[0].1 >= 20.0, "{inline:?}");
    assert_eq!(srv.metric("gochat_logic_fanout_delegated_total").await[0].1, 0.0);
    // both shards delivered
    let per_shard = srv.metric("gochat_gateway_push_deliveries_total").await;
    assert!(per_shard.iter().filter(|(_, v)| *v > 1000.0).count() >= 2, "{per_shard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_group_above_the_threshold_goes_through_the_task_tier() {
    let srv = big_group_embedded("100", "bgtask").await;
    assert!(srv.metric("gochat_logic_fanout_delegated_total").await[0].1 >= 20.0);
    assert!(srv.metric("gochat_task_processed_total").await[0].1 >= 20.0);
    let sizes = srv.metric("gochat_task_fanout_recipients_count").await;
    assert!(sizes[0].1 >= 20.0, "{sizes:?}");
    assert_eq!(srv.metric("gochat_task_dead_lettered_total").await[0].1, 0.0);
}

#[tokio::test]
async fn moderation_rejects_a_configured_word() {
    let dir = temp_dir("moderation");
    let srv = Server::start_with(&dir, 1, &env_with(&[("GOCHAT_MODERATION__BLOCKED_WORDS", "[forbidden]")]));
    let (a, a_tok) = srv.user("mod-a").await;
    let (b, _) = srv.user("mod-b").await;
    let mut ws = srv.connect(&a_tok).await;
    srv.wait_online(&a_tok, &a, 1).await;
    send(&mut ws, text_msg("bad-1", &b, "this is FORBIDDEN talk")).await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["ref"].as_str()),
        (Some("error"), Some("message_rejected"), Some("bad-1")),
        "{e}"
    );
    send(&mut ws, text_msg("ok-1", &b, "this is fine")).await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["seq"].as_u64()),
        (Some("message-ack"), Some(1)),
        "nothing stored for the rejected one"
    );
    assert_eq!(srv.metric("gochat_logic_moderation_rejected_total").await[0].1, 1.0);
}

/// A webhook receiver that answers 503 to the first `fail_first` requests
/// (or forever), recording every request it accepted.
struct Hook {
    url: String,
    accepted: Arc<Mutex<Vec<(Value, String)>>>,
    calls: Arc<AtomicUsize>,
}

async fn webhook(fail_first: usize) -> Hook {
    use axum::http::{HeaderMap, StatusCode};
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (acc, c) = (accepted.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (acc, c) = (acc.clone(), c.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst);
                if n < fail_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let sig = headers.get("x-gochat-signature").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                let ts = headers.get("x-gochat-timestamp").unwrap().to_str().unwrap().to_owned();
                // check the signature the way a receiver would
                use hmac::{Hmac, Mac};
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
                mac.update(format!("{ts}.{body}").as_bytes());
                assert_eq!(sig, format!("sha256={}", hex::encode(mac.finalize().into_bytes())), "signed body");
                acc.lock().unwrap().push((
                    serde_json::from_str(&body).unwrap(),
                    headers.get("idempotency-key").unwrap().to_str().unwrap().to_owned(),
                ));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Hook { url, accepted, calls }
}

async fn offline_push_server(hook: &Hook, tag: &str) -> Server {
    let dir = temp_dir(tag);
    Server::start_with(
        &dir,
        1,
        &env_with(&[
            ("GOCHAT_TASK__PUSH_WEBHOOK_URL", hook.url.as_str()),
            ("GOCHAT_TASK__PUSH_WEBHOOK_SECRET", "hook-secret"),
            ("GOCHAT_TASK__PUSH_BATCH_SIZE", "2"),
            ("GOCHAT_TASK__BACKOFF_BASE_MS", "50"),
            ("GOCHAT_TASK__MAX_ATTEMPTS", "4"),
        ]),
    )
}

#[tokio::test]
async fn offline_push_webhook_retries_until_it_succeeds() {
    let hook = webhook(2).await;
    let srv = offline_push_server(&hook, "push-retry").await;
    let (a, a_tok) = srv.user("push-a").await;
    let mut offline = Vec::new();
    for i in 0..3 {
        offline.push(srv.register(&format!("push-b{i}")).await);
    }
    let (s, g) =
        call(&srv, Method::POST, "/api/v1/groups", &a_tok, Some(json!({"name": "push", "member_ids": offline}))).await;
    assert_eq!(s, 201);
    // The creation message must not arrive live ahead of the ack below.
    srv.wait_first_message(g["conversation_id"].as_str().unwrap(), &a_tok).await;
    let mut ws = srv.connect(&a_tok).await;
    srv.wait_online(&a_tok, &a, 1).await;
    send(&mut ws, json!({"type":"send-message","client_msg_id":"p1","conversation_id":g["conversation_id"],"content_type":"text","content":{"text":"wake up"}})).await;
    assert_eq!(recv(&mut ws).await["type"], "message-ack");
    // 3 offline members in batches of 2: two accepted requests after two 503s
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while hook.accepted.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook never succeeded; calls {}",
            hook.calls.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing more may arrive
    let accepted = hook.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 2, "each batch accepted once: {accepted:?}");
    let mut users: Vec<String> = accepted
        .iter()
        .flat_map(|(b, _)| {
            b["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["user_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    users.sort();
    let mut expected = offline.clone();
    expected.sort();
    assert_eq!(users, expected, "every offline member notified exactly once, the sender not at all");
    assert_eq!(accepted[0].0["notifications"][0]["preview"], "wake up");
    assert_ne!(accepted[0].1, accepted[1].1, "one idempotency key per batch");
    assert!(srv.metric("gochat_task_retried_total").await[0].1 >= 2.0);
    assert_eq!(srv.metric("gochat_task_dead_lettered_total").await[0].1, 0.0);
}

#[tokio::test]
async fn offline_push_that_always_fails_is_dead_lettered_with_its_reason() {
    let hook = webhook(usize::MAX).await;
    let srv = offline_push_server(&hook, "push-dlq").await;
    let (a, a_tok) = srv.user("dlq-a").await;
    let b = srv.register("dlq-b").await;
    let mut ws = srv.connect(&a_tok).await;
    srv.wait_online(&a_tok, &a, 1).await;
    send(&mut ws, text_msg("d1", &b, "are you there")).await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["type"], "message-ack");
    let dlq = srv.data_dir.join("dead-letters.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        if let Ok(text) = std::fs::read_to_string(&dlq) {
            if let Some(l) = text.lines().next() {
                break serde_json::from_str::<Value>(l).unwrap();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["task"], "offline_push");
    assert_eq!(line["attempts"], 4);
    assert!(line["reason"].as_str().unwrap().contains("503"), "{line}");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 4, "max_attempts requests, no more");
    // nothing lost: the message is stored and b gets it by sync
    let b_tok = srv.login("dlq-b").await;
    let (s, h) = srv.get(&format!("/api/v1/conversations/{}/messages", conv_id(&a, &b)), &b_tok).await;
    assert_eq!(s, 200);
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(srv.metric("gochat_task_dead_lettered_total").await[0].1, 1.0);
}
