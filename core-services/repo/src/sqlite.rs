//! SQLite store for embedded mode (`gochat dev`): WAL journal, migrations from
//! migrations/sqlite applied at open.

use crate::{
    group_conversation_id, plan_append, single_conversation_id, Appended, Group, GroupMember, GroupRole, NewMessage,
    RepoError, Store, StoredMessage, User,
};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if missing) and migrate. `synchronous_full` trades write
    /// speed for durability across power loss.
    pub async fn open(url: &str, max_connections: u32, synchronous_full: bool) -> Result<Self, RepoError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if synchronous_full { SqliteSynchronous::Full } else { SqliteSynchronous::Normal })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(max_connections.max(1)).connect_with(opts).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn user_from_row(r: &SqliteRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get::<i64, _>("id")? as u64,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        nickname: r.try_get("nickname")?,
        avatar_url: r.try_get("avatar_url")?,
        created_at: r.try_get("created_at")?,
    })
}

fn message_from_row(r: &SqliteRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        msg_id: r.try_get::<i64, _>("id")? as u64,
        conversation_id: r.try_get("conversation_id")?,
        seq: r.try_get::<i64, _>("seq")? as u64,
        sender_id: r.try_get::<i64, _>("sender_id")? as u64,
        client_msg_id: r.try_get("client_msg_id")?,
        content_type: r.try_get("content_type")?,
        content: r.try_get("content")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Rows stored under any of these (sender_id, client_msg_id), on one connection
/// (inside a transaction when the caller holds one).
async fn lookup_client_ids(conn: &mut SqliteConnection, keys: &[(u64, &str)]) -> Result<Vec<StoredMessage>, RepoError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(200) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE "));
        for (i, (sender, cmid)) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(sender_id = ").push_bind(*sender as i64).push(" AND client_msg_id = ").push_bind(*cmid).push(")");
        }
        for r in &q.build().fetch_all(&mut *conn).await? {
            out.push(message_from_row(r)?);
        }
    }
    Ok(out)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, sender_id, client_msg_id, content_type, content, created_at";
const GROUP_COLUMNS: &str = "id, name, owner_id, created_at, history_visible_to_new_members";
const MEMBER_COLUMNS: &str = "user_id, role, joined_at";
/// Rows per multi-row membership INSERT: 5 parameters each, far below
/// SQLite's 32,766 bound parameters per statement.
const MEMBER_ROWS_MAX: usize = 1000;

fn group_from_row(r: &SqliteRow) -> Result<Group, sqlx::Error> {
    Ok(Group {
        id: r.try_get::<i64, _>("id")? as u64,
        name: r.try_get("name")?,
        owner_id: r.try_get::<i64, _>("owner_id")? as u64,
        created_at: r.try_get("created_at")?,
        history_visible_to_new_members: r.try_get("history_visible_to_new_members")?,
    })
}

fn member_from_row(r: &SqliteRow) -> Result<GroupMember, sqlx::Error> {
    let role: &str = r.try_get("role")?;
    Ok(GroupMember {
        user_id: r.try_get::<i64, _>("user_id")? as u64,
        role: GroupRole::parse(role).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "role".into(),
            source: format!("unknown group role {role:?}").into(),
        })?,
        joined_at: r.try_get("joined_at")?,
    })
}

