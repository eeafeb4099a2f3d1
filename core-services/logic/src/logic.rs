//! The logic worker: consumes `im.upstream` in batches and turns client sends
//! into stored, sequenced, acknowledged and delivered messages.
//!
//! Order of effects per batch (the at-least-once-in, exactly-once-effect
//! contract): validate -> append (dedup + seq + persist, in one database
//! transaction) -> ack + push -> commit. A failure before the append's
//! commit leaves nothing behind; the batch is retried, and the append turns
//! any redelivery into the original ack. The send stages are in [`send`].

use crate::fanout::{self, Outbound};
use crate::frames;
use crate::moderation::Moderator;
use crate::session::{Session, SessionStore, SessionStoreError};
use bytes::Bytes;
use gochat_common::bus::{BusError, Consumer, Producer, Record, Topics};
use gochat_common::config::{LogicConfig, TaskConfig};
use gochat_common::convid::ConversationId;
use gochat_common::ids::Snowflake;
use gochat_common::metrics::{Counter, TextEncoder};
use gochat_proto::bus::{self, session_event, KafkaMessage};
use gochat_proto::task as tasks;
use gochat_proto::{kind, Message};
use gochat_repo::{Appended, NewMessage, RepoError, Store, StoredMessage};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, error, info, warn, Instrument};

mod retry;
mod send;
pub use send::RESERVED_CLIENT_MSG_ID_PREFIX;

