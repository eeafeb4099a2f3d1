//! Starting a real `gochat dev` for the load generator's tests (shared by
//! the test files of this crate).
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub url: String,
    /// The gateway's operational listener (/metrics).
    pub admin_url: String,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn gochat_bin() -> PathBuf {
    // target/debug/deps/TEST-HASH -> target/debug/gochat
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("gochat")).unwrap();
    assert!(
        bin.is_file(),
        "the gochat binary is missing at {bin:?}: build it first with `cargo build -p gochat` (same target dir)"
    );
    bin
}

pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("gochat-lt-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start `gochat dev` on port 0 and wait for its "gochat ready" line.
pub fn start_server(name: &str) -> Server {
    start_server_with(name, &[])
}

pub fn start_server_with(name: &str, env: &[(&str, &str)]) -> Server {
    let dir = temp_dir(name);
    let mut child = Command::new(gochat_bin())
        .envs(env.iter().copied())
        .args(["dev", "--listen", "127.0.0.1:0", "--shards", "1", "--log-format", "json", "--data-dir"])
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .env("GOCHAT_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0")
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
                        let addr = v["addr"].as_str().unwrap_or_default().to_owned();
                        let _ = tx.send((addr, v["admin"].as_str().unwrap_or_default().to_owned()));
                        sent = true;
                    }
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok((addr, admin)) => Server { child, url: format!("http://{addr}"), admin_url: format!("http://{admin}"), dir },
        Err(_) => {
            let _ = child.kill();
            panic!("gochat dev did not report ready within 60 s");
        }
    }
}
