//! Slow readers through a real `gochat dev` process, in a busy group: a
//! connection that stops reading overflows its bounded outbound queue, is
//! dropped from delivery and sent a `resync` hint instead of being closed,
//! while the other members (and another device of the same user, fed by the
//! very same pushes) receive every message on time.

mod support;

use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::*;
use tokio_tungstenite::MaybeTlsStream;

const QUEUE_BYTES: u64 = 65_536;
/// `gochat_gateway::conn::RESYNC_RESERVE_BYTES`: room above the bound for the hint.
const RESERVE: u64 = 256;
/// Messages sent per round; rounds continue until the slow queue overflowed.
const ROUND: usize = 400;
const MAX_MESSAGES: usize = 2_000;
/// Sends in flight before the sender waits for an ack.
const WINDOW: usize = 8;
/// Group members besides the sender and the user with the slow device.
const OTHER_MEMBERS: usize = 20;

/// A WebSocket whose socket receives little: a 4 KiB receive buffer and a
/// small MSS (which keeps the server's send buffer from autotuning to
/// megabytes), so the server's queue fills soon after the client stops reading.
async fn connect_slow(srv: &Server, token: &str) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mss: libc::c_int = 536;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            &mss as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
    let tcp = tokio::time::timeout(Duration::from_secs(10), sock.connect(srv.addr)).await.unwrap().unwrap();
    let url = format!("ws://{}/ws?token={token}", srv.addr);
    let (ws, resp) =
        tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)))
            .await
            .unwrap()
            .expect("ws connect");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sum of a metric over all shards.
