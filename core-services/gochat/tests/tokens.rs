//! The token lifecycle against a real `gochat dev`: refresh rotation and
//! reuse detection, logout (one session, all sessions), revocation of open
//! WebSockets, expiry of a socket's token and its renewal with an `auth`
//! frame, the per-user connection cap, placeholder secrets and
//! `print-config` redaction.

mod support;

use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::tokens::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_a_reused_token_revokes_its_family() {
    let dir = temp_dir("tok-refresh");
    let s = Server::start(&dir, 1);
    // register signs in too
    let (status, reg) =
        post(&s, "/api/v1/auth/register", None, json!({"username": "rita", "password": "correct-horse"})).await;
    assert_eq!(status, 201);
    for k in ["token", "refresh_token", "expires_at", "refresh_expires_at", "user_id", "username"] {
        assert!(!reg[k].is_null(), "register response lacks {k}: {reg}");
    }
    let a = login_pair(&s, "rita").await;
    let other = login_pair(&s, "rita").await; // another device: another family
    let ttl_ms = a["expires_at"].as_i64().unwrap() - now_ms();
    assert!((14 * 60_000..=15 * 60_000 + 5_000).contains(&ttl_ms), "access tokens live 15 min by default: {ttl_ms}");
    assert!(a["refresh_expires_at"].as_i64().unwrap() > now_ms() + 29 * 24 * 3600 * 1000);

    let r1 = a["refresh_token"].as_str().unwrap();
    let (status, b) = refresh(&s, r1).await;
    assert_eq!(status, 200, "{b}");
    let r2 = b["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2, "rotation issues a new refresh token");
    let (status, me) = s.get("/api/v1/users/me", b["token"].as_str().unwrap()).await;
    assert_eq!((status, me["username"].as_str()), (200, Some("rita")));
    let (status, c) = refresh(&s, r2).await;
    assert_eq!(status, 200);
    let r3 = c["refresh_token"].as_str().unwrap();

    // r1 again: reuse. The family (r1, r2, r3) is revoked.
    let (status, e) = refresh(&s, r1).await;
    assert_eq!((status, code(&e)), (401, "refresh_token_reused"), "{e}");
    let (status, e) = refresh(&s, r3).await;
    assert_eq!((status, code(&e)), (401, "refresh_token_revoked"), "{e}");
    // The other device's family is untouched.
    let (status, _) = refresh(&s, other["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    // Unknown and malformed requests.
    let (status, e) = refresh(&s, "not-a-token").await;
    assert_eq!((status, code(&e)), (401, "invalid_refresh_token"));
    let (status, e) = post(&s, "/api/v1/auth/refresh", None, json!({"token": "x"})).await;
    assert_eq!((status, code(&e)), (400, "invalid_json"));

    // Logout of one session: that family's refresh token stops working.
    let d = login_pair(&s, "rita").await;
    let rd = d["refresh_token"].as_str().unwrap();
    let (status, _) = post(&s, "/api/v1/auth/logout", None, json!({"refresh_token": rd})).await;
    assert_eq!(status, 204);
    let (status, e) = refresh(&s, rd).await;
    assert_eq!((status, code(&e)), (401, "refresh_token_revoked"));
    let (status, e) = post(&s, "/api/v1/auth/logout", None, json!({})).await;
    assert_eq!((status, code(&e)), (400, "invalid_request"));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_revokes_old_access_tokens_and_closes_open_sockets() {
    let dir = temp_dir("tok-logout-all");
    let s = Server::start(&dir, 2);
    let uid = s.register("lou").await;
    let a = login_pair(&s, "lou").await;
    let b = login_pair(&s, "lou").await;
    let (ta, tb) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    let mut w1 = s.connect(ta).await;
    let mut w2 = s.connect(tb).await;
    s.wait_online(ta, &uid, 2).await;

    let (status, e) = post(&s, "/api/v1/auth/logout", None, json!({"all": true})).await;
    assert_eq!((status, code(&e)), (401, "unauthorized"), "logout of all sessions needs a bearer token");
    let (status, _) = post(&s, "/api/v1/auth/logout", Some(tb), json!({"all": true})).await;
    assert_eq!(status, 204);

    for w in [&mut w1, &mut w2] {
        assert_eq!(close_of(w, Duration::from_secs(10)).await, (1008, "session revoked".to_owned()));
    }
    for t in [ta, tb] {
        let (status, e) = s.get("/api/v1/users/me", t).await;
        assert_eq!((status, code(&e)), (401, "token_revoked"), "{e}");
    }
    for r in [&a, &b] {
        let (status, e) = refresh(&s, r["refresh_token"].as_str().unwrap()).await;
        assert_eq!((status, code(&e)), (401, "refresh_token_revoked"));
    }
    // An old token still passes the gateway's signature check, and logic
    // closes the socket as soon as it registers.
    let mut late = s.connect(ta).await;
    assert_eq!(close_of(&mut late, Duration::from_secs(10)).await, (1008, "session revoked".to_owned()));
    // A new login works, on REST and WebSocket.
    let c = login_pair(&s, "lou").await;
    let tc = c["token"].as_str().unwrap();
    assert_eq!(s.get("/api/v1/users/me", tc).await.0, 200);
    let mut w3 = s.connect(tc).await;
    s.wait_online(tc, &uid, 1).await;
    assert!(answers_ping(&mut w3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_socket_token_closes_with_1008_unless_renewed_by_an_auth_frame() {
    let dir = temp_dir("tok-expiry");
    let s = Server::start_with(
        &dir,
        1,
        &[("GOCHAT_AUTH__TOKEN_TTL_SECS", "2"), ("GOCHAT_GATEWAY__SWEEP_INTERVAL_SECS", "1")],
    );
    let uid = s.register("eve").await;
    let other = {
        s.register("mallory").await;
        login_pair(&s, "mallory").await["token"].as_str().unwrap().to_owned()
    };
    let first = login_pair(&s, "eve").await;
    let token = first["token"].as_str().unwrap();
    let mut stale = s.connect(token).await;
    let mut renewed = s.connect(token).await;
    s.wait_online(token, &uid, 2).await;

    // Bad auth frames: an error frame, and the connection stays usable.
    send(&mut renewed, json!({"type": "auth"})).await;
    assert_eq!(recv(&mut renewed).await["code"], "invalid_message");
    send(&mut renewed, json!({"type": "auth", "token": "garbage"})).await;
    assert_eq!(recv(&mut renewed).await["code"], "invalid_token");
    send(&mut renewed, json!({"type": "auth", "token": other})).await;
    assert_eq!(recv(&mut renewed).await["code"], "invalid_token");

    let started = std::time::Instant::now();
    let mut refresh_token = first["refresh_token"].as_str().unwrap().to_owned();
    let stale_close = tokio::spawn(async move { close_of(&mut stale, Duration::from_secs(10)).await });
    // Renew every second, for well past the first token's expiry.
    while started.elapsed() < Duration::from_secs(6) {
        let (status, pair) = refresh(&s, &refresh_token).await;
        assert_eq!(status, 200);
        refresh_token = pair["refresh_token"].as_str().unwrap().to_owned();
        send(&mut renewed, json!({"type": "auth", "token": pair["token"]})).await;
        let ok = recv(&mut renewed).await;
        assert_eq!(ok["type"], "auth-ok", "{ok}");
        assert_eq!(ok["expires_at"], pair["expires_at"]);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (code, reason) = stale_close.await.unwrap();
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    assert!(answers_ping(&mut renewed).await, "the renewed socket stays open");
    // Once renewals stop, it expires too.
    assert_eq!(close_of(&mut renewed, Duration::from_secs(6)).await, (1008, "token expired".to_owned()));
    let closes = s.metric("gochat_gateway_token_expired_closes_total").await;
    assert_eq!(closes.iter().map(|(_, v)| v).sum::<f64>(), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_per_user_cap_closes_the_oldest() {
    let dir = temp_dir("tok-cap");
    let s = Server::start_with(&dir, 2, &[("GOCHAT_LOGIC__MAX_CONNECTIONS_PER_USER", "3")]);
    let (uid, token) = s.user("capped").await;
    let mut socks = Vec::new();
    for n in 1..=3 {
        socks.push(s.connect(&token).await);
        s.wait_online(&token, &uid, n).await;
    }
    let mut fourth = s.connect(&token).await;
    let mut oldest = socks.remove(0);
    assert_eq!(close_of(&mut oldest, Duration::from_secs(10)).await, (1008, "connection limit reached".to_owned()));
    s.wait_online(&token, &uid, 3).await;
    for w in socks.iter_mut().chain([&mut fourth]) {
        assert!(answers_ping(w).await, "the 3 newest stay open");
    }
    // Another user is not affected by this one's cap.
    let (_, t2) = s.user("free").await;
    let mut w = s.connect(&t2).await;
    assert!(answers_ping(&mut w).await);
}

fn gochat(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gochat"));
    cmd.args(args).env_remove("GOCHAT_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn a_placeholder_secret_is_refused_at_startup() {
    let dir = temp_dir("tok-placeholder");
    let d = dir.to_str().unwrap();
    let secret = ("GOCHAT_AUTH__JWT_SECRET", "CHANGE-ME-to-the-same-32+-byte-secret-logic-uses");
    for args in [&["dev", "--listen", "127.0.0.1:0", "--data-dir", d][..], &["gateway", "--listen", "127.0.0.1:0"]] {
        let out = gochat(args, &[secret]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started with a placeholder secret");
        assert!(stderr.contains("auth.jwt_secret") && stderr.contains("placeholder"), "{stderr}");
    }
    let out = gochat(&["print-config"], &[("GOCHAT_TASK__PUSH_WEBHOOK_SECRET", "change-me")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("task.push_webhook_secret"));
}

#[test]
fn print_config_redacts_secrets() {
    let secret = "a-real-secret-of-more-than-32-bytes-0123456789";
    let out = gochat(
        &["print-config"],
        &[
            ("GOCHAT_AUTH__JWT_SECRET", secret),
            ("GOCHAT_STORAGE__DATABASE_URL", "mysql://gochat:hunter2@db.internal:3306/gochat"),
            ("GOCHAT_REDIS__URL", "redis://:redispw@cache.internal:6379"),
            ("GOCHAT_TASK__PUSH_WEBHOOK_SECRET", "webhook-key-xyz"),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for leaked in [secret, "hunter2", "redispw", "webhook-key-xyz"] {
        assert!(!text.contains(leaked), "print-config leaks {leaked}:\n{text}");
    }
    assert!(text.contains("mysql://gochat:***@db.internal:3306/gochat"), "{text}");
    assert!(text.contains("redis://:***@cache.internal:6379"), "{text}");
    assert!(text.contains("jwt_secret = \"<redacted>\""), "{text}");
}
