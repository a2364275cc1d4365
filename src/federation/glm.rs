//! Generalised linear models fitted across nodes by exact iteratively reweighted
//! least squares, as DataSHIELD's `ds.glm` does: each round the hub sends the
//! coefficients, every node returns only Xᵀ W X, Xᵀ W z, its deviance and row
//! count over its own rows (`Accumulator`), and the hub adds the parts and
//! solves (`Irls`). Sums of per-node sums are the sums over all rows, so the fit
//! is the fit of the pooled rows, to rounding.
//!
//! Canonical links: identity (Gaussian), logit (binomial), log (Poisson, with an
//! optional offset on the log scale). Convergence as R's `glm.fit`:
//! |D − D_old| / (|D| + 0.1) < tolerance. Pure: no I/O.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Gaussian,
    Binomial,
    Poisson,
}

/// Fitted probabilities this close to 0 or 1 count as "numerically 0 or 1" (R's
/// warning), the mark of separation.
const EXTREME: f64 = 1e-10;

impl Family {
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "gaussian" => Some(Family::Gaussian),
            "binomial" => Some(Family::Binomial),
            "poisson" => Some(Family::Poisson),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Gaussian => "gaussian",
            Family::Binomial => "binomial",
            Family::Poisson => "poisson",
        }
    }

    /// The canonical link's name.
    pub fn link(self) -> &'static str {
        match self {
            Family::Gaussian => "identity",
            Family::Binomial => "logit",
            Family::Poisson => "log",
        }
    }

    /// Whether the dispersion is estimated (and the statistic is t, not z).
    pub fn estimates_dispersion(self) -> bool {
        self == Family::Gaussian
    }

    /// Whether `y` is a possible outcome.
    pub fn admits(self, y: f64) -> bool {
        match self {
            Family::Gaussian => y.is_finite(),
            Family::Binomial => y == 0.0 || y == 1.0,
            Family::Poisson => y >= 0.0 && y.is_finite() && y.fract() == 0.0,
        }
    }

    fn link_of(self, mu: f64) -> f64 {
        match self {
            Family::Gaussian => mu,
            Family::Binomial => (mu / (1.0 - mu)).ln(),
            Family::Poisson => mu.ln(),
        }
    }

    /// The mean at linear predictor `eta` (the inverse of the canonical link).
    pub fn inverse_link(self, eta: f64) -> f64 {
        match self {
            Family::Gaussian => eta,
            // As R's binomial()$linkinv: bounded away from exactly 0 and 1.
            Family::Binomial => {
                let t = 30.0;
                let e = (-eta.clamp(-t, t)).exp();
                1.0 / (1.0 + e)
            }
            Family::Poisson => eta.exp().max(f64::MIN_POSITIVE),
        }
    }

    fn variance(self, mu: f64) -> f64 {
        match self {
            Family::Gaussian => 1.0,
            Family::Binomial => mu * (1.0 - mu),
            Family::Poisson => mu,
        }
    }

    /// The unit deviance of one row.
    fn unit_deviance(self, y: f64, mu: f64) -> f64 {
        let ylogy = |y: f64, m: f64| if y > 0.0 { y * (y / m).ln() } else { 0.0 };
        match self {
            Family::Gaussian => (y - mu) * (y - mu),
            Family::Binomial => 2.0 * (ylogy(y, mu) + ylogy(1.0 - y, 1.0 - mu)),
            Family::Poisson => 2.0 * (ylogy(y, mu) - (y - mu)),
        }
    }

    /// The log-likelihood of one row (without the dispersion for the Gaussian,
    /// whose AIC comes from the residual sum of squares).
    fn log_likelihood(self, y: f64, mu: f64) -> f64 {
        match self {
            Family::Gaussian => 0.0,
            Family::Binomial => {
                if y > 0.5 {
                    mu.ln()
                } else {
                    (1.0 - mu).ln()
                }
            }
            Family::Poisson => y * mu.ln() - mu - crate::pathways::benchmark::ln_gamma(y + 1.0),
        }
    }

    /// R's starting values (`mustart`): the first round needs no coefficients.
    fn start(self, y: f64) -> f64 {
        match self {
            Family::Gaussian => y,
            Family::Binomial => (y + 0.5) / 2.0,
            Family::Poisson => y + 0.1,
        }
    }
}

