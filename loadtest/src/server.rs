//! Server-side figures: /proc/PID (when the server is local) and /metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

/// Read /proc/PID/stat (utime+stime) and /proc/PID/status (VmRSS).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcSample { cpu_secs: (utime + stime) as f64 / tck, rss_bytes: kb * 1024 })
}

/// Samples RSS every 200 ms in the background and keeps the peak.
pub struct Sampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(s) = sample(pid) {
                    p.fetch_max(s.rss_bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { peak, task }
    }

    pub fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

/// All unlabelled-or-labelled numeric series of a Prometheus text page at `url`.
pub async fn metrics(http: &reqwest::Client, url: &str) -> Option<BTreeMap<String, f64>> {
    let resp = http.get(url).send().await.ok()?.error_for_status().ok()?;
    let text = resp.text().await.ok()?;
    Some(parse_metrics(&text))
}

pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// after - before for every series that changed.
pub fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_own_process() {
        let s = sample(std::process::id()).expect("own /proc");
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_secs >= 0.0);
    }

    #[test]
    fn parses_and_diffs_metrics() {
        let a = parse_metrics("# HELP x\nx_total 1\ny{shard=\"0\"} 5\n");
        let b = parse_metrics("x_total 4\ny{shard=\"0\"} 5\nz 2\n");
        let d = delta(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d["x_total"], 3.0);
        assert_eq!(d["z"], 2.0);
    }
}
