//! The fast store next to logic: where each user's connections live
//! (`user_session:{uid}`), the ack of every recent (sender, client_msg_id)
//! (`msg_dedup:...`), cached member lists and task claims. Seqs are not here:
//! the database assigns them inside the transaction that stores the messages.
//! [`MemorySessionStore`] is the embedded implementation; Redis is cluster mode.

use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A live WebSocket connection: gateway, shard, connection id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Session {
    pub gateway_id: Arc<str>,
    pub shard: u32,
    pub conn_id: u64,
}

/// What a retry of an already-stored message is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    pub msg_id: u64,
    pub conversation_id: String,
    pub seq: u64,
    pub ts: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    async fn add_session(&self, user_id: u64, session: Session) -> Result<(), SessionStoreError>;
    async fn remove_session(&self, user_id: u64, session: &Session) -> Result<(), SessionStoreError>;
    /// Every live session of each user in `user_ids` (users without one are absent).
    async fn sessions(&self, user_ids: &[u64]) -> Result<Vec<(u64, Session)>, SessionStoreError>;
    /// Remove every session registered on `gateway_id` (the gateway restarted, so
    /// its old connections are gone); returns how many were removed.
    /// Connection ids are time-based per gateway boot, so `older_than_conn_id`
    /// (the restarted gateway's first id) spares sessions it already registered.
    async fn purge_gateway(&self, gateway_id: &str, older_than_conn_id: u64) -> Result<u64, SessionStoreError>;

    async fn dedup_get(&self, sender_id: u64, client_msg_id: &str) -> Result<Option<AckRecord>, SessionStoreError>;
    async fn dedup_put(
        &self,
        sender_id: u64,
        client_msg_id: &str,
        ack: &AckRecord,
        ttl: Duration,
    ) -> Result<(), SessionStoreError>;

    /// [`Self::dedup_get`] for many keys at once (one round trip on Redis),
    /// one answer per key, in order.
    async fn dedup_get_many(&self, keys: &[(u64, &str)]) -> Result<Vec<Option<AckRecord>>, SessionStoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for (sender, cmid) in keys {
            out.push(self.dedup_get(*sender, cmid).await?);
        }
        Ok(out)
    }
    /// [`Self::dedup_put`] for many entries at once (one round trip on Redis).
    async fn dedup_put_many(
        &self,
        entries: &[(u64, String, AckRecord)],
        ttl: Duration,
    ) -> Result<(), SessionStoreError> {
        for (sender, cmid, ack) in entries {
            self.dedup_put(*sender, cmid, ack, ttl).await?;
        }
        Ok(())
    }

    /// A group's member ids (ascending) from the cache (`group_members:{gid}`),
    /// None on a miss. Cache-aside: the database is the truth.
    async fn cached_members(&self, group_id: u64) -> Result<Option<Arc<[u64]>>, SessionStoreError>;
    async fn cache_members(&self, group_id: u64, members: &[u64], ttl: Duration) -> Result<(), SessionStoreError>;
    /// Forget a group's cached members (after the database changed).
    async fn invalidate_members(&self, group_id: u64) -> Result<(), SessionStoreError>;

    /// Mark a step of a task as done (`task_done:{key}`); true the first time
    /// within `ttl`. Makes task retries idempotent: a step claimed by an
    /// earlier attempt is skipped.
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, SessionStoreError>;
    /// Whether `key` is claimed (for steps marked done only after they succeed).
    async fn is_claimed(&self, key: &str) -> Result<bool, SessionStoreError>;

    /// A user's cached token version (`token_version:{uid}`), None on a miss.
    /// The database is the truth (see [`crate::tokens`]).
    async fn cached_token_version(&self, user_id: u64) -> Result<Option<u64>, SessionStoreError>;
    /// Cache a user's token version for `ttl`. A reader filling a miss sets
    /// it only when absent (`overwrite` false), so it never replaces the
    /// newer value a concurrent logout of all sessions wrote (`overwrite` true).
    async fn cache_token_version(
        &self,
        user_id: u64,
        version: u64,
        ttl: Duration,
        overwrite: bool,
    ) -> Result<(), SessionStoreError>;
}

/// In-process store for `gochat dev`. Bounded: the dedup cache keeps at most
/// `dedup_capacity` entries (oldest evicted first); the database's unique key
/// (sender_id, client_msg_id) keeps deduplicating beyond it.
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<u64, Vec<Session>>>,
    dedup: Mutex<DedupCache>,
    members: Mutex<HashMap<u64, CachedMembers>>,
    claims: Mutex<HashMap<String, Instant>>,
    token_versions: Mutex<HashMap<u64, (u64, Instant)>>,
}

