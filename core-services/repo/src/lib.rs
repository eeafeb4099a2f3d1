//! Persistence of the message path. Logic persists a batch of messages here
//! *before* it acks or fans out, so an ack always means "stored". The
//! [`Store`] trait is what logic sees; [`sqlite::SqliteStore`] is the embedded
//! implementation, [`mysql::MySqlStore`] the cluster one (the gRPC client of
//! `gochat repo` will slot in behind the same trait).
//!
//! Invariants the schema enforces, whatever the caller does:
//! UNIQUE (conversation_id, seq) and UNIQUE (sender_id, client_msg_id).

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod mysql;
pub mod sqlite;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub user_id: u64,
    pub role: GroupRole,
    pub joined_at: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_user(&self, user: &User) -> Result<(), RepoError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<User>, RepoError>;
    async fn user_by_id(&self, id: u64) -> Result<Option<User>, RepoError>;
    /// Which of `ids` are existing users.
    async fn existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, RepoError>;

    /// Insert a batch atomically: all rows or none.
    async fn insert_messages(&self, batch: &[StoredMessage]) -> Result<(), RepoError>;
    /// Messages already stored under any of these (sender_id, client_msg_id).
    async fn messages_by_client_ids(&self, keys: &[(u64, String)]) -> Result<Vec<StoredMessage>, RepoError>;
    /// Highest seq of a conversation (0 when empty): where seq allocation
    /// resumes after the fast store lost its counter.
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
    /// [`RepoError::GroupNotFound`] when the group does not exist.
    async fn add_group_members(&self, group_id: u64, members: &[GroupMember]) -> Result<Vec<u64>, RepoError>;
    /// Whether the user was a member (and now is not).
    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> Result<bool, RepoError>;
    /// Whether the user is a member (and now has `role`).
    async fn set_group_member_role(&self, group_id: u64, user_id: u64, role: GroupRole) -> Result<bool, RepoError>;
    /// Delete a group and its memberships (its messages stay); whether it existed.
    async fn delete_group(&self, group_id: u64) -> Result<bool, RepoError>;

    /// Cheap liveness probe for /readyz.
    async fn ping(&self) -> Result<(), RepoError>;
}