/// One node's part of one round: sums over its rows at the coefficients sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Part {
    pub n: u64,
    /// Xᵀ W X, row-major, p × p.
    pub xtwx: Vec<f64>,
    /// Xᵀ W z.
    pub xtwz: Vec<f64>,
    pub deviance: f64,
    pub log_likelihood: f64,
    /// Rows fitted numerically 0 or 1 (binomial).
    pub extreme: u64,
}

impl Part {
    pub fn zero(p: usize) -> Part {
        Part {
            n: 0,
            xtwx: vec![0.0; p * p],
            xtwz: vec![0.0; p],
            deviance: 0.0,
            log_likelihood: 0.0,
            extreme: 0,
        }
    }

    pub fn p(&self) -> usize {
        self.xtwz.len()
    }

    /// Adds another part of the same model.
    pub fn add(&mut self, other: &Part) {
        self.n += other.n;
        for (a, b) in self.xtwx.iter_mut().zip(&other.xtwx) {
            *a += b;
        }
        for (a, b) in self.xtwz.iter_mut().zip(&other.xtwz) {
            *a += b;
        }
        self.deviance += other.deviance;
        self.log_likelihood += other.log_likelihood;
        self.extreme += other.extreme;
    }

    /// Whether the part has the shape of a model with `p` parameters and finite sums.
    pub fn well_formed(&self, p: usize) -> bool {
        self.xtwx.len() == p * p
            && self.xtwz.len() == p
            && self.xtwx.iter().chain(&self.xtwz).all(|v| v.is_finite())
            && self.deviance.is_finite()
    }
}

/// Sums one round over rows: `add` each row's design vector, outcome and offset.
pub struct Accumulator<'a> {
    family: Family,
    beta: Option<&'a [f64]>,
    part: Part,
}

impl<'a> Accumulator<'a> {
    /// A round at `beta`, or at the family's starting values when `None`.
    pub fn new(family: Family, p: usize, beta: Option<&'a [f64]>) -> Accumulator<'a> {
        Accumulator {
            family,
            beta,
            part: Part::zero(p),
        }
    }

    pub fn add(&mut self, x: &[f64], y: f64, offset: f64) {
        let f = self.family;
        let (eta, mu) = match self.beta {
            Some(b) => {
                let eta = x.iter().zip(b).map(|(a, b)| a * b).sum::<f64>() + offset;
                (eta, f.inverse_link(eta))
            }
            None => {
                let mu = f.start(y);
                (f.link_of(mu), mu)
            }
        };
        let v = f.variance(mu).max(f64::MIN_POSITIVE);
        // Canonical link: W = V(μ), z = η − offset + (y − μ) / V(μ).
        let w = v;
        let z = eta - offset + (y - mu) / v;
        let p = x.len();
        let part = &mut self.part;
        for i in 0..p {
            if x[i] == 0.0 {
                continue;
            }
            let wx = w * x[i];
            part.xtwz[i] += wx * z;
            // Upper triangle now; mirrored once in `finish`.
            for (j, xj) in x.iter().enumerate().skip(i) {
                part.xtwx[i * p + j] += wx * xj;
            }
        }
        part.n += 1;
        part.deviance += f.unit_deviance(y, mu);
        part.log_likelihood += f.log_likelihood(y, mu);
        if f == Family::Binomial && self.beta.is_some() && !(EXTREME..=1.0 - EXTREME).contains(&mu) {
            part.extreme += 1;
        }
    }

    pub fn finish(mut self) -> Part {
        let p = self.part.p();
        for i in 0..p {
            for j in 0..i {
                self.part.xtwx[i * p + j] = self.part.xtwx[j * p + i];
            }
        }
        self.part
    }
}

/// Cholesky factor L (row-major, lower) of a symmetric positive definite matrix,
/// or the column that makes it singular (a predictor that is a combination of others).
pub fn cholesky(a: &[f64], p: usize) -> Result<Vec<f64>, usize> {
    let mut l = vec![0.0; p * p];
    for j in 0..p {
        let mut d = a[j * p + j];
        for k in 0..j {
            d -= l[j * p + k] * l[j * p + k];
        }
        // Relative to the column's own scale: collinearity leaves only rounding.
        if d <= 1e-10 * a[j * p + j].abs().max(f64::MIN_POSITIVE) || !d.is_finite() {
            return Err(j);
        }
        let djj = d.sqrt();
        l[j * p + j] = djj;
        for i in j + 1..p {
            let mut s = a[i * p + j];
            for k in 0..j {
                s -= l[i * p + k] * l[j * p + k];
            }
            l[i * p + j] = s / djj;
        }
    }
    Ok(l)
}

/// Solves L Lᵀ x = b.
pub fn cholesky_solve(l: &[f64], p: usize, b: &[f64]) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..p {
        for k in 0..i {
            y[i] -= l[i * p + k] * y[k];
        }
        y[i] /= l[i * p + i];
    }
    for i in (0..p).rev() {
        for k in i + 1..p {
            y[i] -= l[k * p + i] * y[k];
        }
        y[i] /= l[i * p + i];
    }
    y
}

