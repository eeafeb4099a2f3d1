//! `fanout`: N members of one group, M of them senders at a total open-loop
//! rate R. Every member connection receives every message but its own:
//! delivered frames/s and delivery latency (scheduled send time -> arrival)
//! are what this measures. Connections are spread over `--gateways` (every
//! gateway of a cluster) and over `--procs` worker processes.
//!
//! Loss and duplication are checked without sharing state between workers:
//! each connection counts the distinct seqs it got (and repeats), each sender
//! its acks; the parent sums them: missing = acked x (members - 1) - delivered.

use crate::report::{Partial, Recorder};
use crate::users::User;
use crate::ws;
use crate::ws::HEARTBEAT;
use crate::{now_us, Ctx};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, serde::Serialize, Debug, Clone)]
pub struct FanoutArgs {
    /// Group members (each holds one connection).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Members that send (the first M).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Messages per second into the group, all senders together (open loop).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds every connection keeps reading after the last send.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Seconds allowed for connecting every member before sending starts.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// Gateways to spread connections over (host:port, comma-separated);
    /// default: the --url host.
    #[arg(long, value_delimiter = ',')]
    pub gateways: Vec<SocketAddr>,
    /// Fail the run when more deliveries than this are missing.
    #[arg(long, default_value_t = 0)]
    pub max_missing: u64,
    /// Fail the run when more deliveries than this were duplicates.
    #[arg(long, default_value_t = 0)]
    pub max_duplicates: u64,
    /// Handshake timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Internal: the group the parent created.
    #[arg(long, hide = true)]
    pub group_id: Option<String>,
    /// Internal: Unix ms at which every worker starts sending.
    #[arg(long, hide = true)]
    pub start_at_ms: Option<u64>,
    /// Fault injection (tests): one connection counts its first delivery twice.
    #[arg(long, hide = true)]
    pub inject_duplicate: bool,
    /// Fault injection (tests): one connection drops its first delivery.
    #[arg(long, hide = true)]
    pub inject_missing: bool,
}

impl FanoutArgs {
    /// Seconds to connect everyone when --ramp is 0: ~2,000 handshakes/s plus slack.
    pub fn ramp_secs(&self) -> f64 {
        if self.ramp > 0.0 {
            self.ramp
        } else {
            self.members as f64 / 2000.0 + 5.0
        }
    }
}

/// The fields of a server frame this scenario reads.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    conversation_id: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    content: Option<FrameContent>,
}

#[derive(serde::Deserialize)]
struct FrameContent {
    #[serde(default)]
    sched_us: Option<u64>,
}

/// Create the group (owner: member 0) through REST; returns (group id, conversation id).
pub async fn create_group(http: &reqwest::Client, base: &str, users: &[User]) -> anyhow::Result<(String, String)> {
    let ids: Vec<&str> = users[1..].iter().map(|u| u.user_id.as_str()).collect();
    let body = json!({"name": format!("loadtest {}", now_us()), "member_ids": ids});
    let r = http.post(format!("{base}/api/v1/groups")).bearer_auth(&users[0].token).json(&body).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or_default();
    anyhow::ensure!(status.as_u16() == 201, "creating the group: {status} {v}");
    Ok((v["group_id"].as_str().unwrap_or("").to_owned(), v["conversation_id"].as_str().unwrap_or("").to_owned()))
}

struct ConnOut {
    sent: u64,
    acked: u64,
    seqs: u64,
    duplicates: u64,
    out_of_order: u64,
    errors: u64,
    hist: Recorder,
    fatal: Option<String>,
}