/// A cached member list and when it expires.
type CachedMembers = (Arc<[u64]>, Instant);

/// Entries (claims, cached member lists) kept before expired ones are swept.
const SWEEP_EXPIRED_AT: usize = 1 << 16;

struct DedupCache {
    map: HashMap<(u64, String), (AckRecord, Instant)>,
    order: VecDeque<(u64, String)>,
    capacity: usize,
}

impl MemorySessionStore {
    pub fn new(dedup_capacity: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            dedup: Mutex::new(DedupCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                capacity: dedup_capacity.max(1),
            }),
            members: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            token_versions: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn add_session(&self, user_id: u64, session: Session) -> Result<(), SessionStoreError> {
        let mut map = self.sessions.lock().expect("sessions lock");
        let list = map.entry(user_id).or_default();
        if !list.contains(&session) {
            list.push(session);
        }
        Ok(())
    }

    async fn remove_session(&self, user_id: u64, session: &Session) -> Result<(), SessionStoreError> {
        let mut map = self.sessions.lock().expect("sessions lock");
        if let Some(list) = map.get_mut(&user_id) {
            list.retain(|s| s != session);
            if list.is_empty() {
                map.remove(&user_id);
            }
        }
        Ok(())
    }

    async fn sessions(&self, user_ids: &[u64]) -> Result<Vec<(u64, Session)>, SessionStoreError> {
        let map = self.sessions.lock().expect("sessions lock");
        let mut out = Vec::new();
        for uid in user_ids {
            if let Some(list) = map.get(uid) {
                out.extend(list.iter().map(|s| (*uid, s.clone())));
            }
        }
        Ok(out)
    }

    async fn purge_gateway(&self, gateway_id: &str, older_than_conn_id: u64) -> Result<u64, SessionStoreError> {
        let mut map = self.sessions.lock().expect("sessions lock");
        let mut removed = 0u64;
        map.retain(|_, list| {
            let before = list.len();
            list.retain(|s| &*s.gateway_id != gateway_id || s.conn_id >= older_than_conn_id);
            removed += (before - list.len()) as u64;
            !list.is_empty()
        });
        Ok(removed)
    }

    async fn dedup_get(&self, sender_id: u64, client_msg_id: &str) -> Result<Option<AckRecord>, SessionStoreError> {
        let cache = self.dedup.lock().expect("dedup lock");
        Ok(cache
            .map
            .get(&(sender_id, client_msg_id.to_owned()))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(ack, _)| ack.clone()))
    }

    async fn dedup_put(
        &self,
        sender_id: u64,
        client_msg_id: &str,
        ack: &AckRecord,
        ttl: Duration,
    ) -> Result<(), SessionStoreError> {
        let mut cache = self.dedup.lock().expect("dedup lock");
        let key = (sender_id, client_msg_id.to_owned());
        if cache.map.insert(key.clone(), (ack.clone(), Instant::now() + ttl)).is_none() {
            cache.order.push_back(key);
        }
        while cache.map.len() > cache.capacity {
            match cache.order.pop_front() {
                Some(old) => {
                    cache.map.remove(&old);
                }
                None => break,
            }
        }
        Ok(())
    }

    async fn cached_members(&self, group_id: u64) -> Result<Option<Arc<[u64]>>, SessionStoreError> {
        let map = self.members.lock().expect("members lock");
        Ok(map.get(&group_id).filter(|(_, exp)| *exp > Instant::now()).map(|(m, _)| m.clone()))
    }

    async fn cache_members(&self, group_id: u64, members: &[u64], ttl: Duration) -> Result<(), SessionStoreError> {
        let mut map = self.members.lock().expect("members lock");
        let now = Instant::now();
        if map.len() >= SWEEP_EXPIRED_AT {
            map.retain(|_, (_, exp)| *exp > now);
        }
        map.insert(group_id, (members.into(), now + ttl));
        Ok(())
    }

    async fn invalidate_members(&self, group_id: u64) -> Result<(), SessionStoreError> {
        self.members.lock().expect("members lock").remove(&group_id);
        Ok(())
    }

    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, SessionStoreError> {
        let mut claims = self.claims.lock().expect("claims lock");
        let now = Instant::now();
        if claims.len() >= SWEEP_EXPIRED_AT {
            claims.retain(|_, exp| *exp > now);
        }
        match claims.get(key) {
            Some(exp) if *exp > now => Ok(false),
            _ => {
                claims.insert(key.to_owned(), now + ttl);
                Ok(true)
            }
        }
    }

    async fn is_claimed(&self, key: &str) -> Result<bool, SessionStoreError> {
        let claims = self.claims.lock().expect("claims lock");
        Ok(claims.get(key).is_some_and(|exp| *exp > Instant::now()))
    }

    async fn cached_token_version(&self, user_id: u64) -> Result<Option<u64>, SessionStoreError> {
        let map = self.token_versions.lock().expect("token versions lock");
        Ok(map.get(&user_id).filter(|(_, exp)| *exp > Instant::now()).map(|(v, _)| *v))
    }

    async fn cache_token_version(
        &self,
        user_id: u64,
        version: u64,
        ttl: Duration,
        overwrite: bool,
    ) -> Result<(), SessionStoreError> {
        let mut map = self.token_versions.lock().expect("token versions lock");
        let now = Instant::now();
        if map.len() >= SWEEP_EXPIRED_AT {
            map.retain(|_, (_, exp)| *exp > now);
        }
        let live = map.get(&user_id).is_some_and(|(_, exp)| *exp > now);
        if overwrite || !live {
            map.insert(user_id, (version, now + ttl));
        }
        Ok(())
    }
}

