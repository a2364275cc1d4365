//! Risk-adjusted benchmarking of providers, as the programme showed clinicians:
//! indirectly standardised ratios (observed ÷ expected, the expected count from
//! the pooled rate of each age-band × sex stratum), flags from exact Poisson
//! tails, and funnel-plot control limits. Pure arithmetic over exact counts; what
//! of it leaves the hub is decided by the gate (`federation::disclosure`).

use super::{Cell, Counts};
use std::collections::BTreeMap;

/// One provider's figures, exact.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFigures {
    pub provider: String,
    pub region: String,
    pub n: u64,
    pub observed: u64,
    pub expected: f64,
    /// Cell keys of `n` and `observed` (for the gate's noise).
    pub n_key: u64,
    pub observed_key: u64,
}

impl ProviderFigures {
    pub fn ratio(&self) -> Option<f64> {
        (self.expected > 0.0).then(|| self.observed as f64 / self.expected)
    }
}

/// `high`, `low` or `none` at a two-sided level: `high` when P(X ≥ observed) < α/2,
/// `low` when P(X ≤ observed) < α/2, X ~ Poisson(expected).
pub fn flag(observed: u64, expected: f64, alpha: f64) -> &'static str {
    if expected <= 0.0 {
        return "none";
    }
    if poisson_upper(observed, expected) < alpha / 2.0 {
        "high"
    } else if poisson_cdf(observed, expected) < alpha / 2.0 {
        "low"
    } else {
        "none"
    }
}

/// Expected counts per provider from the pooled rate of each (age band, sex) stratum
/// over every region's counts of `group`.
pub fn providers(regions: &[(String, &Counts)], group: &str) -> Vec<ProviderFigures> {
    let mut pooled: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    // (region, provider) → its (provider, age band, sex) cells.
    type Cross<'a> = Vec<(&'a (String, String, String), &'a Cell)>;
    let mut by_provider: BTreeMap<(String, String), Cross> = BTreeMap::new();
    for (region, counts) in regions {
        let Some((_, g)) = counts.groups.iter().find(|(c, _)| c == group) else {
            continue;
        };
        for (key, cell) in &g.cross {
            let p = pooled.entry((key.1.clone(), key.2.clone())).or_default();
            p.0 += cell.population;
            p.1 += cell.numerator;
            by_provider
                .entry((region.clone(), key.0.clone()))
                .or_default()
                .push((key, cell));
        }
    }
    by_provider
        .into_iter()
        .map(|((region, provider), cells)| {
            let mut f = ProviderFigures {
                provider,
                region,
                n: 0,
                observed: 0,
                expected: 0.0,
                n_key: 0,
                observed_key: 0,
            };
            for (key, cell) in cells {
                let (pop, deaths) = pooled[&(key.1.clone(), key.2.clone())];
                let rate = if pop == 0 { 0.0 } else { deaths as f64 / pop as f64 };
                f.n += cell.population;
                f.observed += cell.numerator;
                f.expected += cell.population as f64 * rate;
                f.n_key = f.n_key.wrapping_add(cell.population_key);
                f.observed_key = f.observed_key.wrapping_add(cell.numerator_key);
            }
            f
        })
        .collect()
}

/// ln Γ(x) (Lanczos, g = 7, n = 9), for x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised lower incomplete gamma P(a, x).
fn gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x < a + 1.0 {
        // Series.
        let mut sum = 1.0 / a;
        let mut term = sum;
        let mut n = a;
        for _ in 0..10_000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (sum.ln() - x + a * x.ln() - ln_gamma(a)).exp()
    } else {
        1.0 - gamma_q_cf(a, x)
    }
}

/// The regularised upper incomplete gamma Q(a, x).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x < a + 1.0 {
        1.0 - gamma_p(a, x)
    } else {
        gamma_q_cf(a, x)
    }
}

