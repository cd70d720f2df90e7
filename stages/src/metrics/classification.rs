//! Classification metrics over classes `0..n_classes`. `y` holds true classes, `pred`
//! predicted classes, `probs` row-major class probabilities (`n × n_classes`).

use super::{MetricError, check_finite};

fn check_classes(y: &[usize], pred: &[usize], n_classes: usize) -> Result<(), MetricError> {
    if y.len() != pred.len() {
        return Err(MetricError::LengthMismatch {
            what: "classes",
            left: y.len(),
            right: pred.len(),
        });
    }
    if y.is_empty() {
        return Err(MetricError::Empty);
    }
    check_labels(y, n_classes)?;
    check_labels(pred, n_classes)
}

fn check_labels(y: &[usize], n_classes: usize) -> Result<(), MetricError> {
    match y.iter().position(|&c| c >= n_classes) {
        Some(index) => Err(MetricError::ClassOutOfRange {
            index,
            class: y[index],
            n_classes,
        }),
        None => Ok(()),
    }
}

/// Checks `probs` against `y` and returns the number of samples.
fn check_probs(probs: &[f64], n_classes: usize, y: &[usize]) -> Result<usize, MetricError> {
    if n_classes == 0 {
        return Err(MetricError::Invalid("n_classes must be at least 1".into()));
    }
    if probs.len() != y.len() * n_classes {
        return Err(MetricError::LengthMismatch {
            what: "probabilities (n × n_classes) vs labels",
            left: probs.len(),
            right: y.len() * n_classes,
        });
    }
    if y.is_empty() {
        return Err(MetricError::Empty);
    }
    check_finite("probs", probs)?;
    check_labels(y, n_classes)?;
    Ok(y.len())
}

/// Fraction of samples whose prediction equals the truth (sklearn `accuracy_score`).
pub fn accuracy(y: &[usize], pred: &[usize]) -> Result<f64, MetricError> {
    check_classes(y, pred, usize::MAX)?;
    let hits = y.iter().zip(pred).filter(|(a, b)| a == b).count();
    Ok(hits as f64 / y.len() as f64)
}

/// `m[true][pred]` counts, rows = true class, columns = predicted class (sklearn
/// `confusion_matrix(y, pred, labels=range(n_classes))`).
pub fn confusion_matrix(
    y: &[usize],
    pred: &[usize],
    n_classes: usize,
) -> Result<Vec<Vec<u64>>, MetricError> {
    check_classes(y, pred, n_classes)?;
    let mut m = vec![vec![0u64; n_classes]; n_classes];
    for (&t, &p) in y.iter().zip(pred) {
        m[t][p] += 1;
    }
    Ok(m)
}

/// Per-class (precision, recall, F1) from the confusion matrix, with sklearn's
/// `zero_division=0`: a 0/0 precision or recall is 0, and F1 = 2PR/(P+R) is 0 when P+R = 0.
pub fn per_class_prf(
    y: &[usize],
    pred: &[usize],
    n_classes: usize,
) -> Result<Vec<(f64, f64, f64)>, MetricError> {
    let m = confusion_matrix(y, pred, n_classes)?;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok((0..n_classes)
        .map(|k| {
            let tp = m[k][k];
            let predicted: u64 = (0..n_classes).map(|t| m[t][k]).sum();
            let actual: u64 = m[k].iter().sum();
            let (p, r) = (ratio(tp, predicted), ratio(tp, actual));
            let f1 = if p + r == 0.0 {
                0.0
            } else {
                2.0 * p * r / (p + r)
            };
            (p, r, f1)
        })
        .collect())
}

/// Unweighted mean of the per-class F1 over all `n_classes` classes (sklearn
/// `f1_score(y, pred, labels=range(n_classes), average="macro", zero_division=0)`).
/// A class absent from both truth and prediction counts as F1 = 0.
pub fn macro_f1(y: &[usize], pred: &[usize], n_classes: usize) -> Result<f64, MetricError> {
    let prf = per_class_prf(y, pred, n_classes)?;
    Ok(prf.iter().map(|t| t.2).sum::<f64>() / n_classes as f64)
}

