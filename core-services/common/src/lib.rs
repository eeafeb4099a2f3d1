//! Shared foundations of the GoChat message path, used by both the glommio
//! gateway shards and the tokio tier: configuration, snowflake ids,
//! conversation ids, JWT issue/verify, the bus traits with the in-process
//! (embedded) bus, Prometheus text rendering and tracing setup.
//!
//! Nothing here depends on an executor: futures are runtime-agnostic so the
//! gateway (glommio) and logic (tokio) can share them.

pub mod auth;
pub mod bus;
pub mod config;
pub mod convid;
pub mod ids;
pub mod metrics;
pub mod telemetry;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A fresh trace id (16 hex chars) for a message-path span.
pub fn new_trace_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mix =
        (now_ms() as u64).rotate_left(20) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64) << 48;
    format!("{mix:016x}")
}
