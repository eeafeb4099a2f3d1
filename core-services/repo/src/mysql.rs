//! MySQL store for cluster mode (MariaDB 10.11+ or MySQL 8): a sqlx
//! [`MySqlPool`], migrations from migrations/mysql applied by
//! [`MySqlStore::migrate`] (`gochat migrate`), not at connect.
//!
//! Ids are `BIGINT UNSIGNED` and bind as `u64`. Keys compared byte for byte
//! (`conversation_id`, `client_msg_id`) are VARBINARY, and other text columns
//! with a `_bin` collation carry the protocol's BINARY flag too, which sqlx 0.8
//! refuses to decode as `String`: strings are read unchecked (still validated
//! as UTF-8).

use crate::{
    group_conversation_id, plan_append, single_conversation_id, Appended, Group, GroupMember, GroupRole, NewMessage,
    RepoError, Store, StoredMessage, User,
};
use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions, MySqlRow};
use sqlx::{ConnectOptions, Connection, Executor, MySql, MySqlPool, QueryBuilder, Row};
use std::collections::HashSet;
use std::str::FromStr;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/mysql");

/// Rows per multi-row INSERT (8 placeholders each; MySQL allows 65,535).
const INSERT_ROWS_MAX: usize = 1000;
/// Approximate payload per INSERT, well under the smallest common
/// `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL 8).
const INSERT_BYTES_MAX: usize = 4 << 20;
/// Keys per `messages_by_client_ids` / `existing_users` query.
const LOOKUP_KEYS_MAX: usize = 500;

#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// Connect a pool to the database named in `url`
    /// (`mysql://user:pass@host:port/db`). Fails if the server is unreachable;
    /// does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, RepoError> {
        let opts = MySqlConnectOptions::from_str(url)?.charset("utf8mb4");
        if opts.get_database().is_none() {
            return Err(no_database(url));
        }
        let pool = MySqlPoolOptions::new().max_connections(max_connections.max(1)).connect_with(opts).await?;
        Ok(Self { pool })
    }

    /// Apply pending migrations from migrations/mysql.
    pub async fn migrate(&self) -> Result<(), RepoError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Create the database named in `url` if it does not exist (utf8mb4,
    /// `utf8mb4_unicode_ci` default; the tables set their own collations).
    /// Connects through `information_schema`, which every account may use.
    pub async fn create_database_if_missing(url: &str) -> Result<(), RepoError> {
        let opts = MySqlConnectOptions::from_str(url)?;
        let name = opts.get_database().ok_or_else(|| no_database(url))?.to_owned();
        let mut conn = opts.database("information_schema").connect().await?;
        let sql = format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            quote_ident(&name)
        );
        let res = conn.execute(sql.as_str()).await;
        conn.close().await.ok();
        res?;
        Ok(())
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

fn no_database(url: &str) -> RepoError {
    let shown = url.split_once('@').map_or(url, |(_, host)| host);
    RepoError::Database(sqlx::Error::Configuration(format!("mysql url names no database: {shown}").into()))
}

/// Backtick-quote an identifier.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A text column. VARBINARY and `_bin` collations set the BINARY column
/// flag, so the checked `try_get::<String>` would refuse them; decoding still
/// checks UTF-8.
fn text(r: &MySqlRow, col: &str) -> Result<String, sqlx::Error> {
    r.try_get_unchecked::<String, _>(col)
}

fn user_from_row(r: &MySqlRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get("id")?,
        username: text(r, "username")?,
        password_hash: text(r, "password_hash")?,
        nickname: text(r, "nickname")?,
        avatar_url: text(r, "avatar_url")?,
        created_at: r.try_get("created_at")?,
    })
}

