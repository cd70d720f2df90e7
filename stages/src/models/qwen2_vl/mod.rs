//! Qwen2-VL (`Qwen2VLForConditionalGeneration`) in burn: a captioning model, not a
//! sequence classifier, so it is not an [`Architecture`](super::Architecture) and
//! `train-lora` never loads it; `caption-images` does (`method: vlm`).
//!
//! One file per part, as transformers' `modeling_qwen2_vl.py` splits it:
//! - `config.rs`: `config.json` (the Hub's layout and transformers 5's);
//! - `image_processor.rs`: smart resize, Pillow's bicubic, normalisation, patchify;
//! - `vision.rs`: the vision tower (patch embed, 2-D rotary, blocks, patch merger);
//! - `text.rs`: the Qwen2 decoder (GQA, M-RoPE, KV cache) and `lm_head`;
//! - `generate.rs`: greedy and temperature/top-p decoding, stop tokens;
//! - `chat.rs`: the chat template with vision tokens.
//!
//! [`Qwen2Vl`] ties them together: [`Qwen2Vl::inputs_embeds`] puts each image's merged
//! tokens where the prompt has `<|image_pad|>`, [`rope_index`] gives every row its
//! (temporal, height, width) position as transformers' `get_rope_index` does, and
//! [`Qwen2VlCaptioner`] is the whole path from an image and a prompt to text.
//!
//! Precision: weights are read as f32 whatever their stored dtype (bf16 checkpoints are
//! widened), which is what CPU inference wants. On wgpu/CUDA, bf16/f16 would need a
//! burn backend instantiated with that float element (`Wgpu<bf16>`, `Cuda<bf16>`), the
//! softmax and RMSNorm statistics kept in f32 as transformers does (`softmax(…,
//! dtype=float32)`, the `to(float32)` in `Qwen2VLRMSNorm`), and the rotary tables computed
//! in f32 before the cast; none of that is built here.

pub mod chat;
pub mod config;
pub mod generate;
pub mod image_processor;
pub mod text;
pub mod vision;

use std::path::{Path, PathBuf};

use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;

pub use config::Qwen2VlConfig;
pub use generate::GenerateOptions;
pub use image_processor::{ImageProcessorConfig, Patches};

use super::loader::{Checkpoint, LoadReport};
use crate::error::{MlError, Result};

/// What `models check` says of a Qwen2-VL directory.
pub const CHECK_SENTENCE: &str =
    "a captioning model (Qwen2-VL): used by caption-images, not by train-lora";

/// `rotate_half` of transformers: `[x1, x2] → [-x2, x1]` on the last dimension.
pub(crate) fn rotate_half<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let half = dims[D - 1] / 2;
    let x1 = x.clone().narrow(D - 1, 0, half);
    let x2 = x.narrow(D - 1, half, half);
    Tensor::cat(vec![x2.neg(), x1], D - 1)
}

/// A checkpoint read under a key prefix: the same model is stored as `visual.…` and
/// `model.…` (the Hub, transformers 4) or `model.visual.…` and `model.language_model.…`
/// (transformers 5); [`Weights::scope`] picks whichever the file has.
pub struct Weights {
    ck: Checkpoint,
    prefix: String,
}

impl Weights {
    pub fn new(ck: Checkpoint) -> Self {
        Self {
            ck,
            prefix: String::new(),
        }
    }

