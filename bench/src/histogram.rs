//! Latency histograms for the load generator: fixed log-linear buckets over
//! microseconds (exact below 64 µs, then 32 buckets per power of two, so about 3 %
//! resolution), cheap to record into on every received packet and to subtract, so a
//! steady-state window is the difference of two snapshots.
//!
//! Must never: read a clock or allocate per sample.

/// Values below this are counted exactly.
const LINEAR: u64 = 64;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 32;
/// Largest power of two tracked (2^26 µs ≈ 67 s); longer latencies land in the last bucket.
const MAX_EXP: u32 = 26;
const BUCKETS: usize = (LINEAR + (MAX_EXP as u64 - 5) * SUB) as usize;

/// Counts of latency samples in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Empty until the first sample.
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let mantissa = v >> (exp - 5); // in [32, 64)
    (LINEAR + u64::from(exp - 6) * SUB + (mantissa - SUB)) as usize
}

/// Middle of a bucket's range, in microseconds.
fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB + 6;
    let mantissa = (i - LINEAR) % SUB + SUB;
    let low = mantissa << (exp - 5);
    let width = 1u64 << (exp - 5);
    low + width / 2
}

impl LatencyHistogram {
    pub fn record(&mut self, micros: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        self.counts[bucket(micros)] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample ever recorded (not windowed: see [`LatencyHistogram::since`]).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// The samples recorded after `earlier` (a snapshot of this same histogram). The
    /// maximum of the window is the top non-empty bucket's value, capped by the
    /// all-time maximum.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        if earlier.counts.is_empty() {
            return self.clone();
        }
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(&earlier.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let count = counts.iter().sum();
        let max = counts
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0, |i| bucket_value(i).min(self.max));
        LatencyHistogram { counts, count, max }
    }

    /// The value at quantile `q` (0..=1), or `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in (0..200_000u64).step_by(7) {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            last = b;
            let mid = bucket_value(b);
            let err = mid.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 0.035, "{v} → {mid}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_and_windows() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100 {
            h.record(v * 10);
        }
        let p50 = h.quantile(0.5).unwrap_or(0);
        assert!((480..=520).contains(&p50), "{p50}");
        assert_eq!(
            h.quantile(1.0),
            Some(1000).map(|m| bucket_value(bucket(m)).min(1000))
        );
        let snapshot = h.clone();
        for _ in 0..10 {
            h.record(5);
        }
        let window = h.since(&snapshot);
        assert_eq!(window.count(), 10);
        assert_eq!(window.quantile(0.99), Some(5));
        assert_eq!(window.max(), 5);
        let mut merged = LatencyHistogram::default();
        merged.merge(&window);
        merged.merge(&snapshot);
        assert_eq!(merged.count(), 110);
    }
}