fn message_from_row(r: &MySqlRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        msg_id: r.try_get("id")?,
        conversation_id: text(r, "conversation_id")?,
        seq: r.try_get("seq")?,
        sender_id: r.try_get("sender_id")?,
        client_msg_id: text(r, "client_msg_id")?,
        content_type: text(r, "content_type")?,
        content: text(r, "content")?,
        created_at: r.try_get("created_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

const USER_COLUMNS: &str = "id, username, password_hash, nickname, avatar_url, created_at";
const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, sender_id, client_msg_id, content_type, content, created_at";
const GROUP_COLUMNS: &str = "id, name, owner_id, created_at, history_visible_to_new_members";
const MEMBER_COLUMNS: &str = "user_id, role, joined_at";

fn group_from_row(r: &MySqlRow) -> Result<Group, sqlx::Error> {
    Ok(Group {
        id: r.try_get("id")?,
        name: text(r, "name")?,
        owner_id: r.try_get("owner_id")?,
        created_at: r.try_get("created_at")?,
        history_visible_to_new_members: r.try_get("history_visible_to_new_members")?,
    })
}

fn member_from_row(r: &MySqlRow) -> Result<GroupMember, sqlx::Error> {
    let role = text(r, "role")?;
    Ok(GroupMember {
        user_id: r.try_get("user_id")?,
        role: GroupRole::parse(&role).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "role".into(),
            source: format!("unknown group role {role:?}").into(),
        })?,
        joined_at: r.try_get("joined_at")?,
    })
}

