//! Weights as PyTorch and safetensors see them: named f32 tensors under Hugging Face keys,
//! matrices `[out, in]` (burn's linears are `[in, out]`, so they are transposed on the way in
//! and out). What adapters save, exports write and training checkpoints hold.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{MlError, Result};

/// f32 values of a tensor, row-major.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 data after convert")
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Named f32 tensors in PyTorch layout, for safetensors.
#[derive(Default)]
pub struct TensorSet(pub BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl TensorSet {
    /// A burn `[in, out]` matrix saved as PyTorch `[out, in]`.
    pub fn matrix<B: Backend>(&mut self, key: String, t: Tensor<B, 2>) {
        let [i, o] = t.dims();
        self.0
            .insert(key, (vec![o, i], transpose(&values(t), i, o)));
    }

    pub fn vector<B: Backend>(&mut self, key: String, t: Tensor<B, 1>) {
        let [n] = t.dims();
        self.0.insert(key, (vec![n], values(t)));
    }

    pub fn linear<B: Backend>(&mut self, key: &str, l: &Linear<B>) {
        self.matrix(format!("{key}.weight"), l.weight.val());
        if let Some(b) = &l.bias {
            self.vector(format!("{key}.bias"), b.val());
        }
    }

    /// safetensors bytes (keys sorted, so the same tensors give the same bytes).
    pub fn to_bytes(
        &self,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .0
            .iter()
            .map(|(k, (shape, v))| {
                (
                    k.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    shape.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, b, s)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| MlError::Input(format!("safetensors: {e}")))?;
        safetensors::serialize(views, metadata)
            .map_err(|e| MlError::Input(format!("safetensors: {e}")))
    }

    /// Reads a safetensors file (f32, f16, bf16 or f64 tensors as f32).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| MlError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| MlError::Weights {
            path: path.into(),
            message: format!("not a safetensors file: {e}"),
        })?;
        let mut out = TensorSet::default();
        for (name, view) in st.tensors() {
            let data = view.data();
            let v: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(MlError::Weights {
                        path: path.into(),
                        message: format!("{name}: dtype {other:?}, expected a float type"),
                    });
                }
            };
            out.0.insert(name, (view.shape().to_vec(), v));
        }
        Ok(out)
    }

    /// Removes `key`, checking its PyTorch shape; returns burn's layout (matrices transposed).
    pub fn take(&mut self, path: &Path, key: &str, torch_shape: &[usize]) -> Result<Vec<f32>> {
        let v = self.take_as_stored(path, key, torch_shape)?;
        Ok(match torch_shape {
            [o, i] => transpose(&v, *o, *i),
            _ => v,
        })
    }

    /// [`TensorSet::take`] without the transpose: for tensors laid out the same in both
    /// (OFT's rotation weights, embedding tables).
    pub fn take_as_stored(
        &mut self,
        path: &Path,
        key: &str,
        torch_shape: &[usize],
    ) -> Result<Vec<f32>> {
        let (shape, v) = self.0.remove(key).ok_or_else(|| MlError::Weights {
            path: path.into(),
            message: format!("missing tensor {key}"),
        })?;
        if shape != torch_shape {
            return Err(MlError::Weights {
                path: path.into(),
                message: format!("{key}: expected shape {torch_shape:?}, found {shape:?}"),
            });
        }
        Ok(v)
    }

    /// A LayerNorm as `{key}.weight` (+ `{key}.bias` when it has one).
    pub fn norm<B: Backend>(&mut self, key: &str, n: &LayerNorm<B>) {
        self.vector(format!("{key}.weight"), n.gamma.val());
        if let Some(b) = &n.beta {
            self.vector(format!("{key}.bias"), b.val());
        }
    }

    /// Replaces `l`'s weight (and bias, when the set has one) with `{key}.weight`/`.bias`,
    /// removing them from the set. Without `required`, a set lacking `{key}.weight` leaves
    /// `l` as it is.
    pub fn take_linear<B: Backend>(
        &mut self,
        path: &Path,
        key: &str,
        l: &mut Linear<B>,
        required: bool,
        device: &B::Device,
    ) -> Result<()> {
        let [d_in, d_out] = l.weight.dims();
        let wk = format!("{key}.weight");
        if !required && !self.0.contains_key(&wk) {
            return Ok(());
        }
        let w = self.take(path, &wk, &[d_out, d_in])?;
        l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device));
        let bk = format!("{key}.bias");
        if self.0.contains_key(&bk) {
            let b = self.take(path, &bk, &[d_out])?;
            l.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [d_out]),
                device,
            )));
        }
        Ok(())
    }

    /// [`TensorSet::take_linear`] for a LayerNorm's `weight` (and `bias`).
    pub fn take_norm<B: Backend>(
        &mut self,
        path: &Path,
        key: &str,
        n: &mut LayerNorm<B>,
        required: bool,
        device: &B::Device,
    ) -> Result<()> {
        let [d] = n.gamma.dims();
        let wk = format!("{key}.weight");
        if !required && !self.0.contains_key(&wk) {
            return Ok(());
        }
        let w = self.take(path, &wk, &[d])?;
        n.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(w, [d]), device));
        let bk = format!("{key}.bias");
        if self.0.contains_key(&bk) {
            let b = self.take(path, &bk, &[d])?;
            n.beta = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [d]),
                device,
            )));
        }
        Ok(())
    }
}
