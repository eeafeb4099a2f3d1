//! bench/compare-fanout in a tiny configuration: it builds nothing (the test
//! build made the binaries), runs both servers one after the other and must
//! end with the ratio line.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

#[test]
fn compare_fanout_smoke_run_prints_the_table_and_the_ratio() {
    let bin = root().join("target/debug");
    for b in ["gochat", "gochat-loadtest", "peer-tokio"] {
        assert!(
            bin.join(b).is_file(),
            "{b} is missing in {bin:?}: cargo build -p gochat -p gochat-loadtest -p gochat-peer-tokio"
        );
    }
    let out = Command::new("python3")
        .arg(root().join("bench/compare-fanout"))
        .args(["--profile", "debug", "--no-build", "--members", "20", "--senders", "2", "--rate", "10"])
        .args(["--duration", "2", "--grace", "1", "--connections", "50", "--connect-rate", "500", "--procs", "1"])
        .output()
        .expect("python3 runs bench/compare-fanout");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    let ratio = last.strip_prefix("ratio frames/cpu-s gochat/tokio-baseline = ").unwrap_or_else(|| panic!("{stdout}"));
    assert!(ratio.len() >= 4 && ratio.as_bytes()[ratio.len() - 3] == b'.', "two decimals: {last}");
    let ratio: f64 = ratio.parse().unwrap();
    assert!(ratio.is_finite() && ratio >= 0.0);
    for row in ["delivered frames / server CPU-s", "delivery p99 (ms)", "server bytes / idle connection"] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    // both servers delivered every message (the loadtest fails the run otherwise)
    // 20 messages to 19 other members, on each server
    assert_eq!(stderr.matches("'delivered': 380").count(), 2, "every message delivered by both:\n{stderr}");
}