/// Content types protocol v1 accepts.
pub const CONTENT_TYPES: [&str; 3] = ["text", "image", "file"];
/// A sync-result stops growing past this many content bytes (has_more = true),
/// so one reply never approaches a connection's outbound queue bound.
const SYNC_BYTES_BUDGET: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Sessions(#[from] SessionStoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[derive(Default, Debug)]
pub struct LogicMetrics {
    pub records: Counter,
    pub corrupt_records: Counter,
    pub sends: Counter,
    pub persisted: Counter,
    pub duplicates: Counter,
    pub rejected: Counter,
    pub syncs: Counter,
    pub session_events: Counter,
    pub pushes: Counter,
    pub push_failures: Counter,
    pub batch_retries: Counter,
    pub system_messages: Counter,
    pub moderation_rejected: Counter,
    pub moderation_flagged: Counter,
    pub tasks_produced: Counter,
    pub task_produce_failures: Counter,
    pub fanout_inline: Counter,
    pub fanout_delegated: Counter,
    pub replayed_pushes: Counter,
    pub revoked_records: Counter,
    pub dead_lettered: Counter,
    pub revoked_connects: Counter,
    pub connection_cap_closes: Counter,
}

impl LogicMetrics {
    pub fn render(&self, enc: &mut TextEncoder) {
        let rows: [(&str, &str, &Counter); 23] = [
            ("gochat_logic_records_total", "bus records consumed from im.upstream", &self.records),
            ("gochat_logic_corrupt_records_total", "records that could not be decoded", &self.corrupt_records),
            ("gochat_logic_sends_total", "send-message records processed", &self.sends),
            ("gochat_logic_messages_persisted_total", "messages stored", &self.persisted),
            ("gochat_logic_duplicates_total", "sends answered with the original ack", &self.duplicates),
            ("gochat_logic_rejected_total", "sends refused with an error frame", &self.rejected),
            ("gochat_logic_syncs_total", "sync requests served", &self.syncs),
            ("gochat_logic_session_events_total", "connect/disconnect events applied", &self.session_events),
            ("gochat_logic_pushes_total", "push records produced (one per gateway shard per event)", &self.pushes),
            ("gochat_logic_push_failures_total", "push records that could not be produced", &self.push_failures),
            ("gochat_logic_batch_retries_total", "upstream batches retried after a failure", &self.batch_retries),
            ("gochat_logic_system_messages_total", "group membership events stored", &self.system_messages),
            ("gochat_logic_moderation_rejected_total", "sends refused by moderation", &self.moderation_rejected),
            ("gochat_logic_moderation_flagged_total", "sends flagged by moderation (stored)", &self.moderation_flagged),
            ("gochat_logic_tasks_produced_total", "tasks handed to the task tier", &self.tasks_produced),
            (
                "gochat_logic_task_produce_failures_total",
                "tasks that could not be produced",
                &self.task_produce_failures,
            ),
            ("gochat_logic_fanout_inline_total", "messages fanned out by logic", &self.fanout_inline),
            ("gochat_logic_fanout_delegated_total", "group messages handed to the task tier", &self.fanout_delegated),
            (
                "gochat_logic_replayed_pushes_total",
                "already-stored messages pushed again (a replayed batch, or a retry past the dedup window)",
                &self.replayed_pushes,
            ),
            (
                "gochat_logic_revoked_records_total",
                "records of a failing batch left to a new owner after a rebalance",
                &self.revoked_records,
            ),
            (
                "gochat_logic_dead_lettered_total",
                "records dead-lettered after their retries (not undecodable ones)",
                &self.dead_lettered,
            ),
            (
                "gochat_logic_revoked_connects_total",
                "connections closed at connect: their token's version was revoked",
                &self.revoked_connects,
            ),
            (
                "gochat_logic_connection_cap_closes_total",
                "oldest connections closed for logic.max_connections_per_user",
                &self.connection_cap_closes,
            ),
        ];
        for (name, help, c) in rows {
            enc.family(name, "counter", help).sample(name, &[], c.get());
        }
    }
}

/// What a [`Logic`] is built from.
pub struct LogicDeps {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<dyn SessionStore>,
    /// Produces pushes (`im.push.{gateway}`).
    pub push_producer: Arc<dyn Producer>,
    /// Produces to `im.upstream` (system events), `im.task` and dead letters.
    pub bus_producer: Arc<dyn Producer>,
    pub ids: Arc<Snowflake>,
    pub cfg: LogicConfig,
    pub task_cfg: TaskConfig,
    pub moderator: Moderator,
    pub topics: Topics,
    /// Topic for records that cannot be processed (None: log and drop).
    pub dead_letter: Option<String>,
}

/// Shared handles logic works with.
pub struct Logic {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<dyn SessionStore>,
    producer: Arc<dyn Producer>,
    bus: Arc<dyn Producer>,
    ids: Arc<Snowflake>,
    cfg: LogicConfig,
    task_cfg: TaskConfig,
    moderator: Moderator,
    pub metrics: Arc<LogicMetrics>,
    dead_letter: Option<String>,
    topics: Topics,
    /// Users known to exist (ids are never reused), so a 1:1 send does not
    /// query the users table every time. Bounded by clearing when full.
    known_users: Mutex<HashSet<u64>>,
}

const KNOWN_USERS_CAP: usize = 1 << 20;

fn session_of(c: &bus::ConnRef) -> Session {
    Session { gateway_id: c.gateway_id.as_str().into(), shard: c.shard, conn_id: c.conn_id }
}

impl Logic {
    pub fn new(d: LogicDeps) -> Arc<Self> {
        Arc::new(Self {
            store: d.store,
            sessions: d.sessions,
            producer: d.push_producer,
            bus: d.bus_producer,
            ids: d.ids,
            cfg: d.cfg,
            task_cfg: d.task_cfg,
            moderator: d.moderator,
            metrics: Arc::default(),
            dead_letter: d.dead_letter,
            topics: d.topics,
            known_users: Mutex::new(HashSet::new()),
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn task_config(&self) -> &TaskConfig {
        &self.task_cfg
    }

    /// Offline push is on when a provider is configured.
    pub fn offline_push_enabled(&self) -> bool {
        !self.task_cfg.push_webhook_url.is_empty()
    }

    pub fn ids(&self) -> &Snowflake {
        &self.ids
    }

    pub fn config(&self) -> &LogicConfig {
        &self.cfg
    }

    /// Consume until `shutdown` flips to true or the bus closes.
    pub async fn run(
        self: Arc<Self>,
        mut consumer: Box<dyn Consumer>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        info!(batch_max = self.cfg.batch_max, "logic consumer started");
        loop {
            let next = tokio::select! {
                b = consumer.next_batch(self.cfg.batch_max) => b,
                _ = shutdown.changed() => break,
            };
            let records = match next {
                Ok(r) => r,
                Err(BusError::Closed) => break,
                Err(e) => {
                    warn!(error = %e, "upstream consume failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.process_with_retries(&mut *consumer, records).await;
            if let Err(e) = consumer.commit().await {
                warn!(error = %e, "offset commit failed");
            }
        }
        info!("logic consumer stopped");
    }

    /// Process one batch in record order: runs of sends are persisted together;
    /// a sync or session event first flushes the sends before it.
    pub async fn handle_batch(&self, records: &[Record]) -> Result<(), LogicError> {
        self.handle_batch_from(records, &mut 0).await
    }

    /// [`Self::handle_batch`], counting in `done` the leading records that are
    /// fully handled (their effects happened), for a retry to skip.
    async fn handle_batch_from(&self, records: &[Record], done: &mut usize) -> Result<(), LogicError> {
        let mut sends: Vec<(String, bus::SendMessage)> = Vec::new();
        for (i, rec) in records.iter().enumerate() {
            self.metrics.records.inc();
            let env = match KafkaMessage::decode(rec.payload.clone()) {
                Ok(e) => e,
                Err(e) => {
                    self.corrupt(rec, &format!("undecodable envelope: {e}")).await;
                    continue;
                }
            };
            let kind = env.kind().to_owned();
            match kind.as_str() {
                kind::SEND => match bus::SendMessage::decode(env.body) {
                    Ok(s) => sends.push((env.trace_id, s)),
                    Err(e) => self.corrupt(rec, &format!("undecodable {kind} payload: {e}")).await,
                },
                kind::SYNC => {
                    self.flush_sends(&mut sends).await?;
                    match bus::SyncRequest::decode(env.body) {
                        Ok(s) => {
                            self.handle_sync(&env.trace_id, s)
                                .instrument(tracing::info_span!("sync", trace_id = %env.trace_id))
                                .await?
                        }
                        Err(e) => self.corrupt(rec, &format!("undecodable {kind} payload: {e}")).await,
                    }
                }
                kind::SESSION => {
                    self.flush_sends(&mut sends).await?;
                    match bus::SessionEvent::decode(env.body) {
                        Ok(ev) => self.handle_session(ev).await?,
                        Err(e) => self.corrupt(rec, &format!("undecodable {kind} payload: {e}")).await,
                    }
                }
                kind::SYSTEM => {
                    self.flush_sends(&mut sends).await?;
                    match bus::SystemEvent::decode(env.body) {
                        Ok(ev) => self.handle_system(ev).await?,
                        Err(e) => self.corrupt(rec, &format!("undecodable {kind} payload: {e}")).await,
                    }
                }
                other => self.corrupt(rec, &format!("unknown record type {other:?}")).await,
            }
            if sends.is_empty() {
                // Nothing of this record or before it is pending.
                *done = i + 1;
            }
        }
        self.flush_sends(&mut sends).await
    }

    /// Park an unusable record in the dead-letter topic (when configured),
    /// with the reason, and carry on with the rest of the batch.
    async fn corrupt(&self, rec: &Record, reason: &str) {
        self.metrics.corrupt_records.inc();
        warn!(partition = rec.partition, offset = rec.offset, reason, "invalid upstream record dead-lettered");
        let Some(topic) = self.dead_letter.as_deref() else { return };
        if let Err(e) = self.producer.send(topic, &rec.key, None, self.dead_letter_envelope(rec, reason)).await {
            error!(topic, error = %e, "dead-letter record not produced");
        }
    }

    /// A dead letter: the original payload, with the reason and where it came from.
    fn dead_letter_envelope(&self, rec: &Record, reason: &str) -> Bytes {
        let mut header = HashMap::new();
        header.insert(gochat_proto::HEADER_TYPE.to_owned(), kind::DEAD_LETTER.to_owned());
        header.insert("reason".to_owned(), reason.to_owned());
        header.insert("source_topic".to_owned(), self.topics.upstream());
        header.insert("source_partition".to_owned(), rec.partition.to_string());
        header.insert("source_offset".to_owned(), rec.offset.to_string());
        KafkaMessage { trace_id: String::new(), header, body: rec.payload.clone() }.encode_to_vec().into()
    }

    async fn flush_sends(&self, sends: &mut Vec<(String, bus::SendMessage)>) -> Result<(), LogicError> {
        if sends.is_empty() {
            return Ok(());
        }
        // On failure the caller retries the whole upstream batch; dedup makes that safe.
        let batch = std::mem::take(sends);
        let span = tracing::info_span!("persist_batch", sends = batch.len(), first_trace_id = %batch[0].0);
        self.process_sends(&batch).instrument(span).await
    }

    async fn handle_session(&self, ev: bus::SessionEvent) -> Result<(), LogicError> {
        self.metrics.session_events.inc();
        let Some(conn) = ev.conn.as_ref() else { return Ok(()) };
        let session = session_of(conn);
        match session_event::Kind::try_from(ev.kind) {
            Ok(session_event::Kind::Connect) => {
                // Registered first, then checked: a concurrent logout of all
                // sessions either sees this session or is seen by the check.
                self.sessions.add_session(ev.user_id, session.clone()).await?;
                self.on_connect(ev.user_id, &session, ev.token_version).await?;
            }
            Ok(session_event::Kind::Disconnect) => self.sessions.remove_session(ev.user_id, &session).await?,
            Ok(session_event::Kind::GatewayReset) => {
                let purged = self.sessions.purge_gateway(&conn.gateway_id, conn.conn_id).await?;
                info!(gateway = %conn.gateway_id, purged, "gateway restarted; stale sessions purged");
            }
            Err(_) => warn!(kind = ev.kind, "unknown session event kind"),
        }
        debug!(user_id = ev.user_id, gateway = %conn.gateway_id, shard = conn.shard, conn_id = conn.conn_id, kind = ev.kind, "session event");
        Ok(())
    }

    fn reject(
        &self,
        out: &mut Vec<Outbound>,
        origin: &bus::ConnRef,
        sender: u64,
        code: &str,
        message: &str,
        reference: Option<&str>,
    ) {
        self.metrics.rejected.inc();
        out.push(Outbound::to_conn(origin, sender, frames::error(code, message, reference)));
    }

    pub(crate) fn dedup_ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.dedup_ttl_secs)
    }

    /// Produce pushes in order. A push that cannot be produced is counted and
    /// logged: the message is stored, and the recipient catches up by sync.
    pub async fn deliver(&self, out: Vec<Outbound>) {
        let mut topics: HashMap<Arc<str>, String> = HashMap::new();
        for o in out {
            let push = bus::Push { recipients: o.recipients, frame: o.frame, close: o.close };
            let env = KafkaMessage::wrap(kind::PUSH, String::new(), push);
            let topic = topics.entry(o.gateway_id.clone()).or_insert_with(|| self.topics.push(&o.gateway_id)).as_str();
            let payload: Bytes = env.encode_to_vec().into();
            // Enqueue without waiting for the broker's acknowledgement (the
            // producer keeps per-partition order); wait only when its queue
            // is full. Awaiting each push would serialise the batch on broker
            // round trips.
            let sent = match self.producer.try_send(topic, b"", Some(o.shard), payload.clone()) {
                Err(BusError::QueueFull) => self.producer.send(topic, b"", Some(o.shard), payload).await,
                other => other,
            };
            match sent {
                Ok(()) => self.metrics.pushes.inc(),
                Err(e) => {
                    self.metrics.push_failures.inc();
                    warn!(topic, shard = o.shard, error = %e, "push not produced");
                }
            }
        }
    }

    async fn handle_sync(&self, _trace_id: &str, req: bus::SyncRequest) -> Result<(), LogicError> {
        self.metrics.syncs.inc();
        let Some(origin) = req.origin.clone() else { return Ok(()) };
        let mut out = Vec::new();
        let reference = Some(req.conversation_id.as_str());
        let cid = match ConversationId::parse(&req.conversation_id) {
            Ok(c) => c,
            Err(e) => {
                self.reject(&mut out, &origin, req.user_id, "invalid_conversation", &e.to_string(), reference);
                self.deliver(out).await;
                return Ok(());
            }
        };
        match self.access(&cid, req.user_id).await? {
            Access::Member => {}
            Access::NotMember => {
                let why = "you are not a member of this conversation";
                self.reject(&mut out, &origin, req.user_id, "not_member", why, reference);
                self.deliver(out).await;
                return Ok(());
            }
            Access::UnknownGroup => {
                self.reject(&mut out, &origin, req.user_id, "unknown_conversation", "no such group", reference);
                self.deliver(out).await;
                return Ok(());
            }
        }
        let limit = self.page_limit(req.limit);
        let (messages, has_more) = self.member_page(&cid, req.user_id, req.after_seq, limit).await?;
        let frame = frames::sync_result(&req.conversation_id, &messages, has_more);
        out.push(Outbound::to_conn(&origin, req.user_id, frame));
        self.deliver(out).await;
        Ok(())
    }

    /// Clamp a requested page size: 0 means the default.
    pub fn page_limit(&self, requested: u32) -> u32 {
        if requested == 0 {
            self.cfg.page_default
        } else {
            requested.min(self.cfg.page_max)
        }
    }

    /// One page after `after_seq`, cut short (has_more) past the byte budget.
    pub async fn page(&self, cid: &str, after_seq: u64, limit: u32) -> Result<(Vec<StoredMessage>, bool), RepoError> {
        let mut messages = self.store.messages_after(cid, after_seq, limit + 1).await?;
        let mut has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        let mut bytes = 0;
        if let Some(cut) = messages.iter().position(|m| {
            bytes += m.content.len() + 200;
            bytes > SYNC_BYTES_BUDGET
        }) {
            messages.truncate(cut.max(1));
            has_more = true;
        }
        Ok((messages, has_more))
    }

    /// May `user_id` read (and write) conversation `cid`?
    pub async fn access(&self, cid: &ConversationId, user_id: u64) -> Result<Access, LogicError> {
        Ok(match *cid {
            ConversationId::Single { .. } if cid.peer_of(user_id).is_some() => Access::Member,
            ConversationId::Single { .. } => Access::NotMember,
            ConversationId::Group(gid) => {
                let members = self.members(gid).await?;
                if members.is_empty() {
                    Access::UnknownGroup
                } else if members.binary_search(&user_id).is_ok() {
                    Access::Member
                } else {
                    Access::NotMember
                }
            }
        })
    }

    /// A group's member ids, ascending (empty: no such group). Cache-aside
    /// through the fast store.
    pub async fn members(&self, group_id: u64) -> Result<Arc<[u64]>, LogicError> {
        if let Some(m) = self.sessions.cached_members(group_id).await? {
            return Ok(m);
        }
        let members: Arc<[u64]> = self.store.group_members(group_id).await?.into_iter().map(|m| m.user_id).collect();
        let ttl = Duration::from_secs(self.cfg.member_cache_ttl_secs);
        if let Err(e) = self.sessions.cache_members(group_id, &members, ttl).await {
            warn!(group_id, error = %e, "member list not cached");
        }
        Ok(members)
    }

    /// After the database's membership changed: drop the cached list now and
    /// once more shortly after, so a reader that loaded the old list just
    /// before the change cannot leave it cached (cache-aside race).
    pub async fn invalidate_members(self: &Arc<Self>, group_id: u64) {
        if let Err(e) = self.sessions.invalidate_members(group_id).await {
            warn!(group_id, error = %e, "member cache not invalidated; it expires by TTL");
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(MEMBER_CACHE_SECOND_DELETE).await;
            let _ = me.sessions.invalidate_members(group_id).await;
        });
    }

    /// Queue a membership event for the group's sequence (the API calls this
    /// after the database changed). It travels through `im.upstream` keyed by
    /// the conversation, so it is ordered with the group's messages.
    pub async fn publish_system(&self, ev: bus::SystemEvent) -> Result<(), LogicError> {
        let key = ConversationId::Group(ev.group_id).to_string();
        let env = KafkaMessage::wrap(kind::SYSTEM, format!("{:x}", ev.event_id), ev);
        self.bus.send(&self.topics.upstream(), key.as_bytes(), None, env.encode_to_vec().into()).await?;
        Ok(())
    }

    /// Store a membership event as a `system` message and deliver it.
    async fn handle_system(&self, ev: bus::SystemEvent) -> Result<(), LogicError> {
        let cid = ConversationId::Group(ev.group_id).to_string();
        let client_msg_id = format!("{}{}", send::RESERVED_CLIENT_MSG_ID_PREFIX, ev.event_id);
        let user_ids: Vec<String> = ev.user_ids.iter().map(u64::to_string).collect();
        let content = json!({"event": ev.event, "user_ids": user_ids}).to_string();
        let msg = NewMessage {
            msg_id: self.ids.next_id(),
            conversation_id: cid.clone(),
            sender_id: ev.actor_id,
            client_msg_id,
            content_type: "system".into(),
            content,
            created_at: if ev.at_ms > 0 { ev.at_ms } else { gochat_common::now_ms() },
        };
        let appended = self.store.append_messages(std::slice::from_ref(&msg)).await?;
        let Some(Appended { message: row, fresh: true }) = appended.into_iter().next() else {
            return Ok(()); // a redelivered event, already stored
        };
        let seq = row.seq;
        self.metrics.system_messages.inc();
        self.metrics.persisted.inc();
        let frame = frames::new_message(&row);
        let members = self.members(ev.group_id).await.unwrap_or_else(|e| {
            warn!(error = %e, "member lookup failed; members will catch up by sync");
            Arc::from(Vec::new())
        });
        let mut recipients: Vec<u64> = members.iter().chain(&ev.notify).copied().collect();
        recipients.sort_unstable();
        recipients.dedup();
        if recipients.len() > self.cfg.group_fanout_threshold {
            let task = bus::FanoutTask {
                conversation_id: cid.clone(),
                group_id: ev.group_id,
                msg_id: row.msg_id,
                seq: row.seq,
                sender_id: row.sender_id,
                origin: None,
                frame,
                content_type: row.content_type.clone(),
                preview: String::new(),
                ts: row.created_at,
                also_notify: ev.notify.clone(),
            };
            self.metrics.fanout_delegated.inc();
            self.produce_task(tasks::FANOUT, &cid, row.msg_id, "", task).await;
            return Ok(());
        }
        let sessions = self.sessions.sessions(&recipients).await.unwrap_or_else(|e| {
            warn!(error = %e, "session lookup failed; members will catch up by sync");
            Vec::new()
        });
        let mut out = Vec::new();
        self.metrics.fanout_inline.inc();
        fanout::plan(&frame, sessions.iter().map(|(u, s)| (*u, s)), None, self.task_cfg.max_push_recipients, &mut out);
        debug!(conversation_id = %cid, seq, event = %ev.event, "system message stored");
        self.deliver(out).await;
        Ok(())
    }

    /// Hand a task to the task tier (`im.task`, key = conversation id). A task
    /// that cannot be produced is counted and logged: the message is stored
    /// and members catch up by sync.
    pub async fn produce_task(&self, task_kind: &str, key: &str, id: u64, trace_id: &str, body: impl Message) {
        let task_id = format!("{task_kind}:{id}");
        let env = KafkaMessage::task(task_kind, &task_id, trace_id.to_owned(), body);
        let topic = self.topics.task();
        let payload: Bytes = env.encode_to_vec().into();
        let sent = match self.bus.try_send(&topic, key.as_bytes(), None, payload.clone()) {
            Err(BusError::QueueFull) => self.bus.send(&topic, key.as_bytes(), None, payload).await,
            other => other,
        };
        match sent {
            Ok(()) => self.metrics.tasks_produced.inc(),
            Err(e) => {
                self.metrics.task_produce_failures.inc();
                error!(topic, task_id, error = %e, "task not produced");
            }
        }
    }

    /// Notify recipients without a live session through the push provider.
    pub async fn offline_push(&self, src: &PushSource, recipients: Vec<u64>, trace_id: &str) {
        if recipients.is_empty() || !self.offline_push_enabled() {
            return;
        }
        let task = bus::OfflinePushTask {
            conversation_id: src.conversation_id.clone(),
            msg_id: src.msg_id,
            seq: src.seq,
            sender_id: src.sender_id,
            recipients,
            content_type: src.content_type.clone(),
            preview: src.preview.clone(),
            ts: src.ts,
        };
        self.produce_task(tasks::OFFLINE_PUSH, &src.conversation_id, src.msg_id, trace_id, task).await;
    }
}

/// What an offline notification says about a stored message.
#[derive(Debug, Clone)]
pub struct PushSource {
    pub conversation_id: String,
    pub msg_id: u64,
    pub seq: u64,
    pub sender_id: u64,
    pub content_type: String,
    pub preview: String,
    pub ts: i64,
}

impl From<&StoredMessage> for PushSource {
    fn from(m: &StoredMessage) -> Self {
        Self {
            conversation_id: m.conversation_id.clone(),
            msg_id: m.msg_id,
            seq: m.seq,
            sender_id: m.sender_id,
            content_type: m.content_type.clone(),
            preview: preview(&m.content_type, &m.content),
            ts: m.created_at,
        }
    }
}

/// Who may read a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Member,
    NotMember,
    UnknownGroup,
}

const MEMBER_CACHE_SECOND_DELETE: Duration = Duration::from_millis(500);

/// The start of a text message for a notification (at most 100 characters).
pub fn preview(content_type: &str, content: &str) -> String {
    if content_type != "text" {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(content)
        .ok()
        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(|t| t.chars().take(100).collect()))
        .unwrap_or_default()
}
