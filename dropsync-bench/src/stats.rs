//! Median, min and max over runs; percentiles within a run.

/// A figure over several runs.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    /// One value per successful run, in run order.
    pub runs: Vec<f64>,
}

impl Figure {
    /// Adds a run's value.
    pub fn push(&mut self, v: f64) {
        self.runs.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.runs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Median (mean of the middle two for an even count); `None` without runs.
    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    /// Smallest run.
    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    /// Largest run.
    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_percentiles() {
        let f = Figure { runs: vec![3.0, 1.0, 2.0] };
        assert_eq!((f.median(), f.min(), f.max()), (Some(2.0), Some(1.0), Some(3.0)));
        let g = Figure { runs: vec![4.0, 1.0] };
        assert_eq!(g.median(), Some(2.5));
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), 50.0);
        assert_eq!(percentile(&s, 99.0), 99.0);
        assert_eq!(percentile(&s, 100.0), 100.0);
    }
}
