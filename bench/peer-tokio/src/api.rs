//! REST: register, login, me, presence, create group, /metrics, /healthz.
//! Errors are `{"error":{"code","message"}}` like GoChat's.

use crate::frames::{self, Id};
use crate::state::{lk, now_ms, rd, wr, Group, State};
use crate::ws;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State as St};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

pub type AppState = Arc<State>;

const MAX_GROUP_MEMBERS: usize = 100_000;

pub fn router(st: AppState) -> Router {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/users/me", get(me))
        .route("/api/v1/users/{id}/presence", get(presence))
        .route("/api/v1/groups", post(create_group))
        .route("/ws", get(ws::upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .with_state(st)
}

// ---------------------------------------------------------------- errors

pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing, invalid or expired token")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parse a JSON body; any failure (syntax, missing field, wrong type) is 400 `invalid_json`.
fn body<T: DeserializeOwned>(b: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(b).map_err(|e| ApiError::bad("invalid_json", format!("invalid JSON body: {e}")))
}

/// A decimal u64 with no sign, whitespace or leading zeros (GoChat's canonical id form).
pub fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------- auth

/// The user of a request with a valid `Authorization: Bearer` token.
pub struct Auth(pub u64);

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        st.metrics.http_requests.fetch_add(1, Relaxed);
        let user = bearer(&parts.headers).and_then(|t| st.jwt.verify(t)).ok_or_else(ApiError::unauthorized)?;
        Ok(Auth(user))
    }
}

// ---------------------------------------------------------------- users

#[derive(Deserialize)]
struct RegisterReq {
    username: String,
    password: String,
    #[serde(default)]
    nickname: Option<String>,
}

#[derive(Serialize)]
struct UserView<'a> {
    user_id: Id,
    username: &'a str,
    nickname: &'a str,
}

fn valid_username(u: &str) -> bool {
    (3..=32).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_nickname(n: &str) -> bool {
    (1..=64).contains(&n.chars().count()) && !n.trim().is_empty() && !n.chars().any(char::is_control)
}

async fn register(St(st): St<AppState>, b: Bytes) -> ApiResult<Response> {
    st.metrics.http_requests.fetch_add(1, Relaxed);
    let r: RegisterReq = body(&b)?;
    if !valid_username(&r.username) {
        return Err(ApiError::bad("invalid_username", "username must be 3-32 bytes of A-Z a-z 0-9 _ . -"));
    }
    if !(8..=128).contains(&r.password.chars().count()) {
        return Err(ApiError::bad("invalid_password", "password must be 8-128 characters"));
    }
    let nickname = r.nickname.unwrap_or_else(|| r.username.clone());
    if !valid_nickname(&nickname) {
        return Err(ApiError::bad("invalid_nickname", "nickname must be 1-64 printable characters"));
    }
    let id = st.next_id();
    let mut users = wr(&st.users);
    let Some(u) = users.register(id, &r.username, &nickname, &r.password) else {
        return Err(ApiError::new(StatusCode::CONFLICT, "username_taken", "username is taken"));
    };
    let view = UserView { user_id: Id(u.id), username: &u.username, nickname: &u.nickname };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize)]
struct LoginReq {
    username: String,
    password: String,
}

async fn login(St(st): St<AppState>, b: Bytes) -> ApiResult<Response> {
    st.metrics.http_requests.fetch_add(1, Relaxed);
    let r: LoginReq = body(&b)?;
    let user = rd(&st.users).check_password(&r.username, &r.password).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "unknown user or wrong password")
    })?;
    let (token, expires_at) =
        st.jwt.issue(user).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(json!({"token": token, "user_id": user.to_string(), "expires_at": expires_at})).into_response())
}

async fn me(St(st): St<AppState>, Auth(user): Auth) -> ApiResult<Response> {
    let users = rd(&st.users);
    let u = users.get(user).ok_or_else(ApiError::unauthorized)?;
    Ok(Json(json!({"user_id": u.id.to_string(), "username": u.username, "nickname": u.nickname, "avatar_url": ""}))
        .into_response())
}

