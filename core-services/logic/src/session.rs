//! The fast store next to logic: where each user's connections live
//! (`user_session:{uid}`), the per-conversation seq counters (`conv_seq:{cid}`)
//! and the ack of every recent (sender, client_msg_id) (`msg_dedup:...`).
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

    /// Reserve `n` consecutive seqs of a conversation; returns the last one,
    /// or None when the counter is unknown (never initialised, or lost): the
    /// caller then initialises it from the database's max seq.
    async fn reserve_seqs(&self, conversation_id: &str, n: u64) -> Result<Option<u64>, SessionStoreError>;
    /// Set the counter to `current_max` unless it already exists.
    async fn init_seq(&self, conversation_id: &str, current_max: u64) -> Result<(), SessionStoreError>;
    /// Forget the counter (after a failed persist, so no gap is left behind).
    async fn reset_seq(&self, conversation_id: &str) -> Result<(), SessionStoreError>;

    async fn dedup_get(&self, sender_id: u64, client_msg_id: &str) -> Result<Option<AckRecord>, SessionStoreError>;
    async fn dedup_put(&self, sender_id: u64, client_msg_id: &str, ack: &AckRecord, ttl: Duration) -> Result<(), SessionStoreError>;
}

/// In-process store for `gochat dev`. Bounded: the dedup cache keeps at most
/// `dedup_capacity` entries (oldest evicted first); the database's unique key
/// (sender_id, client_msg_id) keeps deduplicating beyond it.
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<u64, Vec<Session>>>,
    seqs: Mutex<HashMap<String, u64>>,
    dedup: Mutex<DedupCache>,
}

struct DedupCache {
    map: HashMap<(u64, String), (AckRecord, Instant)>,
    order: VecDeque<(u64, String)>,
    capacity: usize,
}

impl MemorySessionStore {
    pub fn new(dedup_capacity: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            seqs: Mutex::new(HashMap::new()),
            dedup: Mutex::new(DedupCache { map: HashMap::new(), order: VecDeque::new(), capacity: dedup_capacity.max(1) }),
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

    async fn reserve_seqs(&self, conversation_id: &str, n: u64) -> Result<Option<u64>, SessionStoreError> {
        let mut seqs = self.seqs.lock().expect("seq lock");
        Ok(seqs.get_mut(conversation_id).map(|v| {
            *v += n;
            *v
        }))
    }

    async fn init_seq(&self, conversation_id: &str, current_max: u64) -> Result<(), SessionStoreError> {
        self.seqs.lock().expect("seq lock").entry(conversation_id.to_owned()).or_insert(current_max);
        Ok(())
    }

    async fn reset_seq(&self, conversation_id: &str) -> Result<(), SessionStoreError> {
        self.seqs.lock().expect("seq lock").remove(conversation_id);
        Ok(())
    }

    async fn dedup_get(&self, sender_id: u64, client_msg_id: &str) -> Result<Option<AckRecord>, SessionStoreError> {
        let cache = self.dedup.lock().expect("dedup lock");
        Ok(cache
            .map
            .get(&(sender_id, client_msg_id.to_owned()))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(ack, _)| ack.clone()))
    }

    async fn dedup_put(&self, sender_id: u64, client_msg_id: &str, ack: &AckRecord, ttl: Duration) -> Result<(), SessionStoreError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(gw: &str, shard: u32, conn: u64) -> Session {
        Session { gateway_id: gw.into(), shard, conn_id: conn }
    }

    #[tokio::test]
    async fn sessions_add_remove_and_lookup() {
        let st = MemorySessionStore::new(10);
        st.add_session(1, s("gw0", 0, 1)).await.unwrap();
        st.add_session(1, s("gw0", 1, 2)).await.unwrap();
        st.add_session(1, s("gw0", 1, 2)).await.unwrap();
        st.add_session(2, s("gw1", 0, 9)).await.unwrap();
        assert_eq!(st.sessions(&[1, 3]).await.unwrap().len(), 2);
        st.remove_session(1, &s("gw0", 0, 1)).await.unwrap();
        assert_eq!(st.sessions(&[1, 2]).await.unwrap(), vec![(1, s("gw0", 1, 2)), (2, s("gw1", 0, 9))]);
    }

    #[tokio::test]
    async fn seq_counter_needs_init_and_reserves_ranges() {
        let st = MemorySessionStore::new(10);
        assert_eq!(st.reserve_seqs("s_1_2", 1).await.unwrap(), None);
        st.init_seq("s_1_2", 40).await.unwrap();
        st.init_seq("s_1_2", 0).await.unwrap(); // does not overwrite
        assert_eq!(st.reserve_seqs("s_1_2", 3).await.unwrap(), Some(43));
        assert_eq!(st.reserve_seqs("s_1_2", 1).await.unwrap(), Some(44));
        st.reset_seq("s_1_2").await.unwrap();
        assert_eq!(st.reserve_seqs("s_1_2", 1).await.unwrap(), None);
    }

    #[tokio::test]
    async fn dedup_remembers_acks_expires_and_is_bounded() {
        let st = MemorySessionStore::new(2);
        let ack = AckRecord { msg_id: 5, conversation_id: "s_1_2".into(), seq: 1, ts: 9 };
        st.dedup_put(1, "a", &ack, Duration::from_secs(60)).await.unwrap();
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), Some(ack.clone()));
        assert_eq!(st.dedup_get(2, "a").await.unwrap(), None);
        st.dedup_put(1, "gone", &ack, Duration::from_millis(0)).await.unwrap();
        assert_eq!(st.dedup_get(1, "gone").await.unwrap(), None);
        st.dedup_put(1, "c", &ack, Duration::from_secs(60)).await.unwrap();
        // capacity 2: "a" (oldest) was evicted
        assert_eq!(st.dedup_get(1, "a").await.unwrap(), None);
        assert!(st.dedup_get(1, "c").await.unwrap().is_some());
    }
}
