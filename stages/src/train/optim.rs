//! AdamW, learning-rate schedules and global-norm gradient clipping, written out so that
//! they are exactly PyTorch's and their state can be checkpointed.
//!
//! AdamW is `torch.optim.AdamW` (decoupled weight decay, Loshchilov & Hutter): with
//! gradient `g` at step `t` (from 1),
//! `p ← p·(1 − lr·wd)`, `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
//! `p ← p − lr · (m / (1−β1ᵗ)) / (√v / √(1−β2ᵗ) + ε)`.
//! Defaults: β1 0.9, β2 0.999, ε 1e-8 (torch's), weight decay 0.01 (torch's AdamW default and
//! the HF Trainer recipe's usual value; HF Trainer itself defaults to 0.0). Decay applies to
//! every trainable tensor, biases included, as `torch.optim.AdamW(model.parameters())`
//! does in `scripts/reference_train.py`.
//!
//! The trainable tensors are the module's float parameters that require gradients, in the
//! module's visiting order (deterministic), so optimizer state is a list indexed by that
//! order and checkpoints need no parameter ids.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The learning-rate multiplier's shape after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// `get_linear_schedule_with_warmup`: down to 0 at the last step.
    Linear,
    /// `get_cosine_schedule_with_warmup` (half a cosine).
    Cosine,
    /// `get_constant_schedule_with_warmup`.
    Constant,
}

/// The multiplier of the base learning rate at optimizer step `step` (0-based), as the
/// transformers schedulers compute it (`LambdaLR` is stepped after each optimizer step, so
/// the first step uses `lambda(0)`, which is 0 when there is warmup).
pub fn lr_factor(decay: Decay, step: u64, warmup: u64, total: u64) -> f64 {
    let (s, w, t) = (step as f64, warmup as f64, total as f64);
    if step < warmup {
        return s / w.max(1.0);
    }
    match decay {
        Decay::Constant => 1.0,
        Decay::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
        Decay::Cosine => {
            let progress = (s - w) / (t - w).max(1.0);
            (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
    }
}

/// Gradients of the trainable tensors, flattened, in visiting order (`None`: the tensor got
/// no gradient from this loss).
pub type Grads<B> = Vec<Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>>;

struct Collect<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: Grads<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if t.is_require_grad() {
            let n = t.shape().num_elements();
            self.out.push(t.grad(self.grads).map(|g| g.reshape([n])));
        }
    }
}

/// The gradients of `module`'s trainable tensors from one backward pass.
pub fn collect_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Grads<B> {
    let mut c = Collect::<B> {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Adds `more` into `acc` (gradient accumulation over micro-batches).
pub fn accumulate<B: AutodiffBackend>(acc: &mut Grads<B>, more: Grads<B>) {
    if acc.is_empty() {
        *acc = more;
        return;
    }
    for (a, m) in acc.iter_mut().zip(more) {
        *a = match (a.take(), m) {
            (Some(x), Some(y)) => Some(x + y),
            (x, y) => x.or(y),
        };
    }
}

/// The global L2 norm of all gradients (f64 accumulation).
pub fn global_norm<B: AutodiffBackend>(grads: &Grads<B>) -> f64 {
    grads
        .iter()
        .flatten()
        .map(|g| g.clone().powi_scalar(2).sum().into_scalar().elem::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// `torch.nn.utils.clip_grad_norm_`: scales every gradient by `max_norm / (norm + 1e-6)`
/// when that is below 1. Returns the norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend>(grads: &mut Grads<B>, max_norm: f64) -> f64 {
    let norm = global_norm::<B>(grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = g.clone().mul_scalar(coef);
        }
    }
    norm
}

/// Multiplies every gradient by `factor` (undoing a loss scale).
pub fn scale_grads<B: AutodiffBackend>(grads: &mut Grads<B>, factor: f64) {
    for g in grads.iter_mut().flatten() {
        *g = g.clone().mul_scalar(factor);
    }
}

/// Dynamic loss scaling for f16 training, with `torch.amp.GradScaler`'s rule: the loss is
/// multiplied by the scale before the backward pass so that small gradients do not vanish
/// below f16's smallest values, and the gradients divided by it after. A step whose
/// gradients overflowed is skipped and the scale halved; after 2000 steps in a row without
/// overflow it doubles.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    scale: f64,
    good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScale {
    const GROWTH_INTERVAL: u32 = 2000;

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Records whether this step's (unscaled) gradients were finite; `false` means skip
    /// the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// AdamW's moments per trainable tensor, and the step count.
#[derive(Debug, Clone)]
pub struct AdamWState<B: Backend> {
    /// Optimizer steps taken so far, skipped ones included.
    pub step: u64,
    /// Steps skipped without an update (f16 overflow): AdamW's bias correction counts the
    /// updates only, `step − skipped`, as PyTorch's skipped `optimizer.step()` does.
    pub skipped: u64,
    /// `(m, v)` per trainable tensor in visiting order, flattened; `None` until its first update.
    pub moments: Vec<Option<(Tensor<B, 1>, Tensor<B, 1>)>>,
}

impl<B: Backend> Default for AdamWState<B> {
    fn default() -> Self {
        Self {
            step: 0,
            skipped: 0,
            moments: Vec::new(),
        }
    }
}

struct Update<'a, B: AutodiffBackend> {
    cfg: AdamWConfig,
    lr: f64,
    t: i32,
    grads: &'a mut Grads<B>,
    state: &'a mut AdamWState<B::InnerBackend>,
    index: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !param.val().is_require_grad() {
            return param;
        }
        let i = self.index;
        self.index += 1;
        let Some(g) = self.grads.get_mut(i).and_then(Option::take) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let p = tensor.inner().reshape([n]);
        let c = self.cfg;
        if self.state.moments.len() <= i {
            self.state.moments.resize(i + 1, None);
        }
        let (m, v) = match self.state.moments[i].take() {
            Some((m, v)) => (m, v),
            None => (g.zeros_like(), g.zeros_like()),
        };
        let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta2);
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        let p = p.mul_scalar(1.0 - self.lr * c.weight_decay);
        let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
        let p = p - m.clone().div(denom).mul_scalar(self.lr / bc1);
        self.state.moments[i] = Some((m, v));
        let value = Tensor::<B, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, value, mapper)
    }
}

