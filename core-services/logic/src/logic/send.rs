//! The send pipeline: one batch of `send-message` records becomes stored,
//! sequenced, acknowledged and delivered messages. Each stage is one small
//! method over one [`SendBatch`]:
//!
//! 1. [`Logic::resolve`]: conversation, membership, content checks;
//! 2. [`Logic::check_peers`]: a 1:1 peer must exist;
//! 3. [`Logic::moderate`]: keyword lists and the moderation hook;
//! 4. [`Logic::answer_recent_duplicates`]: a retry whose ack the fast store
//!    still holds is answered from it;
//! 5. [`Logic::persist`]: the store appends the batch, assigning seqs inside
//!    its transaction (gap-free, idempotent per sender and client_msg_id);
//! 6. [`Logic::ack`]: acks (stored values, even for a repeat), or an error
//!    for a client_msg_id reused in another conversation;
//! 7. [`Logic::fan_out`]: pushes for 1:1 and small groups, a task for large
//!    groups, offline push for the rest.
//!
//! Frames accumulate in the batch's `out` in order and are produced once at
//! the end ([`Logic::deliver`]); a failing stage delivers what was decided
//! before it (rejections) and fails the batch, which is retried whole.

use super::{Logic, LogicError, PushSource, CONTENT_TYPES, KNOWN_USERS_CAP};
use crate::fanout::{self, Outbound};
use crate::frames;
use crate::moderation::Verdict;
use crate::session::{AckRecord, Session};
use gochat_common::convid::ConversationId;
use gochat_proto::bus;
use gochat_proto::task as tasks;
use gochat_repo::{Appended, NewMessage, StoredMessage};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{debug, warn};

/// Reserved for the server's own messages (`sys:{event_id}` for membership
/// events): a client may not use it.
pub const RESERVED_CLIENT_MSG_ID_PREFIX: &str = "sys:";

/// A send that survived validation.
#[derive(Debug, Clone)]
pub(super) struct Accepted {
    pub trace_id: String,
    pub origin: bus::ConnRef,
    pub sender_id: u64,
    /// The other participant of a 1:1 conversation (0 for a group).
    pub peer_id: u64,
    /// A group's members, ascending (None for 1:1).
    pub group: Option<(u64, Arc<[u64]>)>,
    pub client_msg_id: String,
    pub conversation_id: String,
    pub content_type: String,
    pub content: String,
}

/// One batch on its way through the stages.
#[derive(Default)]
pub(super) struct SendBatch {
    /// Frames to produce at the end, in order: rejections, acks, pushes.
    pub out: Vec<Outbound>,
    /// Sends still in play, in batch order.
    pub accepted: Vec<Accepted>,
    /// After [`Logic::persist`]: each accepted send with what the store did.
    pub appended: Vec<(Accepted, Appended)>,
    /// Acks for the fast store, written once the batch's frames are produced.
    pub remember: Vec<(u64, String, AckRecord)>,
}

impl SendBatch {
    fn reject(&mut self, logic: &Logic, origin: &bus::ConnRef, sender: u64, code: &str, why: &str, cmid: &str) {
        logic.metrics.rejected.inc();
        self.out.push(Outbound::to_conn(origin, sender, frames::error(code, why, Some(cmid))));
    }

    fn ack(&mut self, origin: &bus::ConnRef, sender: u64, client_msg_id: &str, ack: &AckRecord) {
        let frame = frames::message_ack(client_msg_id, ack.msg_id, &ack.conversation_id, ack.seq, ack.ts);
        self.out.push(Outbound::to_conn(origin, sender, frame));
    }
}

fn ack_of(m: &StoredMessage) -> AckRecord {
    AckRecord { msg_id: m.msg_id, conversation_id: m.conversation_id.clone(), seq: m.seq, ts: m.created_at }
}

impl Logic {
    /// Run the pipeline over one batch of sends.
    pub(super) async fn process_sends(&self, batch: &[(String, bus::SendMessage)]) -> Result<(), LogicError> {
        let mut b = SendBatch::default();
        let result = self.run_stages(batch, &mut b).await;
        // Whatever was decided (rejections, acks, pushes) is still a valid answer.
        self.deliver(std::mem::take(&mut b.out)).await;
        // Only now may a retry be answered from the fast store: a crash before
        // this point makes the replay go to the store, which re-pushes.
        if let Err(e) = self.sessions.dedup_put_many(&b.remember, self.dedup_ttl()).await {
            // The store still deduplicates a retry.
            warn!(error = %e, entries = b.remember.len(), "dedup entries not stored");
        }
        result
    }

