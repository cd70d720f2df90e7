//! `precision: f32 | bf16 | f16`: the number type of the frozen weights' matrix products.
//!
//! With `bf16` or `f16` the big frozen linears (every linear of every encoder or decoder
//! layer) are held in that type and their products run in it: half the weight memory, and
//! the tensor cores' speed on a GPU. Everything else stays f32, as PyTorch's autocast
//! keeps it: activations between the linears, layer norms, softmax, the loss, and the
//! trained tensors (LoRA/OFT paths, the head), which are therefore their own f32 master
//! weights. [`linear`] is the one place where a product changes type: its input is cast to
//! the weight's type and its output back to the input's. f16 training scales the loss so
//! that small gradients survive f16's range (`train::optim::LossScale`); bf16 has f32's
//! range and needs none.
//!
//! The enum is always compiled (pipeline settings name it); the tensor parts need `ml`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The number type of the frozen weights' matrix products (default `f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16: f32's range, 8 bits of mantissa. CUDA (and the CPU); wgpu has none.
    Bf16,
    /// IEEE half: 11 bits of mantissa, range ±65504; training scales the loss.
    F16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            _ => Err(format!("precision {s:?}: expected f32, bf16 or f16")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

#[cfg(feature = "ml")]
pub use tensors::{cast_linear, linear};

#[cfg(feature = "ml")]
mod tensors {
    use burn::nn::Linear;
    use burn::prelude::*;
    use burn::tensor::FloatDType;

    use super::Precision;
    use crate::error::{MlError, Result};

    impl Precision {
        /// The half type, `None` for f32.
        pub fn half(self) -> Option<FloatDType> {
            match self {
                Precision::F32 => None,
                Precision::Bf16 => Some(FloatDType::BF16),
                Precision::F16 => Some(FloatDType::F16),
            }
        }

        /// An error when `device` cannot compute in this precision (wgpu has no bf16; a
        /// Vulkan/Metal adapter without `shader-f16` has no f16).
        pub fn check<B: Backend>(self, device: &B::Device) -> Result<()> {
            let Some(half) = self.half() else {
                return Ok(());
            };
            if B::supports_dtype(device, half.into()) {
                return Ok(());
            }
            let hint = match self {
                Precision::Bf16 => {
                    "wgpu's shaders have no bf16: use `precision: f16` on wgpu, bf16 on cuda"
                }
                _ => "this adapter lacks the shader-f16 feature: use `precision: f32` on it",
            };
            Err(MlError::Input(format!(
                "precision: {self} is not supported on {device:?}; {hint}"
            )))
        }
    }

    /// `l(x)` with the product in `l`'s weight type: `x` is cast to it and the product back
    /// to `x`'s type before the (f32) bias is added, so a half linear sits among f32
    /// activations (and autodiff carries the gradient through both casts).
    pub fn linear<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
        let (weight, input) = (l.weight.dtype(), x.dtype());
        if weight == input {
            return l.forward(x);
        }
        let y = x
            .cast(weight)
            .matmul(l.weight.val().unsqueeze())
            .cast(input);
        match &l.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }

    /// `l` with its weight held in `dtype` (it stays frozen); the bias, a vector, stays.
    pub fn cast_linear<B: Backend>(l: Linear<B>, dtype: FloatDType) -> Linear<B> {
        Linear {
            weight: l.weight.map(|w| w.cast(dtype)),
            bias: l.bias,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_three_names() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        let err = "fp16".parse::<Precision>().unwrap_err();
        assert!(err.contains("expected f32, bf16 or f16"), "{err}");
    }
}