struct FreshLeaves;

impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if !param.val().is_require_grad() {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let value = Tensor::<B, D>::from_inner(tensor.inner()).require_grad();
        Param::from_mapped_value(id, value, mapper)
    }
}

/// A copy of `module` whose trainable tensors are new autodiff leaves with the same values
/// (the frozen ones are shared). burn merges the graphs of everything computed from one
/// leaf and runs a graph's backward under its lock; separate leaves keep the graphs of
/// parallel shards apart.
pub fn fresh_leaves<B: AutodiffBackend, M: Module<B>>(module: &M) -> M {
    module.clone().map(&mut FreshLeaves)
}

/// A step without an update (its gradients overflowed): counted, nothing changes.
pub fn skip_step<B: Backend>(state: &mut AdamWState<B>) {
    state.step += 1;
    state.skipped += 1;
}

/// One AdamW step with learning rate `lr` on every trainable tensor of `module` that has a
/// gradient in `grads` (consumed).
pub fn adamw_step<B: AutodiffBackend, M: Module<B>>(
    module: M,
    mut grads: Grads<B>,
    lr: f64,
    cfg: AdamWConfig,
    state: &mut AdamWState<B::InnerBackend>,
) -> M {
    state.step += 1;
    let t = (state.step - state.skipped).min(i32::MAX as u64) as i32;
    let mut up = Update::<B> {
        cfg,
        lr,
        t,
        grads: &mut grads,
        state,
        index: 0,
    };
    module.map(&mut up)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A skipped step leaves AdamW's bias correction alone: the first update after a skip
    /// is the first update of a run without one (PyTorch's skipped `optimizer.step()`).
    #[test]
    fn a_skipped_step_does_not_count_in_adamws_bias_correction() {
        type B = burn::backend::Autodiff<burn::backend::Flex>;
        let device = Default::default();
        // Fixed values (a lazily initialised linear draws anew in each clone).
        let linear = burn::nn::Linear::<B> {
            weight: Param::from_tensor(Tensor::from_floats(
                [[0.5, -0.1], [0.2, 0.3], [-0.4, 0.1]],
                &device,
            )),
            bias: Some(Param::from_tensor(Tensor::from_floats([0.0, 0.1], &device))),
        };
        let grads = || -> Grads<B> {
            vec![
                Some(Tensor::from_floats(
                    [0.1, -0.2, 0.3, 0.05, 0.0, -0.4],
                    &device,
                )),
                Some(Tensor::from_floats([0.2, -0.1], &device)),
            ]
        };
        let values = |l: &burn::nn::Linear<B>| -> Vec<f32> {
            l.weight.val().into_data().to_vec::<f32>().unwrap()
        };
        let mut plain = AdamWState::default();
        let a = adamw_step(
            linear.clone(),
            grads(),
            1e-3,
            AdamWConfig::default(),
            &mut plain,
        );
        let mut skipped = AdamWState::default();
        skip_step(&mut skipped);
        let b = adamw_step(
            linear.clone(),
            grads(),
            1e-3,
            AdamWConfig::default(),
            &mut skipped,
        );
        assert_eq!((plain.step, skipped.step), (1, 2));
        assert_eq!(values(&a), values(&b));
        assert_ne!(values(&a), values(&linear), "the step moved the weights");
    }

    #[test]
    fn loss_scale_halves_on_overflow_and_doubles_after_2000_good_steps() {
        let mut s = LossScale::default();
        assert_eq!(s.scale(), 65536.0);
        assert!(!s.update(false));
        assert_eq!(s.scale(), 32768.0);
        for _ in 0..1999 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale(), 32768.0);
        assert!(s.update(true));
        assert_eq!(s.scale(), 65536.0);
        // An overflow resets the run of good steps.
        for _ in 0..1000 {
            s.update(true);
        }
        s.update(false);
        for _ in 0..1999 {
            s.update(true);
        }
        assert_eq!(s.scale(), 32768.0);
    }

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=10): 0, .5, 1, 7/8, …, 1/8.
        let f: Vec<f64> = (0..10)
            .map(|s| lr_factor(Decay::Linear, s, 2, 10))
            .collect();
        assert_eq!(&f[..3], &[0.0, 0.5, 1.0]);
        assert!((f[3] - 7.0 / 8.0).abs() < 1e-12 && (f[9] - 1.0 / 8.0).abs() < 1e-12);
        // Cosine: 1 right after warmup, 0.5 half-way through the decay.
        assert_eq!(lr_factor(Decay::Cosine, 2, 2, 10), 1.0);
        assert!((lr_factor(Decay::Cosine, 6, 2, 10) - 0.5).abs() < 1e-12);
        assert_eq!(lr_factor(Decay::Constant, 9, 2, 10), 1.0);
        // No warmup: full rate at step 0.
        assert_eq!(lr_factor(Decay::Linear, 0, 0, 4), 1.0);
    }
}
