//! Training losses as math, with f64 reference implementations and their gradients.
//!
//! These are the exact formulas of PyTorch's loss modules (default `reduction="mean"`) and of
//! the sentence-transformers cross-encoder losses built on them. The burn trainer computes
//! the same quantities on tensors; these functions are the yardstick its tests compare
//! against (loss and gradient with respect to the model's outputs), so each returns the
//! loss and `∂loss/∂input` for every input element.
//!
//! Notation: `n` samples, `xᵢ` a logit / score, `yᵢ` a target, `σ(x) = 1/(1+e^{−x})`,
//! `lse(v) = log Σⱼ e^{vⱼ}` (computed as `m + log Σ e^{vⱼ−m}`, `m = max v`).
//!
//! | task | loss | formula (mean over the batch) |
//! | --- | --- | --- |
//! | regression | [`mse`] `nn.MSELoss` | `(1/n) Σ (xᵢ − yᵢ)²` |
//! | regression, scores scaled to [0,1] | [`bce_with_logits`] `nn.BCEWithLogitsLoss` | `(1/n) Σ max(xᵢ,0) − xᵢyᵢ + log(1 + e^{−|xᵢ|})` |
//! | classification | [`cross_entropy`] `nn.CrossEntropyLoss` | `(1/n) Σ lse(xᵢ) − xᵢ,yᵢ` |
//! | ranking, pairwise | [`margin_ranking`] `nn.MarginRankingLoss(margin)`, target +1 | `(1/n) Σ max(0, margin − (sᵢ⁺ − sᵢ⁻))` |
//! | ranking, listwise | [`listwise_softmax`] | `(1/n) Σ lse(sᵢ,0..=k) − sᵢ,0` |
//! | ranking, several positives | [`multi_positive_softmax`], [`multi_positive_logsumexp`] | see each |
//!
//! Notes that decide parity with Python:
//! - sentence-transformers' `CrossEncoder` losses: `MSELoss` is `nn.MSELoss` on the raw logit
//!   (identity activation); `BinaryCrossEntropyLoss` is `nn.BCEWithLogitsLoss` on the logit with
//!   the label scaled to [0, 1] (STS-B: score / 5); `CrossEntropyLoss` is `nn.CrossEntropyLoss`
//!   over the `num_labels` logits; `MultipleNegativesRankingLoss(scale=10, activation_fn=Sigmoid)`
//!   (sentence-transformers 6.2) is [`listwise_softmax`] applied to `10·σ(logit)` instead of the raw logit — pass the
//!   transformed scores to get it, or the raw logits for plain softmax cross-entropy.
//! - `MarginRankingLoss` is `clamp_min(−y(x₁−x₂) + margin, 0)`; its gradient is 0 for a pair
//!   sitting exactly on the margin (argument = 0), as checked against torch 2.15, and
//!   [`margin_ranking`] does the same.
//! - With `n = 0` every PyTorch mean is NaN; here it is an error.

use crate::metrics::{MetricError, check_finite};

/// A loss value and its gradient with respect to each input element, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    pub value: f64,
    pub grad: Vec<f64>,
}

