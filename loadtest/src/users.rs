//! Test users: registered and logged in through the REST API (in parallel),
//! cached in a JSON file so that reruns reuse them.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

const PASSWORD: &str = "loadtest-password-1";
const PARALLEL: usize = 16;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct User {
    pub username: String,
    pub password: String,
    pub user_id: String,
    pub token: String,
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Cache {
    url: String,
    users: Vec<User>,
}

pub fn username(prefix: &str, i: usize) -> String {
    format!("{prefix}_{i:07}")
}

/// Read the first `n` users from the cache file, which must hold them (workers use this).
pub fn load(path: &Path, prefix: &str, n: usize) -> Result<Vec<User>> {
    let cache: Cache = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("read {path:?}"))?)?;
    let by_name: HashMap<&str, &User> = cache.users.iter().map(|u| (u.username.as_str(), u)).collect();
    (0..n)
        .map(|i| {
            let name = username(prefix, i);
            by_name.get(name.as_str()).map(|u| (*u).clone()).with_context(|| format!("{name} missing from {path:?}"))
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Make sure users `{prefix}_0000000 .. n-1` exist and hold valid tokens; returns them in order.
/// Cached tokens are checked on a sample (a restarted server with a new secret rejects them all);
/// users not in the cache are registered (409 `username_taken` is fine) and logged in.
/// Every token must stay valid for `need_secs` (the whole run): a WebSocket
/// whose token expires is closed by the server, and the load test does not
/// renew tokens. Against a server whose tokens live shorter (the default
/// `auth.token_ttl_secs` is 15 min) it fails with advice instead.
pub async fn ensure(
    http: &reqwest::Client,
    base: &str,
    path: &Path,
    prefix: &str,
    n: usize,
    need_secs: f64,
) -> Result<Vec<User>> {
    let mut cache: Cache = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Cache::default(),
    };
    if cache.url != base {
        cache = Cache { url: base.to_owned(), users: Vec::new() };
    }
    let mut by_name: HashMap<String, User> = cache.users.drain(..).map(|u| (u.username.clone(), u)).collect();
    // Check a sample of the cached tokens against the server.
    let soon = now_ms() + (need_secs * 1000.0) as u64 + 60_000;
    let sample: Vec<User> =
        (0..n).filter_map(|i| by_name.get(&username(prefix, i)).cloned()).step_by((n / 8).max(1)).take(8).collect();
    let mut valid = true;
    for u in &sample {
        let r = http.get(format!("{base}/api/v1/users/me")).bearer_auth(&u.token).send().await?;
        let ok = r.status() == 200 && r.json::<Value>().await?["user_id"].as_str() == Some(u.user_id.as_str());
        valid &= ok;
    }
    let mut reused = 0;
    let mut todo = Vec::new();
    for i in 0..n {
        let name = username(prefix, i);
        match by_name.get(&name) {
            Some(u) if valid && u.expires_at > soon => reused += 1,
            Some(_) => todo.push((name, true)),
            None => todo.push((name, false)),
        }
    }
    let fresh: Vec<Result<User>> = futures_util::stream::iter(todo)
        .map(|(name, known)| provision(http, base, name, known))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let made = fresh.len();
    for u in fresh {
        let u = u?;
        by_name.insert(u.username.clone(), u);
    }
    eprintln!("gochat-loadtest: users: {reused} reused from {path:?}, {made} logged in or registered");
    if let Some(short) =
        by_name.values().filter(|u| u.expires_at > 0 && u.expires_at <= soon).map(|u| u.expires_at).min()
    {
        let left = short.saturating_sub(now_ms()) / 1000;
        bail!(
            "the server's access tokens expire in {left} s, before this run ends ({need_secs:.0} s + 60 s): \
             start it with a longer auth.token_ttl_secs (e.g. GOCHAT_AUTH__TOKEN_TTL_SECS=86400)"
        );
    }
    cache.users = by_name.into_values().collect();
    cache.users.sort_by(|a, b| a.username.cmp(&b.username));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cache)?)?;
    std::fs::rename(&tmp, path)?;
    load(path, prefix, n)
}

async fn provision(http: &reqwest::Client, base: &str, name: String, known: bool) -> Result<User> {
    if known {
        if let Some(u) = login(http, base, &name).await? {
            return Ok(u);
        }
    }
    let r = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await?;
    let status = r.status().as_u16();
    if status != 201 && status != 409 {
        bail!("register {name}: HTTP {status}: {}", r.text().await.unwrap_or_default());
    }
    login(http, base, &name).await?.with_context(|| format!("login {name} refused after registering"))
}

async fn login(http: &reqwest::Client, base: &str, name: &str) -> Result<Option<User>> {
    let r = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await?;
    match r.status().as_u16() {
        200 => {
            let v: Value = r.json().await?;
            Ok(Some(User {
                username: name.to_owned(),
                password: PASSWORD.to_owned(),
                user_id: v["user_id"].as_str().context("login: no user_id")?.to_owned(),
                token: v["token"].as_str().context("login: no token")?.to_owned(),
                expires_at: v["expires_at"].as_u64().unwrap_or(0),
            }))
        }
        401 => Ok(None),
        s => bail!("login {name}: HTTP {s}: {}", r.text().await.unwrap_or_default()),
    }
}