async fn metric_sum(srv: &Server, name: &str) -> u64 {
    let samples = srv.metric(name).await;
    assert!(!samples.is_empty(), "{name} is not exported");
    samples.iter().map(|(_, v)| *v as u64).sum()
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// Send messages `from..to` (ids `m-{i}`) with at most [`WINDOW`] unacked,
/// retrying `server_busy`; returns the acked seqs.
async fn send_messages(alice: &mut Ws, cid: &str, from: usize, to: usize) -> Vec<u64> {
    let pad = "x".repeat(2_000);
    let msg = |i: usize| {
        json!({"type": "send-message", "client_msg_id": format!("m-{i}"), "conversation_id": cid,
            "content_type": "text", "content": {"text": format!("{i:05} {pad}")}})
    };
    let mut next = from;
    let mut seqs = Vec::new();
    while seqs.len() < to - from {
        while next < to && next - from - seqs.len() < WINDOW {
            send(alice, msg(next)).await;
            next += 1;
        }
        let v = recv(alice).await;
        match v["type"].as_str() {
            Some("message-ack") => seqs.push(seq(&v)),
            // Not accepted (intake full, or this connection's rate limit):
            // resend after the advised pause, as clients must.
            Some("error") if v["code"] == "server_busy" || v["code"] == "rate_limited" => {
                let pause = v["retry_after_ms"].as_u64().unwrap_or(50);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let i: usize = v["ref"].as_str().unwrap().trim_start_matches("m-").parse().unwrap();
                send(alice, msg(i)).await;
            }
            _ => panic!("sender got {v}"),
        }
    }
    seqs
}

#[tokio::test]
async fn slow_reader_gets_a_resync_hint_and_others_get_everything() {
    tokio::time::timeout(Duration::from_secs(240), scenario()).await.expect("slow reader scenario timed out");
}

async fn scenario() {
    let srv = Server::start_with(
        &temp_dir("slow-reader"),
        1, // one shard: the slow and the healthy connection share one push loop
        &[
            ("GOCHAT_GATEWAY__OUTBOUND_QUEUE_BYTES", "65536"),
            // The slow reader stays stuck for a while; it must not be dropped
            // for a stalled write meanwhile.
            ("GOCHAT_GATEWAY__WRITE_TIMEOUT_MS", "120000"),
        ],
    );
    let (alice, alice_tok) = srv.user("alice").await;
    let (bob, bob_tok) = srv.user("bob").await;
    // The rest of a busy group: members who read everything.
    let mut others = Vec::new();
    for i in 0..OTHER_MEMBERS {
        others.push(srv.user(&format!("member{i}")).await);
    }
    let mut ids: Vec<&str> = others.iter().map(|(id, _)| id.as_str()).collect();
    ids.push(&bob);
    let r = srv
        .http
        .post(srv.url("/api/v1/groups"))
        .bearer_auth(&alice_tok)
        .json(&json!({"name": "busy", "member_ids": ids}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cid = r.json::<Value>().await.unwrap()["conversation_id"].as_str().unwrap().to_owned();
    // Nobody connecting below receives the creation (seq 1) live: every
    // count starts at 2.
    srv.wait_first_message(&cid, &alice_tok).await;
    let mut a = srv.connect(&alice_tok).await;
    let mut slow = connect_slow(&srv, &bob_tok).await;
    let mut fast = srv.connect(&bob_tok).await;
    let mut readers = Vec::new();
    for (id, tok) in &others {
        readers.push(srv.connect(tok).await);
        srv.wait_online(&alice_tok, id, 1).await;
    }
    srv.wait_online(&alice_tok, &bob, 2).await;
    srv.wait_online(&alice_tok, &alice, 1).await;
    // seq 1 is the group's creation (before anyone connected); messages start at 2.

    // Alice sends rounds of ~2 KB messages to bob until the slow device's
    // queue has overflowed; bob's other device reads all along, and
    // /metrics is sampled meanwhile.
    let (target_tx, mut target_rx) = tokio::sync::watch::channel(0u64);
    let sending = AtomicBool::new(true);
    let max_queued = AtomicU64::new(0);
    let sender = async {
        let mut acked = Vec::new();
        let mut sent = 0;
        while sent < MAX_MESSAGES {
            acked.extend(send_messages(&mut a, &cid, sent, sent + ROUND).await);
            sent += ROUND;
            if metric_sum(&srv, "gochat_gateway_resync_hints_total").await > 0 {
                break;
            }
        }
        target_tx.send(sent as u64).unwrap();
        sending.store(false, Ordering::Relaxed);
        acked
    };
    let healthy = async {
        let mut all: Vec<Vec<u64>> = Vec::new();
        let mut conns: Vec<&mut Ws> = vec![&mut fast];
        conns.extend(readers.iter_mut());
        let reads = conns.into_iter().map(|ws| {
            let mut target_rx = target_rx.clone();
            async move {
                let mut seqs = Vec::new();
                loop {
                    let target = *target_rx.borrow_and_update();
                    if target > 0 && seqs.len() as u64 >= target {
                        return seqs;
                    }
                    tokio::select! {
                        v = recv_within(ws, Duration::from_secs(30)) => {
                            let v = v.expect("a healthy member waited 30 s for a message");
                            assert_eq!(v["type"], "new-message", "{v}");
                            seqs.push(seq(&v));
                        }
                        _ = target_rx.changed() => {}
                    }
                }
            }
        });
        all.extend(futures_util::future::join_all(reads).await);
        let _ = target_rx.borrow_and_update();
        all
    };
    let sampler = async {
        while sending.load(Ordering::Relaxed) {
            let q = metric_sum(&srv, "gochat_gateway_outbound_queued_bytes").await;
            max_queued.fetch_max(q, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (acked, healthy_seqs, ()) = tokio::join!(sender, healthy, sampler);
    let n = acked.len() as u64;
    let last = n + 1;
    assert_eq!(acked, (2..=last).collect::<Vec<_>>(), "every message stored once, in order");
    assert_eq!(healthy_seqs.len(), OTHER_MEMBERS + 1);
    for (i, seqs) in healthy_seqs.iter().enumerate() {
        assert_eq!(seqs, &(2..=last).collect::<Vec<_>>(), "healthy connection {i} got every message, in order");
    }

    // The slow device is still stuck: it was dropped from delivery and
    // hinted, not closed, and its queue stayed bounded.
    let hints = metric_sum(&srv, "gochat_gateway_resync_hints_total").await;
    let dropped = metric_sum(&srv, "gochat_gateway_push_dropped_total").await;
    assert_eq!(hints, 1, "one hint for the one slow connection");
    assert!(dropped > 0, "pushes to the lagging connection were dropped");
    assert_eq!(metric_sum(&srv, "gochat_gateway_slow_reader_closes_total").await, 0);
    let queued = metric_sum(&srv, "gochat_gateway_outbound_queued_bytes").await;
    assert!(queued > 0 && queued <= QUEUE_BYTES + RESERVE, "queued {queued} B once the others drained");
    // The gauge sums every connection of the shard. While sending, the
    // healthy ones' queues fill too (how much depends on how busy the
    // machine is), but none overflowed (one hint in total), so the shard
    // never held more than each connection's bound.
    let max_queued = max_queued.load(Ordering::Relaxed);
    let connections = OTHER_MEMBERS as u64 + 2;
    assert!(
        max_queued <= connections * QUEUE_BYTES + RESERVE,
        "up to {max_queued} B queued over {connections} connections while the reader was stuck"
    );
    eprintln!("{n} messages, {dropped} pushes dropped, {queued} B queued (max sampled {max_queued} B)");

    // The slow device reads again: first the frames queued before the
    // overflow, contiguous from seq 1, then the hint.
    let mut have = 1;
    let hint = loop {
        let v = recv(&mut slow).await;
        match v["type"].as_str() {
            Some("new-message") => {
                assert_eq!(seq(&v), have + 1, "live frames before the hint have no gap");
                have += 1;
            }
            Some("resync") => break v,
            _ => panic!("slow device got {v}"),
        }
    };
    assert_eq!(hint, json!({"type": "resync", "reason": "slow_consumer"}));
    assert!(have > 1 && have < last, "some ({} of {n}) messages came live before the hint", have - 1);
    assert_eq!(metric_sum(&srv, "gochat_gateway_push_dropped_total").await, dropped, "nothing more was dropped");

    // Still open: a ping gets a pong, and nothing else was pending.
    send(&mut slow, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut slow).await, json!({"type": "pong"}));

    // Resync as documented: sync from the last seq it has.
    let mut synced = Vec::new();
    let mut after = have;
    loop {
        send(&mut slow, json!({"type": "sync", "conversation_id": cid, "after_seq": after, "limit": 20})).await;
        let page = recv(&mut slow).await;
        assert_eq!(page["type"], "sync-result", "{page}");
        synced.extend(page["messages"].as_array().unwrap().iter().map(seq));
        after = *synced.last().unwrap_or(&after);
        if page["has_more"] != true {
            break;
        }
    }
    assert_eq!(synced, (have + 1..=last).collect::<Vec<_>>(), "sync returned everything that was dropped");

    // Live delivery has resumed on the formerly slow connection.
    send(
        &mut a,
        json!({"type": "send-message", "client_msg_id": "after-resync", "conversation_id": cid,
        "content_type": "text", "content": {"text": "you are back"}}),
    )
    .await;
    assert_eq!(recv(&mut a).await["seq"], last + 1);
    for dev in [&mut slow, &mut fast] {
        let v = recv(dev).await;
        assert_eq!((v["type"].as_str(), seq(&v)), (Some("new-message"), last + 1), "{v}");
    }

    // Every queue drained: the gauge returns to zero (no accounting leak).
    let mut queued = u64::MAX;
    for _ in 0..100 {
        queued = metric_sum(&srv, "gochat_gateway_outbound_queued_bytes").await;
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 0, "outbound queue gauge after everything was read");
    assert_eq!(metric_sum(&srv, "gochat_gateway_resync_hints_total").await, 1);
}