async fn presence(St(st): St<AppState>, Auth(_): Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let user = parse_id(&id).ok_or_else(|| ApiError::bad("invalid_user_id", "user id must be a decimal u64"))?;
    let n = st.sessions.count(user);
    Ok(Json(json!({"user_id": user.to_string(), "online": n > 0, "connections": n})).into_response())
}

// ---------------------------------------------------------------- groups

#[derive(Deserialize)]
struct CreateGroupReq {
    name: String,
    #[serde(default)]
    member_ids: Option<Vec<String>>,
}

#[derive(Serialize)]
struct MemberView {
    user_id: Id,
    role: &'static str,
    joined_at: i64,
}

#[derive(Serialize)]
struct GroupView<'a> {
    group_id: Id,
    conversation_id: &'a str,
    name: &'a str,
    owner_id: Id,
    created_at: i64,
    members: Vec<MemberView>,
}

async fn create_group(St(st): St<AppState>, Auth(owner): Auth, b: Bytes) -> ApiResult<Response> {
    let r: CreateGroupReq = body(&b)?;
    let name = r.name.trim();
    if !(1..=64).contains(&name.chars().count()) || name.chars().any(char::is_control) {
        return Err(ApiError::bad("invalid_name", "group name must be 1-64 characters with no control characters"));
    }
    let mut members = Vec::with_capacity(r.member_ids.as_ref().map_or(0, Vec::len) + 1);
    members.push(owner);
    for s in r.member_ids.iter().flatten() {
        members.push(parse_id(s).ok_or_else(|| ApiError::bad("invalid_user_id", format!("bad user id {s:?}")))?);
    }
    members.sort_unstable();
    members.dedup();
    if members.len() > MAX_GROUP_MEMBERS {
        return Err(ApiError::bad("group_too_large", format!("a group holds at most {MAX_GROUP_MEMBERS} members")));
    }
    {
        let users = rd(&st.users);
        if let Some(u) = members.iter().find(|&&u| !users.exists(u)) {
            return Err(ApiError::bad("unknown_user", format!("user {u} does not exist")));
        }
    }
    let id = st.next_id();
    let now = now_ms();
    let g = Arc::new(Group {
        id,
        conversation_id: format!("g_{id}"),
        name: name.to_owned(),
        owner,
        created_at: now,
        members,
        seq: Mutex::new(0),
    });
    wr(&st.groups).insert(id, g.clone());
    system_member_joined(&st, &g, now);
    let view = GroupView {
        group_id: Id(g.id),
        conversation_id: &g.conversation_id,
        name: &g.name,
        owner_id: Id(g.owner),
        created_at: g.created_at,
        members: g
            .members
            .iter()
            .map(|&u| MemberView {
                user_id: Id(u),
                role: if u == g.owner { "owner" } else { "member" },
                joined_at: now,
            })
            .collect(),
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Like GoChat, record the creation as seq 1, a `member_joined` system message
/// pushed to the members' live connections.
fn system_member_joined(st: &State, g: &Group, now: i64) {
    let ids: Vec<Id> = g.members.iter().copied().map(Id).collect();
    let content = serde_json::value::to_raw_value(&json!({"event": "member_joined", "user_ids": ids}))
        .expect("system content serialises");
    let msg_id = st.next_id();
    let cmid = format!("sys:{msg_id}");
    let mut seq = lk(&g.seq);
    *seq += 1;
    let frame = frames::new_message(&frames::NewMessage {
        kind: "new-message",
        msg_id: Id(msg_id),
        conversation_id: &g.conversation_id,
        seq: *seq,
        sender_id: Id(g.owner),
        client_msg_id: &cmid,
        content_type: "system",
        content: &content,
        ts: now,
    });
    let n = st.sessions.deliver(&g.members, 0, &frame, &st.metrics);
    st.metrics.messages.fetch_add(1, Relaxed);
    st.metrics.deliveries.fetch_add(n, Relaxed);
    st.metrics.frames_out.fetch_add(n, Relaxed);
}

// ---------------------------------------------------------------- ops

async fn metrics(St(st): St<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}
