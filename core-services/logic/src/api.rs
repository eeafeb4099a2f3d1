//! REST API of protocol v1, served by the tokio tier (the gateway forwards
//! `/api/*`, `/readyz` and `/metrics` here). Every error body is
//! `{"error": {"code": "<snake_case>", "message": "..."}}`.

use crate::frames::MessageView;
use crate::logic::LogicError;
use crate::{auth_api, groups_api, password, privacy, Access, Logic};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gochat_common::auth::JwtKeys;
use gochat_common::convid::ConversationId;
use gochat_common::metrics::TextEncoder;
use gochat_repo::{RepoError, User};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tracing::{error, info};

/// Renders more metric families into /metrics.
pub type MetricsRenderer = Arc<dyn Fn(&mut TextEncoder) + Send + Sync>;

#[derive(Clone)]
pub struct ApiState {
    pub logic: Arc<Logic>,
    pub jwt: JwtKeys,
    /// Refresh-token lifetime (`auth.refresh_ttl_secs`).
    pub refresh_ttl_secs: u64,
    /// Password hashing with a bounded number of concurrent runs.
    pub hasher: password::Hasher,
    /// Failed logins per username (`auth.login_failures_max`).
    pub login_throttle: Arc<password::LoginThrottle>,
    /// More families for /metrics (embedded mode: the in-process task tier).
    pub extra_metrics: Option<MetricsRenderer>,
}

/// A protocol error: status + snake_case code + human message (and, for
/// 429/503, how long to wait).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    pub(crate) fn rate_limited(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self { retry_after: Some(wait), ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message) }
    }
    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        error!(error = %e, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        match self.retry_after {
            Some(wait) => {
                let ms = wait.as_millis() as u64;
                body["error"]["retry_after_ms"] = json!(ms);
                let secs = ms.div_ceil(1000).max(1);
                (self.status, [(header::RETRY_AFTER, secs.to_string())], Json(body)).into_response()
            }
            None => (self.status, Json(body)).into_response(),
        }
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        Self::internal(e)
    }
}

impl From<password::HasherError> for ApiError {
    fn from(e: password::HasherError) -> Self {
        match e {
            password::HasherError::Busy => Self {
                retry_after: Some(std::time::Duration::from_secs(1)),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    "too many logins in progress; retry shortly",
                )
            },
            e => Self::internal(e),
        }
    }
}

impl From<LogicError> for ApiError {
    fn from(e: LogicError) -> Self {
        Self::internal(e)
    }
}

/// `Json<T>` whose rejection is a protocol error body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::bad_request("invalid_json", e.body_text())),
        }
    }
}

/// `Query<T>` whose rejection is a protocol error body.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The caller, from `Authorization: Bearer <jwt>`.
pub struct AuthUser(pub u64);

impl FromRequestParts<ApiState> for AuthUser {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        auth_api::bearer_user(state, &parts.headers).await.map(AuthUser)
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(auth_api::refresh))
        .route("/api/v1/auth/logout", post(auth_api::logout))
        .route("/api/v1/users/me", get(me))
        .route("/api/v1/users/{uid}/presence", get(privacy::presence))
        .route("/api/v1/conversations/{cid}/messages", get(history))
        .route("/api/v1/groups", post(groups_api::create).get(groups_api::mine))
        .route("/api/v1/groups/{gid}", get(groups_api::get_one).delete(groups_api::dissolve))
        .route("/api/v1/groups/{gid}/members", post(groups_api::add_members))
        .route(
            "/api/v1/groups/{gid}/members/{uid}",
            axum::routing::delete(groups_api::remove_member).patch(groups_api::set_role),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        .with_state(state)
}

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    password: String,
    nickname: Option<String>,
}

fn valid_username(u: &str) -> bool {
    (3..=32).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

async fn register(State(st): State<ApiState>, ApiJson(body): ApiJson<RegisterBody>) -> Result<Response, ApiError> {
    if !valid_username(&body.username) {
        return Err(ApiError::bad_request("invalid_username", "username must be 3-32 characters of A-Z a-z 0-9 _ . -"));
    }
    if !(8..=128).contains(&body.password.chars().count()) {
        return Err(ApiError::bad_request("invalid_password", "password must be 8-128 characters"));
    }
    let nickname = body.nickname.unwrap_or_else(|| body.username.clone());
    if nickname.trim().is_empty() || nickname.chars().count() > 64 || nickname.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_nickname", "nickname must be 1-64 printable characters"));
    }
    let hash = st.hasher.hash(body.password).await?;
    let user = User {
        id: st.logic.ids().next_id(),
        username: body.username,
        password_hash: hash,
        nickname,
        avatar_url: String::new(),
        created_at: gochat_common::now_ms(),
    };
    match st.logic.store.create_user(&user).await {
        Ok(()) => {}
        Err(RepoError::UsernameTaken) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "username_taken", "username is taken"))
        }
        Err(e) => return Err(e.into()),
    }
    info!(user_id = user.id, "user registered");
    // Signed in at once: the same token fields as login.
    let mut body = auth_api::start_session(&st, user.id).await?;
    body["username"] = json!(user.username);
    body["nickname"] = json!(user.nickname);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(State(st): State<ApiState>, ApiJson(body): ApiJson<LoginBody>) -> Result<Response, ApiError> {
    if let Some(wait) = st.login_throttle.check(&body.username) {
        return Err(ApiError::rate_limited("too many failed logins for this username", wait));
    }
    let user = st.logic.store.user_by_username(&body.username).await?;
    let phc = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| password::decoy_hash(st.hasher.cost()).to_owned());
    let ok = st.hasher.verify(body.password, phc).await?;
    match user {
        Some(u) if ok => {
            st.login_throttle.succeeded(&body.username);
            Ok(Json(auth_api::start_session(&st, u.id).await?).into_response())
        }
        _ => {
            st.login_throttle.failed(&body.username);
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "wrong username or password"))
        }
    }
}

async fn me(State(st): State<ApiState>, AuthUser(uid): AuthUser) -> Result<Response, ApiError> {
    let u =
        st.logic.store.user_by_id(uid).await?.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the token's user no longer exists")
        })?;
    Ok(Json(json!({"user_id": u.id.to_string(), "username": u.username, "nickname": u.nickname, "avatar_url": u.avatar_url}))
        .into_response())
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    limit: u32,
}

#[derive(Serialize)]
struct Page<'a> {
    messages: Vec<MessageView<'a>>,
    has_more: bool,
}

async fn history(
    State(st): State<ApiState>,
    AuthUser(uid): AuthUser,
    Path(cid): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let conv = ConversationId::parse(&cid).map_err(|e| ApiError::bad_request("invalid_conversation", e.to_string()))?;
    match st.logic.access(&conv, uid).await? {
        Access::Member => {}
        Access::NotMember => {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "not_member", "you are not a member of this conversation"))
        }
        Access::UnknownGroup => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_conversation", "no such group"))
        }
    }
    let limit = st.logic.page_limit(q.limit);
    let (messages, has_more) = st.logic.member_page(&conv, uid, q.after_seq, limit).await?;
    Ok(Json(Page { messages: messages.iter().map(MessageView::from).collect(), has_more }).into_response())
}

async fn readyz(State(st): State<ApiState>) -> Response {
    match st.logic.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            error!(error = %e, "store not ready");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "store unavailable").into_response()
        }
    }
}

async fn metrics(State(st): State<ApiState>) -> Response {
    let mut enc = TextEncoder::new();
    st.logic.metrics.render(&mut enc);
    if let Some(extra) = &st.extra_metrics {
        extra(&mut enc);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], enc.finish()).into_response()
}
