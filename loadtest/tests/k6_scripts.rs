//! The k6 scripts in `loadtest/k6/` kept runnable without k6 (which cannot be
//! installed here): every script and the shim must parse, and each script runs
//! through the Node.js shim of the k6 APIs (`loadtest/k6/shim/run.mjs`) against
//! a real `gochat dev` (built by `cargo build -p gochat`) in a tiny
//! configuration. Needs `node` and `npm` on PATH: the shim's one dependency
//! (`ws`) is installed with `npm ci` when missing. See `loadtest/k6/README.md`.

use serde_json::Value;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::{start_server_with, temp_dir, Server};

const SCRIPTS: [&str; 3] = ["connect.js", "pingpong.js", "fanout.js"];

/// `gochat dev` on port 0 with cheap password hashing (registration is in setup()).
fn start_server(name: &str) -> Server {
    start_server_with(name, &[("GOCHAT_AUTH__ARGON2_MEMORY_KIB", "64"), ("GOCHAT_AUTH__ARGON2_ITERATIONS", "1")])
}

// ------------------------------------------------------------------ shim ---

fn k6_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k6")
}

fn tool_version(tool: &str) -> String {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("`{tool}` is needed to check the k6 scripts (Node.js >= 20 with npm): {e}"));
    assert!(out.status.success(), "`{tool} --version` failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// `npm ci` in the shim directory unless the locked `ws` is already installed.
/// Serialised across test processes with an flock.
fn ensure_shim_deps() {
    let node = tool_version("node");
    let major: u32 = node.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 20, "the k6 shim needs Node.js >= 20, found {node}");
    tool_version("npm");
    let shim = k6_dir().join("shim");
    let lock = File::create(std::env::temp_dir().join("gochat-k6-shim-npm-ci.lock")).unwrap();
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
    let want = json_file(&shim.join("package-lock.json"))["packages"]["node_modules/ws"]["version"].clone();
    let installed = shim.join("node_modules/ws/package.json");
    if installed.is_file() && json_file(&installed)["version"] == want {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&shim)
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci --prefix {shim:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_file(&installed)["version"], want, "npm ci installed another ws");
}

struct Run {
    out: Output,
    summary: Value,
}

