//! Partial results (one per process), merging, and the final JSON report.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Latencies in microseconds, 1 µs .. 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Record `us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// What one process measured. Workers print it as JSON on stdout; the parent merges.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Partial {
    /// Summed counters (sent, acked, delivered, established, ...).
    pub counts: BTreeMap<String, u64>,
    /// Failures by cause, summed.
    pub failures: BTreeMap<String, u64>,
    /// Durations in seconds, merged by max (e.g. ramp_secs).
    pub secs: BTreeMap<String, f64>,
    /// The latency histogram as (value µs, count) pairs of its recorded buckets.
    pub hist: Vec<(u64, u64)>,
}

impl Partial {
    pub fn add(&mut self, key: &str, n: u64) {
        *self.counts.entry(key.to_owned()).or_default() += n;
    }

    pub fn fail(&mut self, cause: &str, n: u64) {
        if n > 0 {
            *self.failures.entry(cause.to_owned()).or_default() += n;
        }
    }

    pub fn count(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    pub fn set_hist(&mut self, h: &Histogram<u64>) {
        self.hist = h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect();
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for &(v, n) in &self.hist {
            h.saturating_record_n(v.max(1), n);
        }
        h
    }

    pub fn merge(&mut self, other: &Partial) {
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.secs {
            let e = self.secs.entry(k.clone()).or_insert(0.0);
            *e = e.max(*v);
        }
        let mut h = self.histogram();
        h.add(other.histogram()).expect("same histogram bounds");
        self.set_hist(&h);
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// p50/p90/p99/p99.9/max in milliseconds, plus the sample count.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    })
}

/// The final, machine-readable report.
#[derive(Serialize, Debug)]
pub struct Report {
    pub scenario: String,
    pub params: Value,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub elapsed_secs: f64,
    pub procs: usize,
    pub counts: BTreeMap<String, u64>,
    pub failures: BTreeMap<String, u64>,
    pub throughput: BTreeMap<String, f64>,
    pub latency_ms: Value,
    pub latency_measures: String,
    pub error_rate: f64,
    pub server: Value,
    pub pass: bool,
    pub reasons: Vec<String>,
}

impl Report {
    /// A short human summary for stdout.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "gochat-loadtest {}: {} in {:.2}s ({} proc(s))\n",
            self.scenario,
            if self.pass { "PASS" } else { "FAIL" },
            self.elapsed_secs,
            self.procs
        );
        s += &format!("  counts:     {}\n", serde_json::to_string(&self.counts).unwrap_or_default());
        s += &format!("  throughput: {}\n", serde_json::to_string(&self.throughput).unwrap_or_default());
        s += &format!("  latency ms: {} ({})\n", self.latency_ms, self.latency_measures);
        s += &format!("  failures:   {}\n", serde_json::to_string(&self.failures).unwrap_or_default());
        if !self.server.is_null() {
            s += &format!("  server:     {}\n", self.server);
        }
        for r in &self.reasons {
            s += &format!("  FAIL: {r}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_counts_and_histograms() {
        let mut a = Partial::default();
        let mut h = new_hist();
        for v in [1000, 2000, 3000] {
            record(&mut h, v);
        }
        a.set_hist(&h);
        a.add("sent", 3);
        a.fail("refused", 1);
        a.secs.insert("ramp_secs".into(), 1.5);
        let mut b = Partial::default();
        let mut h = new_hist();
        record(&mut h, 100_000);
        b.set_hist(&h);
        b.add("sent", 1);
        b.fail("refused", 2);
        b.secs.insert("ramp_secs".into(), 2.5);
        // Round-trip through JSON as the workers do.
        let b: Partial = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b);
        assert_eq!(a.count("sent"), 4);
        assert_eq!(a.failures["refused"], 3);
        assert_eq!(a.secs["ramp_secs"], 2.5);
        let h = a.histogram();
        assert_eq!(h.len(), 4);
        assert!(h.max() >= 99_000 && h.max() <= 101_000, "{}", h.max());
        assert!(h.value_at_quantile(0.5) >= 1990 && h.value_at_quantile(0.5) <= 2010);
    }
}
