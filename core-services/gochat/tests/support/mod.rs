//! Drives a real `gochat dev` process: spawned from the built binary on port
//! 0, talked to with a real HTTP client and real WebSocket clients.
#![allow(dead_code)]

pub mod groups;
pub mod privacy;
pub mod tokens;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Where /metrics and /readyz are served: a gateway's admin listener,
    /// or `addr` for processes that serve them on their own API port.
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gochat-it-{name}-{}-{}", std::process::id(), gochat_common_now()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gochat_common_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

impl Server {
    pub fn start(data_dir: &Path, shards: usize) -> Self {
        Self::start_with(data_dir, shards, &[])
    }

    /// Start `gochat dev` and wait for its "gochat ready" log line.
    pub fn start_with(data_dir: &Path, shards: usize, env: &[(&str, &str)]) -> Self {
        let shards = shards.to_string();
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--shards", shards.as_str(), "--data-dir"];
        let dir = data_dir.to_str().unwrap().to_owned();
        args.push(&dir);
        let (child, ready) = spawn_ready(&args, env);
        let addr = ready["addr"].as_str().unwrap().parse().unwrap();
        let admin = ready["admin"].as_str().unwrap().parse().unwrap();
        Server { child, addr, admin, data_dir: data_dir.to_owned(), http: reqwest::Client::new() }
    }

    /// A process already started with [`spawn_ready`], reachable over HTTP
    /// at `addr`; a gateway's ready line also names its admin listener.
    pub fn attach(child: Child, addr: SocketAddr) -> Self {
        Server { child, addr, admin: addr, data_dir: PathBuf::new(), http: reqwest::Client::new() }
    }

    /// [`Self::attach`] for a gateway: `addr` and `admin` from its ready line.
    pub fn attach_gateway(child: Child, ready: &Value) -> Self {
        let mut s = Self::attach(child, ready["addr"].as_str().unwrap().parse().unwrap());
        s.admin = ready["admin"].as_str().unwrap().parse().unwrap();
        s
    }