pub async fn run(ctx: &Ctx, a: &FanoutArgs, users: &[User]) -> Partial {
    let mut p = Partial::default();
    let Some(gid) = a.group_id.clone() else {
        p.fail("no_group", 1);
        return p;
    };
    let cid = format!("g_{gid}");
    let start_us = a.start_at_ms.unwrap_or(0) * 1000;
    let gateways = if a.gateways.is_empty() { vec![ctx.addr] } else { a.gateways.clone() };
    let timeout = Duration::from_secs_f64(a.timeout);
    let run_id = format!("{:x}w{}", now_us(), ctx.worker);

    // 1. Connect this worker's share of the members, 256 handshakes in flight.
    let mine: Vec<usize> = (ctx.worker..a.members).step_by(ctx.procs).collect();
    let conns: Vec<(usize, Result<ws::Ws, String>)> = futures_util::stream::iter(mine)
        .map(|j| {
            let (addr, src, token) = (gateways[j % gateways.len()], ctx.src(j), users[j].token.clone());
            async move { (j, ws::connect(addr, &token, src, timeout).await) }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut live = Vec::new();
    for (j, c) in conns {
        p.add("connections_attempted", 1);
        match c {
            Ok(w) => {
                p.add("connections_established", 1);
                live.push((j, w));
            }
            Err(e) => p.fail(&format!("connect_{e}"), 1),
        }
    }
    // 2. Sending starts at the parent's start time (after everyone connected
    //    and logic registered the sessions); a late worker is a failure.
    let now = now_us();
    if start_us > 0 && now > start_us {
        p.fail("not_ready_at_start", 1);
    }
    let t0 = Instant::now() + Duration::from_micros(start_us.saturating_sub(now));
    let t0_us = start_us.max(now);
    let end = t0 + Duration::from_secs_f64(a.duration);
    let grace_end = end + Duration::from_secs_f64(a.grace);
    let per_sender = a.rate / a.senders.max(1) as f64;
    let mut set = tokio::task::JoinSet::new();
    let mut first = true;
    for (j, w) in live {
        let rate = (j < a.senders).then_some(per_sender);
        let (cid, prefix) = (cid.clone(), format!("{run_id}-{j}-"));
        // Faults go to the first receiver that is not a sender (a sender never
        // receives its own messages).
        let target = first && j >= a.senders;
        let inject = (a.inject_duplicate && target, a.inject_missing && target);
        first &= !target;
        set.spawn(conn(w, cid, prefix, rate, (t0, t0_us), end, grace_end, inject));
    }
    let mut h = Recorder::default();
    while let Some(r) = set.join_next().await {
        let Ok(o) = r else {
            p.fail("task_panicked", 1);
            continue;
        };
        p.add("receivers", 1);
        p.add("sent", o.sent);
        p.add("acked", o.acked);
        p.add("delivered", o.seqs);
        p.add("duplicates", o.duplicates);
        p.add("out_of_order", o.out_of_order);
        p.fail("error_frames", o.errors);
        if let Some(f) = o.fatal {
            p.fail(&format!("conn_{f}"), 1);
        }
        h.add(&o.hist);
    }
    p.secs.insert("send_secs".into(), a.duration);
    p.set_recorder(&h);
    p
}

#[allow(clippy::too_many_arguments)]
async fn conn(
    mut sock: ws::Ws,
    cid: String,
    prefix: String,
    rate: Option<f64>,
    (t0, t0_us): (Instant, u64),
    end: Instant,
    grace_end: Instant,
    (mut inject_duplicate, mut inject_missing): (bool, bool),
) -> ConnOut {
    let mut out = ConnOut {
        sent: 0,
        acked: 0,
        seqs: 0,
        duplicates: 0,
        out_of_order: 0,
        errors: 0,
        hist: Recorder::default(),
        fatal: None,
    };
    let mut seen: HashSet<u64> = HashSet::new();
    let mut last_seq = 0;
    let mut k: u64 = 0;
    let mut next_ping = Instant::now() + HEARTBEAT;
    loop {
        let sched = rate.map(|r| t0 + Duration::from_secs_f64(k as f64 / r));
        let sending = sched.is_some_and(|s| s < end);
        tokio::select! {
            _ = sleep_until(sched.unwrap_or(grace_end)), if sending => {
                let r = rate.expect("a sender");
                let sched_us = t0_us + (k as f64 / r * 1e6) as u64;
                let frame = ws::load_message(&prefix, k, ("conversation_id", &cid), sched_us);
                if let Err(e) = ws::send_json(&mut sock, &frame).await {
                    out.fatal = Some(e);
                    break;
                }
                out.sent += 1;
                k += 1;
            }
            _ = sleep_until(next_ping) => {
                if let Err(e) = ws::send_json(&mut sock, &json!({"type": "ping"})).await {
                    out.fatal = Some(e);
                    break;
                }
                next_ping += HEARTBEAT;
            }
            _ = sleep_until(grace_end) => break,
            msg = sock.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let arrived = now_us();
                    // Typed and borrowed: at hundreds of thousands of frames/s
                    // the generator must not be what is measured.
                    let Ok(f) = serde_json::from_str::<Frame>(&t) else {
                        out.errors += 1;
                        continue;
                    };
                    match f.kind {
                        "message-ack" => out.acked += 1,
                        "new-message" if f.conversation_id == Some(cid.as_str()) => {
                            let (Some(seq), Some(sched)) = (f.seq, f.content.and_then(|c| c.sched_us)) else {
                                continue; // a system message
                            };
                            if std::mem::take(&mut inject_missing) {
                                continue;
                            }
                            let times = if std::mem::take(&mut inject_duplicate) { 2 } else { 1 };
                            for _ in 0..times {
                                if seen.insert(seq) {
                                    out.seqs += 1;
                                    out.hist.record(arrived, arrived.saturating_sub(sched));
                                } else {
                                    out.duplicates += 1;
                                }
                            }
                            if seq < last_seq {
                                out.out_of_order += 1;
                            }
                            last_seq = last_seq.max(seq);
                        }
                        "error" => out.errors += 1,
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => { out.fatal = Some("closed".into()); break; }
                Some(Ok(_)) => {}
                Some(Err(_)) => { out.fatal = Some("ws_error".into()); break; }
            }
        }
    }
    ws::close(sock).await;
    out
}
