//! Persistence of the message path. Logic persists a batch of messages here
//! *before* it acks or fans out, so an ack always means "stored". The
//! [`Store`] trait is what logic sees; [`sqlite::SqliteStore`] is the embedded
//! implementation, [`mysql::MySqlStore`] the cluster one (the gRPC client of
//! `gochat repo` will slot in behind the same trait).
//!
//! Invariants the schema enforces, whatever the caller does:
//! UNIQUE (conversation_id, seq) and UNIQUE (sender_id, client_msg_id).
//! Seqs are assigned by the store, inside the transaction that stores the
//! messages ([`Store::append_messages`]): a crash at any point leaves either
//! the whole batch with its seqs or nothing, never a gap.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod mysql;
pub mod sqlite;
pub mod tokens;

pub use tokens::{RefreshToken, Rotation, TokenStore};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("username is taken")]
    UsernameTaken,
    #[error("a message with this (conversation_id, seq) or (sender_id, client_msg_id) already exists")]
    Conflict,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The group does not exist (never created, or dissolved).
    #[error("group not found")]
    GroupNotFound,
    /// The remote repo (`gochat repo` over gRPC) could not be reached or
    /// failed in a way that has no variant of its own.
    #[error("repo rpc failed: {0}")]
    Rpc(String),
    /// The database answered something that breaks an invariant (e.g. a
    /// seq counter missing inside the transaction that created it).
    #[error("inconsistent store state: {0}")]
    Inconsistent(String),
    /// The remote repo's store failed in a way a retry will not cure (its
    /// database refused the statement, or broke an invariant).
    #[error("repo store failed: {0}")]
    Remote(String),
}

impl RepoError {
    /// Whether the same call may succeed when retried: the database or the
    /// repo could not be reached (connection, pool, transport), as opposed
    /// to a statement refused or an invariant broken, which fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            RepoError::Database(e) => is_transient_db(e),
            RepoError::Rpc(_) => true,
            _ => false,
        }
    }
}

/// A database error a retry may cure: no connection, pool exhausted.
pub fn is_transient_db(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub password_hash: String,
    pub nickname: String,
    pub avatar_url: String,
    pub created_at: i64,
}

/// One stored message. `content` is the compact JSON text of the client's
/// `content` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg_id: u64,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_id: u64,
    pub client_msg_id: String,
    pub content_type: String,
    pub content: String,
    pub created_at: i64,
}

/// A message to append: the store assigns its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub msg_id: u64,
    pub conversation_id: String,
    pub sender_id: u64,
    pub client_msg_id: String,
    pub content_type: String,
    pub content: String,
    pub created_at: i64,
}

impl NewMessage {
    /// The row this message becomes at `seq`.
    pub fn stored(&self, seq: u64) -> StoredMessage {
        StoredMessage {
            msg_id: self.msg_id,
            conversation_id: self.conversation_id.clone(),
            seq,
            sender_id: self.sender_id,
            client_msg_id: self.client_msg_id.clone(),
            content_type: self.content_type.clone(),
            content: self.content.clone(),
            created_at: self.created_at,
        }
    }
}

impl From<&StoredMessage> for NewMessage {
    /// The message as it was appended (its seq dropped).
    fn from(m: &StoredMessage) -> Self {
        NewMessage {
            msg_id: m.msg_id,
            conversation_id: m.conversation_id.clone(),
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id.clone(),
            content_type: m.content_type.clone(),
            content: m.content.clone(),
            created_at: m.created_at,
        }
    }
}

/// What [`Store::append_messages`] did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored row: the new one, or the one already stored under the
    /// same (sender_id, client_msg_id), which may be in another conversation.
    pub message: StoredMessage,
    /// True when this call stored it.
    pub fresh: bool,
}

/// Which messages of a batch are new, and how many seqs each conversation
/// needs: the pure half of an append, shared by the SQL stores. `existing`
/// are rows already stored under some of the batch's keys. Returns, per
/// input, either `Ok(index into fresh)` or `Err(existing row)`, plus the
/// fresh messages' indexes and the per-conversation counts sorted by
/// conversation id (the order counters are locked in, so two appends never
/// deadlock on each other).
pub fn plan_append(batch: &[NewMessage], existing: &[StoredMessage]) -> AppendPlan {
    use std::collections::HashMap;
    let stored: HashMap<(u64, &str), &StoredMessage> =
        existing.iter().map(|m| ((m.sender_id, m.client_msg_id.as_str()), m)).collect();
    let mut first: HashMap<(u64, &str), usize> = HashMap::new();
    let mut slots = Vec::with_capacity(batch.len());
    let mut fresh = Vec::new();
    let mut counts: Vec<(String, u64)> = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        let key = (m.sender_id, m.client_msg_id.as_str());
        if let Some(row) = stored.get(&key) {
            slots.push(Slot::Existing((*row).clone()));
        } else if let Some(&j) = first.get(&key) {
            slots.push(Slot::RepeatOf(j));
        } else {
            first.insert(key, i);
            fresh.push(i);
            slots.push(Slot::Fresh);
            match counts.iter_mut().find(|(c, _)| *c == m.conversation_id) {
                Some((_, n)) => *n += 1,
                None => counts.push((m.conversation_id.clone(), 1)),
            }
        }
    }
    counts.sort_unstable();
    AppendPlan { slots, fresh, counts }
}

