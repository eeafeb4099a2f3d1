//! The task framework: consume, dispatch by kind, retry with backoff, dead-letter.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use gochat_common::bus::{BusError, Consumer, Producer, Record, Topics};
use gochat_common::config::TaskConfig;
use gochat_common::metrics::{Counter, Histogram, TextEncoder};
use gochat_proto::bus::KafkaMessage;
use gochat_proto::task::{HEADER_ATTEMPT, HEADER_NOT_BEFORE, HEADER_REASON, HEADER_TASK, HEADER_TASK_ID};
use gochat_proto::{kind, Message};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, error, info, warn, Instrument};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt (a dependency is down, a webhook timed out).
    #[error("{0}")]
    Retry(String),
    /// Will fail the same way every time: straight to the dead letters.
    #[error("{0}")]
    Permanent(String),
}

/// One task as a handler sees it.
pub struct Task {
    pub kind: String,
    pub id: String,
    pub attempt: u32,
    pub trace_id: String,
    pub body: Bytes,
}

/// Runs one kind of task. Must be idempotent: a task can run again after a
/// crash or a failed attempt.
pub trait TaskHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), TaskError>>;
}

/// Fan-out sizes (recipients) and durations (µs) bucket bounds.
const SIZE_BOUNDS: &[u64] = &[10, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000];
const DURATION_US_BOUNDS: &[u64] = &[1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000];

#[derive(Debug)]
pub struct TaskMetrics {
    pub processed: Counter,
    pub failed: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub fanout_recipients: Histogram,
    pub fanout_duration_us: Histogram,
    pub fanout_pushes: Counter,
    pub fanout_skipped_claimed: Counter,
    pub offline_notifications: Counter,
}

impl Default for TaskMetrics {
    fn default() -> Self {
        Self {
            processed: Counter::default(),
            failed: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            fanout_recipients: Histogram::new(SIZE_BOUNDS),
            fanout_duration_us: Histogram::new(DURATION_US_BOUNDS),
            fanout_pushes: Counter::default(),
            fanout_skipped_claimed: Counter::default(),
            offline_notifications: Counter::default(),
        }
    }
}

impl TaskMetrics {
    pub fn render(&self, enc: &mut TextEncoder) {
        let rows: [(&str, &str, &Counter); 7] = [
            ("gochat_task_processed_total", "tasks that completed", &self.processed),
            ("gochat_task_failed_total", "task attempts that failed", &self.failed),
            ("gochat_task_retried_total", "tasks scheduled for another attempt", &self.retried),
            ("gochat_task_dead_lettered_total", "tasks parked after their last attempt", &self.dead_lettered),
            ("gochat_task_fanout_pushes_total", "push records produced by fan-out tasks", &self.fanout_pushes),
            (
                "gochat_task_fanout_skipped_claimed_total",
                "pushes skipped on a retry because an earlier attempt produced them",
                &self.fanout_skipped_claimed,
            ),
            (
                "gochat_task_offline_notifications_total",
                "recipients notified through the offline-push provider",
                &self.offline_notifications,
            ),
        ];
        for (name, help, c) in rows {
            enc.family(name, "counter", help).sample(name, &[], c.get());
        }
        self.fanout_recipients.render(enc, "gochat_task_fanout_recipients", "members resolved per fan-out task");
        self.fanout_duration_us.render(enc, "gochat_task_fanout_duration_us", "fan-out task duration, microseconds");
    }
}

/// Where tasks go after their last attempt.
pub enum DeadLetters {
    /// Cluster mode: a topic (`im.task.dlq`), the original envelope plus
    /// headers `reason` and `attempt`.
    Topic(String),
    /// Embedded mode: one JSON line per task appended to a file.
    File(PathBuf),
}

pub struct TaskRunner {
    handlers: HashMap<String, Arc<dyn TaskHandler>>,
    producer: Arc<dyn Producer>,
    topics: Topics,
    cfg: TaskConfig,
    dead_letters: DeadLetters,
    file_lock: Mutex<()>,
    pub metrics: Arc<TaskMetrics>,
}

/// What running one record decided.
enum Outcome {
    Done,
    Retry { attempt: u32, reason: String },
    Dead { attempt: u32, reason: String },
}

impl TaskRunner {
    pub fn new(
        producer: Arc<dyn Producer>,
        topics: Topics,
        cfg: TaskConfig,
        dead_letters: DeadLetters,
        metrics: Arc<TaskMetrics>,
    ) -> Self {
        Self { handlers: HashMap::new(), producer, topics, cfg, dead_letters, file_lock: Mutex::new(()), metrics }
    }

