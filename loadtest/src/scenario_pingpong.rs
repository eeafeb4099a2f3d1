//! `pingpong`: P pairs (a -> b); each sender sends `send-message` at R msgs/s open-loop,
//! pair k phased by k/(P*R) s so the aggregate is a steady P*R msgs/s.
//! Latency = arrival of `new-message` at b minus the message's scheduled send time.
//! Every acked seq must be delivered exactly once: missing and duplicates are counted.

use crate::report::{Partial, Recorder};
use crate::users::User;
use crate::ws;
use crate::ws::HEARTBEAT;
use crate::{now_us, Ctx};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, serde::Serialize, Debug, Clone)]
pub struct PingpongArgs {
    /// User pairs (sender -> receiver).
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per second per pair (open loop).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait after the last send for outstanding acks and deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Fail the run when more acked messages than this were never delivered.
    #[arg(long, default_value_t = 0)]
    pub max_missing: u64,
    /// Fail the run when more deliveries than this were duplicates.
    #[arg(long, default_value_t = 0)]
    pub max_duplicates: u64,
    /// Handshake timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Gateways (host:port, comma-separated): pair k's sender connects to
    /// gateway k mod n and its receiver to the next one, so with two or more
    /// every message crosses gateways. Default: the --url host.
    #[arg(long, value_delimiter = ',')]
    pub gateways: Vec<std::net::SocketAddr>,
    /// Fault injection (tests): the receiver counts its first delivery twice.
    #[arg(long, hide = true)]
    pub inject_duplicate: bool,
}

struct SenderOut {
    sent: u64,
    acked: BTreeSet<u64>,
    errors: BTreeMap<String, u64>,
    fatal: Option<String>,
}

struct ReceiverOut {
    seqs: HashSet<u64>,
    duplicates: u64,
    foreign: u64,
    hist: Recorder,
    fatal: Option<String>,
}

pub async fn run(ctx: &Ctx, a: &PingpongArgs, users: &[User]) -> Partial {
    let mut p = Partial::default();
    let timeout = Duration::from_secs_f64(a.timeout);
    let run_id = format!("{:x}w{}", now_us(), ctx.worker);
    // 1. Connect both ends of this process's pairs.
    let mut set = tokio::task::JoinSet::new();
    let gateways = if a.gateways.is_empty() { vec![ctx.addr] } else { a.gateways.clone() };
    for pair in (ctx.worker..a.pairs).step_by(ctx.procs) {
        let (ua, ub) = (users[2 * pair].clone(), users[2 * pair + 1].clone());
        let (sa, sb) = (ctx.src(2 * pair), ctx.src(2 * pair + 1));
        let (ga, gb) = (gateways[pair % gateways.len()], gateways[(pair + 1) % gateways.len()]);
        set.spawn(async move {
            let wa = ws::connect(ga, &ua.token, sa, timeout).await;
            let wb = ws::connect(gb, &ub.token, sb, timeout).await;
            (pair, ua, ub, wa, wb)
        });
    }
    let mut ready = Vec::new();
    while let Some(r) = set.join_next().await {
        let Ok((pair, ua, ub, wa, wb)) = r else {
            p.fail("task_panicked", 1);
            continue;
        };
        p.add("connections_attempted", 2);
        match (wa, wb) {
            (Ok(wa), Ok(wb)) => {
                p.add("connections_established", 2);
                ready.push((pair, ua, ub, wa, wb));
            }
            (wa, wb) => {
                for r in [wa.err(), wb.err()].into_iter().flatten() {
                    p.fail(&format!("connect_{r}"), 1);
                }
            }
        }
    }
    // 2. Wait until the server has registered every receiver (protocol §4.5),
    // asking with the receiver's own token: the pair shares no conversation
    // yet, and presence is shown only to users who do (protocol §2.4).
    let mut live = Vec::new();
    for (pair, ua, ub, wa, wb) in ready {
        if wait_online(ctx, &ub.token, &ub.user_id).await {
            live.push((pair, ua, ub, wa, wb));
        } else {
            p.fail("receiver_not_registered", 1);
        }
    }
    // 3. Open-loop sending; every pair starts together.
    let t0 = Instant::now() + Duration::from_millis(100);
    let t0_us = now_us() + 100_000;
    let end = t0 + Duration::from_secs_f64(a.duration);
    let grace_end = end + Duration::from_secs_f64(a.grace);
    let mut pairs = tokio::task::JoinSet::new();
    for (pair, _ua, ub, wa, wb) in live {
        let prefix = format!("{run_id}-{pair}-");
        let (tx, rx) = watch::channel(None);
        let inject = a.inject_duplicate && pair == 0;
        let rate = a.rate;
        let to = ub.user_id.clone();
        let pre = prefix.clone();
        // Pairs are phased evenly over one sending interval, so P pairs at R
        // msg/s make a steady stream of P x R msg/s instead of a burst of P
        // messages every 1/R s.
        let phase = Duration::from_secs_f64(pair as f64 / a.pairs.max(1) as f64 / rate);
        let start = (t0 + phase, t0_us + phase.as_micros() as u64);
        let s = tokio::spawn(async move { sender(wa, to, pre, rate, start, end, grace_end, tx).await });
        let r = tokio::spawn(async move { receiver(wb, prefix, grace_end, rx, inject).await });
        pairs.spawn(async move { (s.await, r.await) });
    }
    let mut h = Recorder::default();
    while let Some(r) = pairs.join_next().await {
        let Ok((Ok(s), Ok(r))) = r else {
            p.fail("task_panicked", 1);
            continue;
        };
        p.add("pairs", 1);
        p.add("sent", s.sent);
        p.add("acked", s.acked.len() as u64);
        let rejected: u64 = s.errors.values().sum();
        p.fail("unacked", s.sent.saturating_sub(s.acked.len() as u64 + rejected));
        for (code, n) in &s.errors {
            p.fail(&format!("error_{code}"), *n);
        }
        if let Some(f) = s.fatal {
            p.fail(&format!("sender_{f}"), 1);
        }
        if let Some(f) = r.fatal {
            p.fail(&format!("receiver_{f}"), 1);
        }
        // Seqs of one conversation from one sender must be contiguous.
        if let (Some(lo), Some(hi)) = (s.acked.first(), s.acked.last()) {
            p.add("seq_gaps", (hi - lo + 1) - s.acked.len() as u64);
        }
        p.add("delivered", r.seqs.len() as u64);
        p.add("missing", s.acked.iter().filter(|q| !r.seqs.contains(q)).count() as u64);
        p.add("delivered_unacked", r.seqs.iter().filter(|q| !s.acked.contains(q)).count() as u64);
        p.add("duplicates", r.duplicates);
        p.add("foreign_messages", r.foreign);
        h.add(&r.hist);
    }
    p.secs.insert("send_secs".into(), a.duration);
    p.set_recorder(&h);
    p
}

