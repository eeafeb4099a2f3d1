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
    /// Per Unix second of arrival: that second's latency histogram, same encoding.
    #[serde(default)]
    pub timeline: BTreeMap<u64, Vec<(u64, u64)>>,
}

/// Latencies of one process: the whole run and per second of arrival (for
/// "latency over time").
pub struct Recorder {
    pub total: Histogram<u64>,
    per_sec: BTreeMap<u64, Histogram<u64>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self { total: new_hist(), per_sec: BTreeMap::new() }
    }
}

impl Recorder {
    /// A latency of `us` observed at Unix time `at_us`.
    pub fn record(&mut self, at_us: u64, us: u64) {
        record(&mut self.total, us);
        record(self.per_sec.entry(at_us / 1_000_000).or_insert_with(new_hist), us);
    }

    pub fn add(&mut self, other: &Recorder) {
        self.total.add(&other.total).expect("same bounds");
        for (sec, h) in &other.per_sec {
            self.per_sec.entry(*sec).or_insert_with(new_hist).add(h).expect("same bounds");
        }
    }
}

fn encode(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

fn decode(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_hist();
    for &(v, n) in pairs {
        h.saturating_record_n(v.max(1), n);
    }
    h
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
        self.hist = encode(h);
    }

    pub fn set_recorder(&mut self, r: &Recorder) {
        self.hist = encode(&r.total);
        self.timeline = r.per_sec.iter().map(|(s, h)| (*s, encode(h))).collect();
    }

    pub fn histogram(&self) -> Histogram<u64> {
        decode(&self.hist)
    }

    /// Per second (Unix): that second's histogram.
    pub fn timeline_histograms(&self) -> BTreeMap<u64, Histogram<u64>> {
        self.timeline.iter().map(|(s, p)| (*s, decode(p))).collect()
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
        for (sec, pairs) in &other.timeline {
            let mut h = self.timeline.get(sec).map(|p| decode(p)).unwrap_or_else(new_hist);
            h.add(decode(pairs)).expect("same histogram bounds");
            self.timeline.insert(*sec, encode(&h));
        }
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

/// Per-second percentiles, `t_s` counted from `start_ms`.
pub fn timeline(p: &Partial, start_ms: u64) -> Vec<Value> {
    let start_s = start_ms / 1000;
    p.timeline_histograms()
        .iter()
        .map(|(sec, h)| {
            let mut v = percentiles(h);
            v["t_s"] = json!(sec.saturating_sub(start_s));
            v
        })
        .collect()
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
    /// Latency percentiles per second of the run (t_s from the start).
    pub latency_timeline_ms: Vec<Value>,
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
