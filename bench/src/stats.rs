//! Small order statistics for benchmark samples.

use std::time::Duration;

/// Median, 99th percentile, minimum and maximum of a sample, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample.
    pub min: u64,
    /// Median (nearest rank).
    pub median: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Largest sample.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: u64,
}

impl Summary {
    /// Summarises `samples` (any order); all zero when empty.
    pub fn of(samples: &[u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut s = samples.to_vec();
        s.sort_unstable();
        Self {
            n: s.len(),
            min: s[0],
            median: percentile(&s, 50),
            p99: percentile(&s, 99),
            max: s[s.len() - 1],
            mean: u64::try_from(s.iter().map(|&v| u128::from(v)).sum::<u128>() / s.len() as u128)
                .unwrap_or(u64::MAX),
        }
    }
}

/// The `pct`-th percentile (nearest rank) of sorted, non-empty `sorted`.
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Median of `values` (0 when empty); for summaries of repeated runs.
pub fn median_f64(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

/// `ns` as milliseconds with three decimals ("1.752").
pub fn ms(ns: u64) -> String {
    format!("{:.3}", Duration::from_nanos(ns).as_secs_f64() * 1e3)
}

/// `ns` as microseconds ("87").
pub fn us(ns: u64) -> String {
    format!("{:.0}", Duration::from_nanos(ns).as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<u64> = (1..=100).rev().collect();
        let sum = Summary::of(&s);
        assert_eq!(
            (sum.n, sum.min, sum.median, sum.p99, sum.max),
            (100, 1, 50, 99, 100)
        );
        assert_eq!(Summary::of(&[7]).p99, 7);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn median_of_runs() {
        assert!((median_f64(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median_f64(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < f64::EPSILON);
        assert!(median_f64(&[]).abs() < f64::EPSILON);
    }

    #[test]
    fn formats() {
        assert_eq!(ms(1_752_400), "1.752");
        assert_eq!(us(86_806), "87");
    }
}
