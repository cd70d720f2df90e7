//! OFT: orthogonal fine-tuning (Qiu et al. 2023) as PEFT 0.21's `OFTConfig` computes it.
//!
//! A targeted linear `y = x W + b` becomes `y = (x R) W + b`, `R` block-diagonal: the
//! input features are cut into blocks of `block_size` and each block is rotated by its own
//! `block_size × block_size` matrix. A block's rotation is built from a skew-symmetric `Q`
//! (`Q = U − Uᵀ`, `U` strictly upper-triangular, its `block_size·(block_size−1)/2` entries
//! the trained weight, PEFT's `oft_R.weight` `[blocks, n]`):
//!
//! - `cayley` (PEFT's default, `use_cayley_neumann`): the Cayley transform
//!   `(I − Q)(I + Q)⁻¹` by its Neumann series as PEFT truncates it,
//!   `I + 2Q + 2Q² + … + 2Q^{t−2} + Q^{t−1}` with `t` terms (default 5);
//! - `exp`: the matrix exponential `exp(Q)` (seed 004's SO(n) block rotations), exactly
//!   orthogonal; by scaling and squaring with a Taylor series. PEFT has no such option:
//!   an `exp` adapter is tsumugi's own (`export` merges it for transformers).
//!
//! At `Q = 0` both are the identity, so a fresh adapter leaves the model unchanged; PEFT
//! initialises the weight to zeros the same way.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};

/// How a block's rotation is computed from its skew-symmetric matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// PEFT's truncated Cayley–Neumann series with this many terms.
    Cayley { terms: usize },
    /// The matrix exponential.
    Exp,
}

/// OFT hyper-parameters (PEFT `OFTConfig` names where PEFT has them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OftSettings {
    /// `oft_block_size`: features per rotated block; every targeted linear's input size
    /// must be a multiple of it.
    pub block_size: usize,
    pub rotation: Rotation,
}

impl OftSettings {
    pub fn validate(&self) -> Result<()> {
        if self.block_size < 2 {
            return Err(MlError::Input(format!(
                "oft block_size must be at least 2, got {}",
                self.block_size
            )));
        }
        if let Rotation::Cayley { terms } = self.rotation
            && terms == 0
        {
            return Err(MlError::Input("oft cayley terms must be at least 1".into()));
        }
        Ok(())
    }
}

/// The OFT rotation of one linear's input.
#[derive(Module, Debug)]
pub struct OftLinear<B: Backend> {
    /// `[blocks, block_size·(block_size−1)/2]`: each block's strictly upper triangle, row
    /// by row (PEFT `oft_R.weight`, same layout).
    pub weight: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub block_size: usize,
    #[module(skip)]
    pub rotation: Rotation,
}

impl<B: Backend> OftLinear<B> {
    /// The identity rotation (weight 0, as PEFT's `init_weights: true`) for a linear with
    /// `d_in` input features; `name` only labels the error when `d_in` does not divide.
    pub fn init(
        d_in: usize,
        settings: &OftSettings,
        name: &str,
        device: &B::Device,
    ) -> Result<Self> {
        let b = settings.block_size;
        if !d_in.is_multiple_of(b) {
            return Err(MlError::Input(format!(
                "oft block_size {b} does not divide the {d_in} input features of {name}"
            )));
        }
        Ok(Self::from_values(
            Tensor::zeros([d_in / b, b * (b - 1) / 2], device),
            settings,
        ))
    }

