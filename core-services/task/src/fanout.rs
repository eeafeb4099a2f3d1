//! Fan-out of a large group's message. Members are resolved, and their
//! sessions looked up, `task.fanout_chunk` at a time; the pushes are then
//! grouped per (gateway, shard) exactly as logic does for small groups.
//! Each (gateway, shard) is claimed before its pushes are produced, so a
//! retried task skips what an earlier attempt already delivered.

use crate::runner::{Task, TaskError, TaskHandler, TaskMetrics};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use gochat_logic::fanout::{self, Outbound};
use gochat_logic::logic::PushSource;
use gochat_logic::session::Session;
use gochat_logic::Logic;
use gochat_proto::bus::FanoutTask;
use gochat_proto::Message;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// Session lookups of one fan-out in flight at once.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A gateway shard: (gateway id, shard index).
type ShardKey = (Arc<str>, u32);

/// How long the "already delivered" marks of a fan-out are kept.
const CLAIM_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct FanoutHandler {
    logic: Arc<Logic>,
    metrics: Arc<TaskMetrics>,
}

impl FanoutHandler {
    pub fn new(logic: Arc<Logic>, metrics: Arc<TaskMetrics>) -> Self {
        Self { logic, metrics }
    }

    async fn run(&self, task: &Task) -> Result<(), TaskError> {
        let started = Instant::now();
        let t = FanoutTask::decode(task.body.clone())
            .map_err(|e| TaskError::Permanent(format!("undecodable fanout task: {e}")))?;
        let retry = |e: &dyn std::fmt::Display| TaskError::Retry(e.to_string());
        let members = self.logic.members(t.group_id).await.map_err(|e| retry(&e))?;
        let mut recipients: Vec<u64> = members.iter().chain(&t.also_notify).copied().collect();
        recipients.sort_unstable();
        recipients.dedup();

        let chunk = self.logic.task_config().fanout_chunk;
        let mut sessions: Vec<(u64, Session)> = Vec::new();
        let mut offline: Vec<u64> = Vec::new();
        // Chunks are looked up a few at a time: each is one pipelined round
        // trip, and overlapping them hides the fast store's latency.
        let parts: Vec<&[u64]> = recipients.chunks(chunk).collect();
        let parts = &parts;
        let sessions_of = &self.logic.sessions;
        let lookups = futures_util::stream::iter(0..parts.len())
            .map(move |i| async move { sessions_of.sessions(parts[i]).await.map(|found| (parts[i], found)) })
            .buffered(CHUNKS_IN_FLIGHT);
        futures_util::pin_mut!(lookups);
        while let Some(r) = lookups.next().await {
            let (part, found) = r.map_err(|e| retry(&e))?;
            let online: HashSet<u64> = found.iter().map(|(u, _)| *u).collect();
            offline.extend(part.iter().copied().filter(|u| *u != t.sender_id && !online.contains(u)));
            sessions.extend(found);
        }
        let origin = t.origin.as_ref().map(|o| Session {
            gateway_id: o.gateway_id.as_str().into(),
            shard: o.shard,
            conn_id: o.conn_id,
        });
        let mut out: Vec<Outbound> = Vec::new();
        let max = self.logic.task_config().max_push_recipients;
        let reached = fanout::plan(&t.frame, sessions.iter().map(|(u, s)| (*u, s)), origin.as_ref(), max, &mut out);

        // Claim per (gateway, shard), then produce its pushes (several when
        // it holds more than max_push_recipients). A claim whose produce
        // fails is not retried: those recipients catch up by sync, which is
        // the price of never delivering twice.
        let mut per_shard: Vec<(ShardKey, Vec<Outbound>)> = Vec::new();
        for o in out {
            let k = (o.gateway_id.clone(), o.shard);
            match per_shard.iter_mut().find(|(key, _)| *key == k) {
                Some((_, v)) => v.push(o),
                None => per_shard.push((k, vec![o])),
            }
        }
        for ((gw, shard), pushes) in per_shard {
            let key = format!("{}:{gw}/{shard}", task.id);
            if self.logic.sessions.claim(&key, CLAIM_TTL).await.map_err(|e| retry(&e))? {
                self.metrics.fanout_pushes.add(pushes.len() as u64);
                self.logic.deliver(pushes).await;
            } else {
                self.metrics.fanout_skipped_claimed.add(pushes.len() as u64);
            }
        }

        // Membership events are not worth a notification; messages are.
        if !offline.is_empty() && self.logic.offline_push_enabled() && t.content_type != "system" {
            let key = format!("{}:offline", task.id);
            if self.logic.sessions.claim(&key, CLAIM_TTL).await.map_err(|e| retry(&e))? {
                self.logic.offline_push(&push_source(&t), offline, &task.trace_id).await;
            }
        }
        self.metrics.fanout_recipients.observe(recipients.len() as u64);
        self.metrics.fanout_duration_us.observe(started.elapsed().as_micros() as u64);
        debug!(conversation_id = %t.conversation_id, seq = t.seq, members = recipients.len(), connections = reached, "group fan-out done");
        Ok(())
    }
}

/// The stored-message fields an offline push needs, from the task.
fn push_source(t: &FanoutTask) -> PushSource {
    PushSource {
        conversation_id: t.conversation_id.clone(),
        msg_id: t.msg_id,
        seq: t.seq,
        sender_id: t.sender_id,
        content_type: t.content_type.clone(),
        preview: t.preview.clone(),
        ts: t.ts,
    }
}

impl TaskHandler for FanoutHandler {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(self.run(task))
    }
}
