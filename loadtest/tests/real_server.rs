//! gochat-loadtest against a real `gochat dev` process (built by `cargo build -p gochat`).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Server {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn gochat_bin() -> PathBuf {
    // target/debug/deps/real_server-HASH -> target/debug/gochat
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("gochat")).unwrap();
    assert!(
        bin.is_file(),
        "the gochat binary is missing at {bin:?}: build it first with `cargo build -p gochat` (same target dir)"
    );
    bin
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("gochat-lt-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start `gochat dev` on port 0 and wait for its "gochat ready" line.
fn start_server(name: &str) -> Server {
    start_server_with(name, &[])
}

fn start_server_with(name: &str, env: &[(&str, &str)]) -> Server {
    let dir = temp_dir(name);
    let mut child = Command::new(gochat_bin())
        .envs(env.iter().copied())
        .args(["dev", "--listen", "127.0.0.1:0", "--shards", "1", "--log-format", "json", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gochat");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "gochat ready" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                        sent = true;
                    }
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => Server { child, url: format!("http://{addr}"), dir },
        Err(_) => {
            let _ = child.kill();
            panic!("gochat dev did not report ready within 60 s");
        }
    }
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run gochat-loadtest with the common flags plus `args`; returns (output, report).
    fn loadtest(&self, users: &Path, args: &[&str]) -> (Output, Value) {
        let report = self.dir.join(format!("report-{}.json", std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()));
        let out = Command::new(env!("CARGO_BIN_EXE_gochat-loadtest"))
            .args(["--url", &self.url, "--users-file"])
            .arg(users)
            .arg("--report")
            .arg(&report)
            .args(args)
            .output()
            .expect("run gochat-loadtest");
        let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!(
                "no report ({e}); stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, serde_json::from_str(&text).expect("report is JSON"))
    }
}

fn show(out: &Output, rep: &Value) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}\nreport: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        serde_json::to_string_pretty(rep).unwrap()
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn assert_connect_ok(out: &Output, rep: &Value, n: u64) {
    let s = show(out, rep);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_eq!(rep["scenario"], "connect", "{s}");
    assert_eq!(rep["pass"], true, "{s}");
    assert_eq!(rep["counts"]["attempted"], n, "{s}");
    assert_eq!(rep["counts"]["established"], n, "{s}");
    assert_eq!(rep["counts"]["held_ok"], n, "{s}");
    assert_eq!(rep["failures"].as_object().unwrap().len(), 0, "{s}");
    assert_eq!(rep["latency_ms"]["count"], n, "{s}");
    let p50 = f(&rep["latency_ms"]["p50"]);
    assert!(p50 > 0.0 && p50 < 1000.0, "{s}");
    assert!(f(&rep["latency_ms"]["max"]) >= f(&rep["latency_ms"]["p99"]), "{s}");
    assert!(f(&rep["throughput"]["handshakes_per_sec"]) > 0.0, "{s}");
    assert!(rep["counts"]["pongs_received"].as_u64().unwrap() >= n, "{s}");
}

fn assert_pingpong_ok(out: &Output, rep: &Value, pairs: u64, rate: f64, duration: f64) {
    let s = show(out, rep);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_eq!(rep["scenario"], "pingpong", "{s}");
    assert_eq!(rep["pass"], true, "{s}");
    assert_eq!(rep["counts"]["pairs"], pairs, "{s}");
    assert_eq!(rep["counts"]["missing"], 0, "{s}");
    assert_eq!(rep["counts"]["duplicates"], 0, "{s}");
    assert_eq!(rep["counts"]["seq_gaps"], 0, "{s}");
    assert_eq!(rep["failures"].as_object().unwrap().len(), 0, "{s}");
    let expected = pairs as f64 * rate * duration;
    let delivered = f(&rep["counts"]["delivered"]);
    assert!((delivered - expected).abs() <= expected * 0.2, "delivered {delivered} vs {expected}: {s}");
    assert_eq!(rep["counts"]["acked"], rep["counts"]["sent"], "{s}");
    assert_eq!(rep["latency_ms"]["count"].as_f64(), Some(delivered), "{s}");
    let p50 = f(&rep["latency_ms"]["p50"]);
    assert!(p50 > 0.0 && p50 < 1000.0, "{s}");
    let dps = f(&rep["throughput"]["delivered_per_sec"]);
    assert!((dps - pairs as f64 * rate).abs() <= pairs as f64 * rate * 0.2, "{s}");
}

#[test]
fn connect_50_connections() {
    let srv = start_server("connect");
    let users = srv.dir.join("users.json");
    let pid = srv.pid().to_string();
    let (out, rep) =
        srv.loadtest(&users, &["--server-pid", &pid, "connect", "--connections", "50", "--rate", "200", "--hold", "2"]);
    assert_connect_ok(&out, &rep, 50);
    let s = show(&out, &rep);
    // Server-side figures from /proc and /metrics.
    assert!(rep["server"]["rss_before_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(rep["server"]["rss_peak_bytes"].as_u64().unwrap() >= rep["server"]["rss_before_bytes"].as_u64().unwrap());
    assert!(f(&rep["server"]["cpu_seconds"]) >= 0.0, "{s}");
    assert!(rep["server"]["rss_per_connection_bytes"].is_u64(), "{s}");
    assert_eq!(
        rep["server"]["metrics_delta"]["gochat_gateway_upgrades_total{gateway=\"gw0\",shard=\"0\"}"], 50.0,
        "{s}"
    );
    // A rerun reuses the cached credentials instead of registering again.
    let (out, rep) = srv.loadtest(&users, &["connect", "--connections", "50", "--rate", "200", "--hold", "0.5"]);
    assert_connect_ok(&out, &rep, 50);
    assert!(String::from_utf8_lossy(&out.stderr).contains("users: 50 reused"), "{}", show(&out, &rep));
}

#[test]
fn connect_two_procs_with_source_ips() {
    let srv = start_server("connect2");
    let users = srv.dir.join("users.json");
    let (out, rep) = srv.loadtest(
        &users,
        &[
            "--procs",
            "2",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
            "connect",
            "--connections",
            "50",
            "--rate",
            "200",
            "--hold",
            "1",
        ],
    );
    assert_connect_ok(&out, &rep, 50);
    assert_eq!(rep["procs"], 2);
}

#[test]
fn pingpong_3_pairs() {
    let srv = start_server("pingpong");
    let users = srv.dir.join("users.json");
    let pid = srv.pid().to_string();
    let (out, rep) =
        srv.loadtest(&users, &["--server-pid", &pid, "pingpong", "--pairs", "3", "--rate", "20", "--duration", "3"]);
    assert_pingpong_ok(&out, &rep, 3, 20.0, 3.0);
    assert!(f(&rep["server"]["cpu_seconds"]) > 0.0, "{}", show(&out, &rep));
}

#[test]
fn pingpong_two_procs_with_source_ips() {
    let srv = start_server("pingpong2");
    let users = srv.dir.join("users.json");
    let (out, rep) = srv.loadtest(
        &users,
        &[
            "--procs",
            "2",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
            "pingpong",
            "--pairs",
            "3",
            "--rate",
            "20",
            "--duration",
            "3",
        ],
    );
    assert_pingpong_ok(&out, &rep, 3, 20.0, 3.0);
    assert_eq!(rep["procs"], 2);
}

#[test]
fn injected_duplicate_fails_the_run() {
    let srv = start_server("dup");
    let users = srv.dir.join("users.json");
    let (out, rep) =
        srv.loadtest(&users, &["pingpong", "--pairs", "3", "--rate", "20", "--duration", "1", "--inject-duplicate"]);
    let s = show(&out, &rep);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(rep["pass"], false, "{s}");
    assert_eq!(rep["counts"]["duplicates"], 1, "{s}");
    assert_eq!(rep["counts"]["missing"], 0, "{s}");
    assert!(rep["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("duplicate")), "{s}");
}

#[test]
fn refused_connections_are_counted_and_fail_the_run() {
    // The server accepts 20 sockets; the rest of the 40 get 503 over_capacity.
    let srv = start_server_with("capacity", &[("GOCHAT_GATEWAY__MAX_CONNECTIONS", "20")]);
    let users = srv.dir.join("users.json");
    let (out, rep) = srv.loadtest(&users, &["connect", "--connections", "40", "--rate", "200", "--hold", "0.5"]);
    let s = show(&out, &rep);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(rep["pass"], false, "{s}");
    assert_eq!(rep["counts"]["attempted"], 40, "{s}");
    let refused = rep["failures"]["http_503"].as_u64().unwrap_or(0);
    assert!(refused >= 20, "{s}");
    assert_eq!(rep["counts"]["established"].as_u64().unwrap_or(0) + refused, 40, "{s}");
    assert!(rep["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("error rate")), "{s}");
}

#[test]
fn cached_users_survive_a_new_server() {
    // The server behind the cached URL was replaced (new JWT secret, no such users):
    // the cached tokens are rejected, so the users are registered again and the run passes.
    let users_dir = temp_dir("cache");
    let users = users_dir.join("users.json");
    let a = start_server("cache-a");
    let (out, rep) = a.loadtest(&users, &["connect", "--connections", "4", "--rate", "100", "--hold", "0.2"]);
    assert_connect_ok(&out, &rep, 4);
    drop(a);
    let b = start_server("cache-b");
    let mut cache: Value = serde_json::from_slice(&std::fs::read(&users).unwrap()).unwrap();
    assert_eq!(cache["users"].as_array().unwrap().len(), 4);
    cache["url"] = Value::String(b.url.clone());
    std::fs::write(&users, cache.to_string()).unwrap();
    let (out, rep) = b.loadtest(&users, &["connect", "--connections", "4", "--rate", "100", "--hold", "0.2"]);
    assert_connect_ok(&out, &rep, 4);
    assert!(String::from_utf8_lossy(&out.stderr).contains("users: 0 reused"), "{}", show(&out, &rep));
    let _ = std::fs::remove_dir_all(users_dir);
}

#[test]
fn refuses_a_remote_server() {
    let out = Command::new(env!("CARGO_BIN_EXE_gochat-loadtest"))
        .args(["--url", "http://192.0.2.1:8080", "connect", "--connections", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}