    async fn run_stages(&self, batch: &[(String, bus::SendMessage)], b: &mut SendBatch) -> Result<(), LogicError> {
        self.resolve(batch, b).await?;
        self.check_peers(b).await?;
        self.moderate(b).await;
        self.answer_recent_duplicates(b).await?;
        self.persist(b).await?;
        // From here on the batch is stored: a failure may cost live delivery
        // (recipients catch up by sync) but must not make the batch retry.
        self.ack(b).await;
        self.fan_out(b).await;
        Ok(())
    }

    /// Stage 1: which conversation each send is for, whether the sender may
    /// post there, and whether the message itself is valid.
    pub(super) async fn resolve(
        &self,
        batch: &[(String, bus::SendMessage)],
        b: &mut SendBatch,
    ) -> Result<(), LogicError> {
        // Member lists looked up in this batch, per group.
        let mut members_of: HashMap<u64, Arc<[u64]>> = HashMap::new();
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
                    b.reject(self, &origin, s.sender_id, "invalid_conversation", &e.to_string(), cmid);
                    continue;
                }
            };
            let mut group = None;
            let peer_id = match cid {
                ConversationId::Group(gid) => {
                    let members = match members_of.get(&gid) {
                        Some(m) => m.clone(),
                        None => {
                            let m = self.members(gid).await?;
                            members_of.insert(gid, m.clone());
                            m
                        }
                    };
                    if members.is_empty() {
                        b.reject(self, &origin, s.sender_id, "unknown_conversation", "no such group", cmid);
                        continue;
                    }
                    if members.binary_search(&s.sender_id).is_err() {
                        let why = "you are not a member of this group";
                        b.reject(self, &origin, s.sender_id, "not_member", why, cmid);
                        continue;
                    }
                    group = Some((gid, members));
                    0
                }
                ConversationId::Single { .. } => match cid.peer_of(s.sender_id) {
                    Some(p) => p,
                    None => {
                        let why = "you are not a member of this conversation";
                        b.reject(self, &origin, s.sender_id, "not_member", why, cmid);
                        continue;
                    }
                },
            };
            if cmid.starts_with(RESERVED_CLIENT_MSG_ID_PREFIX) {
                let why = "client_msg_id may not start with \"sys:\" (reserved for server messages)";
                b.reject(self, &origin, s.sender_id, "invalid_message", why, cmid);
                continue;
            }
            if !CONTENT_TYPES.contains(&s.content_type.as_str())
                || s.content.len() > self.cfg.max_content_bytes
                || cmid.is_empty()
            {
                let why = "content_type, content or client_msg_id is invalid";
                b.reject(self, &origin, s.sender_id, "invalid_message", why, cmid);
                continue;
            }
            let Ok(content) = String::from_utf8(s.content.to_vec()) else {
                b.reject(self, &origin, s.sender_id, "invalid_message", "content is not UTF-8", cmid);
                continue;
            };
            b.accepted.push(Accepted {
                trace_id: trace_id.clone(),
                origin,
                sender_id: s.sender_id,
                peer_id,
                group,
                client_msg_id: s.client_msg_id.clone(),
                conversation_id: cid.to_string(),
                content_type: s.content_type.clone(),
                content,
            });
        }
        Ok(())
    }

    /// Stage 2: the peer of a 1:1 send must be a user.
    pub(super) async fn check_peers(&self, b: &mut SendBatch) -> Result<(), LogicError> {
        let unknown: Vec<u64> = {
            let known = self.known_users.lock().expect("known users lock");
            let mut v: Vec<u64> = b
                .accepted
                .iter()
                .filter(|a| a.group.is_none())
                .map(|a| a.peer_id)
                .filter(|p| !known.contains(p))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let found = self.store.existing_users(&unknown).await?;
        // Still sorted: `unknown` was.
        let missing: Vec<u64> = {
            let mut known = self.known_users.lock().expect("known users lock");
            if known.len() + found.len() > KNOWN_USERS_CAP {
                known.clear();
            }
            known.extend(found);
            unknown.into_iter().filter(|u| !known.contains(u)).collect()
        };
        for a in std::mem::take(&mut b.accepted) {
            if a.group.is_none() && missing.binary_search(&a.peer_id).is_ok() {
                b.reject(
                    self,
                    &a.origin,
                    a.sender_id,
                    "unknown_user",
                    "the recipient does not exist",
                    &a.client_msg_id,
                );
            } else {
                b.accepted.push(a);
            }
        }
        Ok(())
    }

    /// Stage 3: moderation, before anything is stored.
    pub(super) async fn moderate(&self, b: &mut SendBatch) {
        if !self.moderator.is_enabled() {
            return;
        }
        let verdicts = futures_util::future::join_all(
            b.accepted
                .iter()
                .map(|a| self.moderator.check(a.sender_id, &a.conversation_id, &a.content_type, &a.content)),
        )
        .await;
        for (a, v) in std::mem::take(&mut b.accepted).into_iter().zip(verdicts) {
            match v {
                Verdict::Allow => b.accepted.push(a),
                Verdict::Flag(reason) => {
                    self.metrics.moderation_flagged.inc();
                    warn!(sender_id = a.sender_id, conversation_id = %a.conversation_id, client_msg_id = %a.client_msg_id, reason = %reason, "message flagged by moderation");
                    b.accepted.push(a);
                }
                Verdict::Reject(reason) => {
                    self.metrics.moderation_rejected.inc();
                    b.reject(self, &a.origin, a.sender_id, "message_rejected", &reason, &a.client_msg_id);
                }
            }
        }
    }

    /// Stage 4: a retry whose ack the fast store still remembers is answered
    /// from it, without touching the database. Only an optimisation: the
    /// store's append deduplicates by itself.
    pub(super) async fn answer_recent_duplicates(&self, b: &mut SendBatch) -> Result<(), LogicError> {
        let keys: Vec<(u64, &str)> = b.accepted.iter().map(|a| (a.sender_id, a.client_msg_id.as_str())).collect();
        let cached = self.sessions.dedup_get_many(&keys).await?;
        for (a, cached) in std::mem::take(&mut b.accepted).into_iter().zip(cached) {
            match cached {
                Some(ack) if ack.conversation_id == a.conversation_id => {
                    self.metrics.duplicates.inc();
                    b.ack(&a.origin, a.sender_id, &a.client_msg_id, &ack);
                }
                // Unknown, or reused in another conversation: the store decides (stage 6 answers).
                _ => b.accepted.push(a),
            }
        }
        Ok(())
    }

    /// Stage 5: append the batch. The store assigns seqs in the transaction
    /// that stores the rows, so there is nothing to undo on failure: the
    /// batch is retried and the append answers with what is stored.
    pub(super) async fn persist(&self, b: &mut SendBatch) -> Result<(), LogicError> {
        if b.accepted.is_empty() {
            return Ok(());
        }
        let now = gochat_common::now_ms();
        let batch: Vec<NewMessage> = b
            .accepted
            .iter()
            .map(|a| NewMessage {
                msg_id: self.ids.next_id(),
                conversation_id: a.conversation_id.clone(),
                sender_id: a.sender_id,
                client_msg_id: a.client_msg_id.clone(),
                content_type: a.content_type.clone(),
                content: a.content.clone(),
                created_at: now,
            })
            .collect();
        let appended = self.store.append_messages(&batch).await?;
        let fresh = appended.iter().filter(|a| a.fresh).count();
        self.metrics.persisted.add(fresh as u64);
        b.appended = std::mem::take(&mut b.accepted).into_iter().zip(appended).collect();
        Ok(())
    }

    /// Stage 6: ack every appended send with its stored values (a repeat
    /// gets the original ack). A client_msg_id the sender already used in
    /// another conversation is refused: the message was not stored.
    pub(super) async fn ack(&self, b: &mut SendBatch) {
        let mut kept = Vec::with_capacity(b.appended.len());
        for (a, stored) in std::mem::take(&mut b.appended) {
            if stored.message.conversation_id != a.conversation_id {
                let why = "this client_msg_id was already used for a message in another conversation";
                b.reject(self, &a.origin, a.sender_id, "duplicate_client_msg_id", why, &a.client_msg_id);
                continue;
            }
            let ack = ack_of(&stored.message);
            if !stored.fresh {
                self.metrics.duplicates.inc();
            }
            b.ack(&a.origin, a.sender_id, &a.client_msg_id, &ack);
            b.remember.push((a.sender_id, a.client_msg_id.clone(), ack));
            kept.push((a, stored));
        }
        b.appended = kept;
    }

    /// Stage 7: deliver each message of the batch once: 1:1 and small
    /// groups here, large groups through the task tier. A message that was
    /// already stored is pushed again: it is a replay after a crash (the
    /// first run may have died before its pushes were produced) or a retry
    /// the fast store no longer remembers. Recipients drop a seq they hold
    /// (protocol §4.3); the task tier's claims keep a re-sent fan-out task
    /// from pushing twice.
    pub(super) async fn fan_out(&self, b: &mut SendBatch) {
        let threshold = self.cfg.group_fanout_threshold;
        let mut seen = std::collections::HashSet::new();
        let once: Vec<bool> = b.appended.iter().map(|(_, s)| seen.insert(s.message.msg_id)).collect();
        let fresh = || b.appended.iter().zip(&once).filter(|(_, first)| **first).map(|(x, _)| x);
        let mut users: Vec<u64> = Vec::new();
        for (a, _) in fresh() {
            match &a.group {
                None => users.extend([a.sender_id, a.peer_id]),
                Some((_, m)) if m.len() <= threshold => users.extend(m.iter().copied()),
                Some(_) => {}
            }
        }
        users.sort_unstable();
        users.dedup();
        let sessions = self.sessions.sessions(&users).await.unwrap_or_else(|e| {
            warn!(error = %e, "session lookup failed; recipients will catch up by sync");
            Vec::new()
        });
        let mut by_user: HashMap<u64, Vec<&Session>> = HashMap::new();
        for (uid, s) in &sessions {
            by_user.entry(*uid).or_default().push(s);
        }
        let mut out = std::mem::take(&mut b.out);
        for (a, stored) in fresh() {
            let row = &stored.message;
            if !stored.fresh {
                self.metrics.replayed_pushes.inc();
            }
            let frame = frames::new_message(row);
            let recipients: &[u64] = match &a.group {
                Some((gid, members)) if members.len() > threshold => {
                    // The ack is already queued; the fan-out happens in the task tier.
                    let task = bus::FanoutTask {
                        conversation_id: row.conversation_id.clone(),
                        group_id: *gid,
                        msg_id: row.msg_id,
                        seq: row.seq,
                        sender_id: a.sender_id,
                        origin: Some(a.origin.clone()),
                        frame,
                        content_type: row.content_type.clone(),
                        preview: super::preview(&row.content_type, &row.content),
                        ts: row.created_at,
                        also_notify: Vec::new(),
                    };
                    self.metrics.fanout_delegated.inc();
                    self.produce_task(tasks::FANOUT, &row.conversation_id, row.msg_id, &a.trace_id, task).await;
                    continue;
                }
                Some((_, members)) => members,
                None => &[a.peer_id, a.sender_id][..],
            };
            self.metrics.fanout_inline.inc();
            let before = out.len();
            let origin = super::session_of(&a.origin);
            let sessions = recipients.iter().flat_map(|u| by_user.get(u).into_iter().flatten().map(move |s| (*u, *s)));
            fanout::plan(&frame, sessions, Some(&origin), self.task_cfg.max_push_recipients, &mut out);
            debug!(trace_id = %a.trace_id, msg_id = row.msg_id, conversation_id = %row.conversation_id, seq = row.seq, pushes = out.len() - before, "message persisted");
            if self.offline_push_enabled() {
                let offline: Vec<u64> =
                    recipients.iter().copied().filter(|u| *u != a.sender_id && !by_user.contains_key(u)).collect();
                self.offline_push(&PushSource::from(row), offline, &a.trace_id).await;
            }
        }
        b.out = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moderation::Moderator;
    use crate::session::MemorySessionStore;
    use crate::LogicDeps;
    use gochat_common::bus::{MemoryBus, Topics};
    use gochat_common::config::{LogicConfig, ModerationConfig, TaskConfig};
    use gochat_common::ids::Snowflake;
    use gochat_repo::sqlite::SqliteStore;
    use gochat_repo::{Store, User};
    use serde_json::Value;

    const ALICE: u64 = 1;
    const BOB: u64 = 2;

    async fn logic() -> Arc<Logic> {
        let store = SqliteStore::open("sqlite::memory:", 1, false).await.unwrap();
        for (id, name) in [(ALICE, "alice"), (BOB, "bob")] {
            let user = User {
                id,
                username: name.into(),
                password_hash: String::new(),
                nickname: name.into(),
                avatar_url: String::new(),
                created_at: 0,
            };
            store.create_user(&user).await.unwrap();
        }
        let bus = MemoryBus::new(1024);
        Logic::new(LogicDeps {
            store: Arc::new(store),
            sessions: Arc::new(MemorySessionStore::new(1024)),
            push_producer: bus.producer(),
            bus_producer: bus.producer(),
            ids: Arc::new(Snowflake::new(1).unwrap()),
            cfg: LogicConfig::default(),
            task_cfg: TaskConfig::default(),
            moderator: Moderator::new(&ModerationConfig::default()).unwrap(),
            topics: Topics::new(""),
            dead_letter: None,
        })
    }

    fn origin(conn_id: u64) -> bus::ConnRef {
        bus::ConnRef { gateway_id: "gw0".into(), shard: 0, conn_id }
    }

    fn send_to(sender: u64, to: u64, cmid: &str) -> (String, bus::SendMessage) {
        let s = bus::SendMessage {
            sender_id: sender,
            origin: Some(origin(sender * 100)),
            client_msg_id: cmid.into(),
            to_user_id: to,
            content_type: "text".into(),
            content: bytes::Bytes::from_static(br#"{"text":"hi"}"#),
            ..Default::default()
        };
        (format!("trace-{cmid}"), s)
    }

    fn frames(out: &[Outbound]) -> Vec<Value> {
        out.iter().map(|o| serde_json::from_slice(&o.frame).unwrap()).collect()
    }

    fn codes(out: &[Outbound]) -> Vec<String> {
        frames(out).iter().map(|f| f["code"].as_str().unwrap_or("").to_owned()).collect()
    }

    #[tokio::test]
    async fn resolve_keeps_valid_sends_and_rejects_the_rest_with_their_ref() {
        let l = logic().await;
        let mut bad_type = send_to(ALICE, BOB, "bad-type");
        bad_type.1.content_type = "video".into();
        let mut outsider = send_to(ALICE, 0, "outsider");
        outsider.1.conversation_id = "s_2_3".into();
        let mut no_conv = send_to(ALICE, 0, "no-conv");
        no_conv.1.conversation_id = "x_1".into();
        let batch = vec![
            send_to(ALICE, BOB, "ok"),
            send_to(ALICE, BOB, "sys:7"),
            bad_type,
            outsider,
            no_conv,
            send_to(ALICE, BOB, ""),
        ];
        let mut b = SendBatch::default();
        l.resolve(&batch, &mut b).await.unwrap();
        assert_eq!(b.accepted.len(), 1);
        assert_eq!((b.accepted[0].conversation_id.as_str(), b.accepted[0].peer_id), ("s_1_2", BOB));
        assert_eq!(
            codes(&b.out),
            ["invalid_message", "invalid_message", "not_member", "invalid_conversation", "invalid_message"]
        );
        assert_eq!(frames(&b.out)[0]["ref"], "sys:7");
    }

    #[tokio::test]
    async fn check_peers_rejects_unknown_users_only() {
        let l = logic().await;
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "a"), send_to(ALICE, 99, "b")], &mut b).await.unwrap();
        l.check_peers(&mut b).await.unwrap();
        assert_eq!(b.accepted.iter().map(|a| a.client_msg_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(codes(&b.out), ["unknown_user"]);
    }

    #[tokio::test]
    async fn persist_assigns_contiguous_seqs_and_folds_repeats() {
        let l = logic().await;
        let mut b = SendBatch::default();
        let batch = [send_to(ALICE, BOB, "a"), send_to(BOB, ALICE, "a"), send_to(ALICE, BOB, "a")];
        l.resolve(&batch, &mut b).await.unwrap();
        l.persist(&mut b).await.unwrap();
        let seen: Vec<(u64, bool)> = b.appended.iter().map(|(_, s)| (s.message.seq, s.fresh)).collect();
        assert_eq!(seen, [(1, true), (2, true), (1, false)]);
        assert_eq!(b.appended[2].1.message.msg_id, b.appended[0].1.message.msg_id);
        assert_eq!(l.store.max_seq("s_1_2").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn ack_answers_repeats_with_the_stored_ack_and_refuses_cross_conversation_reuse() {
        let l = logic().await;
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "m")], &mut b).await.unwrap();
        l.persist(&mut b).await.unwrap();
        l.ack(&mut b).await;
        let first = frames(&b.out).remove(0);
        assert_eq!((first["type"].as_str(), first["seq"].as_u64()), (Some("message-ack"), Some(1)));

        // The same id again: the original ack. The same id to someone else: refused.
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "m"), send_to(ALICE, 3, "m")], &mut b).await.unwrap();
        l.persist(&mut b).await.unwrap();
        l.ack(&mut b).await;
        let out = frames(&b.out);
        assert_eq!(out[0], first);
        assert_eq!((out[1]["code"].as_str(), out[1]["ref"].as_str()), (Some("duplicate_client_msg_id"), Some("m")));
        assert_eq!(b.appended.len(), 1, "only the same-conversation repeat goes on");
        assert_eq!(l.store.max_seq("s_1_3").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn recent_duplicates_are_answered_from_the_fast_store() {
        let l = logic().await;
        let ack = AckRecord { msg_id: 42, conversation_id: "s_1_2".into(), seq: 9, ts: 5 };
        l.sessions.dedup_put(ALICE, "cached", &ack, std::time::Duration::from_secs(60)).await.unwrap();
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "cached"), send_to(ALICE, BOB, "new")], &mut b).await.unwrap();
        l.answer_recent_duplicates(&mut b).await.unwrap();
        assert_eq!(b.accepted.iter().map(|a| a.client_msg_id.as_str()).collect::<Vec<_>>(), ["new"]);
        let out = frames(&b.out);
        assert_eq!((out[0]["msg_id"].as_str(), out[0]["seq"].as_u64()), (Some("42"), Some(9)));
    }

    #[tokio::test]
    async fn fan_out_pushes_fresh_messages_only_to_live_sessions() {
        let l = logic().await;
        let bob_conn = Session { gateway_id: "gw1".into(), shard: 1, conn_id: 7 };
        l.sessions.add_session(BOB, bob_conn).await.unwrap();
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "x"), send_to(ALICE, BOB, "x")], &mut b).await.unwrap();
        l.persist(&mut b).await.unwrap();
        l.fan_out(&mut b).await;
        // One new-message push to bob's connection; the in-batch repeat pushes nothing.
        assert_eq!(b.out.len(), 1);
        assert_eq!((&*b.out[0].gateway_id, b.out[0].shard, b.out[0].recipients[0].conn_id), ("gw1", 1, 7));
        assert_eq!(frames(&b.out)[0]["type"], "new-message");
    }

    #[tokio::test]
    async fn a_replayed_batch_pushes_again_and_remembers_the_ack_after_delivery() {
        let l = logic().await;
        let bob_conn = Session { gateway_id: "gw1".into(), shard: 0, conn_id: 9 };
        l.sessions.add_session(BOB, bob_conn).await.unwrap();
        // First run: stored, but (as if it crashed) never delivered.
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "r")], &mut b).await.unwrap();
        l.persist(&mut b).await.unwrap();
        assert_eq!(l.sessions.dedup_get(ALICE, "r").await.unwrap(), None, "nothing remembered before delivery");
        // The replay finds it stored, acks it with the stored values and pushes it again.
        let mut b = SendBatch::default();
        l.resolve(&[send_to(ALICE, BOB, "r")], &mut b).await.unwrap();
        l.persist(&mut b).await.unwrap();
        assert!(!b.appended[0].1.fresh);
        l.ack(&mut b).await;
        l.fan_out(&mut b).await;
        let types: Vec<String> = frames(&b.out).iter().map(|f| f["type"].as_str().unwrap().to_owned()).collect();
        assert_eq!(types, ["message-ack", "new-message"]);
        assert_eq!(l.metrics.replayed_pushes.get(), 1);
        // The whole pipeline remembers the ack once the frames are produced.
        l.process_sends(&[send_to(ALICE, BOB, "r")]).await.unwrap();
        assert_eq!(l.sessions.dedup_get(ALICE, "r").await.unwrap().map(|a| a.seq), Some(1));
    }
}