/// See [`plan_append`].
#[derive(Debug, PartialEq, Eq)]
pub struct AppendPlan {
    pub slots: Vec<Slot>,
    /// Indexes (into the batch) of the messages to store, in batch order.
    pub fresh: Vec<usize>,
    /// Seqs needed per conversation, sorted by conversation id.
    pub counts: Vec<(String, u64)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// To be stored by this append.
    Fresh,
    /// Already stored before this append.
    Existing(StoredMessage),
    /// A later copy of batch entry `.0` (same sender and client_msg_id).
    RepeatOf(usize),
}

impl AppendPlan {
    /// Assign seqs: `last` holds each conversation's counter *after* it was
    /// advanced by its count. Returns the rows to insert (batch order) and the
    /// answer for every input.
    pub fn assign(
        self,
        batch: &[NewMessage],
        last: &[(String, u64)],
    ) -> Result<(Vec<StoredMessage>, Vec<Appended>), RepoError> {
        use std::collections::HashMap;
        let mut next: HashMap<&str, u64> = HashMap::new();
        for (cid, n) in &self.counts {
            let last = last
                .iter()
                .find(|(c, _)| c == cid)
                .map(|(_, l)| *l)
                .filter(|l| l >= n)
                .ok_or_else(|| RepoError::Inconsistent(format!("seq counter of {cid} missing after its update")))?;
            next.insert(cid.as_str(), last + 1 - n);
        }
        let mut rows = Vec::with_capacity(self.fresh.len());
        let mut row_of: HashMap<usize, usize> = HashMap::new();
        for &i in &self.fresh {
            let seq = next.get_mut(batch[i].conversation_id.as_str()).expect("counted above");
            row_of.insert(i, rows.len());
            rows.push(batch[i].stored(*seq));
            *seq += 1;
        }
        let out = self
            .slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| match slot {
                Slot::Fresh => Appended { message: rows[row_of[&i]].clone(), fresh: true },
                Slot::Existing(m) => Appended { message: m, fresh: false },
                Slot::RepeatOf(j) => Appended { message: rows[row_of[&j]].clone(), fresh: false },
            })
            .collect();
        Ok((rows, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, cid: &str, sender: u64, cmid: &str) -> NewMessage {
        NewMessage {
            msg_id: id,
            conversation_id: cid.into(),
            sender_id: sender,
            client_msg_id: cmid.into(),
            content_type: "text".into(),
            content: "{}".into(),
            created_at: 1,
        }
    }

    #[test]
    fn plan_counts_fresh_messages_per_conversation_sorted() {
        let batch = [m(1, "s_2_3", 2, "a"), m(2, "s_1_2", 1, "a"), m(3, "s_2_3", 3, "a")];
        let plan = plan_append(&batch, &[]);
        assert_eq!(plan.fresh, vec![0, 1, 2]);
        assert_eq!(plan.counts, vec![("s_1_2".into(), 1), ("s_2_3".into(), 2)]);
        let (rows, out) = plan.assign(&batch, &[("s_1_2".into(), 1), ("s_2_3".into(), 7)]).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![6, 1, 7]);
        assert!(out.iter().all(|a| a.fresh));
    }

    #[test]
    fn repeats_and_stored_keys_take_no_seq() {
        let earlier = m(9, "s_1_3", 1, "x").stored(4);
        let batch = [m(1, "s_1_2", 1, "a"), m(2, "s_1_2", 1, "x"), m(3, "s_1_2", 1, "a"), m(4, "s_1_2", 2, "a")];
        let plan = plan_append(&batch, std::slice::from_ref(&earlier));
        assert_eq!(plan.counts, vec![("s_1_2".into(), 2)]);
        let (rows, out) = plan.assign(&batch, &[("s_1_2".into(), 2)]).unwrap();
        assert_eq!(rows.iter().map(|r| (r.msg_id, r.seq)).collect::<Vec<_>>(), vec![(1, 1), (4, 2)]);
        assert_eq!(out[1], Appended { message: earlier, fresh: false });
        assert_eq!(out[2], Appended { message: rows[0].clone(), fresh: false });
        assert!(out[0].fresh && out[3].fresh);
    }

    #[test]
    fn a_missing_counter_is_an_error_not_a_guess() {
        let batch = [m(1, "s_1_2", 1, "a"), m(2, "s_1_2", 1, "b")];
        assert!(plan_append(&batch, &[]).assign(&batch, &[]).is_err());
        assert!(plan_append(&batch, &[]).assign(&batch, &[("s_1_2".into(), 1)]).is_err());
    }
}

