//! Redis store for cluster mode: the [`SessionStore`] shared by every logic
//! process. Keys (each behind the configured prefix, "" in production):
//!
//! - `user_session:{uid}`: HASH, field `"{gateway_id}|{shard}|{conn_id}"` ->
//!   connected-at (unix ms);
//! - `gateway_sessions:{gateway_id}`: SET of `"{uid}|{shard}|{conn_id}"`, the
//!   reverse index that lets [`SessionStore::purge_gateway`] drop a restarted
//!   gateway's sessions; kept in step with the hashes by MULTI/EXEC;
//! - `msg_dedup:{uid}:{client_msg_id}`: `"{msg_id}|{seq}|{ts}|{conversation_id}"`,
//!   with a TTL;
//! - `token_version:{uid}`: the user's token version (a cache of the
//!   database's `user_token_versions`), with a TTL.
//!
//! One [`ConnectionManager`] (a multiplexed connection that reconnects by
//! itself) carries every request; every request is idempotent and retried
//! once when the connection was lost. (Seq counters live in the database, so
//! a Redis that lost its data costs live sessions and cached acks, never a
//! seq.)

use crate::session::{AckRecord, Session, SessionStore, SessionStoreError};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, RedisResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// Members of `gateway_sessions:{gw}` handled per SSCAN step / MULTI in a purge.
const PURGE_BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection attempts per (re)connect, with jittered exponential backoff capped below.
const CONNECT_RETRIES: usize = 3;
const RECONNECT_MAX_DELAY_MS: u64 = 1_000;

/// [`SessionStore`] on Redis. Cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct RedisSessionStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisSessionStore {
    /// Connect to `url` (`redis://[:password@]host:port[/db]`). Every key is
    /// prefixed with `key_prefix` ("" in production; tests isolate themselves
    /// with a unique one). Fails if Redis cannot be reached.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, SessionStoreError> {
        let client = redis::Client::open(url).map_err(|e| unavailable("invalid url", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(CONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY_MS);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(|e| unavailable("connect", e))?;
        Ok(Self { conn, prefix: key_prefix.into() })
    }

    fn session_key(&self, user_id: u64) -> String {
        format!("{}user_session:{user_id}", self.prefix)
    }

    fn gateway_key(&self, gateway_id: &str) -> String {
        format!("{}gateway_sessions:{gateway_id}", self.prefix)
    }

    fn dedup_key(&self, sender_id: u64, client_msg_id: &str) -> String {
        format!("{}msg_dedup:{sender_id}:{client_msg_id}", self.prefix)
    }

    fn members_key(&self, group_id: u64) -> String {
        format!("{}group_members:{group_id}", self.prefix)
    }

    fn claim_key(&self, key: &str) -> String {
        format!("{}task_done:{key}", self.prefix)
    }

    /// Run an idempotent request; if the connection was lost, run it once more
    /// (the manager is already reconnecting, the retry waits for it).
    async fn idempotent<T: FromRedisValue>(&self, op: &str, req: &impl Request) -> Result<T, SessionStoreError> {
        let mut conn = self.conn.clone();
        match req.run(&mut conn).await {
            Err(e) if connection_lost(&e) => {
                debug!(op, error = %e, "redis connection lost; retrying once");
                req.run(&mut conn).await.map_err(|e| unavailable(op, e))
            }
            res => res.map_err(|e| unavailable(op, e)),
        }
    }
}

/// A command or a pipeline, so both go through [`RedisSessionStore::idempotent`].
trait Request: Sync {
    fn run<T: FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl std::future::Future<Output = RedisResult<T>> + Send;
}

