//! Medians and ranges, as the reports give them: median (min–max) of the valid runs.

use serde::{Deserialize, Serialize};

/// The median, smallest and largest of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median of `values` (the mean of the two middle ones for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

impl Stat {
    /// Median, min and max of the values that are there; None when none is.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Stat> {
        let values: Vec<f64> = values.into_iter().flatten().collect();
        let median = median(&values)?;
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stat { median, min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_stat_leaves_out_missing_values() {
        let stat = Stat::of([Some(5.0), None, Some(1.0), Some(3.0)]);
        assert_eq!(stat, Some(Stat { median: 3.0, min: 1.0, max: 5.0 }));
        assert_eq!(Stat::of([None, None]), None);
    }
}