/// Behaviour every [`SessionStore`] must have, written once and run against
/// each implementation (`conformance_tests!` instantiates it).
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub(crate) fn s(gw: &str, shard: u32, conn: u64) -> Session {
        Session { gateway_id: gw.into(), shard, conn_id: conn }
    }

    fn sorted(mut v: Vec<(u64, Session)>) -> Vec<(u64, Session)> {
        v.sort_by(|a, b| {
            (a.0, &*a.1.gateway_id, a.1.shard, a.1.conn_id).cmp(&(b.0, &*b.1.gateway_id, b.1.shard, b.1.conn_id))
        });
        v
    }

    pub(crate) async fn sessions_add_remove_and_lookup(st: &dyn SessionStore) {
        assert_eq!(st.sessions(&[]).await.unwrap(), vec![]);
        assert_eq!(st.sessions(&[1]).await.unwrap(), vec![]);
        st.add_session(1, s("gw0", 0, 1)).await.unwrap();
        st.add_session(1, s("gw0", 1, 2)).await.unwrap();
        st.add_session(1, s("gw0", 1, 2)).await.unwrap(); // idempotent
        st.add_session(2, s("gw1", 0, 9)).await.unwrap();
        st.add_session(3, s("gw|odd", 7, u64::MAX)).await.unwrap();
        // one batch, users without sessions are absent
        assert_eq!(
            sorted(st.sessions(&[1, 4, 2, 3]).await.unwrap()),
            vec![(1, s("gw0", 0, 1)), (1, s("gw0", 1, 2)), (2, s("gw1", 0, 9)), (3, s("gw|odd", 7, u64::MAX))]
        );
        st.remove_session(1, &s("gw0", 0, 1)).await.unwrap();
        st.remove_session(1, &s("gw0", 0, 1)).await.unwrap(); // idempotent
        st.remove_session(2, &s("gw0", 1, 2)).await.unwrap(); // another user's session: no effect
        assert_eq!(sorted(st.sessions(&[1, 2]).await.unwrap()), vec![(1, s("gw0", 1, 2)), (2, s("gw1", 0, 9))]);
        st.remove_session(1, &s("gw0", 1, 2)).await.unwrap();
        assert_eq!(st.sessions(&[1]).await.unwrap(), vec![]);
    }

    pub(crate) async fn dedup_many_at_once(st: &dyn SessionStore) {
        let a = AckRecord { msg_id: 5, conversation_id: "s_1_2".into(), seq: 1, ts: 9 };
        let b = AckRecord { msg_id: 6, conversation_id: "g_7".into(), seq: 2, ts: 10 };
        assert!(st.dedup_get_many(&[]).await.unwrap().is_empty());
        st.dedup_put_many(&[], Duration::from_secs(60)).await.unwrap();
        let entries = vec![(1, "a".to_owned(), a.clone()), (2, "a".to_owned(), b.clone())];
        st.dedup_put_many(&entries, Duration::from_secs(60)).await.unwrap();
        let got = st.dedup_get_many(&[(2, "a"), (1, "missing"), (1, "a")]).await.unwrap();
        assert_eq!(got, vec![Some(b), None, Some(a.clone())]);
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), Some(a));
    }

    pub(crate) async fn dedup_put_get_expiry_per_sender(st: &dyn SessionStore) {
        let ack = AckRecord { msg_id: 5, conversation_id: "s_1_2".into(), seq: 1, ts: 9 };
        let odd = AckRecord { msg_id: u64::MAX, conversation_id: "g|x:y".into(), seq: u64::MAX, ts: -1 };
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), None);
        st.dedup_put(1, "a", &ack, Duration::from_secs(60)).await.unwrap();
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), Some(ack.clone()));
        assert_eq!(st.dedup_get(2, "a").await.unwrap(), None); // per sender
        assert_eq!(st.dedup_get(1, "b").await.unwrap(), None);
        st.dedup_put(2, "a:b|c", &odd, Duration::from_secs(60)).await.unwrap();
        assert_eq!(st.dedup_get(2, "a:b|c").await.unwrap(), Some(odd));
        st.dedup_put(1, "gone", &ack, Duration::ZERO).await.unwrap();
        assert_eq!(st.dedup_get(1, "gone").await.unwrap(), None);
        st.dedup_put(1, "short", &ack, Duration::from_millis(300)).await.unwrap();
        assert_eq!(st.dedup_get(1, "short").await.unwrap(), Some(ack.clone()));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(st.dedup_get(1, "short").await.unwrap(), None);
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), Some(ack));
    }

    pub(crate) async fn purge_gateway_removes_only_that_gateway(st: &dyn SessionStore) {
        st.add_session(1, s("gw0", 0, 1)).await.unwrap();
        st.add_session(1, s("gw1", 0, 2)).await.unwrap();
        st.add_session(2, s("gw0", 1, 3)).await.unwrap();
        st.add_session(2, s("gw0", 1, 4)).await.unwrap();
        st.add_session(3, s("gw0", 0, 5)).await.unwrap();
        st.add_session(4, s("gw00", 0, 6)).await.unwrap();
        st.remove_session(3, &s("gw0", 0, 5)).await.unwrap(); // already gone: not counted by the purge
        assert_eq!(st.purge_gateway("gw0", u64::MAX).await.unwrap(), 3);
        assert_eq!(sorted(st.sessions(&[1, 2, 3, 4]).await.unwrap()), vec![(1, s("gw1", 0, 2)), (4, s("gw00", 0, 6))]);
        assert_eq!(st.purge_gateway("gw0", u64::MAX).await.unwrap(), 0);
        assert_eq!(st.purge_gateway("nope", u64::MAX).await.unwrap(), 0);
        // the gateway registers again after its purge
        st.add_session(2, s("gw0", 0, 7)).await.unwrap();
        assert_eq!(st.sessions(&[2]).await.unwrap(), vec![(2, s("gw0", 0, 7))]);
        st.remove_session(1, &s("gw0", 0, 1)).await.unwrap(); // a late disconnect of a purged session
        assert_eq!(st.purge_gateway("gw1", u64::MAX).await.unwrap(), 1);
        assert_eq!(sorted(st.sessions(&[1, 2, 4]).await.unwrap()), vec![(2, s("gw0", 0, 7)), (4, s("gw00", 0, 6))]);
        // a restarted gateway's purge spares the connections of its new boot
        st.add_session(5, s("gw0", 1, 1_000)).await.unwrap();
        assert_eq!(st.purge_gateway("gw0", 500).await.unwrap(), 1); // conn 7 of the old boot
        assert_eq!(st.sessions(&[2, 5]).await.unwrap(), vec![(5, s("gw0", 1, 1_000))]);
    }

    pub(crate) async fn member_cache_is_cache_aside(st: &dyn SessionStore) {
        let ttl = Duration::from_secs(60);
        assert_eq!(st.cached_members(7).await.unwrap(), None);
        let big: Vec<u64> = (0..10_000u64).map(|i| i * 3 + (1 << 63)).collect();
        st.cache_members(7, &big, ttl).await.unwrap();
        st.cache_members(8, &[], ttl).await.unwrap(); // an empty list is a hit, not a miss
        assert_eq!(st.cached_members(7).await.unwrap().as_deref(), Some(&big[..]));
        assert_eq!(st.cached_members(8).await.unwrap().as_deref(), Some(&[][..]));
        st.invalidate_members(7).await.unwrap();
        st.invalidate_members(7).await.unwrap(); // idempotent
        assert_eq!(st.cached_members(7).await.unwrap(), None);
        st.cache_members(9, &[1, 2], Duration::from_millis(200)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(st.cached_members(9).await.unwrap(), None);
    }

    pub(crate) async fn claims_are_first_come_with_expiry(st: &dyn SessionStore) {
        assert!(!st.is_claimed("t1:gw0/0").await.unwrap());
        assert!(st.claim("t1:gw0/0", Duration::from_secs(60)).await.unwrap());
        assert!(st.is_claimed("t1:gw0/0").await.unwrap());
        assert!(!st.claim("t1:gw0/0", Duration::from_secs(60)).await.unwrap());
        assert!(st.claim("t1:gw0/1", Duration::from_secs(60)).await.unwrap());
        assert!(st.claim("short", Duration::from_millis(200)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(st.claim("short", Duration::from_secs(60)).await.unwrap());
        assert!(!st.claim("t1:gw0/0", Duration::from_secs(60)).await.unwrap());
    }

    pub(crate) async fn token_version_cache_never_goes_back(st: &dyn SessionStore) {
        let ttl = Duration::from_secs(60);
        assert_eq!(st.cached_token_version(7).await.unwrap(), None);
        st.cache_token_version(7, 0, ttl, false).await.unwrap();
        assert_eq!(st.cached_token_version(7).await.unwrap(), Some(0));
        // A logout of all sessions overwrites; a late reader's fill does not.
        st.cache_token_version(7, 3, ttl, true).await.unwrap();
        st.cache_token_version(7, 2, ttl, false).await.unwrap();
        assert_eq!(st.cached_token_version(7).await.unwrap(), Some(3));
        st.cache_token_version(8, 1, Duration::from_millis(200), false).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(st.cached_token_version(8).await.unwrap(), None);
    }

    /// Instantiates every check above as a `#[tokio::test]` for one store:
    /// `conformance_tests!(expression making a fresh store, async fn cleaning it up)`.
    macro_rules! conformance_tests {
        ($make:expr, $cleanup:path) => {
            $crate::session::conformance::conformance_tests!(@each $make, $cleanup;
                sessions_add_remove_and_lookup,
                dedup_put_get_expiry_per_sender,
                dedup_many_at_once,
                purge_gateway_removes_only_that_gateway,
                member_cache_is_cache_aside,
                claims_are_first_come_with_expiry,
                token_version_cache_never_goes_back);
        };
        (@each $make:expr, $cleanup:path; $($name:ident),+) => {
            $(
                #[tokio::test]
                async fn $name() {
                    let st = $make;
                    $crate::session::conformance::$name(&st).await;
                    $cleanup(&st).await;
                }
            )+
        };
    }
    pub(crate) use conformance_tests;
}

#[cfg(test)]
mod tests {
    use super::conformance::s;
    use super::*;

    async fn nothing_to_clean(_: &MemorySessionStore) {}

    mod conformance {
        use super::super::*;
        use super::nothing_to_clean;

        crate::session::conformance::conformance_tests!(MemorySessionStore::new(100), nothing_to_clean);
    }

    #[tokio::test]
    async fn memory_dedup_is_bounded() {
        let st = MemorySessionStore::new(2);
        let ack = AckRecord { msg_id: 5, conversation_id: "s_1_2".into(), seq: 1, ts: 9 };
        st.dedup_put(1, "a", &ack, Duration::from_secs(60)).await.unwrap();
        st.dedup_put(1, "b", &ack, Duration::from_secs(60)).await.unwrap();
        st.dedup_put(1, "a", &ack, Duration::from_secs(60)).await.unwrap(); // an update takes no extra room
        st.dedup_put(1, "c", &ack, Duration::from_secs(60)).await.unwrap();
        // capacity 2: "a" (oldest) was evicted
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), None);
        assert!(st.dedup_get(1, "b").await.unwrap().is_some());
        assert!(st.dedup_get(1, "c").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn memory_purge_drops_emptied_users() {
        let st = MemorySessionStore::new(2);
        st.add_session(1, s("gw0", 0, 1)).await.unwrap();
        assert_eq!(st.purge_gateway("gw0", u64::MAX).await.unwrap(), 1);
        assert!(st.sessions.lock().unwrap().is_empty());
    }
}