fn check_same(what: &'static str, a: &[f64], b: &[f64]) -> Result<(), MetricError> {
    if a.len() != b.len() {
        return Err(MetricError::LengthMismatch {
            what,
            left: a.len(),
            right: b.len(),
        });
    }
    if a.is_empty() {
        return Err(MetricError::Empty);
    }
    check_finite(what, a)?;
    check_finite(what, b)
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log Σ e^{vⱼ}` and the softmax of `v`.
fn log_softmax_parts(v: &[f64]) -> (f64, Vec<f64>) {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let sum: f64 = exps.iter().sum();
    (m + sum.ln(), exps.iter().map(|e| e / sum).collect())
}

/// Mean squared error `(1/n) Σ (xᵢ − yᵢ)²`; gradient `2(xᵢ − yᵢ)/n`.
pub fn mse(pred: &[f64], target: &[f64]) -> Result<Loss, MetricError> {
    check_same("mse", pred, target)?;
    let n = pred.len() as f64;
    let value = pred
        .iter()
        .zip(target)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        / n;
    let grad = pred
        .iter()
        .zip(target)
        .map(|(x, y)| 2.0 * (x - y) / n)
        .collect();
    Ok(Loss { value, grad })
}

/// Binary cross-entropy on logits, `(1/n) Σ −[yᵢ log σ(xᵢ) + (1−yᵢ) log(1−σ(xᵢ))]`, in
/// PyTorch's overflow-free form `max(x,0) − xy + log(1 + e^{−|x|})`; gradient
/// `(σ(xᵢ) − yᵢ)/n`. Targets are soft labels in [0, 1] (a regression score divided by its
/// maximum).
pub fn bce_with_logits(logits: &[f64], target: &[f64]) -> Result<Loss, MetricError> {
    check_same("bce_with_logits", logits, target)?;
    if let Some(i) = target.iter().position(|y| !(0.0..=1.0).contains(y)) {
        return Err(MetricError::Invalid(format!(
            "bce_with_logits: target[{i}] = {} is outside [0, 1]",
            target[i]
        )));
    }
    let n = logits.len() as f64;
    let value = logits
        .iter()
        .zip(target)
        .map(|(&x, &y)| x.max(0.0) - x * y + (-x.abs()).exp().ln_1p())
        .sum::<f64>()
        / n;
    let grad = logits
        .iter()
        .zip(target)
        .map(|(&x, &y)| (sigmoid(x) - y) / n)
        .collect();
    Ok(Loss { value, grad })
}

/// Cross-entropy over `n_classes` logits per sample (row-major `n × n_classes`),
/// `(1/n) Σᵢ lse(xᵢ) − xᵢ,yᵢ`; gradient `(softmax(xᵢ) − onehot(yᵢ))/n`.
pub fn cross_entropy(
    logits: &[f64],
    n_classes: usize,
    target: &[usize],
) -> Result<Loss, MetricError> {
    if n_classes == 0 || logits.len() != target.len() * n_classes {
        return Err(MetricError::LengthMismatch {
            what: "cross_entropy logits (n × n_classes) vs targets",
            left: logits.len(),
            right: target.len() * n_classes,
        });
    }
    if target.is_empty() {
        return Err(MetricError::Empty);
    }
    check_finite("cross_entropy", logits)?;
    if let Some(index) = target.iter().position(|&t| t >= n_classes) {
        return Err(MetricError::ClassOutOfRange {
            index,
            class: target[index],
            n_classes,
        });
    }
    let n = target.len() as f64;
    let mut value = 0.0;
    let mut grad = Vec::with_capacity(logits.len());
    for (row, &t) in logits.chunks(n_classes).zip(target) {
        let (lse, soft) = log_softmax_parts(row);
        value += lse - row[t];
        grad.extend(
            soft.iter()
                .enumerate()
                .map(|(k, p)| (p - f64::from(k == t)) / n),
        );
    }
    Ok(Loss {
        value: value / n,
        grad,
    })
}

/// Pairwise margin loss with target +1 (the positive should score higher),
/// `(1/n) Σ max(0, margin − (posᵢ − negᵢ))`. The gradient is laid out as all `pos`
/// entries then all `neg` entries: `−1/n` and `+1/n` for active pairs (argument > 0, as
/// PyTorch), 0 otherwise.
pub fn margin_ranking(pos: &[f64], neg: &[f64], margin: f64) -> Result<Loss, MetricError> {
    check_same("margin_ranking", pos, neg)?;
    let n = pos.len() as f64;
    let mut value = 0.0;
    let mut grad = vec![0.0; 2 * pos.len()];
    for (i, (p, q)) in pos.iter().zip(neg).enumerate() {
        let arg = margin - (p - q);
        if arg > 0.0 {
            value += arg;
            grad[i] = -1.0 / n;
            grad[pos.len() + i] = 1.0 / n;
        }
    }
    Ok(Loss {
        value: value / n,
        grad,
    })
}

/// Listwise softmax cross-entropy over groups of one positive and k negatives: `scores` is
/// row-major `n × group_size`, the positive in column 0 (`group_size = 1 + k`). Equals
/// [`cross_entropy`] with every target 0: `(1/n) Σᵢ lse(sᵢ) − sᵢ,0`.
pub fn listwise_softmax(scores: &[f64], group_size: usize) -> Result<Loss, MetricError> {
    if group_size < 2 || !scores.len().is_multiple_of(group_size) {
        return Err(MetricError::Invalid(format!(
            "listwise_softmax: {} scores do not form groups of 1 positive + k ≥ 1 negatives \
             (group_size {group_size})",
            scores.len()
        )));
    }
    cross_entropy(scores, group_size, &vec![0; scores.len() / group_size])
}

/// One query with P positives and N negatives, each positive set against all negatives on
/// its own: `(1/P) Σᵢ [lse(pᵢ, n₁..n_N) − pᵢ]` — the listwise loss of the P groups
/// `(pᵢ, negatives)`, averaged. It is what splitting a multi-positive query into P
/// one-positive groups gives. Gradient laid out as positives then negatives.
pub fn multi_positive_softmax(pos: &[f64], neg: &[f64]) -> Result<Loss, MetricError> {
    check_group(pos, neg)?;
    let p = pos.len() as f64;
    let mut value = 0.0;
    let mut grad = vec![0.0; pos.len() + neg.len()];
    let mut group = Vec::with_capacity(1 + neg.len());
    for (i, &s) in pos.iter().enumerate() {
        group.clear();
        group.push(s);
        group.extend_from_slice(neg);
        let (lse, soft) = log_softmax_parts(&group);
        value += lse - s;
        grad[i] += (soft[0] - 1.0) / p;
        for (j, q) in soft[1..].iter().enumerate() {
            grad[pos.len() + j] += q / p;
        }
    }
    Ok(Loss {
        value: value / p,
        grad,
    })
}

/// One query with P positives and N negatives, the positives pooled: `−log(Σᵢ e^{pᵢ} /
/// (Σᵢ e^{pᵢ} + Σⱼ e^{nⱼ})) = lse(all) − lse(pos)` — the probability mass on any positive.
/// Gradient laid out as positives then negatives.
pub fn multi_positive_logsumexp(pos: &[f64], neg: &[f64]) -> Result<Loss, MetricError> {
    check_group(pos, neg)?;
    let all: Vec<f64> = pos.iter().chain(neg).copied().collect();
    let (lse_all, soft_all) = log_softmax_parts(&all);
    let (lse_pos, soft_pos) = log_softmax_parts(pos);
    let mut grad = soft_all;
    for (g, q) in grad.iter_mut().zip(&soft_pos) {
        *g -= q;
    }
    Ok(Loss {
        value: lse_all - lse_pos,
        grad,
    })
}

fn check_group(pos: &[f64], neg: &[f64]) -> Result<(), MetricError> {
    if pos.is_empty() || neg.is_empty() {
        return Err(MetricError::Invalid(format!(
            "a ranking group needs at least one positive and one negative (got {} and {})",
            pos.len(),
            neg.len()
        )));
    }
    check_finite("positives", pos)?;
    check_finite("negatives", neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Central differences of `f` at `x` against `grad`.
    fn check_grad(x: &[f64], grad: &[f64], f: impl Fn(&[f64]) -> f64) {
        let h = 1e-6;
        for i in 0..x.len() {
            let mut a = x.to_vec();
            let mut b = x.to_vec();
            a[i] += h;
            b[i] -= h;
            let num = (f(&a) - f(&b)) / (2.0 * h);
            assert!(
                close(num, grad[i], 1e-6),
                "d/dx[{i}]: numeric {num} vs analytic {}",
                grad[i]
            );
        }
    }

    #[test]
    fn mse_by_hand() {
        let l = mse(&[1.0, 2.0], &[0.0, 4.0]).unwrap();
        assert!(close(l.value, 2.5, 1e-15));
        assert_eq!(l.grad, vec![1.0, -2.0]);
    }

    #[test]
    fn bce_by_hand_and_gradient() {
        // x = 0: log 2 whatever the target.
        let l = bce_with_logits(&[0.0], &[0.3]).unwrap();
        assert!(close(l.value, 2f64.ln(), 1e-15));
        // x = 2, y = 1: −log σ(2) = log(1 + e^{−2})
        let l = bce_with_logits(&[2.0], &[1.0]).unwrap();
        assert!(close(l.value, (1.0 + (-2f64).exp()).ln(), 1e-15));
        // Large logits stay finite.
        assert!(
            bce_with_logits(&[800.0, -800.0], &[0.0, 1.0])
                .unwrap()
                .value
                .is_finite()
        );
        let (x, y) = ([1.5, -0.3, 4.0], [0.76, 0.2, 1.0]);
        let l = bce_with_logits(&x, &y).unwrap();
        check_grad(&x, &l.grad, |v| bce_with_logits(v, &y).unwrap().value);
        assert!(bce_with_logits(&[0.0], &[1.2]).is_err());
    }

    #[test]
    fn cross_entropy_by_hand_and_gradient() {
        // Uniform logits over 3 classes: log 3.
        let l = cross_entropy(&[0.5, 0.5, 0.5], 3, &[1]).unwrap();
        assert!(close(l.value, 3f64.ln(), 1e-15));
        let x = [1.0, -2.0, 0.5, 0.1, 0.2, 3.0];
        let t = [0, 2];
        let l = cross_entropy(&x, 3, &t).unwrap();
        check_grad(&x, &l.grad, |v| cross_entropy(v, 3, &t).unwrap().value);
        assert!(cross_entropy(&x, 3, &[0, 3]).is_err());
    }

    #[test]
    fn margin_by_hand() {
        // pairs: (2, 1) → max(0, 1 − 1) = 0 (on the margin: no gradient, as torch gives),
        // (0, 1) → 2.
        let l = margin_ranking(&[2.0, 0.0], &[1.0, 1.0], 1.0).unwrap();
        assert!(close(l.value, 1.0, 1e-15));
        assert_eq!(l.grad, vec![0.0, -0.5, 0.0, 0.5]);
        // Far apart: no loss, no gradient.
        let l = margin_ranking(&[5.0], &[0.0], 1.0).unwrap();
        assert_eq!((l.value, l.grad), (0.0, vec![0.0, 0.0]));
    }

    #[test]
    fn listwise_and_multi_positive() {
        // One group (2, 0, 0): lse = log(e² + 2) → loss log(e² + 2) − 2.
        let l = listwise_softmax(&[2.0, 0.0, 0.0], 3).unwrap();
        assert!(close(l.value, (2f64.exp() + 2.0).ln() - 2.0, 1e-14));
        assert!(listwise_softmax(&[1.0, 2.0, 3.0], 2).is_err());

        // With one positive both multi-positive forms equal the listwise loss.
        let a = multi_positive_softmax(&[2.0], &[0.0, 0.0]).unwrap();
        let b = multi_positive_logsumexp(&[2.0], &[0.0, 0.0]).unwrap();
        assert!(close(a.value, l.value, 1e-14) && close(b.value, l.value, 1e-14));

        let (p, n) = ([1.0, 0.3], [0.5, -1.0, 2.0]);
        let a = multi_positive_softmax(&p, &n).unwrap();
        let split = |v: &[f64]| (v[..2].to_vec(), v[2..].to_vec());
        let x: Vec<f64> = p.iter().chain(&n).copied().collect();
        check_grad(&x, &a.grad, |v| {
            let (p, n) = split(v);
            multi_positive_softmax(&p, &n).unwrap().value
        });
        let b = multi_positive_logsumexp(&p, &n).unwrap();
        // By hand: log(Σ all e^x) − log(e^1 + e^0.3)
        let all: f64 = x.iter().map(|v| v.exp()).sum();
        assert!(close(
            b.value,
            all.ln() - (1f64.exp() + 0.3f64.exp()).ln(),
            1e-14
        ));
        check_grad(&x, &b.grad, |v| {
            let (p, n) = split(v);
            multi_positive_logsumexp(&p, &n).unwrap().value
        });
        assert!(multi_positive_softmax(&[1.0], &[]).is_err());
    }
}
