//! Everything the peer knows, in memory: users, groups, per-conversation seqs,
//! live connections (sharded by user), the dedup cache, JWT keys, counters.

use axum::extract::ws::Utf8Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::{mpsc, Notify};

/// Lock helpers: a panic while holding a lock is a bug, not a reason to stop serving.
pub fn rd<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
pub fn wr<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
pub fn lk<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// Shards of the connection registry, the 1:1 seq table and the dedup cache.
const SHARDS: usize = 64;

fn shard_of(key: u64) -> usize {
    // Ids come from one counter, so the low bits spread evenly.
    (key % SHARDS as u64) as usize
}

/// (lo, hi) of a 1:1 conversation -> its last seq.
pub type SingleSeqs = HashMap<(u64, u64), u64>;
/// user id -> that user's live connections.
type SessionShard = HashMap<u64, Vec<Arc<Conn>>>;

pub struct State {
    pub jwt: Jwt,
    ids: AtomicU64,
    next_conn: AtomicU64,
    pub users: RwLock<Users>,
    pub groups: RwLock<HashMap<u64, Arc<Group>>>,
    /// Last seq of each 1:1 conversation (lo, hi); the shard lock also orders its fan-out.
    pub singles: Box<[Mutex<SingleSeqs>]>,
    pub sessions: Sessions,
    pub dedup: Dedup,
    pub metrics: Metrics,
    pub queue_frames: usize,
    pub read_buffer_bytes: usize,
}

impl State {
    pub fn new(queue_frames: usize, read_buffer_bytes: usize, dedup_entries: usize, token_ttl_secs: u64) -> Self {
        Self {
            jwt: Jwt::new(token_ttl_secs),
            // Ids look like GoChat's (> 2^53, decimal strings) and are unique in this process.
            ids: AtomicU64::new((now_ms() as u64) << 16),
            next_conn: AtomicU64::new(1),
            users: RwLock::new(Users::default()),
            groups: RwLock::new(HashMap::new()),
            singles: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sessions: Sessions::new(),
            dedup: Dedup::new(dedup_entries),
            metrics: Metrics::default(),
            queue_frames,
            read_buffer_bytes,
        }
    }

    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Relaxed)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Relaxed)
    }

    pub fn group(&self, id: u64) -> Option<Arc<Group>> {
        rd(&self.groups).get(&id).cloned()
    }
}

// ---------------------------------------------------------------- users

pub struct User {
    pub id: u64,
    pub username: String,
    pub nickname: String,
    salt: [u8; 16],
    /// SHA-256(salt || password): fast on purpose (GoChat uses Argon2id; see README).
    hash: [u8; 32],
}

fn hash_password(salt: &[u8; 16], password: &str) -> [u8; 32] {
    Sha256::new().chain_update(salt).chain_update(password.as_bytes()).finalize().into()
}

#[derive(Default)]
pub struct Users {
    by_id: HashMap<u64, User>,
    /// ASCII-lowercased username -> id.
    by_name: HashMap<String, u64>,
}

impl Users {
    /// None when the name (case-insensitively) is taken.
    pub fn register(&mut self, id: u64, username: &str, nickname: &str, password: &str) -> Option<&User> {
        let key = username.to_ascii_lowercase();
        if self.by_name.contains_key(&key) {
            return None;
        }
        let salt: [u8; 16] = rand::random();
        let hash = hash_password(&salt, password);
        self.by_name.insert(key, id);
        let u = User { id, username: username.to_owned(), nickname: nickname.to_owned(), salt, hash };
        Some(self.by_id.entry(id).or_insert(u))
    }

    pub fn check_password(&self, username: &str, password: &str) -> Option<u64> {
        let u = self.by_id.get(self.by_name.get(&username.to_ascii_lowercase())?)?;
        let h = hash_password(&u.salt, password);
        // Constant-time compare.
        let diff = h.iter().zip(u.hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(u.id)
    }

    pub fn get(&self, id: u64) -> Option<&User> {
        self.by_id.get(&id)
    }

    pub fn exists(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }
}

// ---------------------------------------------------------------- groups

pub struct Group {
    pub id: u64,
    pub conversation_id: String,
    pub name: String,
    pub owner: u64,
    pub created_at: i64,
    /// Ascending user ids, owner included. Immutable: the peer has no membership changes.
    pub members: Vec<u64>,
    /// Last seq assigned; held while a message is fanned out so every
    /// connection receives the conversation in seq order.
    pub seq: Mutex<u64>,
}

impl Group {
    pub fn is_member(&self, user: u64) -> bool {
        self.members.binary_search(&user).is_ok()
    }
}

// ---------------------------------------------------------------- connections

/// The registry's handle on one live WebSocket.
pub struct Conn {
    pub id: u64,
    pub tx: mpsc::Sender<Utf8Bytes>,
    /// Signalled when the queue overflowed: the connection task drops the socket.
    pub kill: Notify,
    killed: AtomicBool,
}

impl Conn {
    pub fn new(id: u64, tx: mpsc::Sender<Utf8Bytes>) -> Self {
        Self { id, tx, kill: Notify::new(), killed: AtomicBool::new(false) }
    }

