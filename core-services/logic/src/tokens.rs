//! Session revocation and the per-user connection cap, decided here because
//! logic has the store. Gateways check an access token's signature and
//! expiry themselves (at the upgrade, on `auth` frames, in their sweep);
//! every connect reaches logic as a session event carrying the token's
//! version, and logic answers a connection it refuses with a push whose
//! `close` is set, on the same push path as messages (Kafka in cluster mode,
//! the in-process bus in embedded mode). See ARCHITECTURE.md, "Tokens".
//!
//! The token version is read through the session store
//! (`token_version:{uid}`, cache-aside over the database's
//! `user_token_versions`). A logout of all sessions writes the new version
//! into the cache itself (a reader filling a miss never overwrites), so a
//! version never goes back.

use crate::fanout;
use crate::logic::LogicError;
use crate::session::Session;
use crate::Logic;
use bytes::Bytes;
use gochat_common::auth::{CLOSE_CONNECTION_LIMIT, CLOSE_SESSION_REVOKED};
use gochat_proto::bus::CloseConn;
use std::time::Duration;
use tracing::{info, warn};

/// How long a user's token version stays cached in the session store.
pub const TOKEN_VERSION_CACHE_TTL: Duration = Duration::from_secs(3600);

/// WebSocket policy-violation close code.
const POLICY_CLOSE: u32 = 1008;

impl Logic {
    /// The user's current token version: access tokens carrying an older
    /// one are revoked.
    pub async fn token_version(&self, user_id: u64) -> Result<u64, LogicError> {
        match self.sessions.cached_token_version(user_id).await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => warn!(user_id, error = %e, "token version cache unavailable; reading the store"),
        }
        let v = self.store.token_version(user_id).await?;
        if let Err(e) = self.sessions.cache_token_version(user_id, v, TOKEN_VERSION_CACHE_TTL, false).await {
            warn!(user_id, error = %e, "token version not cached");
        }
        Ok(v)
    }

    /// Logout of all sessions: revoke every refresh token, bump the token
    /// version (older access tokens are refused from now on) and close every
    /// live WebSocket of the user. Returns the new version.
    pub async fn revoke_all_sessions(&self, user_id: u64) -> Result<u64, LogicError> {
        let version = self.store.revoke_all_sessions(user_id).await?;
        // Must land: a stale cached version would keep old tokens valid.
        self.sessions.cache_token_version(user_id, version, TOKEN_VERSION_CACHE_TTL, true).await?;
        // After the bump: a connect registered from here on sees the new
        // version (on_connect registers first, then reads the version).
        let live: Vec<Session> = self.sessions.sessions(&[user_id]).await?.into_iter().map(|(_, s)| s).collect();
        self.drop_sessions(user_id, &live, CLOSE_SESSION_REVOKED).await?;
        info!(user_id, version, closed = live.len(), "all sessions revoked");
        Ok(version)
    }

    /// A connection was registered: close it when its token's version is
    /// revoked, and close the user's oldest connections beyond
    /// `logic.max_connections_per_user`.
    pub(crate) async fn on_connect(
        &self,
        user_id: u64,
        session: &Session,
        token_version: u64,
    ) -> Result<(), LogicError> {
        if token_version < self.token_version(user_id).await? {
            self.metrics.revoked_connects.inc();
            return self.drop_sessions(user_id, std::slice::from_ref(session), CLOSE_SESSION_REVOKED).await;
        }
        let cap = self.config().max_connections_per_user;
        if cap == 0 {
            return Ok(());
        }
        // Oldest first (both session stores keep connect order).
        let mut live: Vec<Session> = self.sessions.sessions(&[user_id]).await?.into_iter().map(|(_, s)| s).collect();
        if live.len() <= cap {
            return Ok(());
        }
        let excess: Vec<Session> = live.drain(..live.len() - cap).collect();
        self.metrics.connection_cap_closes.add(excess.len() as u64);
        info!(user_id, cap, closing = excess.len(), "per-user connection cap reached; closing the oldest");
        self.drop_sessions(user_id, &excess, CLOSE_CONNECTION_LIMIT).await
    }

    /// Forget these sessions now (so they no longer count or get pushes) and
    /// ask their gateways to close them with 1008 and `reason`. Their
    /// disconnect events arrive later and find nothing to remove.
    async fn drop_sessions(&self, user_id: u64, sessions: &[Session], reason: &str) -> Result<(), LogicError> {
        for s in sessions {
            self.sessions.remove_session(user_id, s).await?;
        }
        // One close request per (gateway, shard), on the ordinary push path.
        let mut out = Vec::new();
        let max = self.task_config().max_push_recipients;
        fanout::plan(&Bytes::new(), sessions.iter().map(|s| (user_id, s)), None, max, &mut out);
        let close = CloseConn { code: POLICY_CLOSE, reason: reason.to_owned() };
        for o in &mut out {
            o.close = Some(close.clone());
        }
        // A close that cannot be produced is counted (push_failures): the
        // session is already forgotten, the socket lives until its token expires.
        self.deliver(out).await;
        Ok(())
    }
}