impl Run {
    fn text(&self) -> String {
        format!(
            "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.out.status.code(),
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }

    fn metric(&self, name: &str, value: &str) -> f64 {
        self.summary["metrics"][name]["values"][value]
            .as_f64()
            .unwrap_or_else(|| panic!("no {name}.{value} in the summary: {}", self.text()))
    }

    /// Every threshold of the script was evaluated and passed.
    fn assert_passed(&self) {
        let s = self.text();
        assert_eq!(self.out.status.code(), Some(0), "{s}");
        assert!(String::from_utf8_lossy(&self.out.stdout).contains("k6 shim summary"), "{s}");
        let metrics = self.summary["metrics"].as_object().expect("metrics");
        let mut n = 0;
        for (name, m) in metrics {
            for (expr, r) in m["thresholds"].as_object().unwrap() {
                assert_eq!(r["ok"], true, "threshold {name} {expr}: {s}");
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} thresholds were evaluated: {s}");
        assert_eq!(self.summary["problems"].as_array().map(Vec::len), Some(0), "{s}");
        for (name, c) in self.summary["checks"].as_object().unwrap() {
            assert_eq!(c["fails"], 0, "check {name}: {s}");
        }
        assert!(self.metric("checks", "passes") > 0.0, "{s}");
    }
}

/// Run `node shim/run.mjs -e BASE_URL=... -e K=V... --summary-export F script`.
fn shim(srv_url: &str, dir: &Path, script: &str, vars: &[(&str, &str)], env: &[(&str, &str)]) -> Run {
    ensure_shim_deps();
    let summary = dir.join(format!("{script}.summary.json"));
    let mut cmd = Command::new("node");
    cmd.current_dir(k6_dir()).arg("shim/run.mjs").args(["-e", &format!("BASE_URL={srv_url}")]);
    for (k, v) in vars {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    let out = cmd
        .arg("--summary-export")
        .arg(&summary)
        .arg(script)
        .env_remove("K6_INJECT_MISSING")
        .envs(env.iter().copied())
        .output()
        .expect("run node");
    let summary = if summary.is_file() { json_file(&summary) } else { Value::Null };
    Run { out, summary }
}

// ----------------------------------------------------------------- tests ---

#[test]
fn scripts_and_shim_parse_and_inspect() {
    ensure_shim_deps();
    let k6 = k6_dir();
    let mut files: Vec<PathBuf> = SCRIPTS.iter().map(|s| k6.join(s)).collect();
    files.push(k6.join("lib/protocol.js"));
    for sub in ["shim", "shim/lib", "shim/k6"] {
        for e in std::fs::read_dir(k6.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "mjs") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 14, "{files:?}");
    for f in &files {
        let out = Command::new("node")
            .args(["--input-type=module", "--check"])
            .stdin(File::open(f).unwrap())
            .output()
            .expect("node --check");
        assert!(out.status.success(), "{f:?} does not parse:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    // `inspect` loads each script in the init context (imports resolve to the
    // shim's k6 modules, options are built from __ENV) and validates the
    // scenarios and every threshold expression, without touching a server.
    for script in SCRIPTS {
        let out = Command::new("node")
            .current_dir(&k6)
            .args(["shim/run.mjs", "inspect", "-e", "PAIRS=3", "-e", "MEMBERS=7", "-e", "CONNECTIONS=5", script])
            .output()
            .unwrap();
        let s = format!("{script}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{s}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {s}"));
        let want_vus = match script {
            "connect.js" => 5,
            "pingpong.js" => 6,
            _ => 7,
        };
        assert_eq!(v["vus"], want_vus, "{s}");
        let th = v["thresholds"].as_array().unwrap();
        assert!(th.iter().any(|t| t == "checks: rate>0.99"), "{s}");
        assert!(th.iter().any(|t| t == "gochat_ws_errors: count==0"), "{s}");
        if script != "connect.js" {
            assert!(th.iter().any(|t| t == "gochat_missing: count==0"), "{s}");
            assert!(th.iter().any(|t| t.as_str().unwrap().starts_with("gochat_delivery_latency: p(99)<")), "{s}");
        }
    }
    // A bad configuration is refused before setup() runs.
    let out = Command::new("node")
        .current_dir(&k6)
        .args(["shim/run.mjs", "inspect", "-e", "PAIRS=0", "pingpong.js"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(107), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn connect_script_holds_every_connection() {
    let srv = start_server("connect");
    let vars = [("CONNECTIONS", "8"), ("USERS", "3"), ("RATE", "40"), ("HOLD", "1.5"), ("PING_INTERVAL", "0.4")];
    let run = shim(&srv.url, &srv.dir, "connect.js", &vars, &[]);
    run.assert_passed();
    let s = run.text();
    assert_eq!(run.metric("ws_sessions", "count"), 8.0, "{s}");
    assert_eq!(run.metric("gochat_held_ok", "passes"), 8.0, "{s}");
    assert_eq!(run.metric("gochat_held_ok", "fails"), 0.0, "{s}");
    // 3 interval pings + the final one per connection, give or take one tick.
    let pongs = run.metric("gochat_pongs", "count");
    assert!((24.0..=40.0).contains(&pongs), "{pongs} pongs: {s}");
    assert!(run.metric("gochat_pong_latency", "count") == pongs, "{s}");
    assert_eq!(run.metric("http_reqs", "count"), 6.0, "3 registers + 3 logins: {s}");
}

#[test]
fn pingpong_script_delivers_everything() {
    let srv = start_server("pingpong");
    let vars = [("PAIRS", "2"), ("RATE", "10"), ("DURATION", "2"), ("GRACE", "2")];
    let run = shim(&srv.url, &srv.dir, "pingpong.js", &vars, &[]);
    run.assert_passed();
    let s = run.text();
    // 2 pairs x round(10/s x 2 s) probes, each acked and delivered once.
    assert_eq!(run.metric("gochat_sent", "count"), 40.0, "{s}");
    assert_eq!(run.metric("gochat_acked", "count"), 40.0, "{s}");
    assert_eq!(run.metric("gochat_deliveries", "count"), 40.0, "{s}");
    assert_eq!(run.metric("gochat_delivery_latency", "count"), 40.0, "{s}");
    assert_eq!(run.metric("gochat_missing", "count"), 0.0, "{s}");
    assert_eq!(run.metric("gochat_session_ok", "passes"), 4.0, "{s}");
    let p99 = run.metric("gochat_delivery_latency", "p(99)");
    assert!((0.0..500.0).contains(&p99), "{s}");
}

#[test]
fn fanout_script_delivers_to_every_member() {
    let srv = start_server("fanout");
    let vars = [("MEMBERS", "6"), ("SENDERS", "2"), ("RATE", "10"), ("DURATION", "2"), ("GRACE", "2")];
    let run = shim(&srv.url, &srv.dir, "fanout.js", &vars, &[]);
    run.assert_passed();
    let s = run.text();
    // 20 messages into the group, each delivered to the 5 members but its sender.
    assert_eq!(run.metric("gochat_acked", "count"), 20.0, "{s}");
    assert_eq!(run.metric("gochat_deliveries", "count"), 100.0, "{s}");
    assert_eq!(run.metric("gochat_missing", "count"), 0.0, "{s}");
    assert_eq!(run.metric("gochat_seq_gaps", "count"), 0.0, "{s}");
    assert_eq!(run.metric("gochat_session_ok", "passes"), 6.0, "{s}");
}

#[test]
fn injected_missing_delivery_fails_the_fanout_script() {
    let srv = start_server("fanout-missing");
    let vars = [("MEMBERS", "3"), ("SENDERS", "1"), ("RATE", "10"), ("DURATION", "1"), ("GRACE", "0.5")];
    // K6_INJECT_MISSING comes from the process environment, as k6 puts it in __ENV too.
    let run = shim(&srv.url, &srv.dir, "fanout.js", &vars, &[("K6_INJECT_MISSING", "1")]);
    let s = run.text();
    assert_eq!(run.out.status.code(), Some(99), "thresholds must fail: {s}");
    // Each of the 2 receivers dropped one of the 10 probes.
    assert_eq!(run.metric("gochat_missing", "count"), 2.0, "{s}");
    assert_eq!(run.metric("gochat_deliveries", "count"), 18.0, "{s}");
    assert_eq!(run.summary["metrics"]["gochat_missing"]["thresholds"]["count==0"]["ok"], false, "{s}");
    assert!(String::from_utf8_lossy(&run.out.stderr).contains("threshold gochat_missing 'count==0' failed"), "{s}");
}

#[test]
fn unreachable_server_fails_in_setup() {
    let dir = temp_dir("unreachable");
    // Port 1 on loopback: nothing listens there, so setup() cannot register.
    let run = shim("http://127.0.0.1:1", &dir, "pingpong.js", &[("PAIRS", "1")], &[]);
    let s = run.text();
    assert_eq!(run.out.status.code(), Some(107), "{s}");
    assert!(String::from_utf8_lossy(&run.out.stderr).contains("setup() threw"), "{s}");
    let _ = std::fs::remove_dir_all(dir);
}
