//! `storm`: mass reconnect. N connections are opened and held, then all are
//! dropped at once (as after a network blip or a load-balancer restart) and
//! every client reconnects immediately, or at `--reconnect-rate`. A client
//! counts as back when its new connection answers a ping. Reports the
//! reconnect rate the server sustained and reconnect latency
//! (scheduled reconnect -> pong on the new connection).

use crate::report::{Partial, Recorder};
use crate::ws;
use crate::Ctx;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, serde::Serialize, Debug, Clone)]
pub struct StormArgs {
    /// Connections (devices spread over --users accounts).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Distinct users [default: min(connections, 1000)].
    #[arg(long)]
    pub users: Option<usize>,
    /// Initial connection attempts per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds to hold before everything drops.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Reconnects per second after the drop; 0 = all at once.
    #[arg(long, default_value_t = 0.0)]
    pub reconnect_rate: f64,
    /// Handshake + first pong timeout, seconds.
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
}

impl StormArgs {
    pub fn distinct_users(&self) -> usize {
        self.users.unwrap_or(1000).clamp(1, self.connections.max(1))
    }
    pub fn expected_secs(&self) -> f64 {
        let again = if self.reconnect_rate > 0.0 { self.connections as f64 / self.reconnect_rate } else { 2.0 };
        self.connections as f64 / self.rate + self.hold + again
    }
}

/// Connect, then wait for the answer to a ping: the connection is usable.
async fn connect_usable(ctx: &Ctx, j: usize, token: &str, timeout: Duration) -> Result<ws::Ws, String> {
    let deadline = Instant::now() + timeout;
    let mut sock = ws::connect(ctx.addr, token, ctx.src(j), timeout).await?;
    ws::send_json(&mut sock, &json!({"type": "ping"})).await?;
    loop {
        match tokio::time::timeout_at(deadline, sock.next()).await {
            Err(_) => return Err("pong_timeout".into()),
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"pong\"") => return Ok(sock),
            Ok(Some(Ok(_))) => {}
            Ok(_) => return Err("closed".into()),
        }
    }
}

pub async fn run(ctx: &Ctx, a: &StormArgs, users: &[crate::users::User]) -> Partial {
    let mut p = Partial::default();
    let timeout = Duration::from_secs_f64(a.timeout);
    let start = Instant::now();
    let mine: Vec<usize> = (ctx.worker..a.connections).step_by(ctx.procs).collect();

    // 1. Ramp up and hold.
    let first: Vec<(usize, Result<ws::Ws, String>)> = futures_util::stream::iter(mine.iter().copied())
        .map(|j| {
            let sched = start + Duration::from_secs_f64(j as f64 / a.rate);
            let token = users[j % users.len()].token.clone();
            async move {
                sleep_until(sched).await;
                (j, connect_usable(ctx, j, &token, timeout).await)
            }
        })
        .buffer_unordered(4096)
        .collect()
        .await;
    let mut held = Vec::new();
    for (j, r) in first {
        p.add("initial_attempted", 1);
        match r {
            Ok(s) => held.push((j, s)),
            Err(e) => p.fail(&format!("initial_{e}"), 1),
        }
    }
    p.add("initial_established", held.len() as u64);
    let drop_at = start + Duration::from_secs_f64(a.connections as f64 / a.rate + a.hold);
    sleep_until(drop_at).await;

    // 2. Everything drops at once: sockets closed without a WebSocket close
    //    (the server sees EOF, as after a network blip).
    let dropped: Vec<usize> = held.iter().map(|(j, _)| *j).collect();
    drop(held);
    p.add("dropped", dropped.len() as u64);

    // 3. Everyone reconnects.
    let t0 = Instant::now();
    let mut rec = Recorder::default();
    let again: Vec<(Result<ws::Ws, String>, u64)> = futures_util::stream::iter(dropped.into_iter().enumerate())
        .map(|(k, j)| {
            let sched = if a.reconnect_rate > 0.0 {
                t0 + Duration::from_secs_f64((k * ctx.procs) as f64 / a.reconnect_rate)
            } else {
                t0
            };
            let token = users[j % users.len()].token.clone();
            async move {
                sleep_until(sched).await;
                let r = connect_usable(ctx, j, &token, timeout).await;
                (r, sched.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(4096)
        .collect()
        .await;
    let back_secs = t0.elapsed().as_secs_f64();
    let mut back = Vec::new();
    for (r, us) in again {
        p.add("reconnect_attempted", 1);
        match r {
            Ok(s) => {
                rec.record(crate::now_us(), us);
                back.push(s);
            }
            Err(e) => p.fail(&format!("reconnect_{e}"), 1),
        }
    }
    p.add("reconnected", back.len() as u64);
    p.secs.insert("reconnect_secs".into(), back_secs);
    futures_util::stream::iter(back).for_each_concurrent(1024, ws::close).await;
    p.set_recorder(&rec);
    p
}
