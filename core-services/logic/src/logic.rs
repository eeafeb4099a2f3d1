//! The logic worker: consumes `im.upstream` in batches and turns client sends
//! into stored, sequenced, acknowledged and delivered messages.
//!
//! Order of effects per batch (the at-least-once-in, exactly-once-effect
//! contract): dedup -> seq -> persist -> ack + push -> commit. A failure
//! before persist leaves nothing behind (seq counters are reset so no gap is
//! left); the batch is retried, and dedup turns any redelivery into the
//! original ack.

use crate::frames;
use crate::session::{AckRecord, Session, SessionStore, SessionStoreError};
use bytes::Bytes;
use gochat_common::bus::{BusError, Consumer, Producer, Record, Topics};
use gochat_common::config::LogicConfig;
use gochat_common::convid::ConversationId;
use gochat_common::ids::Snowflake;
use gochat_common::metrics::{Counter, TextEncoder};
use gochat_proto::bus::{self, session_event, KafkaMessage};
use gochat_proto::{kind, Message as _};
use gochat_repo::{RepoError, Store, StoredMessage};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, error, info, warn, Instrument};

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
}

impl LogicMetrics {
    pub fn render(&self, enc: &mut TextEncoder) {
        let rows: [(&str, &str, &Counter); 11] = [
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
        ];
        for (name, help, c) in rows {
            enc.family(name, "counter", help).sample(name, &[], c.get());
        }
    }
}

/// Shared handles logic works with.
pub struct Logic {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<dyn SessionStore>,
    producer: Arc<dyn Producer>,
    ids: Arc<Snowflake>,
    cfg: LogicConfig,
    pub metrics: Arc<LogicMetrics>,
    /// Topic for records that cannot be processed (None: log and drop).
    dead_letter: Option<String>,
    topics: Topics,
    /// Users known to exist (ids are never reused), so a 1:1 send does not
    /// query the users table every time. Bounded by clearing when full.
    known_users: Mutex<HashSet<u64>>,
}

const KNOWN_USERS_CAP: usize = 1 << 20;

/// One outbound push: frame + recipients on one (gateway, shard).
struct Outbound {
    gateway_id: Arc<str>,
    shard: u32,
    recipients: Vec<bus::Recipient>,
    frame: Bytes,
}

/// A send that survived validation and is waiting for its seq.
struct Accepted {
    trace_id: String,
    origin: bus::ConnRef,
    sender_id: u64,
    peer_id: u64,
    client_msg_id: String,
    conversation_id: String,
    content_type: String,
    content: String,
}

fn session_of(c: &bus::ConnRef) -> Session {
    Session { gateway_id: c.gateway_id.as_str().into(), shard: c.shard, conn_id: c.conn_id }
}

