//! The token lifecycle's half of the store: refresh tokens (stored as the
//! SHA-256 hex of the opaque string the client holds, never the string
//! itself), grouped in families (every token descended from one login), and
//! per-user token versions (carried in access tokens, bumped to revoke them
//! all). [`TokenStore`] is a supertrait of [`crate::Store`], so every store
//! (SQLite, MySQL, the gRPC client) implements it.

use crate::RepoError;
use async_trait::async_trait;

/// A refresh token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// SHA-256 of the token string, lowercase hex (64 characters).
    pub token_hash: String,
    pub user_id: u64,
    /// Shared by every token descended from one login.
    pub family_id: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// What presenting a refresh token for rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// It was live: it is now used, and its successor is stored in its family.
    Rotated { user_id: u64, family_id: u64 },
    /// It had been used already: its whole family is now revoked.
    Reused { user_id: u64, family_id: u64 },
    /// Its family was revoked earlier (logout, reuse).
    Revoked { user_id: u64 },
    /// Past its expiry (and unused).
    Expired { user_id: u64 },
    /// No such token.
    Unknown,
}

#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Store a new refresh token (a login starts a family with it). Expired
    /// tokens of the same user are deleted on the way.
    async fn create_refresh_token(&self, token: &RefreshToken) -> Result<(), RepoError>;
    /// Rotate atomically: when `presented_hash` is live it becomes used and
    /// `next_hash` (expiring at `next_expires_at`) joins its family; when it
    /// was used before, the family is revoked (reuse detection). At most one
    /// of two concurrent rotations of one token succeeds; the other is a reuse.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<Rotation, RepoError>;
    /// Revoke the family of a token (logout of one session); the token's
    /// user, or None when the token is unknown.
    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<Option<u64>, RepoError>;
    /// Revoke every refresh token of the user and bump its token version, in
    /// one transaction (logout of all sessions); returns the new version.
    async fn revoke_all_sessions(&self, user_id: u64) -> Result<u64, RepoError>;
    /// The user's token version (0 until the first logout of all sessions).
    async fn token_version(&self, user_id: u64) -> Result<u64, RepoError>;
}

/// Classify a token that the conditional "mark used" did not match.
fn classify(user_id: u64, family_id: u64, used: bool, revoked: bool) -> Rotation {
    if revoked {
        Rotation::Revoked { user_id }
    } else if used {
        Rotation::Reused { user_id, family_id }
    } else {
        Rotation::Expired { user_id }
    }
}

mod sqlite_impl {
    use super::*;
    use crate::sqlite::SqliteStore;
    use sqlx::Row;

    #[async_trait]
    impl TokenStore for SqliteStore {
        async fn create_refresh_token(&self, t: &RefreshToken) -> Result<(), RepoError> {
            let mut tx = self.pool().begin().await?;
            sqlx::query("DELETE FROM refresh_tokens WHERE user_id = ? AND expires_at < ?")
                .bind(t.user_id as i64)
                .bind(t.created_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, user_id, family_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&t.token_hash)
            .bind(t.user_id as i64)
            .bind(t.family_id as i64)
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }

        async fn rotate_refresh_token(
            &self,
            presented: &str,
            next: &str,
            next_expires_at: i64,
            now: i64,
        ) -> Result<Rotation, RepoError> {
            let mut tx = self.pool().begin().await?;
            let marked = sqlx::query(
                "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND revoked = 0 AND expires_at > ?",
            )
            .bind(now)
            .bind(presented)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let Some(row) =
                sqlx::query("SELECT user_id, family_id, used_at, revoked FROM refresh_tokens WHERE token_hash = ?")
                    .bind(presented)
                    .fetch_optional(&mut *tx)
                    .await?
            else {
                return Ok(Rotation::Unknown);
            };
            let user_id = row.try_get::<i64, _>("user_id")? as u64;
            let family_id = row.try_get::<i64, _>("family_id")? as u64;
            let outcome = if marked == 1 {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, user_id, family_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(next)
                .bind(user_id as i64)
                .bind(family_id as i64)
                .bind(now)
                .bind(next_expires_at)
                .execute(&mut *tx)
                .await?;
                Rotation::Rotated { user_id, family_id }
            } else {
                let used = row.try_get::<Option<i64>, _>("used_at")?.is_some();
                let outcome = classify(user_id, family_id, used, row.try_get::<i64, _>("revoked")? != 0);
                if let Rotation::Reused { .. } = outcome {
                    sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?")
                        .bind(family_id as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                outcome
            };
            tx.commit().await?;
            Ok(outcome)
        }

        async fn revoke_refresh_family(&self, token_hash: &str) -> Result<Option<u64>, RepoError> {
            let mut tx = self.pool().begin().await?;
            let Some(row) = sqlx::query("SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = ?")
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?")
                .bind(row.try_get::<i64, _>("family_id")?)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(row.try_get::<i64, _>("user_id")? as u64))
        }

        async fn revoke_all_sessions(&self, user_id: u64) -> Result<u64, RepoError> {
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ? AND revoked = 0")
                .bind(user_id as i64)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO user_token_versions (user_id, version) VALUES (?, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET version = version + 1",
            )
            .bind(user_id as i64)
            .execute(&mut *tx)
            .await?;
            let v: i64 = sqlx::query_scalar("SELECT version FROM user_token_versions WHERE user_id = ?")
                .bind(user_id as i64)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(v as u64)
        }

        async fn token_version(&self, user_id: u64) -> Result<u64, RepoError> {
            let v: Option<i64> = sqlx::query_scalar("SELECT version FROM user_token_versions WHERE user_id = ?")
                .bind(user_id as i64)
                .fetch_optional(self.pool())
                .await?;
            Ok(v.unwrap_or(0) as u64)
        }
    }
}

mod mysql_impl {
    use super::*;
    use crate::mysql::MySqlStore;
    use sqlx::Row;

