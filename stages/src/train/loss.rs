//! The training losses on burn tensors (differentiable). They are the formulas of
//! [`crate::losses`] (PyTorch's loss modules, mean reduction); `tests/train_losses.rs`
//! checks value and gradient against those f64 references.

use burn::prelude::*;
use burn::tensor::activation;
use serde::{Deserialize, Serialize};

/// Which loss a training run minimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Regression: `nn.MSELoss` on the one logit.
    Mse,
    /// Regression with labels in [0, 1]: `nn.BCEWithLogitsLoss` on the one logit.
    Bce,
    /// Classification: `nn.CrossEntropyLoss` over the logits.
    CrossEntropy,
    /// Ranking: `nn.MarginRankingLoss(margin)` between the positive and each negative.
    Margin { margin: f64 },
    /// Ranking: softmax cross-entropy over each group (positive first). A query with
    /// several positives contributes one group per positive (the multi-positive loss).
    Listwise,
}

impl LossKind {
    pub fn name(&self) -> &'static str {
        match self {
            LossKind::Mse => "mse",
            LossKind::Bce => "bce",
            LossKind::CrossEntropy => "cross_entropy",
            LossKind::Margin { .. } => "margin",
            LossKind::Listwise => "listwise",
        }
    }
}

/// `mean((x − y)²)` over `[n]`.
pub fn mse<B: Backend>(pred: Tensor<B, 1>, target: Tensor<B, 1>) -> Tensor<B, 1> {
    (pred - target).powi_scalar(2).mean()
}

/// `mean(max(x, 0) − x·y + log(1 + e^{−|x|}))`: BCE with logits, stable for any `x`.
pub fn bce_with_logits<B: Backend>(logits: Tensor<B, 1>, target: Tensor<B, 1>) -> Tensor<B, 1> {
    let softplus_neg_abs = logits.clone().abs().neg().exp().log1p();
    (logits.clone().clamp_min(0.0) - logits * target + softplus_neg_abs).mean()
}

/// `mean(lse(xᵢ) − xᵢ,yᵢ)` over `[n, c]` logits and class indices `[n]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let logp = activation::log_softmax(logits, 1);
    logp.gather(1, labels.reshape([n, 1])).neg().mean()
}

/// Groups `[g, 1 + k]`, positive in column 0: `mean over (i, j) of max(0, margin − (sᵢ,₀ − sᵢ,ⱼ))`
/// for the `k` negatives `j` (PyTorch's `clamp_min` semantics: pairs on the margin get a gradient).
pub fn margin_ranking<B: Backend>(scores: Tensor<B, 2>, margin: f64) -> Tensor<B, 1> {
    let [g, size] = scores.dims();
    let pos = scores.clone().slice([0..g, 0..1]);
    let neg = scores.slice([0..g, 1..size]);
    (neg - pos).add_scalar(margin).clamp_min(0.0).mean()
}

/// Groups `[g, 1 + k]`, positive in column 0: `mean(lse(sᵢ) − sᵢ,₀)`.
pub fn listwise_softmax<B: Backend>(scores: Tensor<B, 2>) -> Tensor<B, 1> {
    let [g, _] = scores.dims();
    activation::log_softmax(scores, 1)
        .slice([0..g, 0..1])
        .neg()
        .mean()
}