    /// Reads the following keys under the first of `candidates` (each ending in a dot)
    /// that has `probe` (e.g. `embed_tokens.weight`); the first when none has (the missing
    /// keys are then reported under it).
    pub fn scope(&mut self, candidates: &[&str], probe: &str) {
        self.prefix = candidates
            .iter()
            .find(|c| self.ck.contains(&format!("{c}{probe}")))
            .unwrap_or(&candidates[0])
            .to_string();
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    pub fn linear<B: Backend>(
        &mut self,
        k: &str,
        i: usize,
        o: usize,
        d: &B::Device,
    ) -> Result<Linear<B>> {
        let key = self.key(k);
        self.ck.linear(&key, i, o, d)
    }

    pub fn linear_no_bias<B: Backend>(
        &mut self,
        k: &str,
        i: usize,
        o: usize,
        d: &B::Device,
    ) -> Result<Linear<B>> {
        let key = self.key(k);
        self.ck.linear_no_bias(&key, i, o, d)
    }

    /// A bias-free linear at an absolute key (`lm_head`).
    pub fn linear_no_bias_abs<B: Backend>(
        &mut self,
        k: &str,
        i: usize,
        o: usize,
        d: &B::Device,
    ) -> Result<Linear<B>> {
        self.ck.linear_no_bias(k, i, o, d)
    }

    pub fn layer_norm<B: Backend>(
        &mut self,
        k: &str,
        n: usize,
        eps: f64,
        d: &B::Device,
    ) -> Result<LayerNorm<B>> {
        let key = self.key(k);
        self.ck.layer_norm(&key, n, eps, d)
    }

    pub fn embedding<B: Backend>(
        &mut self,
        k: &str,
        n: usize,
        dim: usize,
        d: &B::Device,
    ) -> Result<Embedding<B>> {
        let key = self.key(k);
        self.ck.embedding(&key, n, dim, d)
    }

    /// A tensor stored with PyTorch shape `stored`, reshaped to `shape` (same order).
    pub fn tensor<B: Backend, const D: usize>(
        &mut self,
        k: &str,
        stored: &[usize],
        shape: [usize; D],
        d: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let key = self.key(k);
        Ok(match self.ck.read(&key, stored)? {
            Some(v) => Tensor::from_data(TensorData::new(v, shape), d),
            None => Tensor::zeros(shape, d),
        })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.ck.contains(key)
    }

    pub fn finish(self) -> Result<LoadReport> {
        self.ck.finish()
    }
}

/// The whole model: vision tower and decoder.
#[derive(Module, Debug)]
pub struct Qwen2Vl<B: Backend> {
    pub visual: vision::VisionModel<B>,
    pub text: text::TextModel<B>,
}

impl<B: Backend> Qwen2Vl<B> {
    /// Loads the weights of `dir` (`model.safetensors` or sharded) for `cfg`. Missing
    /// weights are an error naming them all; unused ones are in the report.
    pub fn load(dir: &Path, cfg: &Qwen2VlConfig, device: &B::Device) -> Result<(Self, LoadReport)> {
        let mut w = Weights::new(Checkpoint::open(dir, "")?);
        w.scope(&["model.visual.", "visual."], "patch_embed.proj.weight");
        let visual = vision::VisionModel::load(&mut w, &cfg.vision, device)?;
        w.scope(&["model.language_model.", "model."], "embed_tokens.weight");
        let lm_head =
            (!cfg.text.tie_word_embeddings || w.contains("lm_head.weight")).then_some("lm_head");
        let text = text::TextModel::load(&mut w, lm_head, &cfg.text, device)?;
        Ok((Self { visual, text }, w.finish()?))
    }

    /// The model with every linear of the vision tower, the merger, the decoder layers and
    /// an untied `lm_head` held in `precision`'s half type (about 97 % of Qwen2-VL-7B's
    /// weights: 16 GB instead of 33 GB); the embeddings, norms and the KV cache stay f32
    /// (see [`crate::precision`]).
    pub fn with_precision(mut self, precision: crate::precision::Precision) -> Self {
        let Some(half) = precision.half() else {
            return self;
        };
        let cast = |l: &mut burn::nn::Linear<B>| {
            *l = crate::precision::cast_linear(l.clone(), half);
        };
        let v = &mut self.visual;
        cast(&mut v.patch_embed);
        for b in &mut v.blocks {
            for l in [
                &mut b.attn.qkv,
                &mut b.attn.proj,
                &mut b.mlp.fc1,
                &mut b.mlp.fc2,
            ] {
                cast(l);
            }
        }
        cast(&mut v.merger.mlp0);
        cast(&mut v.merger.mlp2);
        for layer in &mut self.text.layers {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            for l in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                cast(l);
            }
        }
        if let Some(head) = &mut self.text.lm_head {
            cast(head);
        }
        self
    }

