//! Minimal Prometheus text exposition. Counters are plain atomics owned by
//! whoever increments them (a gateway shard, a logic worker); rendering reads
//! them at scrape time, so the hot path never takes a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter, relaxed ordering (scrapes tolerate skew).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A Prometheus histogram over fixed upper bounds (integers: counts, or
/// microseconds for durations). Lock-free; one atomic add per bucket hit.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// `# HELP`, `# TYPE histogram`, cumulative `_bucket`s, `_sum`, `_count`.
    pub fn render(&self, enc: &mut TextEncoder, name: &str, help: &str) {
        enc.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            enc.sample(&bucket, &[("le", &b.to_string())], cumulative);
        }
        enc.sample(&bucket, &[("le", "+Inf")], self.count());
        enc.sample(&format!("{name}_sum"), &[], self.sum.load(Ordering::Relaxed));
        enc.sample(&format!("{name}_count"), &[], self.count());
    }
}

/// Writes `# HELP`/`# TYPE` once, then samples.
pub struct TextEncoder {
    out: String,
}

impl Default for TextEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl TextEncoder {
    pub fn new() -> Self {
        Self { out: String::with_capacity(4096) }
    }

    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_and_labels() {
        let c = Counter::default();
        c.add(3);
        let mut e = TextEncoder::new();
        e.family("x_total", "counter", "things").sample("x_total", &[("shard", "0"), ("q", "a\"b")], c.get());
        let text = e.finish();
        assert_eq!(text, "# HELP x_total things\n# TYPE x_total counter\nx_total{shard=\"0\",q=\"a\\\"b\"} 3\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[10, 100]);
        for v in [1, 10, 50, 1000] {
            h.observe(v);
        }
        let mut e = TextEncoder::new();
        h.render(&mut e, "h", "sizes");
        let text = e.finish();
        assert!(text.contains("h_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"100\"} 3\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("h_sum 1061\nh_count 4\n"), "{text}");
    }
}
