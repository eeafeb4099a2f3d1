//! The token lifecycle on a shard. A connection remembers when its access
//! token expires (a u32 in [`Conn`]); the shard's periodic sweep closes it
//! with 1008 "token expired" once that time passes, unless the client sent
//! a fresh token in an `auth` frame first. Revocation (logout of all
//! sessions, a token of an older version) and the per-user connection cap
//! are decided by logic, which has the store: it sends the shard a push
//! with `close` set, and the shard closes those connections here.

use crate::conn::Conn;
use crate::shard::Shard;
use bytes::Bytes;
use gochat_common::auth::{AuthError, KICK_REASONS};
use gochat_proto::bus::{CloseConn, Recipient};
use gochat_wscodec::close_code;
use serde_json::json;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    (gochat_common::now_ms() / 1000) as u64
}

/// Answer to `{"type":"auth","token":...}`: a valid token of the same user
/// replaces the connection's expiry. Anything else is an error frame and
/// leaves the connection as it was (it still closes at the old expiry).
pub fn reauth(shard: &Shard, conn: &Conn, token: &str) -> Bytes {
    let err = |code: &str, message: &str| {
        shard.metrics.reauth_failures.inc();
        crate::inbound::error_json(code, message, None)
    };
    match shard.jwt.verify_claims(token) {
        Ok(v) if v.user_id == conn.user_id => {
            conn.set_expires_at(v.expires_at);
            shard.metrics.reauths.inc();
            Bytes::from(json!({"type": "auth-ok", "expires_at": v.expires_at as i64 * 1000}).to_string())
        }
        Ok(_) => err("invalid_token", "the token belongs to another user"),
        Err(AuthError::Expired) => err("token_expired", "token expired"),
        Err(e) => err("invalid_token", &e.to_string()),
    }
}

/// The sweep's check: has this connection's token expired at `now` (Unix s)?
pub fn expired(conn: &Conn, now: u64) -> bool {
    let exp = conn.expires_at();
    exp != 0 && now >= exp as u64
}

/// Close the recipients of a push that carries `close` (logic's kick).
/// Only documented reasons are sent to clients.
pub fn kick(shard: &Shard, recipients: &[Recipient], close: &CloseConn) {
    let reason = KICK_REASONS.iter().copied().find(|r| *r == close.reason).unwrap_or("policy violation");
    let code = u16::try_from(close.code).ok().filter(|c| (4000..5000).contains(c) || *c == close_code::POLICY);
    let code = code.unwrap_or(close_code::POLICY);
    let conns = shard.conns.borrow();
    for r in recipients {
        match conns.get(&r.conn_id).filter(|c| c.user_id == r.user_id) {
            Some(c) => {
                shard.metrics.kicks.inc();
                c.request_close(code, reason);
            }
            None => shard.metrics.push_recipients_gone.inc(),
        }
    }
}