    /// The decoder's input rows `[1, seq, hidden]`: token embeddings, with the merged
    /// tokens of `images` (in order) in place of the `image_token_id` rows.
    pub fn inputs_embeds(
        &self,
        ids: &[u32],
        images: &[Patches],
        image_token_id: u32,
        device: &B::Device,
    ) -> Result<Tensor<B, 3>> {
        let mut x = self.text.embed(ids, device);
        let pads: Vec<usize> = (0..ids.len())
            .filter(|&i| ids[i] == image_token_id)
            .collect();
        if images.is_empty() {
            return if pads.is_empty() {
                Ok(x)
            } else {
                Err(MlError::Input(format!(
                    "the prompt has {} image token(s) and no image",
                    pads.len()
                )))
            };
        }
        let feats: Vec<Tensor<B, 2>> = images
            .iter()
            .map(|p| self.image_features(p, device))
            .collect();
        let feats = Tensor::cat(feats, 0);
        let [n, d] = feats.dims();
        if n != pads.len() {
            return Err(MlError::Input(format!(
                "image features and image tokens do not match: {n} merged patches, {} <|image_pad|> tokens",
                pads.len()
            )));
        }
        // The pads of one image are contiguous: copy runs, not rows.
        let mut done = 0;
        while done < n {
            let start = pads[done];
            let mut len = 1;
            while done + len < n && pads[done + len] == start + len {
                len += 1;
            }
            x = x.slice_assign(
                [0..1, start..start + len, 0..d],
                feats
                    .clone()
                    .slice([done..done + len, 0..d])
                    .unsqueeze::<3>(),
            );
            done += len;
        }
        Ok(x)
    }

    /// One image's merged tokens `[tokens, hidden]`.
    pub fn image_features(&self, patches: &Patches, device: &B::Device) -> Tensor<B, 2> {
        let pixels = Tensor::from_data(
            TensorData::new(patches.values.clone(), [patches.rows(), patches.row_len]),
            device,
        );
        self.visual.forward(pixels, patches.grid_thw)
    }
}

/// transformers' `get_rope_index` for one sequence: text rows count up on all three axes;
/// an image's rows (a run of `image_token_id`) take (t, h, w) on its merged grid offset by
/// the position reached, after which text resumes at that offset + max(h, w).
/// Returns the positions and the delta (`max + 1 − len`) that later rows add to their index.
pub fn rope_index(
    ids: &[u32],
    image_token_id: u32,
    grids: &[[usize; 3]],
    merge: usize,
) -> Result<([Vec<i64>; 3], i64)> {
    let mut pos: [Vec<i64>; 3] = Default::default();
    let mut current = 0i64;
    let mut grids = grids.iter();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_token_id {
            for axis in &mut pos {
                axis.push(current);
            }
            current += 1;
            i += 1;
            continue;
        }
        let mut run = 0;
        while i + run < ids.len() && ids[i + run] == image_token_id {
            run += 1;
        }
        let [t, h, w] = *grids
            .next()
            .ok_or_else(|| MlError::Input("more image token runs than images".into()))?;
        let (h, w) = (h / merge, w / merge);
        if t * h * w != run {
            return Err(MlError::Input(format!(
                "an image of {t}×{h}×{w} merged patches has {run} image tokens"
            )));
        }
        for ti in 0..t {
            for hi in 0..h {
                for wi in 0..w {
                    pos[0].push(current + ti as i64);
                    pos[1].push(current + hi as i64);
                    pos[2].push(current + wi as i64);
                }
            }
        }
        current += h.max(w) as i64;
        i += run;
    }
    let max = pos.iter().flatten().copied().max().unwrap_or(-1);
    Ok((pos, max + 1 - ids.len() as i64))
}