/// Insert memberships of `group_id`, each joining at `join_seq`, in
/// multi-row INSERTs of [`INSERT_ROWS_MAX`] rows (5 placeholders and a few
/// dozen bytes each).
async fn insert_members<'m>(
    tx: &mut sqlx::Transaction<'_, MySql>,
    group_id: u64,
    join_seq: u64,
    members: impl Iterator<Item = &'m GroupMember>,
) -> Result<(), sqlx::Error> {
    let members: Vec<&GroupMember> = members.collect();
    for chunk in members.chunks(INSERT_ROWS_MAX) {
        let mut q: QueryBuilder<MySql> =
            QueryBuilder::new(format!("INSERT INTO group_members (group_id, {MEMBER_COLUMNS}, join_seq) "));
        q.push_values(chunk, |mut b, m| {
            b.push_bind(group_id)
                .push_bind(m.user_id)
                .push_bind(m.role.as_str())
                .push_bind(m.joined_at)
                .push_bind(join_seq);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Split a batch into INSERT-sized runs (rows and bytes).
fn insert_chunks(batch: &[StoredMessage]) -> impl Iterator<Item = &[StoredMessage]> {
    let mut rest = batch;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < INSERT_ROWS_MAX {
            let m = &rest[n];
            bytes += m.content.len() + m.client_msg_id.len() + m.conversation_id.len() + 64;
            if n > 0 && bytes > INSERT_BYTES_MAX {
                break;
            }
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Rows stored under any of these (sender_id, client_msg_id), on one connection
/// (inside a transaction when the caller holds one).
async fn lookup_client_ids(conn: &mut MySqlConnection, keys: &[(u64, &str)]) -> Result<Vec<StoredMessage>, RepoError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(LOOKUP_KEYS_MAX) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE "));
        for (i, (sender, cmid)) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(sender_id = ").push_bind(*sender).push(" AND client_msg_id = ").push_bind(*cmid).push(")");
        }
        for r in &q.build().fetch_all(&mut *conn).await? {
            out.push(message_from_row(r)?);
        }
    }
    Ok(out)
}

#[async_trait]
impl Store for MySqlStore {
    async fn create_user(&self, u: &User) -> Result<(), RepoError> {
        sqlx::query(&format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"))
            .bind(u.id)
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
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?"))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>, RepoError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, RepoError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(LOOKUP_KEYS_MAX) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new("SELECT id FROM users WHERE id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(*id);
            }
            q.push(")");
            for r in q.build().fetch_all(&self.pool).await? {
                out.push(r.try_get::<u64, _>(0)?);
            }
        }
        Ok(out)
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, RepoError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // On any error the transaction is dropped, which rolls it back:
        // neither rows nor counters move.
        let mut tx = self.pool.begin().await?;
        let keys: Vec<(u64, &str)> = batch.iter().map(|m| (m.sender_id, m.client_msg_id.as_str())).collect();
        let existing = lookup_client_ids(&mut tx, &keys).await?;
        let plan = plan_append(batch, &existing);
        let mut last = Vec::with_capacity(plan.counts.len());
        for counts in plan.counts.chunks(LOOKUP_KEYS_MAX) {
            // One statement advances (and row-locks, in conversation order)
            // every counter of the chunk; the second reads them back.
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("INSERT INTO conversation_seqs (conversation_id, last_seq) ");
            q.push_values(counts, |mut b, (cid, n)| {
                b.push_bind(cid.as_str()).push_bind(*n);
            });
            q.push(" ON DUPLICATE KEY UPDATE last_seq = last_seq + VALUES(last_seq)");
            q.build().execute(&mut *tx).await?;
            let mut q: QueryBuilder<MySql> =
                QueryBuilder::new("SELECT conversation_id, last_seq FROM conversation_seqs WHERE conversation_id IN (");
            let mut sep = q.separated(", ");
            for (cid, _) in counts {
                sep.push_bind(cid.as_str());
            }
            q.push(")");
            for r in q.build().fetch_all(&mut *tx).await? {
                last.push((text(&r, "conversation_id")?, r.try_get::<u64, _>("last_seq")?));
            }
        }
        let (rows, out) = plan.assign(batch, &last)?;
        for chunk in insert_chunks(&rows) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(format!("INSERT INTO messages ({MESSAGE_COLUMNS}) "));
            q.push_values(chunk, |mut b, m| {
                b.push_bind(m.msg_id)
                    .push_bind(&m.conversation_id)
                    .push_bind(m.seq)
                    .push_bind(m.sender_id)
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
        let v: Option<u64> = sqlx::query_scalar("SELECT last_seq FROM conversation_seqs WHERE conversation_id = ?")
            .bind(conversation_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn messages_after(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, RepoError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
        ))
        .bind(conversation_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| message_from_row(r).map_err(Into::into)).collect()
    }

    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<(), RepoError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("INSERT INTO chat_groups ({GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?)"))
            .bind(group.id)
            .bind(&group.name)
            .bind(group.owner_id)
            .bind(group.created_at)
            .bind(group.history_visible_to_new_members)
            .execute(&mut *tx)
            .await?;
        // The initial members join at 0: they read the group from its start.
        insert_members(&mut tx, group.id, 0, members.iter()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn group_by_id(&self, group_id: u64) -> Result<Option<Group>, RepoError> {
        let row = sqlx::query(&format!("SELECT {GROUP_COLUMNS} FROM chat_groups WHERE id = ?"))
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(group_from_row).transpose()?)
    }

    async fn groups_of_user(&self, user_id: u64) -> Result<Vec<Group>, RepoError> {
        let rows = sqlx::query(
            "SELECT g.id, g.name, g.owner_id, g.created_at, g.history_visible_to_new_members FROM group_members m \
             JOIN chat_groups g ON g.id = m.group_id WHERE m.user_id = ? ORDER BY m.group_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| group_from_row(r).map_err(Into::into)).collect()
    }

    async fn group_members(&self, group_id: u64) -> Result<Vec<GroupMember>, RepoError> {
        let rows =
            sqlx::query(&format!("SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ? ORDER BY user_id"))
                .bind(group_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| member_from_row(r).map_err(Into::into)).collect()
    }

    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<GroupMember>, RepoError> {
        let row =
            sqlx::query(&format!("SELECT {MEMBER_COLUMNS} FROM group_members WHERE group_id = ? AND user_id = ?"))
                .bind(group_id)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.as_ref().map(member_from_row).transpose()?)
    }

    async fn add_group_members(&self, group_id: u64, members: &[GroupMember]) -> Result<Vec<u64>, RepoError> {
        // MySQL 8 has no INSERT ... RETURNING and INSERT IGNORE does not say
        // which rows it skipped, so: lock the group row (serializing every
        // add to this group, and holding off delete_group), read which
        // candidates are members with a locking read (latest committed rows,
        // kept until commit), insert the rest. Every writer of a group's
        // memberships locks the group row before member rows: no deadlock.
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT id FROM chat_groups WHERE id = ? FOR UPDATE")
            .bind(group_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(RepoError::GroupNotFound);
        }
        // Repeats within `members`: the first one wins.
        let mut seen = HashSet::with_capacity(members.len());
        let candidates: Vec<&GroupMember> = members.iter().filter(|m| seen.insert(m.user_id)).collect();
        let mut existing = HashSet::new();
        for chunk in candidates.chunks(LOOKUP_KEYS_MAX) {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new("SELECT user_id FROM group_members WHERE group_id = ");
            q.push_bind(group_id).push(" AND user_id IN (");
            let mut sep = q.separated(", ");
            for m in chunk {
                sep.push_bind(m.user_id);
            }
            q.push(") FOR UPDATE");
            for r in q.build().fetch_all(&mut *tx).await? {
                existing.insert(r.try_get::<u64, _>(0)?);
            }
        }
        let fresh: Vec<&GroupMember> = candidates.into_iter().filter(|m| !existing.contains(&m.user_id)).collect();
        // The new members join at the conversation's last committed seq (a
        // plain read: an append in flight lands after the join, which is
        // what a member added now should see).
        let join_seq: Option<u64> =
            sqlx::query_scalar("SELECT last_seq FROM conversation_seqs WHERE conversation_id = ?")
                .bind(group_conversation_id(group_id))
                .fetch_optional(&mut *tx)
                .await?;
        insert_members(&mut tx, group_id, join_seq.unwrap_or(0), fresh.iter().copied()).await?;
        tx.commit().await?;
        let mut added: Vec<u64> = fresh.iter().map(|m| m.user_id).collect();
        added.sort_unstable();
        Ok(added)
    }

    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> Result<bool, RepoError> {
        let done = sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(group_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_group_member_role(&self, group_id: u64, user_id: u64, role: GroupRole) -> Result<bool, RepoError> {
        // sqlx connects with CLIENT_FOUND_ROWS: rows_affected counts matched
        // rows, so an unchanged role still reports true.
        let done = sqlx::query("UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?")
            .bind(role.as_str())
            .bind(group_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_group(&self, group_id: u64) -> Result<bool, RepoError> {
        // The group row first, like add_group_members locks it first.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM chat_groups WHERE id = ?").bind(group_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = ?").bind(group_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    // privacy
    async fn shares_conversation(&self, a: u64, b: u64) -> Result<bool, RepoError> {
        if a == b {
            return Ok(true);
        }
        let hit = sqlx::query(
            "SELECT 1 FROM DUAL WHERE EXISTS (SELECT 1 FROM conversation_seqs WHERE conversation_id = ?) \
             OR EXISTS (SELECT 1 FROM group_members x JOIN group_members y \
                        ON y.group_id = x.group_id AND y.user_id = ? WHERE x.user_id = ?)",
        )
        .bind(single_conversation_id(a, b))
        .bind(b)
        .bind(a)
        .fetch_optional(&self.pool)
        .await?;
        Ok(hit.is_some())
    }

    async fn group_read_floor(&self, group_id: u64, user_id: u64) -> Result<Option<u64>, RepoError> {
        let row = sqlx::query(
            "SELECT g.history_visible_to_new_members, m.join_seq \
             FROM group_members m JOIN chat_groups g ON g.id = m.group_id \
             WHERE m.group_id = ? AND m.user_id = ?",
        )
        .bind(group_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let visible: bool = r.try_get(0)?;
        Ok(Some(if visible { 0 } else { r.try_get::<u64, _>(1)? }))
    }

    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against a real server: `GOCHAT_TEST_MYSQL_URL` (default
    //! `mysql://root@127.0.0.1:13306`, see deploy/test-services.sh). Each test
    //! creates, migrates and drops its own database. An unreachable server
    //! fails the test; it is never skipped.

    use super::*;
    use crate::conformance::{msg, store_conformance, user, Case};
    use sqlx::migrate::MigrateDatabase;
    use std::future::Future;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    const DEFAULT_URL: &str = "mysql://root@127.0.0.1:13306";

    fn server_url() -> String {
        std::env::var("GOCHAT_TEST_MYSQL_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_URL.into())
    }

    /// `base` with its database path replaced by `db`, query string kept.
    fn with_database(base: &str, db: &str) -> String {
        let (head, query) = base.split_once('?').map_or((base, None), |(h, q)| (h, Some(q)));
        let auth_start = head.find("://").map_or(0, |i| i + 3);
        let path_start = head[auth_start..].find('/').map_or(head.len(), |i| auth_start + i);
        let mut url = format!("{}/{db}", &head[..path_start]);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    fn unique_db_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("gochat_t_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Run `f` on a fresh, migrated database, then drop the database whether
    /// `f` passed or panicked (the panic is re-raised).
    async fn with_db<F, Fut>(f: F)
    where
        F: FnOnce(MySqlStore, String) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let base = server_url();
        let url = with_database(&base, &unique_db_name());
        if let Err(e) = MySqlStore::create_database_if_missing(&url).await {
            panic!(
                "MySQL test server at {base} is unreachable or refused CREATE DATABASE: {e}\n\
                 start it with `deploy/test-services.sh up` or point GOCHAT_TEST_MYSQL_URL at one"
            );
        }
        let store = MySqlStore::connect(&url, 4).await.expect("connect to the test database");
        let (s, u) = (store.clone(), url.clone());
        let outcome = tokio::spawn(async move {
            s.migrate().await.expect("migrate the test database");
            f(s, u).await
        })
        .await;
        store.pool().close().await;
        let dropped = MySql::drop_database(&url).await;
        match outcome {
            Ok(()) => dropped.expect("drop the test database"),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("test task failed: {e}"),
        }
    }

    async fn run(case: Case) {
        with_db(|s, _| case(Arc::new(s))).await;
    }

    store_conformance!(run);

    #[test]
    fn database_urls() {
        assert_eq!(with_database("mysql://root@h:1", "d"), "mysql://root@h:1/d");
        assert_eq!(with_database("mysql://u:p@h:1/", "d"), "mysql://u:p@h:1/d");
        assert_eq!(with_database("mysql://u:p@h:1/old?ssl-mode=disabled", "d"), "mysql://u:p@h:1/d?ssl-mode=disabled");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn batches_split_by_rows_and_bytes() {
        let sizes = |b: &[StoredMessage]| insert_chunks(b).map(<[_]>::len).collect::<Vec<_>>();
        assert!(sizes(&[]).is_empty());
        let small: Vec<_> = (1..=2500).map(|q| msg(q, "s_1_2", q, 1, &q.to_string())).collect();
        assert_eq!(sizes(&small), vec![1000, 1000, 500]);
        let mut big: Vec<_> = (1..=5).map(|q| msg(q, "s_1_2", q, 1, &q.to_string())).collect();
        big[0].content = "x".repeat(3 << 20);
        big[1].content = "x".repeat(3 << 20);
        // A row alone may exceed the byte budget; it still goes, alone.
        big[2].content = "y".repeat(5 << 20);
        assert_eq!(sizes(&big), vec![1, 1, 1, 2]);
    }

    #[tokio::test]
    async fn unreachable_server_is_an_error() {
        let r = MySqlStore::create_database_if_missing("mysql://root@127.0.0.1:1/gochat_nowhere").await;
        assert!(matches!(r, Err(RepoError::Database(_))), "{r:?}");
        let r = MySqlStore::create_database_if_missing(&with_database(&server_url(), "")).await;
        assert!(r.unwrap_err().to_string().contains("names no database"));
    }

    #[tokio::test]
    async fn setup_is_idempotent_and_schema_is_as_declared() {
        with_db(|s, url| async move {
            MySqlStore::create_database_if_missing(&url).await.unwrap();
            s.migrate().await.unwrap();
            let again = MySqlStore::connect(&url, 1).await.unwrap();
            again.migrate().await.unwrap();
            again.pool().close().await;

            let cols: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT CAST(CONCAT(TABLE_NAME, '.', COLUMN_NAME) AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
                 CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME IN ('users', 'messages', 'chat_groups', 'group_members') ORDER BY 1",
            )
            .fetch_all(s.pool())
            .await
            .unwrap();
            let find = |name: &str| cols.iter().find(|c| c.0 == name).unwrap_or_else(|| panic!("{name} in {cols:?}"));
            assert_eq!(find("users.id").1, "bigint(20) unsigned");
            assert_eq!(find("users.username").2.as_deref(), Some("utf8mb4_unicode_ci"));
            assert_eq!(find("messages.seq").1, "bigint(20) unsigned");
            assert_eq!(find("messages.client_msg_id").1, "varbinary(64)");
            assert_eq!(find("messages.content").1, "mediumtext");
            assert_eq!(find("messages.content").2.as_deref(), Some("utf8mb4_bin"));
            assert_eq!(find("chat_groups.id").1, "bigint(20) unsigned");
            assert_eq!(find("chat_groups.name").1, "varchar(64)");
            assert_eq!(find("chat_groups.name").2.as_deref(), Some("utf8mb4_bin"));
            assert_eq!(find("group_members.user_id").1, "bigint(20) unsigned");
            assert_eq!(find("group_members.join_seq").1, "bigint(20) unsigned");
            assert_eq!(find("chat_groups.history_visible_to_new_members").1, "tinyint(1)");

            let engines: Vec<(String, String)> = sqlx::query_as(
                "SELECT CAST(ENGINE AS CHAR), CAST(TABLE_COLLATION AS CHAR) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME IN ('users', 'messages', 'chat_groups', 'group_members')",
            )
            .fetch_all(s.pool())
            .await
            .unwrap();
            assert_eq!(engines, vec![("InnoDB".into(), "utf8mb4_bin".into()); 4]);
        })
        .await;
    }

    #[tokio::test]
    async fn multi_statement_batches_stay_atomic() {
        with_db(|s, _| async move {
            // Three 3 MiB rows go in three INSERTs of one transaction.
            let mut batch: Vec<_> = (1..=3).map(|q| msg(q, "s_1_2", q, 1, &format!("big{q}"))).collect();
            for m in &mut batch {
                m.content = format!(r#"{{"text":"{}"}}"#, "😀".repeat(3 << 18));
            }
            // The last INSERT fails (message id 1 twice): nothing lands, the counter stays.
            let mut bad: Vec<NewMessage> = batch.iter().map(NewMessage::from).collect();
            bad.push(NewMessage::from(&msg(1, "s_1_2", 4, 2, "dup-id")));
            assert!(matches!(s.append_messages(&bad).await, Err(RepoError::Conflict)));
            assert_eq!(s.max_seq("s_1_2").await.unwrap(), 0);
            crate::conformance::append_expecting(&s, &batch).await;
            assert_eq!(s.messages_after("s_1_2", 0, 10).await.unwrap(), batch);
        })
        .await;
    }

    #[tokio::test]
    async fn concurrent_batches_on_distinct_conversations() {
        with_db(|s, _| async move {
            s.create_user(&user(1, "alice")).await.unwrap();
            let tasks: Vec<_> = (0..8u64)
                .map(|t| {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let cid = format!("s_1_{}", t + 2);
                        for b in 0..20u64 {
                            let batch: Vec<_> = (1..=10)
                                .map(|i| {
                                    let seq = b * 10 + i;
                                    msg(t * 1_000_000 + seq, &cid, seq, 1, &format!("t{t}-{seq}"))
                                })
                                .collect();
                            crate::conformance::append_expecting(&s, &batch).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            for t in 0..8u64 {
                assert_eq!(s.max_seq(&format!("s_1_{}", t + 2)).await.unwrap(), 200);
            }
        })
        .await;
    }
}