/// The inverse of L Lᵀ.
pub fn cholesky_inverse(l: &[f64], p: usize) -> Vec<f64> {
    let mut inv = vec![0.0; p * p];
    for c in 0..p {
        let mut e = vec![0.0; p];
        e[c] = 1.0;
        let col = cholesky_solve(l, p, &e);
        for r in 0..p {
            inv[r * p + c] = col[r];
        }
    }
    inv
}

/// How a fit ended other than with a model.
#[derive(Debug, Clone, PartialEq)]
pub enum FitProblem {
    /// Xᵀ W X is singular: the term named is a combination of the others (or constant).
    Singular(usize),
    /// A binomial model whose fitted probabilities reach 0 or 1: a predictor (or a
    /// combination) separates the outcome classes, and the estimates do not exist.
    Separation { extreme: u64 },
    /// The parts are not of the model asked (a node answered wrongly).
    Malformed,
}

/// What the iteration wants next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Ask every node for a round at these coefficients.
    Ask(Vec<f64>),
    Done(Fitted),
    Failed(FitProblem),
}

/// The fitted model before inference: estimates and the last round's sums at them.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub beta: Vec<f64>,
    /// (Xᵀ W X)⁻¹ at the estimates.
    pub unscaled_covariance: Vec<f64>,
    pub deviance: f64,
    pub log_likelihood: f64,
    pub n: u64,
    /// Rounds asked of the nodes (the starting round included).
    pub iterations: u32,
    pub converged: bool,
}

/// Exact IRLS over parts: feed it each round's pooled part; it says what to ask next.
pub struct Irls {
    family: Family,
    tolerance: f64,
    max_iterations: u32,
    p: usize,
    iterations: u32,
    beta: Option<Vec<f64>>,
    last_deviance: Option<f64>,
}

impl Irls {
    pub fn new(family: Family, p: usize, tolerance: f64, max_iterations: u32) -> Irls {
        Irls {
            family,
            tolerance,
            max_iterations: max_iterations.max(1),
            p,
            iterations: 0,
            beta: None,
            last_deviance: None,
        }
    }

    /// The coefficients the current round was asked at (`None`: starting values).
    pub fn asked_at(&self) -> Option<&[f64]> {
        self.beta.as_deref()
    }

