//! `connect`: open N authenticated WebSockets at R/s (open loop), hold them with
//! heartbeats, then close them all.

use crate::report::{Partial, Recorder};
use crate::ws;
use crate::Ctx;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, serde::Serialize, Debug, Clone)]
pub struct ConnectArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Distinct users the connections are spread over, as devices of the same
    /// account (registration hashes passwords on purpose slowly, so tens of
    /// thousands of accounts would dominate the run) [default: min(connections, 1000)].
    #[arg(long)]
    pub users: Option<usize>,
    /// Connection attempts per second (open loop, across all processes).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to hold all connections once the ramp is over.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Seconds between application pings while holding.
    #[arg(long, default_value_t = 20.0)]
    pub ping_interval: f64,
    /// Handshake timeout (TCP connect -> 101), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

enum Outcome {
    Failed(String),
    Held { latency_us: u64, at_us: u64, done_secs: f64, pings: u64, pongs: u64, error: Option<String> },
}

/// Run this process's share: connections j with j % procs == worker, j scheduled at j / rate.
impl ConnectArgs {
    pub fn distinct_users(&self) -> usize {
        self.users.unwrap_or(1000).clamp(1, self.connections.max(1))
    }
}

pub async fn run(ctx: &Ctx, a: &ConnectArgs, users: &[crate::users::User]) -> Partial {
    let start = Instant::now();
    let ramp = Duration::from_secs_f64(a.connections as f64 / a.rate);
    let hold_end = start + ramp + Duration::from_secs_f64(a.hold);
    let ping_every = Duration::from_secs_f64(a.ping_interval);
    let timeout = Duration::from_secs_f64(a.timeout);
    let mut set = tokio::task::JoinSet::new();
    for j in (ctx.worker..a.connections).step_by(ctx.procs) {
        let sched = start + Duration::from_secs_f64(j as f64 / a.rate);
        let (addr, src, token) = (ctx.addr, ctx.src(j), users[j % users.len()].token.clone());
        set.spawn(async move {
            sleep_until(sched).await;
            match ws::connect(addr, &token, src, timeout).await {
                Err(cause) => Outcome::Failed(cause),
                Ok(mut sock) => {
                    // Measured from the scheduled start: open-loop, coordinated-omission corrected.
                    let latency_us = sched.elapsed().as_micros() as u64;
                    let at_us = crate::now_us();
                    let done_secs = start.elapsed().as_secs_f64();
                    let (pings, pongs, error) = hold(&mut sock, hold_end, ping_every).await;
                    ws::close(sock).await;
                    Outcome::Held { latency_us, at_us, done_secs, pings, pongs, error }
                }
            }
        });
    }
    let mut p = Partial::default();
    let mut h = Recorder::default();
    let mut last_done: f64 = 0.0;
    while let Some(r) = set.join_next().await {
        p.add("attempted", 1);
        match r {
            Ok(Outcome::Failed(cause)) => p.fail(&cause, 1),
            Ok(Outcome::Held { latency_us, at_us, done_secs, pings, pongs, error }) => {
                p.add("established", 1);
                h.record(at_us, latency_us);
                last_done = last_done.max(done_secs);
                p.add("pings_sent", pings);
                p.add("pongs_received", pongs);
                if let Some(e) = error {
                    p.fail(&e, 1);
                } else {
                    p.add("held_ok", 1);
                }
            }
            Err(_) => p.fail("task_panicked", 1),
        }
    }
    p.secs.insert("ramp_secs".into(), last_done);
    p.set_recorder(&h);
    p
}

/// Keep the connection until `end`, pinging every `every`; then one last ping that must be answered.
/// Returns (pings, pongs, failure cause).
async fn hold(sock: &mut ws::Ws, end: Instant, every: Duration) -> (u64, u64, Option<String>) {
    let ping = json!({"type": "ping"});
    let (mut pings, mut pongs) = (0u64, 0u64);
    let mut next_ping = Instant::now() + every;
    let mut final_deadline: Option<Instant> = None;
    loop {
        let wake = final_deadline.unwrap_or_else(|| next_ping.min(end));
        tokio::select! {
            _ = sleep_until(wake) => {
                if let Some(_d) = final_deadline {
                    return (pings, pongs, Some("pong_timeout".into()));
                }
                if Instant::now() >= end {
                    // Liveness check at the end of the hold.
                    final_deadline = Some(Instant::now() + Duration::from_secs(10));
                }
                if let Err(e) = ws::send_json(sock, &ping).await {
                    return (pings, pongs, Some(e));
                }
                pings += 1;
                next_ping += every;
            }
            msg = sock.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["type"] == "pong" {
                        pongs += 1;
                        if final_deadline.is_some() && pongs == pings {
                            return (pings, pongs, None);
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => return (pings, pongs, Some("closed_during_hold".into())),
                Some(Ok(_)) => {}
                Some(Err(_)) => return (pings, pongs, Some("error_during_hold".into())),
            }
        }
    }
}