/// Whether `user_id` shows a live connection within 10 s. `token` must be
/// allowed to see that presence (the user's own).
async fn wait_online(ctx: &Ctx, token: &str, user_id: &str) -> bool {
    for _ in 0..500 {
        let r = ctx.http.get(format!("{}/api/v1/users/{user_id}/presence", ctx.base)).bearer_auth(token).send().await;
        if let Ok(r) = r {
            if let Ok(v) = r.json::<Value>().await {
                if v["connections"].as_u64().unwrap_or(0) >= 1 {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    mut sock: ws::Ws,
    to: String,
    prefix: String,
    rate: f64,
    (t0, t0_us): (Instant, u64),
    end: Instant,
    grace_end: Instant,
    done: watch::Sender<Option<u64>>,
) -> SenderOut {
    let mut out = SenderOut { sent: 0, acked: BTreeSet::new(), errors: BTreeMap::new(), fatal: None };
    let mut k: u64 = 0;
    let mut next_ping = Instant::now() + HEARTBEAT;
    loop {
        let sched = t0 + Duration::from_secs_f64(k as f64 / rate);
        let sending = sched < end;
        if !sending && out.acked.len() as u64 + out.errors.values().sum::<u64>() >= out.sent {
            break;
        }
        tokio::select! {
            _ = sleep_until(sched), if sending => {
                let sched_us = t0_us + (k as f64 / rate * 1e6) as u64;
                let frame = ws::load_message(&prefix, k, ("to_user_id", &to), sched_us);
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
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    match v["type"].as_str() {
                        Some("message-ack") if v["client_msg_id"].as_str().is_some_and(|c| c.starts_with(&prefix)) => {
                            if let Some(seq) = v["seq"].as_u64() {
                                out.acked.insert(seq);
                            }
                        }
                        Some("error") => {
                            *out.errors.entry(v["code"].as_str().unwrap_or("unknown").to_owned()).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => { out.fatal = Some("closed".into()); break; }
                Some(Ok(_)) => {}
                Some(Err(_)) => { out.fatal = Some("ws_error".into()); break; }
            }
        }
    }
    let _ = done.send(Some(out.acked.len() as u64));
    ws::close(sock).await;
    out
}

async fn receiver(
    mut sock: ws::Ws,
    prefix: String,
    grace_end: Instant,
    mut acked: watch::Receiver<Option<u64>>,
    mut inject_duplicate: bool,
) -> ReceiverOut {
    let mut out =
        ReceiverOut { seqs: HashSet::new(), duplicates: 0, foreign: 0, hist: Recorder::default(), fatal: None };
    let mut next_ping = Instant::now() + HEARTBEAT;
    let mut expected: Option<u64> = None;
    loop {
        if expected.is_some_and(|n| out.seqs.len() as u64 >= n) {
            break;
        }
        tokio::select! {
            _ = sleep_until(grace_end) => break,
            _ = sleep_until(next_ping) => {
                if let Err(e) = ws::send_json(&mut sock, &json!({"type": "ping"})).await {
                    out.fatal = Some(e);
                    break;
                }
                next_ping += HEARTBEAT;
            }
            r = acked.changed(), if expected.is_none() => {
                match r {
                    Ok(()) => expected = *acked.borrow(),
                    Err(_) => expected = Some(0),
                }
            }
            msg = sock.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let arrived = now_us();
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["type"] != "new-message" {
                        continue;
                    }
                    if !v["client_msg_id"].as_str().is_some_and(|c| c.starts_with(&prefix)) {
                        out.foreign += 1;
                        continue;
                    }
                    let (Some(seq), Some(sched)) = (v["seq"].as_u64(), v["content"]["sched_us"].as_u64()) else {
                        out.foreign += 1;
                        continue;
                    };
                    let times = if std::mem::take(&mut inject_duplicate) { 2 } else { 1 };
                    for _ in 0..times {
                        if out.seqs.insert(seq) {
                            out.hist.record(arrived, arrived.saturating_sub(sched));
                        } else {
                            out.duplicates += 1;
                        }
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