    /// Takes the pooled part of the round asked at `asked_at()`.
    pub fn step(&mut self, part: &Part) -> Step {
        if !part.well_formed(self.p) {
            return Step::Failed(FitProblem::Malformed);
        }
        self.iterations += 1;
        let l = match cholesky(&part.xtwx, self.p) {
            Ok(l) => l,
            Err(col) => return Step::Failed(FitProblem::Singular(col)),
        };
        if let Some(beta) = &self.beta {
            let converged = self
                .last_deviance
                .is_some_and(|d0| (part.deviance - d0).abs() / (part.deviance.abs() + 0.1) < self.tolerance)
                // One round at the least squares solution is the Gaussian fit.
                || (self.family == Family::Gaussian && self.iterations >= 2);
            if converged || self.iterations > self.max_iterations {
                if self.family == Family::Binomial && part.extreme > 0 {
                    return Step::Failed(FitProblem::Separation { extreme: part.extreme });
                }
                return Step::Done(Fitted {
                    beta: beta.clone(),
                    unscaled_covariance: cholesky_inverse(&l, self.p),
                    deviance: part.deviance,
                    log_likelihood: part.log_likelihood,
                    n: part.n,
                    iterations: self.iterations,
                    converged,
                });
            }
            self.last_deviance = Some(part.deviance);
        }
        let next = cholesky_solve(&l, self.p, &part.xtwz);
        if next.iter().any(|b| !b.is_finite()) {
            return Step::Failed(FitProblem::Singular(0));
        }
        self.beta = Some(next.clone());
        Step::Ask(next)
    }
}

/// One coefficient with its inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Coefficient {
    pub term: String,
    pub estimate: f64,
    pub std_error: f64,
    pub statistic: f64,
    pub p_value: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
}

/// The model's summary as R's `summary.glm` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub coefficients: Vec<Coefficient>,
    pub dispersion: f64,
    pub df_residual: u64,
    pub aic: f64,
}

pub fn summarise(family: Family, terms: &[String], fit: &Fitted) -> Summary {
    let p = fit.beta.len();
    let df = fit.n.saturating_sub(p as u64);
    let dispersion = if family.estimates_dispersion() {
        // Pearson χ² / df; for the identity link and unit weights, the RSS.
        if df > 0 {
            fit.deviance / df as f64
        } else {
            f64::NAN
        }
    } else {
        1.0
    };
    let crit = if family.estimates_dispersion() {
        t_quantile(0.975, df as f64)
    } else {
        normal_quantile(0.975)
    };
    let coefficients = (0..p)
        .map(|i| {
            let se = (dispersion * fit.unscaled_covariance[i * p + i]).sqrt();
            let b = fit.beta[i];
            let stat = b / se;
            let p_value = if family.estimates_dispersion() {
                2.0 * t_upper(stat.abs(), df as f64)
            } else {
                2.0 * normal_upper(stat.abs())
            };
            Coefficient {
                term: terms.get(i).cloned().unwrap_or_default(),
                estimate: b,
                std_error: se,
                statistic: stat,
                p_value,
                ci_lower: b - crit * se,
                ci_upper: b + crit * se,
            }
        })
        .collect();
    let n = fit.n as f64;
    let aic = match family {
        // R: n (log(2π RSS / n) + 1) + 2 (p + 1), the variance counted as a parameter.
        Family::Gaussian => n * ((2.0 * std::f64::consts::PI * fit.deviance / n).ln() + 1.0) + 2.0 * (p as f64 + 1.0),
        _ => -2.0 * fit.log_likelihood + 2.0 * p as f64,
    };
    Summary {
        coefficients,
        dispersion,
        df_residual: df,
        aic,
    }
}

/// The upper tail of the standard normal, by the complementary error function.
pub fn normal_upper(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// erfc(x) = Q(1/2, x²), the regularised upper incomplete gamma function (series
/// or continued fraction, near machine precision; the usual 1e-7 rational
/// approximations would not do for p-values compared to 1e-6).
fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    crate::pathways::benchmark::gamma_q(0.5, x * x)
}