/// A Qwen2-VL checkpoint directory ready to caption: model, tokenizer, image processor,
/// generation defaults.
pub struct Qwen2VlCaptioner<B: Backend> {
    pub model: Qwen2Vl<B>,
    pub config: Qwen2VlConfig,
    pub processor: ImageProcessorConfig,
    pub tokenizer: tokenizers::Tokenizer,
    /// `generation_config.json`'s `eos_token_id`(s), else `<|im_end|>` and `<|endoftext|>`.
    pub stop_tokens: Vec<u32>,
    /// `generation_config.json`'s `repetition_penalty` (1 when absent).
    pub repetition_penalty: f32,
    pub dir: PathBuf,
    pub device: B::Device,
}

impl<B: Backend> Qwen2VlCaptioner<B> {
    /// Loads `dir`: `config.json`, the weights, `tokenizer.json`, `preprocessor_config.json`
    /// (defaults when absent), `generation_config.json` (optional).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(MlError::Config {
                path: dir.to_path_buf(),
                message: "not a directory (a Hugging Face Qwen2-VL checkpoint is expected)".into(),
            });
        }
        let config = Qwen2VlConfig::from_file(&dir.join("config.json"))?;
        let pre = dir.join("preprocessor_config.json");
        let processor = if pre.is_file() {
            ImageProcessorConfig::from_file(&pre)?
        } else {
            ImageProcessorConfig::default()
        };
        if processor.merge_size != config.vision.spatial_merge_size
            || processor.patch_size != config.vision.patch_size
            || processor.temporal_patch_size != config.vision.temporal_patch_size
        {
            return Err(MlError::Config {
                path: pre,
                message: format!(
                    "patch_size {}, temporal_patch_size {}, merge_size {} differ from config.json's vision_config ({}, {}, {})",
                    processor.patch_size,
                    processor.temporal_patch_size,
                    processor.merge_size,
                    config.vision.patch_size,
                    config.vision.temporal_patch_size,
                    config.vision.spatial_merge_size
                ),
            });
        }
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| MlError::Tokenizer {
                path: tok_path.clone(),
                message: format!("cannot load tokenizer: {e}"),
            })?;
        let gen_config = dir.join("generation_config.json");
        let stop_tokens = generate::stop_tokens(&gen_config, &tokenizer)?;
        let repetition_penalty = generate::repetition_penalty(&gen_config)?;
        let (model, _report) = Qwen2Vl::load(dir, &config, device)?;
        Ok(Self {
            model,
            config,
            processor,
            tokenizer,
            stop_tokens,
            repetition_penalty,
            dir: dir.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The captioner with its model in `precision` (an error when `device` cannot compute
    /// in it).
    pub fn with_precision(mut self, precision: crate::precision::Precision) -> Result<Self> {
        precision.check::<B>(&self.device)?;
        self.model = self.model.with_precision(precision);
        Ok(self)
    }

    /// The directory's name: what a caption row records as its model.
    pub fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Token ids of the chat prompt for one image (already preprocessed) and `prompt`.
    pub fn prompt_ids(&self, patches: &Patches, prompt: &str) -> Result<Vec<u32>> {
        let text = chat::user_prompt(prompt, patches.merged_tokens(self.processor.merge_size));
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| MlError::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                message: format!("cannot encode the prompt: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The generated token ids for `image` and `prompt`.
    pub fn generate_ids(
        &self,
        image: &image::RgbImage,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<Vec<u32>> {
        let patches = image_processor::preprocess(image, &self.processor)?;
        let ids = self.prompt_ids(&patches, prompt)?;
        generate::generate(self, &ids, &[patches], opts)
    }

    /// The caption: the generated text without special tokens, trimmed.
    pub fn generate(
        &self,
        image: &image::RgbImage,
        prompt: &str,
        opts: &GenerateOptions,
    ) -> Result<String> {
        let ids = self.generate_ids(image, prompt, opts)?;
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| MlError::Tokenizer {
                path: self.dir.join("tokenizer.json"),
                message: format!("cannot decode the generated tokens: {e}"),
            })?;
        Ok(text.trim().to_string())
    }
}
