//! Regression metrics. `y` is the truth, `p` the prediction; every function is a mean over
//! the `n` samples.

use super::{MetricError, check_pair};

/// Mean squared error: `Σ (yᵢ − pᵢ)² / n` (sklearn `mean_squared_error`).
pub fn mse(y: &[f64], p: &[f64]) -> Result<f64, MetricError> {
    check_pair("mse", y, p)?;
    Ok(y.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / y.len() as f64)
}

/// Root mean squared error: `√mse` (sklearn `root_mean_squared_error`).
pub fn rmse(y: &[f64], p: &[f64]) -> Result<f64, MetricError> {
    mse(y, p).map(f64::sqrt)
}

/// Mean absolute error: `Σ |yᵢ − pᵢ| / n` (sklearn `mean_absolute_error`).
pub fn mae(y: &[f64], p: &[f64]) -> Result<f64, MetricError> {
    check_pair("mae", y, p)?;
    Ok(y.iter().zip(p).map(|(a, b)| (a - b).abs()).sum::<f64>() / y.len() as f64)
}

/// Coefficient of determination `1 − Σ(yᵢ − pᵢ)² / Σ(yᵢ − ȳ)²` (sklearn `r2_score`).
///
/// For a constant `y` the ratio is undefined; like sklearn's default `force_finite=True`
/// this returns 1.0 for a perfect prediction and 0.0 otherwise.
pub fn r2(y: &[f64], p: &[f64]) -> Result<f64, MetricError> {
    check_pair("r2", y, p)?;
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let ss_res: f64 = y.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
    let ss_tot: f64 = y.iter().map(|a| (a - mean) * (a - mean)).sum();
    if ss_tot == 0.0 {
        return Ok(if ss_res == 0.0 { 1.0 } else { 0.0 });
    }
    Ok(1.0 - ss_res / ss_tot)
}

/// Pearson's correlation `Σ(xᵢ−x̄)(yᵢ−ȳ) / √(Σ(xᵢ−x̄)² Σ(yᵢ−ȳ)²)` (scipy `pearsonr`), clipped
/// to [−1, 1] against rounding. NaN when either input is constant, as scipy; at least two
/// samples are required.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64, MetricError> {
    check_pair("pearson", x, y)?;
    if x.len() < 2 {
        return Err(MetricError::Invalid(
            "pearson: needs at least 2 samples".into(),
        ));
    }
    let n = x.len() as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    if sxx == 0.0 || syy == 0.0 {
        return Ok(f64::NAN);
    }
    // Normalise each norm separately (as scipy does) so tiny variances do not underflow.
    Ok((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Ranks 1..n with ties given the mean of the ranks they span (scipy
/// `rankdata(method="average")`).
pub fn rankdata(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold equal values: ranks i+1..=j, mean (i+1+j)/2.
        let avg = (i + 1 + j) as f64 / 2.0;
        for &k in &order[i..j] {
            ranks[k] = avg;
        }
        i = j;
    }
    ranks
}

/// Spearman's rank correlation: Pearson's correlation of the average ranks (scipy
/// `spearmanr`). NaN when either input is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64, MetricError> {
    check_pair("spearman", x, y)?;
    pearson(&rankdata(x), &rankdata(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn hand_computed_errors() {
        let y = [3.0, -0.5, 2.0, 7.0];
        let p = [2.5, 0.0, 2.0, 8.0];
        // squared errors .25 .25 0 1 → 1.5/4
        assert!(close(mse(&y, &p).unwrap(), 0.375));
        assert!(close(rmse(&y, &p).unwrap(), 0.375f64.sqrt()));
        // abs errors .5 .5 0 1 → 2/4
        assert!(close(mae(&y, &p).unwrap(), 0.5));
        // ȳ = 2.875, ss_tot = 0.015625+11.390625+0.765625+17.015625 = 29.1875
        assert!(close(r2(&y, &p).unwrap(), 1.0 - 1.5 / 29.1875));
    }

    #[test]
    fn r2_constant_truth_follows_sklearn() {
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 1.0]).unwrap(), 1.0);
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), 0.0);
    }

    #[test]
    fn correlations_by_hand() {
        // x̄=2, ȳ=4: dx = -1 0 1, dy = -2 -1 3 → sxy = 5, sxx = 2, syy = 14
        let r = pearson(&[1.0, 2.0, 3.0], &[2.0, 3.0, 7.0]).unwrap();
        assert!(close(r, 5.0 / (2.0f64 * 14.0).sqrt()));
        assert!(close(
            pearson(&[1.0, 2.0, 3.0], &[6.0, 4.0, 2.0]).unwrap(),
            -1.0
        ));
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).unwrap().is_nan());
        // monotone but not linear → Spearman 1
        assert!(close(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 4.0, 9.0, 100.0]).unwrap(),
            1.0
        ));
    }

    #[test]
    fn average_ranks_for_ties() {
        assert_eq!(rankdata(&[10.0, 20.0, 10.0, 5.0]), vec![2.5, 4.0, 2.5, 1.0]);
        assert_eq!(rankdata(&[1.0, 1.0, 1.0]), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            mse(&[1.0], &[1.0, 2.0]),
            Err(MetricError::LengthMismatch { .. })
        ));
        assert_eq!(mse(&[], &[]), Err(MetricError::Empty));
        assert!(matches!(
            mae(&[f64::NAN], &[1.0]),
            Err(MetricError::NonFinite { index: 0, .. })
        ));
        assert!(pearson(&[1.0], &[1.0]).is_err());
    }
}
