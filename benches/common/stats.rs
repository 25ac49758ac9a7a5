//! Latency distributions and number formatting shared by the benchmarks.

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted durations (nearest rank).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A sorted sample of durations.
pub struct Dist(pub Vec<Duration>);

impl Dist {
    /// Sorts `v`.
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self(v)
    }

    /// Median.
    pub fn p50(&self) -> Duration {
        pct(&self.0, 0.50)
    }

    /// 99th percentile.
    pub fn p99(&self) -> Duration {
        pct(&self.0, 0.99)
    }

    /// `p50 .. p90 .. p99 .. min .. max (n=..)`.
    pub fn line(&self) -> String {
        format!(
            "p50 {:>9}  p90 {:>9}  p99 {:>9}  min {:>9}  max {:>9}  (n={})",
            ms(self.p50()),
            ms(pct(&self.0, 0.90)),
            ms(self.p99()),
            ms(self.0.first().copied().unwrap_or_default()),
            ms(self.0.last().copied().unwrap_or_default()),
            self.0.len()
        )
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// An integer with thousands separators.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
