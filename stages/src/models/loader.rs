//! Reading Hugging Face safetensors checkpoints into burn tensors.
//!
//! Handles a single `model.safetensors` or a sharded set named by
//! `model.safetensors.index.json`; f32, f64, f16 and bf16 weights (converted to f32);
//! keys with or without the architecture prefix (`bert.`, `roberta.`); integer buffers
//! such as `embeddings.position_ids` (skipped). Missing weights are collected and reported
//! together by name; weights the model did not use are reported by [`LoadReport`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{MlError, Result};

/// What loading a checkpoint left over: for logs and for tests.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Float weights present in the checkpoint that the model did not use
    /// (e.g. a pooler when the head has none, or an MLM head).
    pub unused: Vec<String>,
    /// Integer/bool buffers skipped on purpose (e.g. `embeddings.position_ids`).
    pub skipped_buffers: Vec<String>,
    /// Head weights absent from the checkpoint and freshly initialised (only when
    /// [`LoadOptions::init_missing_head`] allowed it).
    pub initialized: Vec<String>,
}

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of a checkpoint, by their key in the files.
pub struct Checkpoint {
    files: Vec<(PathBuf, Vec<u8>)>,
    entries: BTreeMap<String, Entry>,
    /// Prefix (with trailing dot) under which the encoder's keys live, or "".
    encoder_prefix: String,
    used: BTreeSet<String>,
    missing: Vec<String>,
    initialized: Vec<String>,
    /// Seed of the host draws of [`Checkpoint::init_normal`].
    init_seed: u64,
    /// Shown in errors: the index file or the single weights file.
    origin: PathBuf,
}

impl Checkpoint {
    /// Opens the weights of a model directory: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`. `arch_prefix` is `bert` or `roberta`.
    pub fn open(dir: &Path, arch_prefix: &str) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (origin, paths) = if single.is_file() {
            (single.clone(), vec![single])
        } else if index.is_file() {
            (index.clone(), shard_paths(dir, &index)?)
        } else {
            return Err(MlError::Weights {
                path: dir.to_path_buf(),
                message:
                    "no model.safetensors or model.safetensors.index.json in the model directory \
                          (PyTorch .bin checkpoints are not read: convert them to safetensors)"
                        .into(),
            });
        };
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let bytes = std::fs::read(&path).map_err(|e| MlError::io(&path, e))?;
            let (header, meta) =
                SafeTensors::read_metadata(&bytes).map_err(|e| MlError::Weights {
                    path: path.clone(),
                    message: format!("not a valid safetensors file: {e}"),
                })?;
            let base = 8 + header;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                entries.insert(
                    name.clone(),
                    Entry {
                        file: i,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            files.push((path, bytes));
        }
        let with_prefix = format!("{arch_prefix}.");
        let encoder_prefix = if entries.keys().any(|k| k.starts_with(&with_prefix)) {
            with_prefix
        } else {
            String::new()
        };
        Ok(Checkpoint {
            files,
            entries,
            encoder_prefix,
            used: BTreeSet::new(),
            missing: Vec::new(),
            initialized: Vec::new(),
            init_seed: 0,
            origin,
        })
    }

    /// The directory holding the weights (and the model's `config.json`).
    pub fn dir(&self) -> &Path {
        self.origin.parent().unwrap_or(Path::new("."))
    }

    /// All keys in the checkpoint.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// True when the checkpoint has a key (as written in the file).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The file key of an encoder weight named relative to the encoder (`encoder.layer.0…`).
    pub fn encoder_key(&self, name: &str) -> String {
        format!("{}{name}", self.encoder_prefix)
    }

