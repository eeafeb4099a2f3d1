//! gochat-loadtest against a real `gochat dev` process (built by `cargo build -p gochat`).

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use support::*;

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run gochat-loadtest with the common flags plus `args`; returns (output, report).
    fn loadtest(&self, users: &Path, args: &[&str]) -> (Output, Value) {
        let report = self.dir.join(format!("report-{}.json", std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()));
        let out = Command::new(env!("CARGO_BIN_EXE_gochat-loadtest"))
            .args(["--url", &self.url, "--metrics-url", &format!("{}/metrics", self.admin_url), "--users-file"])
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

fn fanout_server(name: &str) -> Server {
    start_server_with(name, &[("GOCHAT_AUTH__ARGON2_MEMORY_KIB", "64"), ("GOCHAT_AUTH__ARGON2_ITERATIONS", "1")])
}

#[test]
fn fanout_40_members_two_procs() {
    let srv = fanout_server("fanout");
    let users = srv.dir.join("users.json");
    let (out, rep) = srv.loadtest(
        &users,
        &[
            "--procs",
            "2",
            "fanout",
            "--members",
            "40",
            "--senders",
            "2",
            "--rate",
            "10",
            "--duration",
            "1",
            "--grace",
            "2",
            "--ramp",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", show(&out, &rep));
    assert_eq!(rep["pass"], true, "{}", show(&out, &rep));
    let c = &rep["counts"];
    assert_eq!(c["receivers"], 40, "{}", show(&out, &rep));
    assert_eq!(c["sent"], 10);
    assert_eq!(c["acked"], 10);
    assert_eq!(c["delivered"], 10 * 39, "every member but the sender got each message");
    assert_eq!((c["missing"].as_u64(), c["duplicates"].as_u64()), (Some(0), Some(0)));
    assert!(f(&rep["latency_ms"]["p99"]) > 0.0 && f(&rep["throughput"]["delivered_per_sec"]) > 0.0, "{rep}");
}

#[test]
fn fanout_detects_injected_duplicate_and_missing_deliveries() {
    let srv = fanout_server("fanout-faults");
    let users = srv.dir.join("users.json");
    for (flag, counter) in [("--inject-duplicate", "duplicates"), ("--inject-missing", "missing")] {
        let (out, rep) = srv.loadtest(
            &users,
            &[
                "fanout",
                "--members",
                "5",
                "--senders",
                "1",
                "--rate",
                "5",
                "--duration",
                "1",
                "--grace",
                "2",
                "--ramp",
                "1",
                flag,
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{flag} must fail the run: {}", show(&out, &rep));
        assert_eq!(rep["pass"], false);
        assert_eq!(rep["counts"][counter], 1, "{flag}: {}", show(&out, &rep));
    }
}

#[test]
fn storm_everyone_reconnects() {
    let srv = fanout_server("storm");
    let users = srv.dir.join("users.json");
    let (out, rep) = srv.loadtest(
        &users,
        &["--procs", "2", "storm", "--connections", "200", "--users", "20", "--rate", "1000", "--hold", "0.5"],
    );
    assert!(out.status.success(), "{}", show(&out, &rep));
    let c = &rep["counts"];
    assert_eq!((c["initial_established"].as_u64(), c["reconnected"].as_u64()), (Some(200), Some(200)), "{rep}");
    assert!(f(&rep["throughput"]["reconnects_per_sec"]) > 0.0, "{rep}");
    assert_eq!(rep["latency_ms"]["count"], 200);
}

#[test]
fn mixed_blend_passes_and_writes_a_plot() {
    let srv = fanout_server("mixed");
    let users = srv.dir.join("users.json");
    let (out, rep) = srv.loadtest(
        &users,
        &[
            "mixed",
            "--idle",
            "30",
            "--pairs",
            "3",
            "--pair-rate",
            "5",
            "--group-members",
            "12",
            "--group-senders",
            "2",
            "--group-rate",
            "5",
            "--duration",
            "2",
            "--grace",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", show(&out, &rep));
    let c = &rep["counts"];
    assert_eq!(c["idle.held_ok"], 30, "{rep}");
    assert_eq!(c["pingpong.delivered"], c["pingpong.acked"], "{rep}");
    assert_eq!(c["group.delivered"].as_u64().unwrap(), c["group.acked"].as_u64().unwrap() * 11, "{rep}");
    assert_eq!((c["missing"].as_u64(), c["duplicates"].as_u64()), (Some(0), Some(0)));
    let timeline = rep["latency_timeline_ms"].as_array().unwrap();
    assert!(!timeline.is_empty() && timeline.iter().all(|t| t["p99"].as_f64().is_some()), "{rep}");
    let svg_path = std::fs::read_dir(&srv.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .expect("a plot next to the report");
    let svg = std::fs::read_to_string(svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("latency over time") && svg.contains("latency distribution"));
}
