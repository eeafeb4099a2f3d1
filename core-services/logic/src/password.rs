//! Password hashing (Argon2id, PHC strings). CPU-heavy: callers run it on the
//! blocking pool, never on a tokio worker.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Cost of new hashes (`auth.argon2_memory_kib`, `auth.argon2_iterations`).
/// Verification reads the cost from the stored PHC string.
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self { memory_kib: Params::DEFAULT_M_COST, iterations: Params::DEFAULT_T_COST }
    }
}

pub fn hash(password: &str, cost: HashCost) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::new(cost.memory_kib.max(Params::MIN_M_COST), cost.iterations.max(1), 1, None)
        .unwrap_or_else(|_| Params::default());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with valid params")
        .to_string()
}

/// True when `password` matches the stored PHC string; false for a malformed hash.
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false)
}

/// A valid hash of an unguessable password, verified against when the user
/// does not exist so that login takes the same time either way.
pub fn decoy_hash(cost: HashCost) -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy-password-never-matches-\u{1F512}", cost))
}

/// Why a hash or check did not run.
#[derive(Debug, thiserror::Error)]
pub enum HasherError {
    /// Every slot stayed busy for the queue timeout (answered 503).
    #[error("too many password checks in progress")]
    Busy,
    #[error("password hashing task failed: {0}")]
    Task(String),
}

/// Runs hashes and checks on the blocking pool, at most `max_concurrent` at
/// once; a call that gets no slot within the queue timeout is refused, so a
/// flood of logins costs bounded memory and threads (each Argon2id run holds
/// its memory cost) instead of gigabytes.
#[derive(Debug, Clone)]
pub struct Hasher {
    cost: HashCost,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    queue_timeout: std::time::Duration,
}

impl Hasher {
    pub fn new(cost: HashCost, max_concurrent: usize, queue_timeout: std::time::Duration) -> Self {
        Self { cost, slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))), queue_timeout }
    }

    pub fn cost(&self) -> HashCost {
        self.cost
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HasherError> {
        let slot = tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HasherError::Busy)?
            .map_err(|e| HasherError::Task(e.to_string()))?;
        let out = tokio::task::spawn_blocking(move || {
            let out = f();
            drop(slot);
            out
        })
        .await
        .map_err(|e| HasherError::Task(e.to_string()))?;
        Ok(out)
    }

    /// A new hash of `password` at this hasher's cost.
    pub async fn hash(&self, password: String) -> Result<String, HasherError> {
        let cost = self.cost;
        self.run(move || hash(&password, cost)).await
    }

    /// Whether `password` matches the stored PHC string.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, HasherError> {
        self.run(move || verify(&password, &phc)).await
    }
}

/// Failed logins per username in a fixed window: after `max` failures the
/// username is refused until the window ends. In memory, per process, at
/// most [`LoginThrottle::CAPACITY`] usernames (cleared when full).
#[derive(Debug)]
pub struct LoginThrottle {
    max: u32,
    window: std::time::Duration,
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, std::time::Instant)>>,
}

impl LoginThrottle {
    pub const CAPACITY: usize = 100_000;

    pub fn new(max: u32, window: std::time::Duration) -> Self {
        Self { max, window, failures: Default::default() }
    }

    fn key(username: &str) -> String {
        username.to_ascii_lowercase()
    }

    /// None if a login for `username` may go ahead, else how long to wait.
    pub fn check(&self, username: &str) -> Option<std::time::Duration> {
        if self.max == 0 {
            return None;
        }
        let map = self.failures.lock().expect("login throttle lock");
        let (n, since) = map.get(&Self::key(username))?;
        let left = self.window.checked_sub(since.elapsed())?;
        (*n >= self.max).then_some(left)
    }

    pub fn failed(&self, username: &str) {
        if self.max == 0 {
            return;
        }
        let mut map = self.failures.lock().expect("login throttle lock");
        if map.len() >= Self::CAPACITY {
            map.retain(|_, (_, since)| since.elapsed() < self.window);
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
        }
        let e = map.entry(Self::key(username)).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
    }

    pub fn succeeded(&self, username: &str) {
        if self.max > 0 {
            self.failures.lock().expect("login throttle lock").remove(&Self::key(username));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_hasher_refuses_after_its_queue_timeout() {
        let h = Hasher::new(HashCost { memory_kib: 64, iterations: 1 }, 1, Duration::from_millis(50));
        let slot = h.slots.clone().acquire_owned().await.unwrap();
        assert!(matches!(h.hash("pw".into()).await, Err(HasherError::Busy)));
        drop(slot);
        let phc = h.hash("pw".into()).await.unwrap();
        assert!(h.verify("pw".into(), phc).await.unwrap());
    }

    #[test]
    fn login_throttle_counts_failures_per_username_in_a_window() {
        let t = LoginThrottle::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert_eq!(t.check("Alice"), None);
            t.failed("Alice");
        }
        assert!(t.check("alice").is_some(), "usernames are case-insensitive");
        assert_eq!(t.check("bob"), None, "per username");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.check("alice"), None, "the window ends");
        t.failed("alice");
        t.succeeded("alice");
        assert_eq!(t.check("alice"), None);
        let off = LoginThrottle::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            off.failed("x");
        }
        assert_eq!(off.check("x"), None);
    }

    #[test]
    fn hash_and_verify() {
        let h = super::hash("correct horse", super::HashCost::default());
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify("correct horse", &h));
        assert!(!super::verify("wrong horse", &h));
        assert!(!super::verify("x", "not-a-phc-string"));
        assert_ne!(h, super::hash("correct horse", super::HashCost::default()), "salted");
        let cheap = super::hash("correct horse", super::HashCost { memory_kib: 64, iterations: 1 });
        assert!(cheap.contains("m=64,t=1"), "{cheap}");
        assert!(super::verify("correct horse", &cheap));
    }
}