    pub fn register(&mut self, kind: &str, handler: Arc<dyn TaskHandler>) {
        self.handlers.insert(kind.to_owned(), handler);
    }

    /// Consume `im.task` until shutdown: tasks with different keys run
    /// concurrently (up to `task.concurrency`), tasks with the same key in
    /// order. Offsets are committed after the whole batch is settled (done,
    /// scheduled for retry, or dead-lettered).
    pub async fn run_main(self: Arc<Self>, consumer: Box<dyn Consumer>, shutdown: watch::Receiver<bool>) {
        self.run(consumer, shutdown, false).await
    }

    /// Consume `im.task.retry`: each record waits for its `not_before`.
    pub async fn run_retries(self: Arc<Self>, consumer: Box<dyn Consumer>, shutdown: watch::Receiver<bool>) {
        self.run(consumer, shutdown, true).await
    }

    async fn run(self: Arc<Self>, mut consumer: Box<dyn Consumer>, mut shutdown: watch::Receiver<bool>, retries: bool) {
        info!(retries, concurrency = self.cfg.concurrency, "task consumer started");
        loop {
            let next = tokio::select! {
                b = consumer.next_batch(self.cfg.concurrency * 4) => b,
                _ = shutdown.changed() => break,
            };
            let records = match next {
                Ok(r) => r,
                Err(BusError::Closed) => break,
                Err(e) => {
                    warn!(error = %e, "task consume failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let settled = if retries {
                self.settle_delayed(&records, &mut shutdown).await
            } else {
                self.settle_batch(&records).await
            };
            if !settled {
                break; // shut down mid-batch: uncommitted records run again after restart
            }
            if let Err(e) = consumer.commit().await {
                warn!(error = %e, "task offset commit failed");
            }
        }
        info!(retries, "task consumer stopped");
    }

    async fn settle_batch(&self, records: &[Record]) -> bool {
        // Per-key lanes keep a conversation's tasks in order.
        let mut lanes: Vec<(Bytes, Vec<&Record>)> = Vec::new();
        for r in records {
            match lanes.iter_mut().find(|(k, _)| *k == r.key) {
                Some((_, l)) => l.push(r),
                None => lanes.push((r.key.clone(), vec![r])),
            }
        }
        futures_util::stream::iter(lanes)
            .for_each_concurrent(self.cfg.concurrency, |(_, lane)| async move {
                for r in lane {
                    self.settle(r).await;
                }
            })
            .await;
        true
    }

    async fn settle_delayed(&self, records: &[Record], shutdown: &mut watch::Receiver<bool>) -> bool {
        for r in records {
            let due = KafkaMessage::decode(r.payload.clone())
                .ok()
                .and_then(|e| e.header_value(HEADER_NOT_BEFORE).and_then(|v| v.parse::<i64>().ok()))
                .unwrap_or(0);
            let wait = due - gochat_common::now_ms();
            if wait > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                    _ = shutdown.changed() => return false,
                }
            }
            self.settle(r).await;
        }
        true
    }

