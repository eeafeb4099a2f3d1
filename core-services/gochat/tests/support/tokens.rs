//! Helpers for the token lifecycle tests: token pairs, auth calls, close frames.

use super::{call_with, recv_within, send, Server, Ws};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Log in: the whole response ({token, expires_at, refresh_token, refresh_expires_at, user_id}).
pub async fn login_pair(s: &Server, username: &str) -> Value {
    let (status, v) =
        post(s, "/api/v1/auth/login", None, json!({"username": username, "password": "correct-horse"})).await;
    assert_eq!(status, 200, "login {username}: {v}");
    v
}

/// POST a JSON body (with a bearer token when given): (status, body or Null).
pub async fn post(s: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    call_with(s, reqwest::Method::POST, path, token, Some(body)).await
}

/// Rotate a refresh token: (status, body).
pub async fn refresh(s: &Server, refresh_token: &str) -> (u16, Value) {
    post(s, "/api/v1/auth/refresh", None, json!({"refresh_token": refresh_token})).await
}

/// The error code of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Wait (up to `within`) for the server's close frame: (code, reason).
/// Text frames before it are skipped.
pub async fn close_of(ws: &mut Ws, within: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {within:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => return (f.code.into(), f.reason.to_string()),
            Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The connection still answers a ping with a pong.
pub async fn answers_ping(ws: &mut Ws) -> bool {
    send(ws, json!({"type": "ping"})).await;
    loop {
        match recv_within(ws, Duration::from_secs(5)).await {
            Some(v) if v["type"] == "pong" => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}
