//! The token half of the REST API: access + refresh token pairs (issued at
//! register and login), `POST /api/v1/auth/refresh` (rotation with reuse
//! detection) and `POST /api/v1/auth/logout` (one session, or all of them),
//! and the bearer check every authenticated endpoint runs.
//!
//! A refresh token is 32 random bytes, hex; the store keeps only its
//! SHA-256. Every token rotated from one login shares a family; presenting
//! an already-rotated token again means it leaked (or the client raced
//! itself), so the whole family is revoked.

use crate::api::{ApiError, ApiJson, ApiState};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gochat_common::auth::JwtKeys;
use gochat_repo::{RefreshToken, Rotation};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The user of a valid, unexpired, unrevoked `Authorization: Bearer` token.
pub async fn bearer_user(st: &ApiState, headers: &HeaderMap) -> Result<u64, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("unauthorized", "missing bearer token"))?;
    let token =
        JwtKeys::bearer(value).ok_or_else(|| unauthorized("unauthorized", "expected Authorization: Bearer <token>"))?;
    let claims = st.jwt.verify_claims(token).map_err(|e| unauthorized("unauthorized", &e.to_string()))?;
    if claims.version < st.logic.token_version(claims.user_id).await? {
        return Err(unauthorized("token_revoked", "token revoked (signed out everywhere); sign in again"));
    }
    Ok(claims.user_id)
}

/// SHA-256 of a refresh token, lowercase hex: what the store keeps.
pub fn refresh_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_refresh_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// `{token, user_id, expires_at, refresh_token, refresh_expires_at}` for a
/// fresh access token and the given refresh token.
fn pair_json(st: &ApiState, user_id: u64, version: u64, refresh: &str, refresh_expires_at: i64) -> Value {
    let access = st.jwt.issue(user_id, version);
    json!({
        "token": access.token,
        "user_id": user_id.to_string(),
        "expires_at": access.expires_at,
        "refresh_token": refresh,
        "refresh_expires_at": refresh_expires_at,
    })
}

/// Start a session (a new refresh-token family) for a user who just proved
/// who they are; the response fields of register and login.
pub async fn start_session(st: &ApiState, user_id: u64) -> Result<Value, ApiError> {
    let now = gochat_common::now_ms();
    let refresh = new_refresh_token();
    let expires_at = now + (st.refresh_ttl_secs as i64) * 1000;
    let row = RefreshToken {
        token_hash: refresh_hash(&refresh),
        user_id,
        family_id: st.logic.ids().next_id(),
        created_at: now,
        expires_at,
    };
    st.logic.store.create_refresh_token(&row).await?;
    let version = st.logic.token_version(user_id).await?;
    Ok(pair_json(st, user_id, version, &refresh, expires_at))
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/v1/auth/refresh {refresh_token}`: a new pair; the presented
/// token is used up.
pub async fn refresh(State(st): State<ApiState>, ApiJson(body): ApiJson<RefreshBody>) -> Result<Response, ApiError> {
    let now = gochat_common::now_ms();
    let next = new_refresh_token();
    let next_expires_at = now + (st.refresh_ttl_secs as i64) * 1000;
    let rotation = st
        .logic
        .store
        .rotate_refresh_token(&refresh_hash(&body.refresh_token), &refresh_hash(&next), next_expires_at, now)
        .await?;
    match rotation {
        Rotation::Rotated { user_id, .. } => {
            let version = st.logic.token_version(user_id).await?;
            Ok(Json(pair_json(&st, user_id, version, &next, next_expires_at)).into_response())
        }
        Rotation::Reused { user_id, family_id } => {
            warn!(user_id, family_id, "refresh token reused; its family is revoked");
            Err(unauthorized(
                "refresh_token_reused",
                "refresh token already used: this session is revoked, sign in again",
            ))
        }
        Rotation::Revoked { .. } => Err(unauthorized("refresh_token_revoked", "refresh token revoked; sign in again")),
        Rotation::Expired { .. } => Err(unauthorized("refresh_token_expired", "refresh token expired; sign in again")),
        Rotation::Unknown => Err(unauthorized("invalid_refresh_token", "unknown refresh token")),
    }
}

#[derive(Deserialize)]
pub struct LogoutBody {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /api/v1/auth/logout {refresh_token}` ends that session (its
/// refresh-token family); `{"all": true}` with a bearer token ends every
/// session of the caller and closes their WebSockets. 204 either way.
pub async fn logout(
    State(st): State<ApiState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LogoutBody>,
) -> Result<Response, ApiError> {
    if body.all {
        let user_id = bearer_user(&st, &headers).await?;
        let version = st.logic.revoke_all_sessions(user_id).await?;
        info!(user_id, version, "logout of all sessions");
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let Some(token) = body.refresh_token.filter(|t| !t.is_empty()) else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "give refresh_token, or \"all\": true with a bearer token",
        ));
    };
    match st.logic.store.revoke_refresh_family(&refresh_hash(&token)).await? {
        Some(user_id) => {
            info!(user_id, "logout of one session");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(unauthorized("invalid_refresh_token", "unknown refresh token")),
    }
}