/// The standard normal quantile (Acklam's algorithm refined by one Halley step).
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let lo = 0.02425;
    let x = if p < lo {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - lo {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // One Halley step on Φ(x) − p.
    let e = (1.0 - normal_upper(x)) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// The upper tail of Student's t with `df` degrees of freedom:
/// P(T > t) = I_{df/(df+t²)}(df/2, 1/2) / 2 for t ≥ 0.
pub fn t_upper(t: f64, df: f64) -> f64 {
    if df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let x = df / (df + t * t);
    let tail = 0.5 * incomplete_beta(df / 2.0, 0.5, x);
    if t >= 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// The quantile of Student's t, by bisection on `t_upper` (monotone; 200 halvings
/// reach the last bit).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (-1e3, 1e3);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if 1.0 - t_upper(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The regularised incomplete beta function I_x(a, b) (continued fraction, as in
/// Numerical Recipes' `betai`).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    use crate::pathways::benchmark::ln_gamma;
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < tiny {
            d = tiny;
        }
        c = 1.0 + aa / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Fits over rows held in one place (a node's own analysts, and the tests): the
/// same rounds as the federated fit, with one part per round.
pub fn fit_rows(family: Family, rows: &[(Vec<f64>, f64, f64)], tolerance: f64, max_iterations: u32) -> Step {
    let p = rows.first().map_or(0, |r| r.0.len());
    let mut irls = Irls::new(family, p, tolerance, max_iterations);
    loop {
        let beta = irls.asked_at().map(<[f64]>::to_vec);
        let mut acc = Accumulator::new(family, p, beta.as_deref());
        for (x, y, o) in rows {
            acc.add(x, *y, *o);
        }
        match irls.step(&acc.finish()) {
            Step::Ask(_) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
    }

    /// A reproducible stream of numbers in [0, 1).
    struct Stream(u64);
    impl Stream {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn done(s: Step) -> Fitted {
        match s {
            Step::Done(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_gaussian_fit_is_least_squares() {
        let mut r = Stream(7);
        let rows: Vec<(Vec<f64>, f64, f64)> = (0..200)
            .map(|_| {
                let x = r.next() * 10.0;
                (vec![1.0, x], 3.0 + 0.5 * x + r.next() - 0.5, 0.0)
            })
            .collect();
        let fit = done(fit_rows(Family::Gaussian, &rows, 1e-8, 25));
        // The closed form of simple regression: slope = Sxy / Sxx.
        let n = rows.len() as f64;
        let mx = rows.iter().map(|r| r.0[1]).sum::<f64>() / n;
        let my = rows.iter().map(|r| r.1).sum::<f64>() / n;
        let sxy: f64 = rows.iter().map(|r| (r.0[1] - mx) * (r.1 - my)).sum();
        let sxx: f64 = rows.iter().map(|r| (r.0[1] - mx).powi(2)).sum();
        let slope = sxy / sxx;
        assert!(close(fit.beta[1], slope, 1e-12), "{} {slope}", fit.beta[1]);
        assert!(close(fit.beta[0], my - slope * mx, 1e-12));
        let s = summarise(Family::Gaussian, &["(Intercept)".into(), "x".into()], &fit);
        let rss: f64 = rows
            .iter()
            .map(|r| (r.1 - fit.beta[0] - fit.beta[1] * r.0[1]).powi(2))
            .sum();
        assert!(close(s.dispersion, rss / (n - 2.0), 1e-10));
        assert!(close(s.coefficients[1].std_error, (s.dispersion / sxx).sqrt(), 1e-10));
    }

    #[test]
    fn parts_added_round_by_round_are_the_pooled_fit() {
        let mut r = Stream(11);
        let rows: Vec<(Vec<f64>, f64, f64)> = (0..2000)
            .map(|_| {
                let (a, b) = (r.next(), r.next());
                let eta = -1.0 + 2.0 * a - 1.5 * b;
                let y = if r.next() < 1.0 / (1.0 + (-eta).exp()) {
                    1.0
                } else {
                    0.0
                };
                (vec![1.0, a, b], y, 0.0)
            })
            .collect();
        let pooled = done(fit_rows(Family::Binomial, &rows, 1e-10, 25));
        // Four "regions" of unequal size, each summing its own rows each round.
        let cuts = [0, 300, 900, 1100, 2000];
        let mut irls = Irls::new(Family::Binomial, 3, 1e-10, 25);
        let federated = loop {
            let beta = irls.asked_at().map(<[f64]>::to_vec);
            let mut total = Part::zero(3);
            for w in cuts.windows(2) {
                let mut acc = Accumulator::new(Family::Binomial, 3, beta.as_deref());
                for (x, y, o) in &rows[w[0]..w[1]] {
                    acc.add(x, *y, *o);
                }
                total.add(&acc.finish());
            }
            match irls.step(&total) {
                Step::Ask(_) => {}
                other => break done(other),
            }
        };
        assert_eq!(federated.iterations, pooled.iterations);
        for i in 0..3 {
            assert!(
                close(federated.beta[i], pooled.beta[i], 1e-10),
                "{federated:?} {pooled:?}"
            );
        }
        assert!(pooled.converged && (3..15).contains(&pooled.iterations));
    }

    #[test]
    fn saturated_models_have_their_closed_forms() {
        // Binomial with one two-level factor: the logits of the two proportions, and
        // standard errors sqrt(1/(n p (1 − p))) for the reference level.
        let mut rows = Vec::new();
        for (level, n, events) in [(0.0, 40, 10), (1.0, 60, 42)] {
            for i in 0..n {
                rows.push((vec![1.0, level], if i < events { 1.0 } else { 0.0 }, 0.0));
            }
        }
        let fit = done(fit_rows(Family::Binomial, &rows, 1e-12, 50));
        let logit = |p: f64| (p / (1.0 - p)).ln();
        assert!(close(fit.beta[0], logit(0.25), 1e-9), "{:?}", fit.beta);
        assert!(close(fit.beta[1], logit(0.7) - logit(0.25), 1e-9));
        let s = summarise(Family::Binomial, &["(Intercept)".into(), "g[b]".into()], &fit);
        assert!(close(
            s.coefficients[0].std_error,
            (1.0f64 / (40.0 * 0.25 * 0.75)).sqrt(),
            1e-7
        ));
        // Poisson with an exposure offset: log rates, whatever the exposures' spread.
        let mut rows = Vec::new();
        for (level, events, exposure) in [
            (0.0, [3.0, 5.0, 2.0], [10.0, 20.0, 5.0]),
            (1.0, [9.0, 1.0, 6.0], [8.0, 3.0, 9.0]),
        ] {
            for k in 0..3 {
                rows.push((vec![1.0, level], events[k], f64::ln(exposure[k])));
            }
        }
        let fit = done(fit_rows(Family::Poisson, &rows, 1e-12, 50));
        assert!(close(fit.beta[0], (10.0f64 / 35.0).ln(), 1e-9), "{:?}", fit.beta);
        assert!(close(fit.beta[1], (16.0f64 / 20.0).ln() - (10.0f64 / 35.0).ln(), 1e-9));
    }

    #[test]
    fn separation_and_collinearity_are_named() {
        let rows: Vec<(Vec<f64>, f64, f64)> = (0..40)
            .map(|i| (vec![1.0, i as f64], if i < 20 { 0.0 } else { 1.0 }, 0.0))
            .collect();
        assert!(matches!(
            fit_rows(Family::Binomial, &rows, 1e-8, 25),
            Step::Failed(FitProblem::Separation { .. })
        ));
        let rows: Vec<(Vec<f64>, f64, f64)> = (0..40)
            .map(|i| (vec![1.0, i as f64, 2.0 * i as f64], i as f64, 0.0))
            .collect();
        assert_eq!(
            fit_rows(Family::Gaussian, &rows, 1e-8, 25),
            Step::Failed(FitProblem::Singular(2))
        );
    }

    #[test]
    fn distributions() {
        // Φ⁻¹(0.975) and the t quantiles of the tables (to their printed digits).
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
        assert!((t_quantile(0.975, 10.0) - 2.228_138_851_986_27).abs() < 1e-9);
        assert!((t_quantile(0.975, 1.0) - 12.706_204_736_174_7).abs() < 1e-7);
        for z in [0.1, 1.0, 2.5, 6.0] {
            assert!(close(normal_upper(z) + normal_upper(-z), 1.0, 1e-14));
        }
        for z in [0.1, 1.0, 2.5] {
            // t with many degrees of freedom is normal (the difference is about z⁴ / 4 df).
            assert!(close(t_upper(z, 1e7), normal_upper(z), 1e-5), "{z}");
        }
        // t with 1 df is Cauchy: P(T > t) = 1/2 − atan(t)/π.
        for t in [0.3, 1.0, 4.0, 50.0] {
            assert!(
                close(t_upper(t, 1.0), 0.5 - t.atan() / std::f64::consts::PI, 1e-12),
                "{t}"
            );
        }
        assert!(close(normal_upper(8.0), 6.220_960_574_271_785e-16, 1e-9));
    }
}