impl Logic {
    pub fn new(
        store: Arc<dyn Store>,
        sessions: Arc<dyn SessionStore>,
        producer: Arc<dyn Producer>,
        ids: Arc<Snowflake>,
        cfg: LogicConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            sessions,
            producer,
            ids,
            cfg,
            metrics: Arc::default(),
            dead_letter: None,
            topics: Topics::default(),
            known_users: Mutex::new(HashSet::new()),
        })
    }

    /// Cluster mode: topic names behind a prefix, and a dead-letter topic
    /// for records that cannot be processed.
    pub fn clustered(
        store: Arc<dyn Store>,
        sessions: Arc<dyn SessionStore>,
        producer: Arc<dyn Producer>,
        ids: Arc<Snowflake>,
        cfg: LogicConfig,
        topics: Topics,
        dead_letter: String,
    ) -> Arc<Self> {
        let mut logic = Self::new(store, sessions, producer, ids, cfg);
        let inner = Arc::get_mut(&mut logic).expect("fresh Arc");
        inner.dead_letter = Some(dead_letter);
        inner.topics = topics;
        logic
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
            let mut attempt = 0u32;
            loop {
                match self.handle_batch(&records).await {
                    Ok(()) => break,
                    Err(e) => {
                        attempt += 1;
                        self.metrics.batch_retries.inc();
                        let backoff = Duration::from_millis((50u64 << attempt.min(7)).min(5_000));
                        error!(error = %e, attempt, records = records.len(), backoff_ms = backoff.as_millis() as u64, "upstream batch failed; retrying");
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            if let Err(e) = consumer.commit().await {
                warn!(error = %e, "offset commit failed");
            }
        }
        info!("logic consumer stopped");
    }

    /// Process one batch in record order: runs of sends are persisted together;
    /// a sync or session event first flushes the sends before it.
    pub async fn handle_batch(&self, records: &[Record]) -> Result<(), LogicError> {
        let mut sends: Vec<(String, bus::SendMessage)> = Vec::new();
        for rec in records {
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
                other => self.corrupt(rec, &format!("unknown record type {other:?}")).await,
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
        let mut header = HashMap::new();
        header.insert(gochat_proto::HEADER_TYPE.to_owned(), kind::DEAD_LETTER.to_owned());
        header.insert("reason".to_owned(), reason.to_owned());
        header.insert("source_topic".to_owned(), self.topics.upstream());
        header.insert("source_partition".to_owned(), rec.partition.to_string());
        header.insert("source_offset".to_owned(), rec.offset.to_string());
        let env = KafkaMessage { trace_id: String::new(), header, body: rec.payload.clone() };
        if let Err(e) = self.producer.send(topic, &rec.key, None, env.encode_to_vec().into()).await {
            error!(topic, error = %e, "dead-letter record not produced");
        }
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
            Ok(session_event::Kind::Connect) => self.sessions.add_session(ev.user_id, session).await?,
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
        out.push(Outbound {
            gateway_id: origin.gateway_id.as_str().into(),
            shard: origin.shard,
            recipients: vec![bus::Recipient { conn_id: origin.conn_id, user_id: sender }],
            frame: frames::error(code, message, reference),
        });
    }

    fn ack_to(out: &mut Vec<Outbound>, origin: &bus::ConnRef, sender: u64, client_msg_id: &str, ack: &AckRecord) {
        out.push(Outbound {
            gateway_id: origin.gateway_id.as_str().into(),
            shard: origin.shard,
            recipients: vec![bus::Recipient { conn_id: origin.conn_id, user_id: sender }],
            frame: frames::message_ack(client_msg_id, ack.msg_id, &ack.conversation_id, ack.seq, ack.ts),
        });
    }

    async fn process_sends(&self, batch: &[(String, bus::SendMessage)]) -> Result<(), LogicError> {
        let mut out: Vec<Outbound> = Vec::new();
        let mut accepted: Vec<Accepted> = Vec::with_capacity(batch.len());

        // 1. Resolve and check each send.
        for (trace_id, s) in batch {
            self.metrics.sends.inc();
            let Some(origin) = s.origin.clone() else {
                warn!(trace_id = %trace_id, "send without origin connection skipped");
                continue;
            };
            let cmid = s.client_msg_id.as_str();
            let cid = if s.to_user_id != 0 {
                ConversationId::single(s.sender_id, s.to_user_id)
            } else {
                ConversationId::parse(&s.conversation_id)
            };
            let cid = match cid {
                Ok(c) => c,
                Err(e) => {
                    self.reject(&mut out, &origin, s.sender_id, "invalid_conversation", &e.to_string(), Some(cmid));
                    continue;
                }
            };
            let peer_id = match cid {
                ConversationId::Group(_) => {
                    self.reject(
                        &mut out,
                        &origin,
                        s.sender_id,
                        "unknown_conversation",
                        "group conversations are not available",
                        Some(cmid),
                    );
                    continue;
                }
                ConversationId::Single { .. } => match cid.peer_of(s.sender_id) {
                    Some(p) => p,
                    None => {
                        self.reject(
                            &mut out,
                            &origin,
                            s.sender_id,
                            "not_member",
                            "you are not a member of this conversation",
                            Some(cmid),
                        );
                        continue;
                    }
                },
            };
            if !CONTENT_TYPES.contains(&s.content_type.as_str())
                || s.content.len() > self.cfg.max_content_bytes
                || cmid.is_empty()
            {
                self.reject(
                    &mut out,
                    &origin,
                    s.sender_id,
                    "invalid_message",
                    "content_type, content or client_msg_id is invalid",
                    Some(cmid),
                );
                continue;
            }
            let Ok(content) = String::from_utf8(s.content.to_vec()) else {
                self.reject(&mut out, &origin, s.sender_id, "invalid_message", "content is not UTF-8", Some(cmid));
                continue;
            };
            accepted.push(Accepted {
                trace_id: trace_id.clone(),
                origin,
                sender_id: s.sender_id,
                peer_id,
                client_msg_id: s.client_msg_id.clone(),
                conversation_id: cid.to_string(),
                content_type: s.content_type.clone(),
                content,
            });
        }

        // 2. Peers must exist.
        let unknown: Vec<u64> = {
            let known = self.known_users.lock().expect("known users lock");
            let mut v: Vec<u64> = accepted.iter().map(|a| a.peer_id).filter(|p| !known.contains(p)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if !unknown.is_empty() {
            let found = self.store.existing_users(&unknown).await?;
            let mut known = self.known_users.lock().expect("known users lock");
            if known.len() + found.len() > KNOWN_USERS_CAP {
                known.clear();
            }
            known.extend(found);
            let mut kept = Vec::with_capacity(accepted.len());
            for a in accepted {
                if known.contains(&a.peer_id) {
                    kept.push(a);
                } else {
                    self.reject(
                        &mut out,
                        &a.origin,
                        a.sender_id,
                        "unknown_user",
                        "the recipient does not exist",
                        Some(&a.client_msg_id),
                    );
                }
            }
            accepted = kept;
        }

        // 3. Deduplicate: within the batch, against the fast store, then against the database.
        let mut fresh: Vec<Accepted> = Vec::with_capacity(accepted.len());
        let mut in_batch: HashMap<(u64, String), usize> = HashMap::new();
        // Later copies of a (sender, client_msg_id) first seen in this batch.
        let mut repeats: Vec<Accepted> = Vec::new();
        let mut db_check: Vec<Accepted> = Vec::new();
        for a in accepted {
            let key = (a.sender_id, a.client_msg_id.clone());
            if in_batch.contains_key(&key) {
                repeats.push(a);
                continue;
            }
            if let Some(ack) = self.sessions.dedup_get(a.sender_id, &a.client_msg_id).await? {
                self.metrics.duplicates.inc();
                Self::ack_to(&mut out, &a.origin, a.sender_id, &a.client_msg_id, &ack);
                continue;
            }
            in_batch.insert(key, usize::MAX);
            db_check.push(a);
        }
        if !db_check.is_empty() {
            let keys: Vec<(u64, String)> = db_check.iter().map(|a| (a.sender_id, a.client_msg_id.clone())).collect();
            let stored: HashMap<(u64, String), StoredMessage> = self
                .store
                .messages_by_client_ids(&keys)
                .await?
                .into_iter()
                .map(|m| ((m.sender_id, m.client_msg_id.clone()), m))
                .collect();
            for a in db_check {
                let key = (a.sender_id, a.client_msg_id.clone());
                if let Some(m) = stored.get(&key) {
                    self.metrics.duplicates.inc();
                    let ack = AckRecord {
                        msg_id: m.msg_id,
                        conversation_id: m.conversation_id.clone(),
                        seq: m.seq,
                        ts: m.created_at,
                    };
                    self.sessions.dedup_put(a.sender_id, &a.client_msg_id, &ack, self.dedup_ttl()).await?;
                    Self::ack_to(&mut out, &a.origin, a.sender_id, &a.client_msg_id, &ack);
                    in_batch.remove(&key);
                } else {
                    in_batch.insert(key, fresh.len());
                    fresh.push(a);
                }
            }
        }
        // Repeats whose first copy was answered from a store: answer them the same way.
        let mut repeats_of_fresh = Vec::new();
        for a in repeats {
            let key = (a.sender_id, a.client_msg_id.clone());
            match in_batch.get(&key) {
                Some(&j) if j != usize::MAX => repeats_of_fresh.push((j, a)),
                _ => {
                    if let Some(ack) = self.sessions.dedup_get(a.sender_id, &a.client_msg_id).await? {
                        self.metrics.duplicates.inc();
                        Self::ack_to(&mut out, &a.origin, a.sender_id, &a.client_msg_id, &ack);
                    }
                }
            }
        }

        // 4. Sequence: reserve a contiguous range per conversation.
        let now = gochat_common::now_ms();
        let mut per_conv: Vec<(String, u64)> = Vec::new();
        for a in &fresh {
            match per_conv.iter_mut().find(|(c, _)| *c == a.conversation_id) {
                Some((_, n)) => *n += 1,
                None => per_conv.push((a.conversation_id.clone(), 1)),
            }
        }
        let mut next_seq = match self.reserve_all(&per_conv).await {
            Ok(m) => m,
            Err(e) => {
                self.deliver(out).await;
                return Err(e);
            }
        };
        let rows: Vec<StoredMessage> = fresh
            .iter()
            .map(|a| {
                let seq = next_seq.get_mut(&a.conversation_id).expect("reserved above");
                let row = StoredMessage {
                    msg_id: self.ids.next_id(),
                    conversation_id: a.conversation_id.clone(),
                    seq: *seq,
                    sender_id: a.sender_id,
                    client_msg_id: a.client_msg_id.clone(),
                    content_type: a.content_type.clone(),
                    content: a.content.clone(),
                    created_at: now,
                };
                *seq += 1;
                row
            })
            .collect();

        // 5. Persist. On failure, forget the counters so the retry re-reads max(seq): no gaps.
        if let Err(e) = self.store.insert_messages(&rows).await {
            for (cid, _) in &per_conv {
                let _ = self.sessions.reset_seq(cid).await;
            }
            // Rejections computed so far are still valid answers; deliver them.
            self.deliver(out).await;
            return Err(e.into());
        }
        self.metrics.persisted.add(rows.len() as u64);

        // 6. Remember acks, ack senders, fan out.
        let mut users: Vec<u64> = fresh.iter().flat_map(|a| [a.sender_id, a.peer_id]).collect();
        users.sort_unstable();
        users.dedup();
        // From here on the batch is stored: a failure may cost live delivery
        // (recipients catch up by sync) but must not make the batch retry.
        let sessions = self.sessions.sessions(&users).await.unwrap_or_else(|e| {
            warn!(error = %e, "session lookup failed; recipients will catch up by sync");
            Vec::new()
        });
        let mut by_user: HashMap<u64, Vec<&Session>> = HashMap::new();
        for (uid, s) in &sessions {
            by_user.entry(*uid).or_default().push(s);
        }
        for (a, row) in fresh.iter().zip(&rows) {
            let ack = AckRecord {
                msg_id: row.msg_id,
                conversation_id: row.conversation_id.clone(),
                seq: row.seq,
                ts: row.created_at,
            };
            if let Err(e) = self.sessions.dedup_put(a.sender_id, &a.client_msg_id, &ack, self.dedup_ttl()).await {
                // The database's unique key still deduplicates a retry.
                warn!(error = %e, "dedup entry not stored");
            }
            Self::ack_to(&mut out, &a.origin, a.sender_id, &a.client_msg_id, &ack);
            let origin = session_of(&a.origin);
            let mut groups: Vec<Outbound> = Vec::new();
            let frame = frames::new_message(row);
            for uid in [a.peer_id, a.sender_id] {
                for s in by_user.get(&uid).into_iter().flatten() {
                    if **s == origin {
                        continue; // the sending device gets the ack, not an echo
                    }
                    let r = bus::Recipient { conn_id: s.conn_id, user_id: uid };
                    match groups.iter_mut().find(|g| g.shard == s.shard && g.gateway_id == s.gateway_id) {
                        Some(g) => g.recipients.push(r),
                        None => groups.push(Outbound {
                            gateway_id: s.gateway_id.clone(),
                            shard: s.shard,
                            recipients: vec![r],
                            frame: frame.clone(),
                        }),
                    }
                }
            }
            debug!(trace_id = %a.trace_id, msg_id = row.msg_id, conversation_id = %row.conversation_id, seq = row.seq, pushes = groups.len(), "message persisted");
            out.extend(groups);
        }
        for (j, a) in repeats_of_fresh {
            self.metrics.duplicates.inc();
            let row = &rows[j];
            let ack = AckRecord {
                msg_id: row.msg_id,
                conversation_id: row.conversation_id.clone(),
                seq: row.seq,
                ts: row.created_at,
            };
            Self::ack_to(&mut out, &a.origin, a.sender_id, &a.client_msg_id, &ack);
        }
        self.deliver(out).await;
        Ok(())
    }

    /// Reserve a contiguous seq range per conversation; returns the first seq
    /// of each range. On any failure every counter touched is reset, so the
    /// retry re-reads MAX(seq) from the database and no seq is skipped.
    async fn reserve_all(&self, per_conv: &[(String, u64)]) -> Result<HashMap<String, u64>, LogicError> {
        let mut next_seq = HashMap::with_capacity(per_conv.len());
        for (cid, n) in per_conv {
            match self.reserve(cid, *n).await {
                Ok(last) => {
                    next_seq.insert(cid.clone(), last + 1 - n);
                }
                Err(e) => {
                    for (touched, _) in per_conv {
                        let _ = self.sessions.reset_seq(touched).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(next_seq)
    }

    async fn reserve(&self, cid: &str, n: u64) -> Result<u64, LogicError> {
        if let Some(last) = self.sessions.reserve_seqs(cid, n).await? {
            return Ok(last);
        }
        let max = self.store.max_seq(cid).await?;
        self.sessions.init_seq(cid, max).await?;
        Ok(self
            .sessions
            .reserve_seqs(cid, n)
            .await?
            .ok_or_else(|| SessionStoreError::Unavailable(format!("seq counter for {cid} vanished after init")))?)
    }

    fn dedup_ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.dedup_ttl_secs)
    }

    /// Produce pushes in order. A push that cannot be produced is counted and
    /// logged: the message is stored, and the recipient catches up by sync.
    async fn deliver(&self, out: Vec<Outbound>) {
        let mut topics: HashMap<Arc<str>, String> = HashMap::new();
        for o in out {
            let push = bus::Push { recipients: o.recipients, frame: o.frame };
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
        if cid.is_group() {
            let why = "group conversations are not available";
            self.reject(&mut out, &origin, req.user_id, "unknown_conversation", why, reference);
            self.deliver(out).await;
            return Ok(());
        }
        if cid.peer_of(req.user_id).is_none() {
            self.reject(
                &mut out,
                &origin,
                req.user_id,
                "not_member",
                "you are not a member of this conversation",
                reference,
            );
            self.deliver(out).await;
            return Ok(());
        }
        let limit = self.page_limit(req.limit);
        let (messages, has_more) = self.page(&req.conversation_id, req.after_seq, limit).await?;
        out.push(Outbound {
            gateway_id: origin.gateway_id.as_str().into(),
            shard: origin.shard,
            recipients: vec![bus::Recipient { conn_id: origin.conn_id, user_id: req.user_id }],
            frame: frames::sync_result(&req.conversation_id, &messages, has_more),
        });
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
}