/// `INSERT [OR IGNORE] INTO group_members ... VALUES` for one chunk of rows,
/// each joining at `join_seq`.
fn member_insert<'a>(verb: &str, group_id: u64, join_seq: u64, chunk: &'a [GroupMember]) -> QueryBuilder<'a, Sqlite> {
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("{verb} INTO group_members (group_id, {MEMBER_COLUMNS}, join_seq) "));
    q.push_values(chunk, |mut b, m| {
        b.push_bind(group_id as i64)
            .push_bind(m.user_id as i64)
            .push_bind(m.role.as_str())
            .push_bind(m.joined_at)
            .push_bind(join_seq as i64);
    });
    q
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, u: &User) -> Result<(), RepoError> {
        sqlx::query("INSERT INTO users (id, username, password_hash, nickname, avatar_url, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(u.id as i64)
            .bind(&u.username)
            .bind(&u.password_hash)
            .bind(&u.nickname)
            .bind(&u.avatar_url)
            .bind(u.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| if is_unique_violation(&e) { RepoError::UsernameTaken } else { e.into() })?;
        Ok(())
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, RepoError> {
        let row =
            sqlx::query("SELECT * FROM users WHERE username = ?").bind(username).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>, RepoError> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?").bind(id as i64).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, RepoError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT id FROM users WHERE id IN (");
        let mut sep = q.separated(", ");
        for id in ids {
            sep.push_bind(*id as i64);
        }
        q.push(")");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get::<i64, _>(0)? as u64)).collect()
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, RepoError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // IMMEDIATE: take the write lock first, so the key lookup and the
        // counter update see the same state (a deferred transaction could
        // read, then fail to upgrade to a writer).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let keys: Vec<(u64, &str)> = batch.iter().map(|m| (m.sender_id, m.client_msg_id.as_str())).collect();
        let existing = lookup_client_ids(&mut tx, &keys).await?;
        let plan = plan_append(batch, &existing);
        let mut last = Vec::with_capacity(plan.counts.len());
        for (cid, n) in &plan.counts {
            let v: i64 = sqlx::query_scalar(
                "INSERT INTO conversation_seqs (conversation_id, last_seq) VALUES (?, ?) \
                 ON CONFLICT (conversation_id) DO UPDATE SET last_seq = last_seq + excluded.last_seq \
                 RETURNING last_seq",
            )
            .bind(cid)
            .bind(*n as i64)
            .fetch_one(&mut *tx)
            .await?;
            last.push((cid.clone(), v as u64));
        }
        let (rows, out) = plan.assign(batch, &last)?;
        // SQLite caps bound parameters per statement; 8 columns x 100 rows stays well under it.
        for chunk in rows.chunks(100) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!("INSERT INTO messages ({MESSAGE_COLUMNS}) "));
            q.push_values(chunk, |mut b, m| {
                b.push_bind(m.msg_id as i64)
                    .push_bind(&m.conversation_id)
                    .push_bind(m.seq as i64)
                    .push_bind(m.sender_id as i64)
                    .push_bind(&m.client_msg_id)
                    .push_bind(&m.content_type)
                    .push_bind(&m.content)
                    .push_bind(m.created_at);
            });
            q.build().execute(&mut *tx).await.map_err(|e| {
                if is_unique_violation(&e) {
                    RepoError::Conflict
                } else {
                    e.into()
                }
            })?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn messages_by_client_ids(&self, keys: &[(u64, String)]) -> Result<Vec<StoredMessage>, RepoError> {
        let keys: Vec<(u64, &str)> = keys.iter().map(|(u, c)| (*u, c.as_str())).collect();
        let mut conn = self.pool.acquire().await?;
        lookup_client_ids(&mut conn, &keys).await
    }

    async fn max_seq(&self, conversation_id: &str) -> Result<u64, RepoError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM conversation_seqs WHERE conversation_id = ?")
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    async fn messages_after(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, RepoError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
        ))
        .bind(conversation_id)
        .bind(after_seq.min(i64::MAX as u64) as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| message_from_row(r).map_err(Into::into)).collect()
    }

    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<(), RepoError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("INSERT INTO chat_groups ({GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?)"))
            .bind(group.id as i64)
            .bind(&group.name)
            .bind(group.owner_id as i64)
            .bind(group.created_at)
            .bind(group.history_visible_to_new_members)
            .execute(&mut *tx)
            .await?;
        // The initial members join at 0: they read the group from its start.
        for chunk in members.chunks(MEMBER_ROWS_MAX) {
            member_insert("INSERT", group.id, 0, chunk).build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn group_by_id(&self, group_id: u64) -> Result<Option<Group>, RepoError> {
        let row = sqlx::query(&format!("SELECT {GROUP_COLUMNS} FROM chat_groups WHERE id = ?"))
            .bind(group_id as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(group_from_row).transpose()?)
    }

    async fn groups_of_user(&self, user_id: u64) -> Result<Vec<Group>, RepoError> {
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.owner_id, g.created_at, g.history_visible_to_new_members FROM group_members m \
             JOIN chat_groups g ON g.id = m.group_id WHERE m.user_id = ?",
        )
        .bind(user_id as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut groups = rows.iter().map(group_from_row).collect::<Result<Vec<_>, _>>()?;
        // Ids above 2^63 are negative as stored: order as u64 here, not in SQL.
        groups.sort_unstable_by_key(|g| g.id);
        Ok(groups)
    }

    async fn group_members(&self, group_id: u64) -> Result<Vec<GroupMember>, RepoError> {
        let rows = sqlx::query(&format!("SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ?"))
            .bind(group_id as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut members = rows.iter().map(member_from_row).collect::<Result<Vec<_>, _>>()?;
        members.sort_unstable_by_key(|m| m.user_id);
        Ok(members)
    }

    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<GroupMember>, RepoError> {
        let row =
            sqlx::query(&format!("SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ? AND user_id = ?"))
                .bind(group_id as i64)
                .bind(user_id as i64)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.as_ref().map(member_from_row).transpose()?)
    }

    async fn add_group_members(&self, group_id: u64, members: &[GroupMember]) -> Result<Vec<u64>, RepoError> {
        // IMMEDIATE: take the write lock before reading, so the existence
        // check holds until commit and no read-to-write upgrade can fail busy.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let exists = sqlx::query("SELECT 1 FROM chat_groups WHERE id = ?")
            .bind(group_id as i64)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(RepoError::GroupNotFound);
        }
        // The new members join at the conversation's last seq: under the
        // write lock no append can move it before commit.
        let join_seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM conversation_seqs WHERE conversation_id = ?")
                .bind(group_conversation_id(group_id))
                .fetch_optional(&mut *tx)
                .await?;
        let join_seq = join_seq.unwrap_or(0) as u64;
        // OR IGNORE skips users already in the group (and repeats within
        // `members`, first one wins); RETURNING yields only rows inserted.
        let mut added = Vec::new();
        for chunk in members.chunks(MEMBER_ROWS_MAX) {
            let mut q = member_insert("INSERT OR IGNORE", group_id, join_seq, chunk);
            q.push(" RETURNING user_id");
            for r in q.build().fetch_all(&mut *tx).await? {
                added.push(r.try_get::<i64, _>(0)? as u64);
            }
        }
        tx.commit().await?;
        added.sort_unstable();
        Ok(added)
    }

    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> Result<bool, RepoError> {
        let done = sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(group_id as i64)
            .bind(user_id as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_group_member_role(&self, group_id: u64, user_id: u64, role: GroupRole) -> Result<bool, RepoError> {
        // SQLite counts matched rows, so an unchanged role still reports true.
        let done = sqlx::query("UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?")
            .bind(role.as_str())
            .bind(group_id as i64)
            .bind(user_id as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_group(&self, group_id: u64) -> Result<bool, RepoError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM chat_groups WHERE id = ?").bind(group_id as i64).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = ?").bind(group_id as i64).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    // privacy
    async fn shares_conversation(&self, a: u64, b: u64) -> Result<bool, RepoError> {
        if a == b {
            return Ok(true);
        }
        let hit = sqlx::query(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM conversation_seqs WHERE conversation_id = ?) \
             OR EXISTS (SELECT 1 FROM group_members x JOIN group_members y \
                        ON y.group_id = x.group_id AND y.user_id = ? WHERE x.user_id = ?)",
        )
        .bind(single_conversation_id(a, b))
        .bind(b as i64)
        .bind(a as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(hit.is_some())
    }

    async fn group_read_floor(&self, group_id: u64, user_id: u64) -> Result<Option<u64>, RepoError> {
        let floor: Option<i64> = sqlx::query_scalar(
            "SELECT CASE WHEN g.history_visible_to_new_members THEN 0 ELSE m.join_seq END \
             FROM group_members m JOIN chat_groups g ON g.id = m.group_id \
             WHERE m.group_id = ? AND m.user_id = ?",
        )
        .bind(group_id as i64)
        .bind(user_id as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(floor.map(|f| f as u64))
    }

    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{store_conformance, Case};
    use std::sync::Arc;

    /// Each case on a fresh in-memory database.
    async fn run(case: Case) {
        let store = SqliteStore::open("sqlite::memory:", 1, false).await.expect("open in-memory sqlite");
        case(Arc::new(store)).await;
    }

    store_conformance!(run);
}