    /// Reads `key` as f32 with the expected shape. A missing key is recorded (reported
    /// together by [`Checkpoint::finish`]) and `None` returned; a wrong shape or dtype is an
    /// error at once.
    pub fn read(&mut self, key: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some(entry) = self.entries.get(key) else {
            self.missing.push(key.to_string());
            return Ok(None);
        };
        let path = &self.files[entry.file].0;
        if entry.shape != shape {
            return Err(MlError::Weights {
                path: path.clone(),
                message: format!("{key}: expected shape {shape:?}, found {:?}", entry.shape),
            });
        }
        let bytes = &self.files[entry.file].1[entry.start..entry.end];
        let values = to_f32(bytes, entry.dtype).ok_or_else(|| MlError::Weights {
            path: path.clone(),
            message: format!(
                "{key}: dtype {:?} is not a float type (f32, f64, f16, bf16)",
                entry.dtype
            ),
        })?;
        self.used.insert(key.to_string());
        Ok(Some(values))
    }

    /// Reads a float tensor; missing keys give zeros (and are reported by `finish`).
    pub fn tensor<B: Backend, const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        Ok(match self.read(key, &shape)? {
            Some(v) => Tensor::from_data(TensorData::new(v, shape), device),
            None => Tensor::zeros(shape, device),
        })
    }

    /// Reads a PyTorch `nn.Linear` (`{key}.weight` `[out, in]`, `{key}.bias` `[out]`) into
    /// burn's layout (`[in, out]`).
    pub fn linear<B: Backend>(
        &mut self,
        key: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let mut linear = LinearConfig::new(d_in, d_out).init::<B>(device);
        let w = self
            .read(&format!("{key}.weight"), &[d_out, d_in])?
            .map(|w| transpose(&w, d_out, d_in));
        let b = self.read(&format!("{key}.bias"), &[d_out])?;
        if let Some(w) = w {
            linear.weight =
                Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device));
        }
        if let Some(b) = b {
            linear.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [d_out]),
                device,
            )));
        }
        Ok(linear)
    }

    /// A head `nn.Linear` that may be absent from a base checkpoint: when `init` allows it
    /// and neither weight nor bias is there, it is initialised as transformers does
    /// (weight ~ N(0, std), bias 0) and listed in the report instead of failing.
    pub fn head_linear<B: Backend>(
        &mut self,
        key: &str,
        d_in: usize,
        d_out: usize,
        init: Option<f64>,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let (wk, bk) = (format!("{key}.weight"), format!("{key}.bias"));
        if let Some(std) = init
            && !self.contains(&wk)
            && !self.contains(&bk)
        {
            let mut linear = LinearConfig::new(d_in, d_out)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init::<B>(device);
            linear.weight = self.init_normal(&wk, d_in, d_out, std, device);
            linear.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            self.initialized.push(wk);
            self.initialized.push(bk);
            return Ok(linear);
        }
        self.linear(key, d_in, d_out, device)
    }

    /// Reads a PyTorch `nn.LayerNorm` (`{key}.weight`, `{key}.bias`).
    pub fn layer_norm<B: Backend>(
        &mut self,
        key: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init::<B>(device);
        if let Some(g) = self.read(&format!("{key}.weight"), &[d])? {
            norm.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(g, [d]), device));
        }
        if let Some(b) = self.read(&format!("{key}.bias"), &[d])? {
            norm.beta = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [d]),
                device,
            )));
        }
        Ok(norm)
    }

    /// Reads an `nn.Embedding` table (`{key}.weight`, `[n, d]`).
    pub fn embedding<B: Backend>(
        &mut self,
        key: &str,
        n: usize,
        d: usize,
        device: &B::Device,
    ) -> Result<Embedding<B>> {
        let mut emb = EmbeddingConfig::new(n, d).init::<B>(device);
        if let Some(w) = self.read(&format!("{key}.weight"), &[n, d])? {
            emb.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [n, d]), device));
        }
        Ok(emb)
    }

    /// A PyTorch `nn.Linear(bias=False)`: `{key}.weight` only (ModernBERT).
    pub fn linear_no_bias<B: Backend>(
        &mut self,
        key: &str,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Linear<B>> {
        let mut linear = LinearConfig::new(d_in, d_out)
            .with_bias(false)
            .init::<B>(device);
        if let Some(w) = self.read(&format!("{key}.weight"), &[d_out, d_in])? {
            let w = transpose(&w, d_out, d_in);
            linear.weight =
                Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device));
        }
        Ok(linear)
    }

    /// A PyTorch `nn.LayerNorm(bias=False)`: `{key}.weight` only (ModernBERT).
    pub fn layer_norm_no_bias<B: Backend>(
        &mut self,
        key: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init::<B>(device);
        norm.beta = None;
        if let Some(g) = self.read(&format!("{key}.weight"), &[d])? {
            norm.gamma = Param::from_tensor(Tensor::from_data(TensorData::new(g, [d]), device));
        }
        Ok(norm)
    }

    /// Records that a head weight absent from the checkpoint was freshly initialised
    /// (listed in [`LoadReport::initialized`]).
    /// Seeds the weights [`Checkpoint::init_normal`] draws (see `LoadOptions::init_seed`).
    pub fn set_init_seed(&mut self, seed: u64) {
        self.init_seed = seed;
    }

    /// A new `[d_in, d_out]` weight ~ N(0, std²) for `key`, drawn on the host from
    /// `(init seed, key)` (Box–Muller over splitmix64) and moved to `device`: the same
    /// numbers on every backend.
    pub fn init_normal<B: Backend>(
        &self,
        key: &str,
        d_in: usize,
        d_out: usize,
        std: f64,
        device: &B::Device,
    ) -> Param<Tensor<B, 2>> {
        // FNV-1a of the name: each weight its own stream.
        let name = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = crate::rng::SplitMix(self.init_seed ^ name);
        let n = d_in * d_out;
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let u1 = 1.0 - rng.next_f64(); // (0, 1]: ln is finite
            let u2 = rng.next_f64();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f64::consts::TAU * u2;
            v.push((r * t.cos()) as f32);
            v.push((r * t.sin()) as f32);
        }
        v.truncate(n);
        Param::from_tensor(Tensor::from_data(TensorData::new(v, [d_in, d_out]), device))
    }

    pub fn mark_initialized(&mut self, key: &str) {
        self.initialized.push(key.to_string());
    }

    /// Ends loading: an error naming every missing weight, else what was left unused.
    pub fn finish(self) -> Result<LoadReport> {
        if !self.missing.is_empty() {
            return Err(MlError::MissingWeights {
                path: self.origin,
                keys: self.missing,
            });
        }
        let mut report = LoadReport {
            initialized: self.initialized,
            ..Default::default()
        };
        for (key, entry) in &self.entries {
            if self.used.contains(key) {
                continue;
            }
            if is_float(entry.dtype) {
                report.unused.push(key.clone());
            } else {
                report.skipped_buffers.push(key.clone());
            }
        }
        Ok(report)
    }
}

