//! JWT access tokens (HS256). Logic issues them at login; every gateway shard
//! verifies them locally at upgrade time, so a connect never calls logic.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

const ISSUER: &str = "gochat";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("jwt secret must be at least 32 bytes")]
    WeakSecret,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id, as a decimal string (ids are strings on the wire).
    sub: String,
    iss: String,
    iat: u64,
    exp: u64,
    /// The user's token version when the token was issued; a logout of all
    /// sessions bumps the version and so revokes every older token. Absent
    /// in tokens issued before versions existed (= 0).
    #[serde(default)]
    ver: u64,
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub user_id: u64,
    /// The user's token version at issue time (see [`JwtKeys::issue`]).
    pub version: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Reason of the policy close (1008) of a WebSocket whose access token expired.
pub const CLOSE_TOKEN_EXPIRED: &str = "token expired";
/// Reason of the policy close (1008) of a WebSocket whose sessions were
/// revoked (logout of all sessions, or a token of an older version).
pub const CLOSE_SESSION_REVOKED: &str = "session revoked";
/// Reason of the policy close (1008) of a user's oldest WebSocket when a
/// connection beyond `auth.max_connections_per_user` opened.
pub const CLOSE_CONNECTION_LIMIT: &str = "connection limit reached";
/// Every reason logic may ask a gateway to close a connection with.
pub const KICK_REASONS: [&str; 2] = [CLOSE_SESSION_REVOKED, CLOSE_CONNECTION_LIMIT];

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").field("ttl_secs", &self.ttl_secs).finish_non_exhaustive()
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Result<Self, AuthError> {
        if secret.len() < 32 {
            return Err(AuthError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        })
    }

    /// Access-token lifetime, seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A token for `user_id` carrying the user's current token `version`.
    pub fn issue(&self, user_id: u64, version: u64) -> IssuedToken {
        let now = (crate::now_ms() / 1000) as u64;
        let exp = now + self.ttl_secs;
        let claims = Claims { sub: user_id.to_string(), iss: ISSUER.into(), iat: now, exp, ver: version };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("hs256 signing cannot fail");
        IssuedToken { token, expires_at: exp as i64 * 1000 }
    }

    /// The user id inside a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<u64, AuthError> {
        self.verify_claims(token).map(|v| v.user_id)
    }

    /// User id, token version and expiry of a valid, unexpired token.
    pub fn verify_claims(&self, token: &str) -> Result<Verified, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let user_id = data.claims.sub.parse().map_err(|_| AuthError::Invalid)?;
        Ok(Verified { user_id, version: data.claims.ver, expires_at: data.claims.exp })
    }

    /// Extract the token from an `Authorization: Bearer` value.
    pub fn bearer(header_value: &str) -> Option<&str> {
        let (scheme, token) = header_value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn issue_then_verify() {
        let keys = JwtKeys::new(SECRET, 3600).unwrap();
        let t = keys.issue(1234567890123, 4);
        assert_eq!(keys.verify(&t.token), Ok(1234567890123));
        let v = keys.verify_claims(&t.token).unwrap();
        assert_eq!((v.user_id, v.version, v.expires_at as i64 * 1000), (1234567890123, 4, t.expires_at));
        assert!(t.expires_at > crate::now_ms());
    }

    #[test]
    fn rejects_tampered_foreign_and_expired_tokens() {
        let keys = JwtKeys::new(SECRET, 3600).unwrap();
        let t = keys.issue(7, 0).token;
        let mut tampered = t.clone().into_bytes();
        let i = tampered.len() - 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(std::str::from_utf8(&tampered).unwrap()), Err(AuthError::Invalid));

        let other = JwtKeys::new(b"another-secret-another-secret-xx", 3600).unwrap();
        assert_eq!(other.verify(&t), Err(AuthError::Invalid));
        assert_eq!(keys.verify(""), Err(AuthError::Missing));
        assert_eq!(keys.verify("not.a.jwt"), Err(AuthError::Invalid));

        // exp in the past beyond leeway
        let past = (crate::now_ms() / 1000) as u64 - 120;
        let claims = Claims { sub: "7".into(), iss: ISSUER.into(), iat: past - 10, exp: past, ver: 0 };
        let old =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(keys.verify(&old), Err(AuthError::Expired));
    }

    #[test]
    fn weak_secret_refused_and_bearer_parsed() {
        assert_eq!(JwtKeys::new(b"short", 1).unwrap_err(), AuthError::WeakSecret);
        assert_eq!(JwtKeys::bearer("Bearer abc"), Some("abc"));
        assert_eq!(JwtKeys::bearer("bearer   abc "), Some("abc"));
        assert_eq!(JwtKeys::bearer("Basic abc"), None);
        assert_eq!(JwtKeys::bearer("Bearer"), None);
    }
}