    /// Queue a frame without waiting; a full queue marks the connection for dropping.
    pub fn push(&self, frame: &Utf8Bytes, m: &Metrics) -> bool {
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.killed.swap(true, Relaxed) {
                    m.slow_drops.fetch_add(1, Relaxed);
                    self.kill.notify_one();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// user id -> live connections, sharded to keep connects and fan-outs apart.
pub struct Sessions {
    shards: Box<[RwLock<SessionShard>]>,
}

impl Sessions {
    fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect() }
    }

    pub fn add(&self, user: u64, conn: Arc<Conn>) {
        wr(&self.shards[shard_of(user)]).entry(user).or_default().push(conn);
    }

    pub fn remove(&self, user: u64, conn_id: u64) {
        let mut shard = wr(&self.shards[shard_of(user)]);
        if let Some(v) = shard.get_mut(&user) {
            v.retain(|c| c.id != conn_id);
            if v.is_empty() {
                shard.remove(&user);
            }
        }
    }

    pub fn count(&self, user: u64) -> usize {
        rd(&self.shards[shard_of(user)]).get(&user).map_or(0, Vec::len)
    }

    /// Queue `frame` to every live connection of every user in `users` except
    /// connection `skip`; returns how many were queued.
    pub fn deliver(&self, users: &[u64], skip: u64, frame: &Utf8Bytes, m: &Metrics) -> u64 {
        let mut n = 0;
        for &u in users {
            let shard = rd(&self.shards[shard_of(u)]);
            if let Some(conns) = shard.get(&u) {
                for c in conns.iter().filter(|c| c.id != skip) {
                    n += c.push(frame, m) as u64;
                }
            }
        }
        n
    }
}

// ---------------------------------------------------------------- dedup

/// (sender, client_msg_id) -> the original message-ack, bounded, FIFO eviction.
pub struct Dedup {
    shards: Box<[Mutex<DedupShard>]>,
    cap_per_shard: usize,
}

#[derive(Default)]
pub struct DedupShard {
    /// sender -> client_msg_id -> ack.
    map: HashMap<u64, HashMap<Box<str>, Utf8Bytes>>,
    order: VecDeque<(u64, Box<str>)>,
}

impl DedupShard {
    pub fn get(&self, sender: u64, cmid: &str) -> Option<&Utf8Bytes> {
        self.map.get(&sender)?.get(cmid)
    }

    fn insert(&mut self, sender: u64, cmid: &str, ack: Utf8Bytes, cap: usize) {
        let key: Box<str> = cmid.into();
        if self.map.entry(sender).or_default().insert(key.clone(), ack).is_none() {
            self.order.push_back((sender, key));
        }
        while self.order.len() > cap {
            let Some((s, k)) = self.order.pop_front() else { break };
            if let Some(m) = self.map.get_mut(&s) {
                m.remove(&k);
                if m.is_empty() {
                    self.map.remove(&s);
                }
            }
        }
    }
}

impl Dedup {
    fn new(entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(DedupShard::default())).collect(),
            cap_per_shard: entries.div_ceil(SHARDS).max(1),
        }
    }

    pub fn shard(&self, sender: u64) -> MutexGuard<'_, DedupShard> {
        lk(&self.shards[shard_of(sender)])
    }

    pub fn insert(&self, shard: &mut DedupShard, sender: u64, cmid: &str, ack: Utf8Bytes) {
        shard.insert(sender, cmid, ack, self.cap_per_shard);
    }
}

// ---------------------------------------------------------------- metrics

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub upgrades: AtomicU64,
    pub upgrades_unauthorized: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub messages: AtomicU64,
    pub deliveries: AtomicU64,
    pub dedup_hits: AtomicU64,
    pub slow_drops: AtomicU64,
    pub http_requests: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 10] = [
            ("peer_connections", "gauge", "open WebSocket connections", &self.connections),
            ("peer_upgrades_total", "counter", "successful WebSocket upgrades", &self.upgrades),
            ("peer_upgrades_unauthorized_total", "counter", "upgrades refused with 401", &self.upgrades_unauthorized),
            ("peer_frames_in_total", "counter", "WebSocket text messages received", &self.frames_in),
            ("peer_frames_out_total", "counter", "frames queued to clients (deliveries and replies)", &self.frames_out),
            ("peer_messages_total", "counter", "messages accepted (seq assigned)", &self.messages),
            ("peer_deliveries_total", "counter", "new-message frames queued to recipients", &self.deliveries),
            (
                "peer_dedup_hits_total",
                "counter",
                "send-message retries answered from the dedup cache",
                &self.dedup_hits,
            ),
            ("peer_slow_consumer_drops_total", "counter", "connections dropped on a full queue", &self.slow_drops),
            ("peer_http_requests_total", "counter", "REST requests served", &self.http_requests),
        ];
        let mut out = String::with_capacity(2048);
        for (name, kind, help, v) in rows {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n", v.load(Relaxed)));
        }
        out
    }
}

// ---------------------------------------------------------------- JWT

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    iat: u64,
    exp: u64,
}

const ISSUER: &str = "gochat-peer-tokio";

pub struct Jwt {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl Jwt {
    /// A random secret per process: tokens die with the process, like the state.
    fn new(ttl_secs: u64) -> Self {
        let secret: [u8; 32] = rand::random();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        Self { enc: EncodingKey::from_secret(&secret), dec: DecodingKey::from_secret(&secret), validation, ttl_secs }
    }

    /// (token, expires_at in Unix ms).
    pub fn issue(&self, user: u64) -> anyhow::Result<(String, i64)> {
        let now = now_ms() as u64 / 1000;
        let exp = now + self.ttl_secs;
        let claims = Claims { sub: user.to_string(), iss: ISSUER.into(), iat: now, exp };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)?;
        Ok((token, exp as i64 * 1000))
    }

    pub fn verify(&self, token: &str) -> Option<u64> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation).ok()?;
        data.claims.sub.parse().ok()
    }
}