    /// Run one record and settle it; producing the retry or dead letter is
    /// itself retried until it succeeds, so no task is dropped.
    async fn settle(&self, rec: &Record) {
        let env = KafkaMessage::decode(rec.payload.clone());
        let outcome = match &env {
            Ok(env) => self.execute(env).await,
            Err(e) => Outcome::Dead { attempt: 0, reason: format!("undecodable envelope: {e}") },
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let res = match &outcome {
                Outcome::Done => return,
                Outcome::Retry { attempt, reason } => {
                    self.schedule_retry(env.as_ref().expect("decoded"), rec, *attempt, reason).await
                }
                Outcome::Dead { attempt, reason } => self.dead_letter(env.as_ref().ok(), rec, *attempt, reason).await,
            };
            match res {
                Ok(()) => return,
                Err(e) => {
                    error!(error = %e, backoff_ms = backoff.as_millis() as u64, "settling a failed task failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn execute(&self, env: &KafkaMessage) -> Outcome {
        let attempt: u32 = env.header_value(HEADER_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
        if env.kind() != kind::TASK {
            return Outcome::Dead { attempt, reason: format!("not a task record (type {:?})", env.kind()) };
        }
        let task_kind = env.header_value(HEADER_TASK).unwrap_or("");
        let Some(handler) = self.handlers.get(task_kind) else {
            return Outcome::Dead { attempt, reason: format!("no handler for task kind {task_kind:?}") };
        };
        let task = Task {
            kind: task_kind.to_owned(),
            id: env.header_value(HEADER_TASK_ID).unwrap_or("").to_owned(),
            attempt,
            trace_id: env.trace_id.clone(),
            body: env.body.clone(),
        };
        let span =
            tracing::info_span!("task", kind = %task.kind, task_id = %task.id, attempt, trace_id = %task.trace_id);
        match handler.handle(&task).instrument(span).await {
            Ok(()) => {
                self.metrics.processed.inc();
                debug!(kind = %task.kind, task_id = %task.id, attempt, "task done");
                Outcome::Done
            }
            Err(e) => {
                self.metrics.failed.inc();
                warn!(kind = %task.kind, task_id = %task.id, attempt, error = %e, "task attempt failed");
                match e {
                    TaskError::Retry(reason) if attempt < self.cfg.max_attempts => Outcome::Retry { attempt, reason },
                    TaskError::Retry(reason) => {
                        Outcome::Dead { attempt, reason: format!("failed {attempt} attempts; last: {reason}") }
                    }
                    TaskError::Permanent(reason) => Outcome::Dead { attempt, reason },
                }
            }
        }
    }

    /// Delay before attempt `attempt + 1`: base * 2^(attempt-1), capped,
    /// with equal jitter (half fixed, half random) so retries spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.cfg.backoff_base_ms.saturating_mul(1u64 << (attempt.saturating_sub(1)).min(30));
        let d = exp.min(self.cfg.backoff_max_ms).max(1);
        Duration::from_millis(d / 2 + rand::random::<u64>() % (d / 2 + 1))
    }

    async fn schedule_retry(
        &self,
        env: &KafkaMessage,
        rec: &Record,
        attempt: u32,
        reason: &str,
    ) -> Result<(), BusError> {
        let mut next = env.clone();
        let delay = self.backoff(attempt);
        next.header.insert(HEADER_ATTEMPT.to_owned(), (attempt + 1).to_string());
        next.header
            .insert(HEADER_NOT_BEFORE.to_owned(), (gochat_common::now_ms() + delay.as_millis() as i64).to_string());
        next.header.insert(HEADER_REASON.to_owned(), reason.to_owned());
        let topic = self.topics.task_retry();
        self.producer.send(&topic, &rec.key, None, next.encode_to_vec().into()).await?;
        self.metrics.retried.inc();
        info!(
            task_id = env.header_value(HEADER_TASK_ID).unwrap_or(""),
            attempt,
            delay_ms = delay.as_millis() as u64,
            reason,
            "task scheduled for retry"
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        env: Option<&KafkaMessage>,
        rec: &Record,
        attempt: u32,
        reason: &str,
    ) -> Result<(), BusError> {
        let task_id = env.and_then(|e| e.header_value(HEADER_TASK_ID)).unwrap_or("");
        let task_kind = env.and_then(|e| e.header_value(HEADER_TASK)).unwrap_or("");
        match &self.dead_letters {
            DeadLetters::Topic(topic) => {
                let mut header = env.map(|e| e.header.clone()).unwrap_or_default();
                header.insert(HEADER_REASON.to_owned(), reason.to_owned());
                header.insert(HEADER_ATTEMPT.to_owned(), attempt.to_string());
                header.insert("source_partition".to_owned(), rec.partition.to_string());
                header.insert("source_offset".to_owned(), rec.offset.to_string());
                // The original body, or the whole undecodable record.
                let body = env.map(|e| e.body.clone()).unwrap_or_else(|| rec.payload.clone());
                let dead = KafkaMessage { trace_id: env.map(|e| e.trace_id.clone()).unwrap_or_default(), header, body };
                self.producer.send(topic, &rec.key, None, dead.encode_to_vec().into()).await?;
            }
            DeadLetters::File(path) => {
                let line = serde_json::json!({
                    "at_ms": gochat_common::now_ms(),
                    "task": task_kind,
                    "task_id": task_id,
                    "attempts": attempt,
                    "reason": reason,
                    "key": String::from_utf8_lossy(&rec.key),
                    "record_hex": hex::encode(&rec.payload),
                });
                let _guard = self.file_lock.lock().expect("dead-letter file lock");
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| BusError::Broker(format!("dead-letter file {}: {e}", path.display())))?;
                writeln!(f, "{line}")
                    .map_err(|e| BusError::Broker(format!("dead-letter file {}: {e}", path.display())))?;
            }
        }
        self.metrics.dead_lettered.inc();
        error!(task = task_kind, task_id, attempt, reason, "task dead-lettered");
        Ok(())
    }
}
