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

#[cfg(test)]
mod tests {
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