/// Multiclass Brier score in Brier's (1950) original convention:
/// `(1/n) Σᵢ Σₖ (pᵢₖ − [yᵢ = k])²`, range [0, 2]. Note that sklearn's binary
/// `brier_score_loss` uses only the positive class, i.e. half of this for two classes;
/// this equals sklearn ≥ 1.7 multiclass `brier_score_loss(..., scale_by_half=False)`.
pub fn brier_multiclass(probs: &[f64], n_classes: usize, y: &[usize]) -> Result<f64, MetricError> {
    let n = check_probs(probs, n_classes, y)?;
    let mut total = 0.0;
    for (i, &t) in y.iter().enumerate() {
        for (k, &p) in probs[i * n_classes..(i + 1) * n_classes].iter().enumerate() {
            let d = p - if k == t { 1.0 } else { 0.0 };
            total += d * d;
        }
    }
    Ok(total / n as f64)
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationBin {
    /// The bin is the half-open interval (lower, upper].
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence (max probability) of the samples in the bin; 0 when empty.
    pub confidence: f64,
    /// Fraction of the bin's samples whose argmax class is the true one; 0 when empty.
    pub accuracy: f64,
}

/// Samples binned by confidence `max_k pᵢₖ` into `n_bins` equal-width bins
/// `(b/n_bins, (b+1)/n_bins]`, the prediction being the argmax (first on ties, as numpy).
pub fn calibration_bins(
    probs: &[f64],
    n_classes: usize,
    y: &[usize],
    n_bins: usize,
) -> Result<Vec<CalibrationBin>, MetricError> {
    check_probs(probs, n_classes, y)?;
    if n_bins == 0 {
        return Err(MetricError::Invalid("n_bins must be at least 1".into()));
    }
    let mut count = vec![0usize; n_bins];
    let mut conf_sum = vec![0.0; n_bins];
    let mut hits = vec![0usize; n_bins];
    for (i, &t) in y.iter().enumerate() {
        let row = &probs[i * n_classes..(i + 1) * n_classes];
        let mut arg = 0;
        for k in 1..n_classes {
            if row[k] > row[arg] {
                arg = k;
            }
        }
        let conf = row[arg];
        // Bin b holds (b/B, (b+1)/B]: the same comparisons as the usual
        // `conf > lower & conf <= upper` loop, with confidences outside (0, 1] dropped.
        let Some(b) = (0..n_bins)
            .find(|&b| conf > b as f64 / n_bins as f64 && conf <= (b + 1) as f64 / n_bins as f64)
        else {
            continue;
        };
        count[b] += 1;
        conf_sum[b] += conf;
        hits[b] += usize::from(arg == t);
    }
    Ok((0..n_bins)
        .map(|b| CalibrationBin {
            lower: b as f64 / n_bins as f64,
            upper: (b + 1) as f64 / n_bins as f64,
            count: count[b],
            confidence: if count[b] == 0 {
                0.0
            } else {
                conf_sum[b] / count[b] as f64
            },
            accuracy: if count[b] == 0 {
                0.0
            } else {
                hits[b] as f64 / count[b] as f64
            },
        })
        .collect())
}

/// Expected calibration error over `n_bins` equal-width confidence bins (Guo et al. 2017;
/// 15 bins is the common choice): `Σ_b (|B_b| / n) · |acc(B_b) − conf(B_b)|`, see
/// [`calibration_bins`] for the binning.
pub fn ece(
    probs: &[f64],
    n_classes: usize,
    y: &[usize],
    n_bins: usize,
) -> Result<f64, MetricError> {
    let bins = calibration_bins(probs, n_classes, y, n_bins)?;
    let n = y.len() as f64;
    Ok(bins
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn counts_by_hand() {
        let y = [0, 0, 1, 1, 2, 2];
        let p = [0, 1, 1, 1, 0, 2];
        assert!(close(accuracy(&y, &p).unwrap(), 4.0 / 6.0));
        let m = confusion_matrix(&y, &p, 3).unwrap();
        assert_eq!(m, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        // class 0: P=1/2 R=1/2 F=1/2; class 1: P=2/3 R=1 F=0.8; class 2: P=1 R=1/2 F=2/3
        let f = macro_f1(&y, &p, 3).unwrap();
        assert!(close(f, (0.5 + 0.8 + 2.0 / 3.0) / 3.0));
    }

    #[test]
    fn zero_division_counts_as_zero() {
        // class 2 never true nor predicted: F1 0 lowers the macro mean, as sklearn with labels.
        let f = macro_f1(&[0, 1], &[0, 1], 3).unwrap();
        assert!(close(f, 2.0 / 3.0));
        // class 1 predicted never: precision 0/0 → 0, F1 0.
        let prf = per_class_prf(&[0, 1], &[0, 0], 2).unwrap();
        assert_eq!(prf[1], (0.0, 0.0, 0.0));
    }

    #[test]
    fn brier_and_ece_by_hand() {
        let probs = [0.7, 0.2, 0.1, 0.1, 0.3, 0.6];
        let y = [0, 1];
        // row 0: .09+.04+.01 = .14; row 1: .01+.49+.36 = .86 → mean .5
        assert!(close(brier_multiclass(&probs, 3, &y).unwrap(), 0.5));
        // two bins of width 0.5: conf .7 (right) and .6 (wrong) both in (0.5, 1]:
        // acc 0.5, conf 0.65 → ECE 0.15
        assert!(close(ece(&probs, 3, &y, 2).unwrap(), 0.15));
        let bins = calibration_bins(&probs, 3, &y, 2).unwrap();
        assert_eq!(bins[0].count, 0);
        assert_eq!(bins[1].count, 2);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            confusion_matrix(&[0, 3], &[0, 1], 3),
            Err(MetricError::ClassOutOfRange {
                index: 1,
                class: 3,
                ..
            })
        ));
        assert!(brier_multiclass(&[0.5, 0.5], 3, &[0]).is_err());
        assert!(accuracy(&[], &[]).is_err());
    }
}
