//! A latency histogram of bounded size: exact below 128 µs, then 64 buckets per power of two
//! (under 1.6 % error), so a load client that runs for hours keeps a few kilobytes, not every
//! sample.

use std::time::Duration;

const SUB_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Values below this have a bucket each.
const LINEAR: u64 = 2 * SUB_BUCKETS;
const BUCKETS: usize = (LINEAR + (63 - SUB_BITS as u64) * SUB_BUCKETS) as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_micros: u128,
    max_micros: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], count: 0, sum_micros: 0, max_micros: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[index(micros)] += 1;
        self.count += 1;
        self.sum_micros += u128::from(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros)
    }

    pub fn mean(&self) -> Duration {
        match self.count {
            0 => Duration::ZERO,
            count => {
                Duration::from_micros(u64::try_from(self.sum_micros / u128::from(count)).unwrap_or(u64::MAX))
            }
        }
    }

    /// The latency that `quantile` (0 to 1) of the samples do not exceed, rounded up to its
    /// bucket's upper end (never above the largest sample); zero when there are no samples.
    pub fn quantile(&self, quantile: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(upper(index).min(self.max_micros));
            }
        }
        self.max()
    }
}

fn index(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let msb = 63 - micros.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = (micros >> shift) - SUB_BUCKETS;
    (LINEAR + u64::from(msb - SUB_BITS - 1) * SUB_BUCKETS + mantissa) as usize
}

/// The largest value that falls in bucket `index`.
fn upper(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let octave = (index - LINEAR) / SUB_BUCKETS;
    let mantissa = (index - LINEAR) % SUB_BUCKETS;
    let shift = octave + 1;
    let end = u128::from(SUB_BUCKETS + mantissa + 1) << shift;
    u64::try_from(end - 1).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        for micros in (0..100_000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = index(micros);
            assert!(bucket < BUCKETS, "{micros}");
            assert!(upper(bucket) >= micros, "{micros} is above its bucket's end {}", upper(bucket));
            if bucket > 0 {
                assert!(upper(bucket - 1) < micros, "{micros} belongs in an earlier bucket");
            }
        }
    }

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut histogram = Histogram::default();
        for millis in 1..=1000 {
            histogram.record(Duration::from_millis(millis));
        }
        for (quantile, exact) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = histogram.quantile(quantile).as_secs_f64() * 1000.0;
            assert!((got - exact).abs() / exact < 0.02, "p{quantile}: {got} ms, not about {exact}");
        }
        assert_eq!(histogram.quantile(1.0), Duration::from_secs(1));
        assert_eq!(histogram.max(), Duration::from_secs(1));
        assert_eq!(histogram.count(), 1000);
        assert_eq!(histogram.mean(), Duration::from_micros(500_500));
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }
}