impl Request for redis::Cmd {
    fn run<T: FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl std::future::Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Request for redis::Pipeline {
    fn run<T: FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl std::future::Future<Output = RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn unavailable(op: &str, e: RedisError) -> SessionStoreError {
    SessionStoreError::Unavailable(format!("redis {op}: {e}"))
}

/// Hash field of a session in `user_session:{uid}`.
fn session_field(gateway_id: &str, shard: u32, conn_id: u64) -> String {
    format!("{gateway_id}|{shard}|{conn_id}")
}

/// Parsed from the right, so a gateway id may itself contain '|'.
fn parse_session_field(field: &str) -> Option<Session> {
    let mut parts = field.rsplitn(3, '|');
    let conn_id = parts.next()?.parse().ok()?;
    let shard = parts.next()?.parse().ok()?;
    let gateway_id = parts.next()?;
    Some(Session { gateway_id: gateway_id.into(), shard, conn_id })
}

/// Member of `gateway_sessions:{gw}`.
fn gateway_member(user_id: u64, shard: u32, conn_id: u64) -> String {
    format!("{user_id}|{shard}|{conn_id}")
}

fn parse_gateway_member(member: &str) -> Option<(u64, u32, u64)> {
    let mut parts = member.splitn(3, '|');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The conversation id goes last so it may contain anything.
/// Member ids as packed little-endian u64s: 8 bytes per member, no parsing.
fn encode_members(members: &[u64]) -> Vec<u8> {
    members.iter().flat_map(|m| m.to_le_bytes()).collect()
}

fn decode_members(raw: &[u8]) -> Option<Arc<[u64]>> {
    if !raw.len().is_multiple_of(8) {
        return None;
    }
    Some(raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect())
}

fn encode_ack(ack: &AckRecord) -> String {
    format!("{}|{}|{}|{}", ack.msg_id, ack.seq, ack.ts, ack.conversation_id)
}

fn decode_ack(s: &str) -> Option<AckRecord> {
    let mut parts = s.splitn(4, '|');
    Some(AckRecord {
        msg_id: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
        ts: parts.next()?.parse().ok()?,
        conversation_id: parts.next()?.to_owned(),
    })
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn add_session(&self, user_id: u64, session: Session) -> Result<(), SessionStoreError> {
        let mut pipe = redis::pipe();
        // HSETNX: a repeated connect event keeps the original connected-at.
        pipe.atomic()
            .cmd("HSETNX")
            .arg(self.session_key(user_id))
            .arg(session_field(&session.gateway_id, session.shard, session.conn_id))
            .arg(gochat_common::now_ms())
            .ignore()
            .cmd("SADD")
            .arg(self.gateway_key(&session.gateway_id))
            .arg(gateway_member(user_id, session.shard, session.conn_id))
            .ignore();
        self.idempotent("add_session", &pipe).await
    }

    async fn remove_session(&self, user_id: u64, session: &Session) -> Result<(), SessionStoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HDEL")
            .arg(self.session_key(user_id))
            .arg(session_field(&session.gateway_id, session.shard, session.conn_id))
            .ignore()
            .cmd("SREM")
            .arg(self.gateway_key(&session.gateway_id))
            .arg(gateway_member(user_id, session.shard, session.conn_id))
            .ignore();
        self.idempotent("remove_session", &pipe).await
    }

    async fn sessions(&self, user_ids: &[u64]) -> Result<Vec<(u64, Session)>, SessionStoreError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for uid in user_ids {
            pipe.cmd("HGETALL").arg(self.session_key(*uid));
        }
        let hashes: Vec<HashMap<String, String>> = self.idempotent("sessions", &pipe).await?;
        let mut out = Vec::new();
        for (uid, hash) in user_ids.iter().zip(hashes) {
            // Oldest connection first, like the in-memory store.
            let mut fields: Vec<(i64, String)> =
                hash.into_iter().map(|(field, at)| (at.parse().unwrap_or(0), field)).collect();
            fields.sort_unstable();
            for (_, field) in fields {
                match parse_session_field(&field) {
                    Some(s) => out.push((*uid, s)),
                    None => warn!(user_id = uid, field, "ignoring a malformed user_session field"),
                }
            }
        }
        Ok(out)
    }

    async fn purge_gateway(&self, gateway_id: &str, older_than_conn_id: u64) -> Result<u64, SessionStoreError> {
        let gw_key = self.gateway_key(gateway_id);
        let mut cursor = 0u64;
        let mut removed = 0u64;
        loop {
            let mut scan = redis::cmd("SSCAN");
            scan.arg(&gw_key).arg(cursor).arg("COUNT").arg(PURGE_BATCH);
            let (next, members): (u64, Vec<String>) = self.idempotent("purge_gateway", &scan).await?;
            // Only members seen and older than the new boot: sessions the
            // restarted gateway registers meanwhile stay.
            let members: Vec<String> = members
                .into_iter()
                .filter(|m| parse_gateway_member(m).is_none_or(|(_, _, conn)| conn < older_than_conn_id))
                .collect();
            if !members.is_empty() {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for m in &members {
                    match parse_gateway_member(m) {
                        Some((uid, shard, conn)) => {
                            pipe.cmd("HDEL").arg(self.session_key(uid)).arg(session_field(gateway_id, shard, conn));
                        }
                        None => warn!(gateway_id, member = m, "dropping a malformed gateway_sessions member"),
                    }
                }
                pipe.cmd("SREM").arg(&gw_key).arg(&members).ignore();
                let deleted: Vec<u64> = self.idempotent("purge_gateway", &pipe).await?;
                removed += deleted.iter().sum::<u64>();
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn dedup_get(&self, sender_id: u64, client_msg_id: &str) -> Result<Option<AckRecord>, SessionStoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.dedup_key(sender_id, client_msg_id));
        let raw: Option<String> = self.idempotent("dedup_get", &cmd).await?;
        Ok(raw.and_then(|raw| {
            let ack = decode_ack(&raw);
            if ack.is_none() {
                // A miss is safe: the database's unique key still deduplicates.
                warn!(sender_id, client_msg_id, "ignoring a malformed msg_dedup value");
            }
            ack
        }))
    }

    async fn dedup_put(
        &self,
        sender_id: u64,
        client_msg_id: &str,
        ack: &AckRecord,
        ttl: Duration,
    ) -> Result<(), SessionStoreError> {
        let key = self.dedup_key(sender_id, client_msg_id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut cmd;
        if ttl_ms == 0 {
            // Already expired (Redis rejects a zero expiry): just forget any older entry.
            cmd = redis::cmd("DEL");
            cmd.arg(key);
        } else {
            cmd = redis::cmd("SET");
            cmd.arg(key).arg(encode_ack(ack)).arg("PX").arg(ttl_ms);
        }
        self.idempotent("dedup_put", &cmd).await
    }

    async fn dedup_get_many(&self, keys: &[(u64, &str)]) -> Result<Vec<Option<AckRecord>>, SessionStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for (sender, cmid) in keys {
            cmd.arg(self.dedup_key(*sender, cmid));
        }
        let raw: Vec<Option<String>> = self.idempotent("dedup_get_many", &cmd).await?;
        Ok(raw
            .into_iter()
            .map(|r| {
                r.and_then(|raw| {
                    let ack = decode_ack(&raw);
                    if ack.is_none() {
                        warn!("ignoring a malformed msg_dedup value");
                    }
                    ack
                })
            })
            .collect())
    }

    async fn dedup_put_many(
        &self,
        entries: &[(u64, String, AckRecord)],
        ttl: Duration,
    ) -> Result<(), SessionStoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if entries.is_empty() || ttl_ms == 0 {
            for (sender, cmid, ack) in entries {
                self.dedup_put(*sender, cmid, ack, ttl).await?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (sender, cmid, ack) in entries {
            pipe.cmd("SET").arg(self.dedup_key(*sender, cmid)).arg(encode_ack(ack)).arg("PX").arg(ttl_ms).ignore();
        }
        self.idempotent("dedup_put_many", &pipe).await
    }

    async fn cached_members(&self, group_id: u64) -> Result<Option<Arc<[u64]>>, SessionStoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.members_key(group_id));
        let raw: Option<Vec<u8>> = self.idempotent("cached_members", &cmd).await?;
        Ok(raw.and_then(|raw| {
            let ids = decode_members(&raw);
            if ids.is_none() {
                warn!(group_id, "ignoring a malformed group_members value");
            }
            ids
        }))
    }

    async fn cache_members(&self, group_id: u64, members: &[u64], ttl: Duration) -> Result<(), SessionStoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.members_key(group_id)).arg(encode_members(members)).arg("PX").arg(ttl_ms);
        self.idempotent("cache_members", &cmd).await
    }

    async fn invalidate_members(&self, group_id: u64) -> Result<(), SessionStoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.members_key(group_id));
        self.idempotent("invalidate_members", &cmd).await
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, SessionStoreError> {
        // A unique token makes the retry after a lost connection safe: if the
        // first SET NX did land, the key holds our token and the claim is ours.
        let token = format!("{:x}", rand::random::<u128>());
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.claim_key(key)).arg(&token).arg("NX").arg("PX").arg(ttl_ms).arg("GET");
        let previous: Option<String> = self.idempotent("claim", &cmd).await?;
        Ok(previous.is_none() || previous.as_deref() == Some(token.as_str()))
    }

    async fn is_claimed(&self, key: &str) -> Result<bool, SessionStoreError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.claim_key(key));
        let n: u64 = self.idempotent("is_claimed", &cmd).await?;
        Ok(n > 0)
    }

    async fn cached_token_version(&self, user_id: u64) -> Result<Option<u64>, SessionStoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}token_version:{user_id}", self.prefix));
        let raw: Option<String> = self.idempotent("cached_token_version", &cmd).await?;
        Ok(raw.and_then(|r| r.parse().ok()))
    }

    async fn cache_token_version(
        &self,
        user_id: u64,
        version: u64,
        ttl: Duration,
        overwrite: bool,
    ) -> Result<(), SessionStoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}token_version:{user_id}", self.prefix)).arg(version).arg("PX").arg(ttl_ms);
        if !overwrite {
            cmd.arg("NX");
        }
        let _: Option<String> = self.idempotent("cache_token_version", &cmd).await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Against a real Redis: `GOCHAT_TEST_REDIS_URL`, by default the private
    //! instance of `deploy/test-services.sh up` (127.0.0.1:16379). Unreachable
    //! Redis fails the tests. Each store gets a unique key prefix.

    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn redis_url() -> String {
        std::env::var("GOCHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into())
    }

    fn unique_prefix() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        format!("gochat-test:{}:{nanos}:{}:", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
    }

    async fn connect_with_prefix(prefix: &str) -> RedisSessionStore {
        let url = redis_url();
        match tokio::time::timeout(Duration::from_secs(20), RedisSessionStore::connect(&url, prefix)).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => panic!(
                "test redis at {url} is unreachable ({e}): start it with `bash deploy/test-services.sh up` \
                 or point GOCHAT_TEST_REDIS_URL at one"
            ),
            Err(_) => panic!("connecting to test redis at {url} timed out"),
        }
    }

    /// A store on the test Redis with a key prefix of its own.
    pub(crate) async fn store() -> RedisSessionStore {
        connect_with_prefix(&unique_prefix()).await
    }

    /// Delete every key under the store's prefix: a FLUSHALL limited to this test.
    pub(crate) async fn wipe(st: &RedisSessionStore) {
        let mut conn = st.conn.clone();
        let pattern = format!("{}*", st.prefix);
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .expect("scan test keys");
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.expect("delete test keys");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }

    async fn key_count(st: &RedisSessionStore) -> usize {
        let mut conn = st.conn.clone();
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", st.prefix)).query_async(&mut conn).await.expect("keys");
        keys.len()
    }

    mod conformance {
        use super::{store, wipe};

        crate::session::conformance::conformance_tests!(store().await, wipe);
    }

    #[test]
    fn encodings_round_trip() {
        let ack = AckRecord { msg_id: 1, conversation_id: "g_5|x".into(), seq: 2, ts: -3 };
        assert_eq!(encode_ack(&ack), "1|2|-3|g_5|x");
        assert_eq!(decode_ack(&encode_ack(&ack)), Some(ack));
        assert_eq!(decode_ack("1|2|x|c"), None);
        assert_eq!(decode_ack("1|2|3"), None);
        let field = session_field("gw|a", 3, 77);
        assert_eq!(field, "gw|a|3|77");
        assert_eq!(parse_session_field(&field), Some(Session { gateway_id: "gw|a".into(), shard: 3, conn_id: 77 }));
        assert_eq!(parse_session_field("gw|x|1"), None);
        assert_eq!(parse_gateway_member(&gateway_member(9, 1, 2)), Some((9, 1, 2)));
        assert_eq!(parse_gateway_member("9|1"), None);
    }

    #[tokio::test]
    async fn keys_are_the_documented_ones() {
        let st = store().await;
        st.add_session(7, Session { gateway_id: "gw0".into(), shard: 1, conn_id: 2 }).await.unwrap();
        let ack = AckRecord { msg_id: 5, conversation_id: "s_1_7".into(), seq: 1, ts: 9 };
        st.dedup_put(7, "c1", &ack, Duration::from_secs(60)).await.unwrap();
        let mut conn = st.conn.clone();
        let p = &st.prefix;
        let hash: HashMap<String, i64> =
            redis::cmd("HGETALL").arg(format!("{p}user_session:7")).query_async(&mut conn).await.unwrap();
        let at = hash["gw0|1|2"];
        assert!((gochat_common::now_ms() - at).abs() < 60_000, "connected-at is unix ms: {at}");
        let members: Vec<String> =
            redis::cmd("SMEMBERS").arg(format!("{p}gateway_sessions:gw0")).query_async(&mut conn).await.unwrap();
        assert_eq!(members, vec!["7|1|2".to_owned()]);
        let dedup: String = redis::cmd("GET").arg(format!("{p}msg_dedup:7:c1")).query_async(&mut conn).await.unwrap();
        assert_eq!(dedup, "5|1|9|s_1_7");
        let ttl: i64 = redis::cmd("TTL").arg(format!("{p}msg_dedup:7:c1")).query_async(&mut conn).await.unwrap();
        assert!((55..=60).contains(&ttl), "dedup ttl {ttl}");
        // a repeated connect keeps the original connected-at
        tokio::time::sleep(Duration::from_millis(5)).await;
        st.add_session(7, Session { gateway_id: "gw0".into(), shard: 1, conn_id: 2 }).await.unwrap();
        let again: HashMap<String, i64> =
            redis::cmd("HGETALL").arg(format!("{p}user_session:7")).query_async(&mut conn).await.unwrap();
        assert_eq!(again["gw0|1|2"], at);
        // the last session gone, its hash and its entry in the gateway's index are gone too
        st.remove_session(7, &Session { gateway_id: "gw0".into(), shard: 1, conn_id: 2 }).await.unwrap();
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{p}user_session:7"))
            .arg(format!("{p}gateway_sessions:gw0"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0);
        wipe(&st).await;
        assert_eq!(key_count(&st).await, 0);
    }

    #[tokio::test]
    async fn sessions_are_listed_oldest_first() {
        let st = store().await;
        let mut expected = Vec::new();
        for conn in [9u64, 3, 7] {
            let s = Session { gateway_id: "gw0".into(), shard: 0, conn_id: conn };
            st.add_session(1, s.clone()).await.unwrap();
            expected.push((1, s));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        assert_eq!(st.sessions(&[1]).await.unwrap(), expected);
        wipe(&st).await;
    }

    #[tokio::test]
    async fn purge_handles_more_than_one_batch() {
        let st = store().await;
        let n = PURGE_BATCH as u64 * 2 + 17;
        let mut pipe = redis::pipe();
        for uid in 0..n {
            pipe.cmd("HSET")
                .arg(st.session_key(uid))
                .arg(session_field("big", 0, uid))
                .arg(1)
                .ignore()
                .cmd("SADD")
                .arg(st.gateway_key("big"))
                .arg(gateway_member(uid, 0, uid))
                .ignore();
        }
        let _: () = pipe.query_async(&mut st.conn.clone()).await.unwrap();
        st.add_session(1, Session { gateway_id: "other".into(), shard: 0, conn_id: 1 }).await.unwrap();
        assert_eq!(st.purge_gateway("big", u64::MAX).await.unwrap(), n);
        let all: Vec<u64> = (0..n).collect();
        assert_eq!(
            st.sessions(&all).await.unwrap(),
            vec![(1, Session { gateway_id: "other".into(), shard: 0, conn_id: 1 })]
        );
        wipe(&st).await;
    }

    #[tokio::test]
    async fn data_loss_forgets_sessions_and_acks() {
        let st = store().await;
        st.add_session(1, Session { gateway_id: "gw0".into(), shard: 0, conn_id: 1 }).await.unwrap();
        let ack = AckRecord { msg_id: 5, conversation_id: "s_1_2".into(), seq: 41, ts: 9 };
        st.dedup_put(1, "a", &ack, Duration::from_secs(60)).await.unwrap();

        wipe(&st).await; // Redis restarted without persistence

        assert_eq!(st.sessions(&[1]).await.unwrap(), vec![]);
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), None);
        assert_eq!(st.purge_gateway("gw0", u64::MAX).await.unwrap(), 0);
        wipe(&st).await;
    }

    async fn client_id(st: &RedisSessionStore) -> i64 {
        redis::cmd("CLIENT").arg("ID").query_async(&mut st.conn.clone()).await.expect("client id")
    }

    /// Kill the store's connection from the server side, the way `CLIENT KILL
    /// TYPE normal` does, but by id so tests running in parallel keep theirs.
    async fn kill_connection_of(st: &RedisSessionStore) -> i64 {
        let id = client_id(st).await;
        let client = redis::Client::open(redis_url()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.expect("admin connection");
        let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut admin).await.unwrap();
        assert_eq!(killed, 1);
        // let the manager's reader see the close
        tokio::time::sleep(Duration::from_millis(100)).await;
        id
    }

    #[tokio::test]
    async fn connection_manager_survives_a_killed_connection() {
        let st = store().await;

        // Idempotent requests are retried once: the first call after the kill succeeds.
        let old = kill_connection_of(&st).await;
        let ack = AckRecord { msg_id: 5, conversation_id: "s_1_2".into(), seq: 1, ts: 9 };
        st.dedup_put(1, "a", &ack, Duration::from_secs(60)).await.expect("first call after kill");
        assert_ne!(client_id(&st).await, old, "a new connection");
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), Some(ack));
        let old = kill_connection_of(&st).await;
        assert_eq!(st.sessions(&[1]).await.expect("first call after kill"), vec![]);
        assert_ne!(client_id(&st).await, old);

        wipe(&st).await;
    }

    #[tokio::test]
    async fn unreachable_redis_is_unavailable() {
        // Port 1 on loopback: connection refused, after the configured retries.
        let started = std::time::Instant::now();
        let err = RedisSessionStore::connect("redis://127.0.0.1:1", "").await.unwrap_err();
        let SessionStoreError::Unavailable(msg) = err;
        assert!(msg.starts_with("redis connect: "), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(15));
        let SessionStoreError::Unavailable(msg) = RedisSessionStore::connect("http://nope", "").await.unwrap_err();
        assert!(msg.starts_with("redis invalid url: "), "{msg}");
    }
}