/// The regularised upper incomplete gamma Q(a, x) by its continued fraction (x ≥ a + 1).
fn gamma_q_cf(a: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..10_000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// P(X ≤ k), X ~ Poisson(mu).
pub fn poisson_cdf(k: u64, mu: f64) -> f64 {
    if mu <= 0.0 {
        return 1.0;
    }
    (1.0 - gamma_p(k as f64 + 1.0, mu)).clamp(0.0, 1.0)
}

/// P(X ≥ k), X ~ Poisson(mu).
pub fn poisson_upper(k: u64, mu: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    gamma_p(k as f64, mu).clamp(0.0, 1.0)
}

/// The control limit of the ratio at expected count `e` for cumulative probability
/// `p`: the Poisson quantile, interpolated between integers (Spiegelhalter 2005), ÷ `e`.
pub fn limit(e: f64, p: f64) -> f64 {
    if e <= 0.0 {
        return 0.0;
    }
    let mut q: u64 = 0;
    // Walk up to the first integer whose cumulative probability reaches p.
    let start = (e - 10.0 * e.sqrt() - 10.0).max(0.0) as u64;
    q = q.max(start);
    while poisson_cdf(q, e) < p {
        q += 1;
    }
    let at = poisson_cdf(q, e);
    let below = if q == 0 { 0.0 } else { poisson_cdf(q - 1, e) };
    let theta = if at > below { (at - p) / (at - below) } else { 0.0 };
    ((q as f64 - theta).max(0.0)) / e
}

/// One point of the funnel: the ratio's limits at an expected count.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelPoint {
    pub expected: f64,
    pub lower95: f64,
    pub upper95: f64,
    pub lower998: f64,
    pub upper998: f64,
}

/// At least `points` expected counts, geometrically spaced to span `lo`..`hi`.
pub fn funnel(lo: f64, hi: f64, points: usize) -> Vec<FunnelPoint> {
    let lo = (lo * 0.8).max(0.5);
    let hi = (hi * 1.25).max(lo * 2.0);
    let points = points.max(10);
    (0..points)
        .map(|i| {
            let e = lo * (hi / lo).powf(i as f64 / (points - 1) as f64);
            FunnelPoint {
                expected: e,
                lower95: limit(e, 0.025),
                upper95: limit(e, 0.975),
                lower998: limit(e, 0.001),
                upper998: limit(e, 0.999),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P(X ≤ k) by direct summation (independent of the incomplete gamma).
    fn cdf_by_sum(k: u64, mu: f64) -> f64 {
        let mut term = (-mu).exp();
        let mut sum = term;
        for i in 1..=k {
            term *= mu / i as f64;
            sum += term;
        }
        sum
    }

    #[test]
    fn poisson_tails_match_direct_summation() {
        for mu in [0.3, 1.0, 4.5, 12.0, 60.0, 250.0] {
            for k in [0u64, 1, 2, 5, 10, 20, 50, 100, 300] {
                let want = cdf_by_sum(k, mu);
                let got = poisson_cdf(k, mu);
                assert!((got - want).abs() < 1e-9, "P(X<={k}; {mu}) = {got}, want {want}");
                let upper = poisson_upper(k, mu);
                let want_upper = if k == 0 { 1.0 } else { 1.0 - cdf_by_sum(k - 1, mu) };
                assert!((upper - want_upper).abs() < 1e-9, "P(X>={k}; {mu})");
            }
        }
        // Textbook values: Poisson(10), P(X <= 5) = 0.067086, P(X >= 16) = 0.048740.
        assert!((poisson_cdf(5, 10.0) - 0.067_085_962).abs() < 1e-6);
        assert!((poisson_upper(16, 10.0) - 0.048_740_29).abs() < 1e-6);
    }

    #[test]
    fn flags_follow_the_tails() {
        assert_eq!(flag(10, 10.0, 0.05), "none");
        assert_eq!(flag(20, 10.0, 0.05), "high", "P(X >= 20) = 0.0035");
        assert_eq!(flag(20, 10.0, 0.002), "none", "0.0035 is not below 0.001");
        assert_eq!(flag(30, 10.0, 0.002), "high");
        assert_eq!(flag(2, 10.0, 0.05), "low", "P(X <= 2) = 0.0028");
        assert_eq!(flag(0, 0.0, 0.05), "none");
    }

    #[test]
    fn funnel_limits_narrow_as_expected_grows() {
        let f = funnel(2.0, 200.0, 12);
        assert!(f.len() >= 10);
        assert!(f.first().unwrap().expected <= 2.0 && f.last().unwrap().expected >= 200.0);
        for w in f.windows(2) {
            assert!(w[1].upper95 - w[1].lower95 <= w[0].upper95 - w[0].lower95 + 1e-9);
        }
        for p in &f {
            assert!(p.lower998 <= p.lower95 && p.lower95 <= 1.0 && 1.0 <= p.upper95 && p.upper95 <= p.upper998);
        }
    }
}