    /// From a given weight `[blocks, n]`.
    pub fn from_values(weight: Tensor<B, 2>, settings: &OftSettings) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            block_size: settings.block_size,
            rotation: settings.rotation,
        }
    }

    /// The skew-symmetric matrices `Q` `[blocks, b, b]`.
    fn skew(&self) -> Tensor<B, 3> {
        let w = self.weight.val();
        let [blocks, _] = w.dims();
        let device = w.device();
        let b = self.block_size;
        // Column 0 of the padded weight is 0: every (i, j) with i ≥ j reads it.
        let padded = Tensor::cat(vec![Tensor::zeros([blocks, 1], &device), w], 1);
        let mut index = vec![0i64; b * b];
        let mut k = 0;
        for i in 0..b {
            for j in i + 1..b {
                k += 1;
                index[i * b + j] = k;
            }
        }
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b * b]), &device);
        let upper = padded.select(1, index).reshape([blocks, b, b]);
        upper.clone() - upper.swap_dims(1, 2)
    }

    /// Each block's rotation `[blocks, b, b]` (PEFT's `_cayley_batch`, or `exp`).
    pub fn rotations(&self) -> Tensor<B, 3> {
        let q = self.skew();
        let [blocks, b, _] = q.dims();
        let eye = Tensor::<B, 2>::eye(b, &q.device())
            .unsqueeze::<3>()
            .expand([blocks, b, b]);
        match self.rotation {
            Rotation::Cayley { terms } => {
                let mut r = eye;
                if terms > 1 {
                    r = r + q.clone().mul_scalar(2.0);
                }
                if terms > 2 {
                    let mut power = q.clone().matmul(q.clone());
                    r = r + power.clone().mul_scalar(2.0);
                    for _ in 3..terms - 1 {
                        power = power.matmul(q.clone());
                        r = r + power.clone().mul_scalar(2.0);
                    }
                    r = r + power.matmul(q);
                }
                r
            }
            Rotation::Exp => exp_skew(q, eye),
        }
    }

    /// `x R` for `x` `[rows, in]`.
    pub fn rotate(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [rows, d_in] = x.dims();
        let b = self.block_size;
        let blocks = d_in / b;
        let x = x.reshape([rows, blocks, b]).swap_dims(0, 1);
        x.matmul(self.rotations())
            .swap_dims(0, 1)
            .reshape([rows, d_in])
    }

    /// `base(x R)`.
    pub fn forward(&self, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        crate::precision::linear(base, self.rotate(x))
    }

    /// The base weight `[in, out]` with the rotation folded in, `R W` (PEFT `merge`); with
    /// `inverse`, `Rᵀ W`, which undoes it (exactly for `exp`; for the truncated Cayley
    /// series up to its truncation error).
    pub fn merge_into(&self, w: Tensor<B, 2>, inverse: bool) -> Tensor<B, 2> {
        let [d_in, d_out] = w.dims();
        let b = self.block_size;
        let r = self.rotations();
        let r = if inverse { r.swap_dims(1, 2) } else { r };
        r.matmul(w.reshape([d_in / b, b, d_out]))
            .reshape([d_in, d_out])
    }
}

/// `exp(Q)` for skew-symmetric blocks by scaling and squaring: `Q / 2ˢ` has norm ≤ 1/2, a
/// Taylor series of 12 terms is then exact to f32 rounding, and squaring `s` times undoes
/// the scaling. `s` is chosen from the values (no gradient flows through the choice).
fn exp_skew<B: Backend>(q: Tensor<B, 3>, eye: Tensor<B, 3>) -> Tensor<B, 3> {
    let norm: f32 = q
        .clone()
        .powi_scalar(2)
        .sum_dim(2)
        .sum_dim(1)
        .max()
        .sqrt()
        .into_scalar()
        .elem();
    let squarings = if norm > 0.5 {
        (norm / 0.5).log2().ceil() as i32
    } else {
        0
    };
    let a = q.div_scalar(2f64.powi(squarings));
    let mut term = eye.clone();
    let mut sum = eye;
    for k in 1..=12 {
        term = term.matmul(a.clone()).div_scalar(k as f64);
        sum = sum + term.clone();
    }
    for _ in 0..squarings {
        sum = sum.clone().matmul(sum);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_flex::Flex;

    type B = Flex;

    fn linear(d_in: usize, weight: Vec<f32>, rotation: Rotation) -> OftLinear<B> {
        let b = 4;
        let n = b * (b - 1) / 2;
        let settings = OftSettings {
            block_size: b,
            rotation,
        };
        OftLinear::from_values(
            Tensor::from_data(TensorData::new(weight, [d_in / b, n]), &Default::default()),
            &settings,
        )
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn exp_rotations_are_orthogonal_and_zero_is_the_identity() {
        let w: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin() * 1.5).collect();
        let r = linear(8, w, Rotation::Exp).rotations();
        let rrt = values(r.clone().matmul(r.swap_dims(1, 2)));
        for (i, v) in rrt.iter().enumerate() {
            let want = if (i % 16) % 5 == 0 { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-5, "R Rᵀ[{i}] = {v}");
        }
        for rotation in [Rotation::Exp, Rotation::Cayley { terms: 5 }] {
            let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
            let x =
                Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [2, 8]), &Default::default());
            let id = linear(8, vec![0.0; 12], rotation);
            assert_eq!(values(id.rotate(x.clone())), values(x));
        }
    }

    #[test]
    fn exp_of_a_plane_rotation_is_cos_sin() {
        // One 4×4 block with only Q[0][1] = θ: exp rotates the (0, 1) plane by θ.
        let theta = 2.5f32;
        let mut w = vec![0.0; 6];
        w[0] = theta;
        let r = values(linear(4, w, Rotation::Exp).rotations());
        assert!((r[0] - theta.cos()).abs() < 1e-5);
        assert!((r[1] - theta.sin()).abs() < 1e-5);
        assert!((r[4] + theta.sin()).abs() < 1e-5);
        assert!((r[5] - theta.cos()).abs() < 1e-5);
        assert!((r[10] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bad_block_sizes_are_named() {
        let s = OftSettings {
            block_size: 5,
            rotation: Rotation::Exp,
        };
        let err = OftLinear::<B>::init(32, &s, "layer 0 attention.self.query", &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "block_size 5 does not divide the 32 input features of layer 0 attention.self.query"
            ),
            "{err}"
        );
    }
}