fn shard_paths(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| MlError::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| MlError::Weights {
        path: index.to_path_buf(),
        message: format!(
            "not a safetensors index (expected {{\"weight_map\": {{key: file}}}}): {e}"
        ),
    })?;
    let files: BTreeSet<String> = parsed.weight_map.into_values().collect();
    let mut out = Vec::new();
    for f in files {
        // Shard names come from a file we did not write: keep them inside the model directory.
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(MlError::Weights {
                path: index.to_path_buf(),
                message: format!("shard name {f:?} is not a plain file name"),
            });
        }
        let p = dir.join(&f);
        if !p.is_file() {
            return Err(MlError::Weights {
                path: index.to_path_buf(),
                message: format!("shard {f} is listed but missing"),
            });
        }
        out.push(p);
    }
    Ok(out)
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)
}

fn to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    // Explicit little-endian decoding: the file may not be aligned for a direct cast.
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// `[rows, cols]` row-major to `[cols, rows]` row-major.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_half_types_and_transposes() {
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(to_f32(&h, Dtype::F16).unwrap(), vec![1.5, -2.0]);
        let b: Vec<u8> = [0.25f32, 3.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(to_f32(&b, Dtype::BF16).unwrap(), vec![0.25, 3.0]);
        assert!(to_f32(&[0; 8], Dtype::I64).is_none());
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