    /// InnoDB error 1213: the transaction was chosen as a deadlock victim
    /// and rolled back; running it again is safe.
    fn is_deadlock(e: &RepoError) -> bool {
        matches!(e, RepoError::Database(sqlx::Error::Database(d)) if d.code().as_deref() == Some("40001"))
    }

    /// Run `op` again (up to 3 times) when InnoDB rolled it back for a deadlock
    /// (the writes on the family and user indexes take next-key locks).
    async fn retrying<T, F, Fut>(mut op: F) -> Result<T, RepoError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RepoError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if is_deadlock(&e) && attempt < 3 => {
                    attempt += 1;
                    tracing::debug!(attempt, "token transaction deadlocked; retrying");
                }
                other => return other,
            }
        }
    }

    #[async_trait]
    impl TokenStore for MySqlStore {
        async fn create_refresh_token(&self, t: &RefreshToken) -> Result<(), RepoError> {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, user_id, family_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&t.token_hash)
            .bind(t.user_id)
            .bind(t.family_id)
            .bind(t.created_at)
            .bind(t.expires_at)
            .execute(self.pool())
            .await?;
            // Best effort, outside any transaction and by primary key only: a
            // range DELETE on the user index would take gap locks that
            // deadlock with concurrent logins of neighbouring users.
            let expired: Vec<String> = sqlx::query_scalar(
                "SELECT token_hash FROM refresh_tokens WHERE user_id = ? AND expires_at < ? LIMIT 100",
            )
            .bind(t.user_id)
            .bind(t.created_at)
            .fetch_all(self.pool())
            .await?;
            for hash in expired {
                if let Err(e) = sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = ?")
                    .bind(&hash)
                    .execute(self.pool())
                    .await
                {
                    tracing::debug!(error = %e, "expired refresh token not deleted");
                }
            }
            Ok(())
        }

        async fn rotate_refresh_token(
            &self,
            presented: &str,
            next: &str,
            next_expires_at: i64,
            now: i64,
        ) -> Result<Rotation, RepoError> {
            retrying(|| self.rotate_once(presented, next, next_expires_at, now)).await
        }

        async fn revoke_refresh_family(&self, token_hash: &str) -> Result<Option<u64>, RepoError> {
            retrying(|| self.revoke_family_once(token_hash)).await
        }

        async fn revoke_all_sessions(&self, user_id: u64) -> Result<u64, RepoError> {
            retrying(|| self.revoke_all_once(user_id)).await
        }

        async fn token_version(&self, user_id: u64) -> Result<u64, RepoError> {
            let v: Option<u64> = sqlx::query_scalar("SELECT version FROM user_token_versions WHERE user_id = ?")
                .bind(user_id)
                .fetch_optional(self.pool())
                .await?;
            Ok(v.unwrap_or(0))
        }
    }

    impl MySqlStore {
        async fn rotate_once(
            &self,
            presented: &str,
            next: &str,
            next_expires_at: i64,
            now: i64,
        ) -> Result<Rotation, RepoError> {
            let mut tx = self.pool().begin().await?;
            // Locks the row: a concurrent rotation of the same token waits
            // here and then sees it used.
            let marked = sqlx::query(
                "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND revoked = 0 AND expires_at > ?",
            )
            .bind(now)
            .bind(presented)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let Some(row) = sqlx::query(
                "SELECT user_id, family_id, used_at, revoked FROM refresh_tokens WHERE token_hash = ? FOR UPDATE",
            )
            .bind(presented)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(Rotation::Unknown);
            };
            let user_id: u64 = row.try_get("user_id")?;
            let family_id: u64 = row.try_get("family_id")?;
            let outcome = if marked == 1 {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, user_id, family_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(next)
                .bind(user_id)
                .bind(family_id)
                .bind(now)
                .bind(next_expires_at)
                .execute(&mut *tx)
                .await?;
                Rotation::Rotated { user_id, family_id }
            } else {
                let used = row.try_get::<Option<i64>, _>("used_at")?.is_some();
                let outcome = classify(user_id, family_id, used, row.try_get::<bool, _>("revoked")?);
                if let Rotation::Reused { .. } = outcome {
                    sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?")
                        .bind(family_id)
                        .execute(&mut *tx)
                        .await?;
                }
                outcome
            };
            tx.commit().await?;
            Ok(outcome)
        }

        async fn revoke_family_once(&self, token_hash: &str) -> Result<Option<u64>, RepoError> {
            let mut tx = self.pool().begin().await?;
            let Some(row) = sqlx::query("SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = ?")
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(None);
            };
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?")
                .bind(row.try_get::<u64, _>("family_id")?)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(row.try_get("user_id")?))
        }

        async fn revoke_all_once(&self, user_id: u64) -> Result<u64, RepoError> {
            let mut tx = self.pool().begin().await?;
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ? AND revoked = 0")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO user_token_versions (user_id, version) VALUES (?, 1) \
                 ON DUPLICATE KEY UPDATE version = version + 1",
            )
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            let v: u64 = sqlx::query_scalar("SELECT version FROM user_token_versions WHERE user_id = ?")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(v)
        }
    }
}
