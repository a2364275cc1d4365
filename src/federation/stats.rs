//! Sufficient statistics of a numeric column that pool exactly and stably.
//!
//! Each node keeps the count, the mean and the sum of squared deviations from
//! the mean (Welford's update), and a compensated (Neumaier) sum. Pooling uses
//! Chan, Golub and LeVeque's pairwise formula, so the pooled standard deviation
//! never comes from the cancellation-prone `sum of squares - n * mean²`, and
//! averages are never averaged.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    /// Sum of squared deviations from `mean`.
    pub m2: f64,
    /// Compensated sum: `sum + compensation` is the sum of the values.
    pub sum: f64,
    #[serde(default)]
    pub compensation: f64,
    /// Sum of the absolute values, and the two largest absolute values: what
    /// the dominance rule needs (they never leave the hub).
    #[serde(default)]
    pub abs_sum: f64,
    #[serde(default)]
    pub top: [f64; 2],
}

impl Moments {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        self.add_to_sum(x);
        self.note_magnitude(x.abs());
    }

    fn note_magnitude(&mut self, a: f64) {
        self.abs_sum += a;
        if a > self.top[0] {
            self.top = [a, self.top[0]];
        } else if a > self.top[1] {
            self.top[1] = a;
        }
    }

    /// The share of the total magnitude that the two largest values make up
    /// (0 when every value is 0).
    pub fn top_two_share(&self) -> f64 {
        if self.abs_sum > 0.0 {
            (self.top[0] + self.top[1]) / self.abs_sum
        } else {
            0.0
        }
    }

    fn add_to_sum(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = other.clone();
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.n += other.n;
        self.add_to_sum(other.sum);
        self.compensation += other.compensation;
        self.abs_sum += other.abs_sum - other.top[0] - other.top[1];
        self.note_magnitude(other.top[0]);
        self.note_magnitude(other.top[1]);
    }

    pub fn sum(&self) -> f64 {
        self.sum + self.compensation
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }

    /// The sample standard deviation (n − 1); undefined below two values.
    pub fn sample_stddev(&self) -> Option<f64> {
        (self.n > 1).then(|| (self.m2.max(0.0) / (self.n - 1) as f64).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_offsets_do_not_cancel() {
        // The textbook formula loses every digit here; Welford and Chan do not.
        let values: Vec<f64> = (0..1000).map(|i| 1e9 + (i % 7) as f64).collect();
        let mut all = Moments::default();
        values.iter().for_each(|&x| all.push(x));
        let mut parts = Moments::default();
        for chunk in values.chunks(333) {
            let mut m = Moments::default();
            chunk.iter().for_each(|&x| m.push(x));
            parts.merge(&m);
        }
        let mean = values.iter().sum::<f64>() / 1000.0;
        let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 999.0;
        assert!((parts.sample_stddev().unwrap() - var.sqrt()).abs() < 1e-6);
        assert!((all.sample_stddev().unwrap() - var.sqrt()).abs() < 1e-6);
        assert_eq!(parts.n, 1000);
        assert!((parts.sum() - values.iter().sum::<f64>()).abs() < 1e-3);
    }
}