    /// A URL on the operational listener (/metrics, /readyz).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: a crash, no cleanup.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not stop within 10s of SIGTERM");
    }

    pub async fn register(&self, username: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/v1/auth/register"))
            .json(&json!({"username": username, "password": "correct-horse", "nickname": format!("{username} nick")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "register {username}");
        let v: Value = r.json().await.unwrap();
        v["user_id"].as_str().unwrap().to_owned()
    }

    pub async fn login(&self, username: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"username": username, "password": "correct-horse"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login {username}");
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// Register + login: (user_id, token).
    pub async fn user(&self, username: &str) -> (String, String) {
        let id = self.register(username).await;
        (id, self.login(username).await)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn connect(&self, token: &str) -> Ws {
        let (ws, resp) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", self.addr)).await.expect("ws connect");
        assert_eq!(resp.status(), 101);
        ws
    }

    /// Wait until conversation `cid` has a stored message. A group's
    /// creation is stored as seq 1 asynchronously; a test that connects
    /// after it and expects only its own traffic waits for it first.
    pub async fn wait_first_message(&self, cid: &str, token: &str) {
        for _ in 0..200 {
            let (_, h) = self.get(&format!("/api/v1/conversations/{cid}/messages"), token).await;
            if h["messages"].as_array().is_some_and(|m| !m.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("conversation {cid} has no stored message after 4 s");
    }

    /// Wait until logic has registered `n` live connections of `user_id`.
    /// `token` must be allowed to see that presence: `user_id`'s own, or
    /// one of a user who shares a conversation with them (docs/protocol.md §2.4).
    pub async fn wait_online(&self, token: &str, user_id: &str, n: u64) {
        for _ in 0..200 {
            let (s, v) = self.get(&format!("/api/v1/users/{user_id}/presence"), token).await;
            assert_eq!(s, 200, "presence of {user_id}: {v}");
            if v["connections"].as_u64() == Some(n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("user {user_id} never had {n} connections");
    }

    pub async fn metric(&self, name: &str) -> Vec<(String, f64)> {
        let text = self.http.get(self.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }
}

/// Run `gochat ARGS` (JSON logs) and wait for its "gochat ready" line, which is returned.
pub fn spawn_ready(args: &[&str], env: &[(&str, &str)]) -> (Child, Value) {
    spawn_ready_with_nofile(args, env, None)
}

/// Like [`spawn_ready`], with the process's open-file limit (soft and hard) set to `nofile`.
pub fn spawn_ready_with_nofile(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> (Child, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gochat"));
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                let rl = libc::rlimit { rlim_cur: n, rlim_max: n };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.args(args)
        .args(["--log-format", "json"])
        // Gateways' operational listener on a free port (the ready line names it).
        .env("GOCHAT_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", std::env::var("GOCHAT_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn gochat");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // "logic#2": the subcommand and, in a cluster, which one.
    let mut tag = args.first().copied().unwrap_or("").to_owned();
    if let Some((_, w)) = env.iter().find(|(k, _)| *k == "GOCHAT_WORKER_ID" || *k == "GOCHAT_GATEWAY__ID") {
        tag = format!("{tag}#{w}");
    }
    std::thread::spawn(move || {
        // Keep draining so the process never blocks on a full pipe.
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Warnings, errors and lifecycle lines always reach the test's stderr
            // (shown when it fails); everything with GOCHAT_TEST_LOGS set.
            // Lines that are not JSON log records (a fatal `Error: ...` at
            // exit, a panic) are always shown too.
            let loud = !line.starts_with('{')
                || line.contains(r#""level":"WARN""#)
                || line.contains(r#""level":"ERROR""#)
                || line.contains(r#""message":"partitions "#)
                || line.contains(r#""message":"gochat ready""#);
            if loud || std::env::var_os("GOCHAT_TEST_LOGS").is_some() {
                eprintln!("[{tag}] {line}");
            }
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "gochat ready" {
                        let _ = tx.send(v);
                        sent = true;
                    }
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(v) => (child, v),
        Err(_) => {
            let _ = child.kill();
            panic!("gochat {args:?} did not report ready (set GOCHAT_TEST_LOGS=1 to see its logs)");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Next JSON text frame (control frames skipped), or panic after 30 s.
pub async fn recv(ws: &mut Ws) -> Value {
    recv_within(ws, Duration::from_secs(30)).await.expect("no frame within 30s")
}

pub async fn recv_within(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("server sent invalid JSON")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Wait for the close frame; returns its code.
pub async fn recv_close(ws: &mut Ws) -> CloseCode {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no close within 10s") {
            Some(Ok(Message::Close(Some(f)))) => return f.code,
            Some(Ok(Message::Close(None))) => return CloseCode::Status,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub fn text_msg(cmid: &str, to: &str, text: &str) -> Value {
    json!({"type": "send-message", "client_msg_id": cmid, "to_user_id": to, "content_type": "text", "content": {"text": text}})
}

pub fn conv_id(a: &str, b: &str) -> String {
    let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
    format!("s_{}_{}", a.min(b), a.max(b))
}

/// Raise this test process's soft open-file limit to its hard limit (big
/// scenarios hold thousands of client sockets).
pub fn raise_nofile() {
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Fast password hashing for tests that register thousands of users.
pub const CHEAP_ARGON2: [(&str, &str); 2] =
    [("GOCHAT_AUTH__ARGON2_MEMORY_KIB", "64"), ("GOCHAT_AUTH__ARGON2_ITERATIONS", "1")];

/// An HTTP call with an optional bearer token and JSON body: (status, body
/// or Null when the body is not JSON).
pub async fn call_with(
    srv: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = srv.http.request(method, srv.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// [`call_with`] as a user.
pub async fn call(srv: &Server, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    call_with(srv, method, path, Some(token), body).await
}
