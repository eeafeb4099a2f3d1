//! A big-group scenario, run against embedded mode and against a cluster:
//! many members spread over every gateway shard, several senders, offline
//! members catching up by sync, and a member removed mid-stream.

use super::*;
use futures_util::StreamExt;
use std::collections::BTreeSet;

pub struct Member {
    pub id: String,
    pub token: String,
}

/// Register and log in `n` users through REST (64 requests in flight).
pub async fn register_many(http: &reqwest::Client, base: &str, prefix: &str, n: usize) -> Vec<Member> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (http, base) = (http.clone(), base.to_owned());
            let name = format!("{prefix}{i}");
            async move {
                let body = json!({"username": name, "password": "correct-horse"});
                let r = http.post(format!("{base}/api/v1/auth/register")).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 201, "register {name}");
                let id = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_owned();
                let r = http.post(format!("{base}/api/v1/auth/login")).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200, "login {name}");
                let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
                Member { id, token }
            }
        })
        .buffered(64)
        .collect()
        .await
}

pub async fn connect_to(addr: SocketAddr, token: &str) -> Ws {
    let (ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await.expect("ws connect");
    assert_eq!(resp.status(), 101);
    ws
}

/// Wait until logic has registered a live connection of each user. `token`
/// is a co-member's (presence is shown only to users who share a
/// conversation). In cluster mode thousands of connect events queue through
/// the broker, so the bound is for all of them together (90 s), not per user.
pub async fn wait_all_online(http: &reqwest::Client, base: &str, token: &str, users: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut pending: Vec<&str> = users.to_vec();
    while !pending.is_empty() {
        let online: Vec<bool> = futures_util::stream::iter(&pending)
            .map(|u| async move {
                let r = http.get(format!("{base}/api/v1/users/{u}/presence")).bearer_auth(token).send().await.unwrap();
                assert_eq!(r.status(), 200, "presence of {u}");
                r.json::<Value>().await.unwrap()["connections"].as_u64() == Some(1)
            })
            .buffered(32)
            .collect()
            .await;
        let mut still = online.iter();
        pending.retain(|_| !*still.next().unwrap());
        assert!(
            pending.is_empty() || tokio::time::Instant::now() < deadline,
            "{} of {} users never came online (first: {})",
            pending.len(),
            users.len(),
            pending[0]
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn rest(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// What one member's connection saw.
#[derive(Default, Debug)]
struct Seen {
    /// seq of each new-message, in arrival order
    seqs: Vec<u64>,
    /// text messages (not system) by seq
    texts: BTreeSet<u64>,
    system: Vec<(u64, String)>,
}

/// Read a connection until every seq in 2..=`until_seq` has been seen (as a
/// new-message or as an ack of its own send; seq 1, the group's creation,
/// happened before anyone connected), or `quiet` passes with nothing new
/// (then the caller's assertions tell what is missing). Acks can arrive
/// before the fan-out of earlier messages: the task tier delivers after the ack.
async fn read_until(
    ws: &mut Ws,
    cid: &str,
    until_seq: u64,
    quiet: Duration,
    seen: &mut Seen,
    acked: &mut BTreeSet<u64>,
) {
    loop {
        if until_seq != u64::MAX && (2..=until_seq).all(|q| acked.contains(&q) || seen.seqs.contains(&q)) {
            return;
        }
        let Some(v) = recv_within(ws, quiet).await else { return };
        match v["type"].as_str() {
            Some("new-message") if v["conversation_id"] == cid => {
                let seq = v["seq"].as_u64().unwrap();
                seen.seqs.push(seq);
                if v["content_type"] == "system" {
                    seen.system.push((seq, v["content"]["event"].as_str().unwrap().to_owned()));
                } else {
                    seen.texts.insert(seq);
                }
            }
            Some("message-ack") => {
                acked.insert(v["seq"].as_u64().unwrap());
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
}

/// The scenario. `base` serves REST; connections are spread round-robin
/// over `ws_addrs` (every gateway). Returns the number of live deliveries
/// checked.
pub async fn big_group(base: &str, ws_addrs: &[SocketAddr], tag: &str, members: usize, offline: usize) -> usize {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let users = register_many(&http, base, &format!("{tag}u"), members).await;
    let owner = &users[0];
    let ids: Vec<&str> = users[1..].iter().map(|u| u.id.as_str()).collect();
    let (s, g) = rest(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v1/groups"),
        &owner.token,
        Some(json!({"name": format!("{tag} group"), "member_ids": ids})),
    )
    .await;
    assert_eq!(s, 201, "{g}");
    let cid = g["conversation_id"].as_str().unwrap().to_owned();
    let gid = g["group_id"].as_str().unwrap().to_owned();
    assert_eq!(g["members"].as_array().unwrap().len(), members);

    // Online members connect, spread over every gateway shard; the last
    // `offline` members stay away until the end.
    let online = members - offline;
    let mut conns: Vec<Ws> = futures_util::stream::iter(0..online)
        .map(|i| connect_to(ws_addrs[i % ws_addrs.len()], &users[i].token))
        .buffered(64)
        .collect()
        .await;
    let online_ids: Vec<&str> = users[..online].iter().map(|u| u.id.as_str()).collect();
    wait_all_online(&http, base, &owner.token, &online_ids).await;

    // seq 1 is the group's creation (member_joined); it went out before
    // anyone connected, so nobody expects it live.
    let mut seen: Vec<Seen> = (0..online).map(|_| Seen::default()).collect();
    let mut acked: Vec<BTreeSet<u64>> = (0..online).map(|_| BTreeSet::new()).collect();

    // Round 1: 10 messages from 4 senders.
    send_round(&mut conns, &cid, tag, 1).await;
    let mut last = 0;
    for s in 0..SENDERS {
        wait_acks(&mut conns[s], &cid, &mut seen[s], &mut acked[s], sent_by(s)).await;
        last = last.max(*acked[s].last().unwrap());
    }
    assert_eq!(last, 11, "seqs 2..=11 for round 1 (1 = group created)");
    read_all(&mut conns, &cid, last, &mut seen, &mut acked).await;
    for i in 0..online {
        assert_round(&seen[i], &acked[i], 2..=11, i);
    }

    // Remove a member between rounds (the owner removes the last online one).
    let removed = online - 1;
    let (s, v) = rest(
        &http,
        reqwest::Method::DELETE,
        format!("{base}/api/v1/groups/{gid}/members/{}", users[removed].id),
        &owner.token,
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    // Everyone, the removed member included, gets member_removed at seq 12.
    read_all(&mut conns, &cid, 12, &mut seen, &mut acked).await;
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.system.last(), Some(&(12, "member_removed".to_owned())), "member {i}: {:?}", s.system);
    }

    // Round 2: 10 more; the removed member must not get them.
    send_round(&mut conns, &cid, tag, 2).await;
    let mut still: Vec<Ws> = Vec::new();
    let mut removed_conn = conns.pop().unwrap();
    let removed_seen = seen.pop().unwrap();
    let _ = acked.pop();
    std::mem::swap(&mut still, &mut conns);
    read_all(&mut still, &cid, 22, &mut seen, &mut acked).await;
    let mut delivered = 0;
    for i in 0..still.len() {
        assert_round(&seen[i], &acked[i], 2..=22, i);
        let s = &seen[i];
        assert!(s.seqs.windows(2).all(|w| w[0] < w[1]), "member {i}: in seq order, no repeats: {:?}", s.seqs);
        delivered += s.seqs.len();
    }
    // The removed member: nothing after its removal.
    let mut after = Seen::default();
    let mut none = BTreeSet::new();
    read_until(&mut removed_conn, &cid, u64::MAX, Duration::from_secs(2), &mut after, &mut none).await;
    assert!(after.seqs.is_empty(), "a removed member got {:?}", after.seqs);
    assert_eq!(removed_seen.texts, (2..=11).collect::<BTreeSet<u64>>(), "the removed member had round 1");
    let (s, _) = rest(
        &http,
        reqwest::Method::GET,
        format!("{base}/api/v1/conversations/{cid}/messages"),
        &users[removed].token,
        None,
    )
    .await;
    assert_eq!(s, 403, "a removed member can no longer read the group");

    // Offline members connect now and catch up by sync: everything, gap-free.
    for u in &users[online..] {
        let mut ws = connect_to(ws_addrs[0], &u.token).await;
        let mut got: Vec<Value> = Vec::new();
        let mut after_seq = 0;
        loop {
            send(&mut ws, json!({"type":"sync","conversation_id":cid,"after_seq":after_seq,"limit":100})).await;
            let r = recv(&mut ws).await;
            assert_eq!(r["type"], "sync-result", "{r}");
            let page = r["messages"].as_array().unwrap().clone();
            after_seq = page.last().map(|m| m["seq"].as_u64().unwrap()).unwrap_or(after_seq);
            got.extend(page);
            if !r["has_more"].as_bool().unwrap() {
                break;
            }
        }
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=22).collect::<Vec<_>>(), "offline member {} syncs everything", u.id);
        assert_eq!(got.iter().filter(|m| m["content_type"] == "text").count(), 20);
        assert_eq!(got[0]["content"]["event"], "member_joined");
        assert_eq!(got[0]["content"]["user_ids"].as_array().unwrap().len(), members);
    }
    delivered
}

const SENDERS: usize = 4;
const PER_ROUND: usize = 10;

/// How many of a round's messages sender `s` sends.
fn sent_by(s: usize) -> usize {
    (0..PER_ROUND).filter(|k| k % SENDERS == s).count()
}

/// One round: message k goes from member k % SENDERS.
async fn send_round(conns: &mut [Ws], cid: &str, tag: &str, round: usize) {
    for k in 0..PER_ROUND {
        let m = json!({"type":"send-message","client_msg_id":format!("{tag}-r{round}-{k}"),"conversation_id":cid,
            "content_type":"text","content":{"text":format!("round {round} message {k}")}});
        send(&mut conns[k % SENDERS], m).await;
    }
}

/// Read until `n` more acks arrived on a sender's connection.
async fn wait_acks(ws: &mut Ws, cid: &str, seen: &mut Seen, acked: &mut BTreeSet<u64>, n: usize) {
    let want = acked.len() + n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.len() < want {
        assert!(tokio::time::Instant::now() < deadline, "acks missing: have {}, want {want}", acked.len());
        read_until(ws, cid, u64::MAX, Duration::from_millis(200), seen, acked).await;
    }
}

/// Read every connection until it has seen `until_seq` (as new-message or ack).
async fn read_all(conns: &mut [Ws], cid: &str, until_seq: u64, seen: &mut [Seen], acked: &mut [BTreeSet<u64>]) {
    futures_util::stream::iter(conns.iter_mut().zip(seen.iter_mut()).zip(acked.iter_mut()))
        .for_each_concurrent(256, |((ws, s), a)| async move {
            read_until(ws, cid, until_seq, Duration::from_secs(30), s, a).await;
        })
        .await;
}

/// A member saw each text message of `range` exactly once: live, or as an
/// ack of its own send.
fn assert_round(seen: &Seen, acked: &BTreeSet<u64>, range: std::ops::RangeInclusive<u64>, member: usize) {
    let mut all: Vec<u64> = seen.texts.iter().chain(acked.iter()).copied().collect();
    all.sort_unstable();
    let expected: Vec<u64> = range.filter(|s| *s != 12).collect();
    assert_eq!(all, expected, "member {member}: every message once");
    assert!(seen.seqs.windows(2).all(|w| w[0] < w[1]), "member {member}: in seq order, no repeats: {:?}", seen.seqs);
}