/// The id of the 1:1 conversation of two different users, as
/// gochat_common::convid spells it (`s_{lo}_{hi}`).
pub(crate) fn single_conversation_id(a: u64, b: u64) -> String {
    format!("s_{}_{}", a.min(b), a.max(b))
}

/// The id of a group's conversation (`g_{group_id}`).
pub(crate) fn group_conversation_id(group_id: u64) -> String {
    format!("g_{group_id}")
}

/// A member's standing in a group. Exactly one owner per group (its creator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupRole {
    Owner,
    Admin,
    Member,
}

impl GroupRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRole::Owner => "owner",
            GroupRole::Admin => "admin",
            GroupRole::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "owner" => Some(GroupRole::Owner),
            "admin" => Some(GroupRole::Admin),
            "member" => Some(GroupRole::Member),
            _ => None,
        }
    }
    /// Owners and admins manage membership.
    pub fn can_manage(self) -> bool {
        matches!(self, GroupRole::Owner | GroupRole::Admin)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: u64,
    pub name: String,
    pub owner_id: u64,
    pub created_at: i64,
    /// Members added later read the group's whole backlog; when false (the
    /// default) they read only what comes after their join seq (see
    /// [`Store::group_read_floor`]). Set at creation, never changed.
    pub history_visible_to_new_members: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub user_id: u64,
    pub role: GroupRole,
    pub joined_at: i64,
}

#[async_trait]
pub trait Store: TokenStore + Send + Sync + 'static {
    async fn create_user(&self, user: &User) -> Result<(), RepoError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<User>, RepoError>;
    async fn user_by_id(&self, id: u64) -> Result<Option<User>, RepoError>;
    /// Which of `ids` are existing users.
    async fn existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, RepoError>;

    /// Append a batch of messages in ONE transaction. Messages whose
    /// (sender_id, client_msg_id) is new get the next seqs of their
    /// conversation, contiguous and in batch order, from the conversation's
    /// counter row (`conversation_seqs`), which the same transaction locks
    /// and advances; they are stored. The others (stored earlier, or earlier
    /// in this batch) are not stored again: their stored row comes back.
    /// Returns one entry per input, in input order.
    ///
    /// All or nothing: on error no row is stored and no counter moves, so
    /// whatever the error (even an ambiguous one, where the commit may have
    /// happened), calling again with the same batch is safe and answers
    /// with the stored rows. This is what makes seqs gap-free under crashes.
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, RepoError>;
    /// Messages already stored under any of these (sender_id, client_msg_id).
    async fn messages_by_client_ids(&self, keys: &[(u64, String)]) -> Result<Vec<StoredMessage>, RepoError>;
    /// The last seq assigned in a conversation (0 when empty).
    async fn max_seq(&self, conversation_id: &str) -> Result<u64, RepoError>;
    /// Messages with seq > `after_seq`, ascending, at most `limit`.
    async fn messages_after(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, RepoError>;

    /// Create a group with its initial members (the owner among them), atomically.
    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<(), RepoError>;
    async fn group_by_id(&self, group_id: u64) -> Result<Option<Group>, RepoError>;
    /// Groups `user_id` is a member of, ascending by group id.
    async fn groups_of_user(&self, user_id: u64) -> Result<Vec<Group>, RepoError>;
    /// Every member of a group, ascending by user id (empty for an unknown group).
    async fn group_members(&self, group_id: u64) -> Result<Vec<GroupMember>, RepoError>;
    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<GroupMember>, RepoError>;
    /// Add members, atomically; users already in the group are left as they
    /// are. Returns the user ids actually added, ascending.
    /// [`RepoError::GroupNotFound`] when the group does not exist. Each added
    /// member's join seq is the group conversation's last seq at the time
    /// (members of [`Store::create_group`] join at 0).
    async fn add_group_members(&self, group_id: u64, members: &[GroupMember]) -> Result<Vec<u64>, RepoError>;
    /// Whether the user was a member (and now is not).
    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> Result<bool, RepoError>;
    /// Whether the user is a member (and now has `role`).
    async fn set_group_member_role(&self, group_id: u64, user_id: u64, role: GroupRole) -> Result<bool, RepoError>;
    /// Delete a group and its memberships (its messages stay); whether it existed.
    async fn delete_group(&self, group_id: u64) -> Result<bool, RepoError>;

    // privacy
    /// Whether users `a` and `b` share a conversation: their 1:1
    /// conversation holds at least one message (it has a seq counter), or
    /// both are members of one group. True when `a == b`. One statement: a
    /// primary-key lookup, or a walk of `a`'s memberships probing `b`'s,
    /// stopping at the first shared group.
    async fn shares_conversation(&self, a: u64, b: u64) -> Result<bool, RepoError>;
    /// The seq after which `user_id` may read group `group_id`'s messages:
    /// 0 when the group shows its history to new members, else the member's
    /// join seq. None when the user is not a member (or there is no such group).
    async fn group_read_floor(&self, group_id: u64, user_id: u64) -> Result<Option<u64>, RepoError>;

    /// Cheap liveness probe for /readyz.
    async fn ping(&self) -> Result<(), RepoError>;
}
