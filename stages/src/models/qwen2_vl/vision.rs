//! The vision tower (transformers' `Qwen2VisionTransformerPretrainedModel`): patch
//! embedding (a Conv3d whose kernel equals its stride, i.e. a linear map of each
//! `C · T · P · P` row), 2-D rotary embeddings (height and width each rotate a quarter of the
//! head), pre-norm blocks with full attention inside each frame, and the patch merger
//! (`merge²` neighbouring patches → one token of the text model's width).

use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation;

use super::config::VisionConfig;
use super::{Weights, rotate_half};
use crate::error::Result;
use crate::models::cpu;
use crate::precision::linear;

/// HF `blocks.N.attn`: fused `qkv` (queries, keys, values side by side), `proj`.
#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
}

/// HF `blocks.N.mlp`: `fc1 → quick_gelu → fc2`.
#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// HF `blocks.N`.
#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: VisionAttention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: VisionMlp<B>,
}

/// HF `merger`: `ln_q`, then `mlp.0 → GELU → mlp.2` on each run of `merge²` rows.
#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    pub ln_q: LayerNorm<B>,
    pub mlp0: Linear<B>,
    pub mlp2: Linear<B>,
}

/// HF `visual`.
#[derive(Module, Debug)]
pub struct VisionModel<B: Backend> {
    /// HF `patch_embed.proj` (Conv3d, no bias) as a linear `[C·T·P·P → embed_dim]`.
    pub patch_embed: Linear<B>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: PatchMerger<B>,
    #[module(skip)]
    pub spatial_merge_size: usize,
    #[module(skip)]
    pub rope_theta: f64,
    /// Query rows per attention block ([`QUERY_BLOCK`]; the tests make it small).
    #[module(skip)]
    pub query_block: usize,
}

/// Query rows per attention block of the vision tower.
pub const QUERY_BLOCK: usize = 512;

/// PyTorch `nn.LayerNorm(eps=1e-6)`, as every norm of the tower is built.
const NORM_EPS: f64 = 1e-6;

impl<B: Backend> VisionModel<B> {
    pub fn load(w: &mut Weights, cfg: &VisionConfig, device: &B::Device) -> Result<Self> {
        let d = cfg.embed_dim;
        let patch = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        let conv = w.tensor::<B, 2>(
            "patch_embed.proj.weight",
            &[
                cfg.embed_dim,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ],
            [d, patch],
            device,
        )?;
        let mut patch_embed = burn::nn::LinearConfig::new(patch, d)
            .with_bias(false)
            .init::<B>(device);
        patch_embed.weight = burn::module::Param::from_tensor(conv.transpose());
        let hidden = (d as f64 * cfg.mlp_ratio) as usize;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                Ok(VisionBlock {
                    norm1: w.layer_norm(&format!("{p}.norm1"), d, NORM_EPS, device)?,
                    attn: VisionAttention {
                        qkv: w.linear(&format!("{p}.attn.qkv"), d, 3 * d, device)?,
                        proj: w.linear(&format!("{p}.attn.proj"), d, d, device)?,
                        num_heads: cfg.num_heads,
                    },
                    norm2: w.layer_norm(&format!("{p}.norm2"), d, NORM_EPS, device)?,
                    mlp: VisionMlp {
                        fc1: w.linear(&format!("{p}.mlp.fc1"), d, hidden, device)?,
                        fc2: w.linear(&format!("{p}.mlp.fc2"), hidden, d, device)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let m2 = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merger = PatchMerger {
            ln_q: w.layer_norm("merger.ln_q", d, NORM_EPS, device)?,
            mlp0: w.linear("merger.mlp.0", d * m2, d * m2, device)?,
            mlp2: w.linear("merger.mlp.2", d * m2, cfg.hidden_size, device)?,
        };
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            spatial_merge_size: cfg.spatial_merge_size,
            rope_theta: cfg.rope_theta,
            query_block: QUERY_BLOCK,
        })
    }

    /// The merged image tokens `[rows / merge², hidden]` of one image's patches
    /// `[rows, C·T·P·P]` on a `grid_thw` grid (rows in the processor's block order).
    pub fn forward(&self, pixels: Tensor<B, 2>, grid_thw: [usize; 3]) -> Tensor<B, 2> {
        let device = pixels.device();
        let mut x = linear(&self.patch_embed, pixels);
        let [rows, d] = x.dims();
        let heads = self.blocks.first().map_or(1, |b| b.attn.num_heads);
        let (cos, sin) = self.rotary(grid_thw, d / heads, &device);
        // Attention stays within a frame (transformers' cu_seqlens): t runs of h·w rows.
        let frame = grid_thw[1] * grid_thw[2];
        for block in &self.blocks {
            let h = block.norm1.forward(x.clone());
            x = x + block.attn.forward(h, &cos, &sin, frame, self.query_block);
            let h = block.norm2.forward(x.clone());
            let h = linear(&block.mlp.fc1, h);
            let h = h.clone() * activation::sigmoid(h * 1.702);
            x = x + linear(&block.mlp.fc2, h);
        }
        let m2 = self.spatial_merge_size * self.spatial_merge_size;
        let x = self.merger.ln_q.forward(x).reshape([rows / m2, d * m2]);
        let x = cpu::gelu(linear(&self.merger.mlp0, x));
        linear(&self.merger.mlp2, x)
    }

    /// `cos`, `sin` `[rows, head_dim]`: each patch's row angles on the first quarter of the
    /// head, its column angles on the second, the half repeated (transformers'
    /// `Qwen2VLVisionRotaryEmbedding`), patches in the merger's block order.
    fn rotary(
        &self,
        [t, h, w]: [usize; 3],
        head_dim: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let m = self.spatial_merge_size;
        let quarter = head_dim / 4;
        let inv_freq: Vec<f32> = (0..quarter)
            .map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / (head_dim / 2) as f32))
            .collect();
        let rows = t * h * w;
        let mut cos = Vec::with_capacity(rows * head_dim);
        let mut sin = Vec::with_capacity(rows * head_dim);
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (y, x) = ((bh * m + mh) as f32, (bw * m + mw) as f32);
                            let angles: Vec<f32> = inv_freq
                                .iter()
                                .map(|f| y * f)
                                .chain(inv_freq.iter().map(|f| x * f))
                                .collect();
                            for _ in 0..2 {
                                cos.extend(angles.iter().map(|a| a.cos()));
                                sin.extend(angles.iter().map(|a| a.sin()));
                            }
                        }
                    }
                }
            }
        }
        let shape = [rows, head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

impl<B: Backend> VisionAttention<B> {
    /// `x` `[rows, d]`; attention within consecutive runs of `frame` rows.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        frame: usize,
        block: usize,
    ) -> Tensor<B, 2> {
        let [rows, d] = x.dims();
        let heads = self.num_heads;
        let hd = d / heads;
        // [rows, 3, heads, hd] → three [heads, rows, hd].
        let qkv = linear(&self.qkv, x).reshape([rows, 3, heads, hd]);
        let part = |i: usize| {
            qkv.clone()
                .slice([0..rows, i..i + 1, 0..heads, 0..hd])
                .reshape([rows, heads, hd])
                .swap_dims(0, 1)
        };
        let (cos, sin) = (cos.clone().unsqueeze::<3>(), sin.clone().unsqueeze::<3>());
        let rope = |x: Tensor<B, 3>| x.clone() * cos.clone() + rotate_half(x) * sin.clone();
        let (q, k, v) = (rope(part(0)), rope(part(1)), part(2));
        let scale = (hd as f64).powf(-0.5);
        let mut outs = Vec::new();
        for start in (0..rows).step_by(frame.max(1)) {
            let end = (start + frame).min(rows);
            let ks = k
                .clone()
                .slice([0..heads, start..end, 0..hd])
                .swap_dims(1, 2);
            let vs = v.clone().slice([0..heads, start..end, 0..hd]);
            // Queries in blocks: a 1080p picture is ~10k patches, and its full score matrix
            // (heads × 10k × 10k f32) would be gigabytes; a block of rows is a few hundred MB.
            for qs in (start..end).step_by(block.max(1)) {
                let qe = (qs + block.max(1)).min(end);
                let q_block = q.clone().slice([0..heads, qs..qe, 0..hd]);
                let scores = q_block.matmul(ks.clone()) * scale;
                let probs = activation::softmax(scores, 2);
                outs.push(probs.matmul(vs.clone()));
            }
        }
        let out = Tensor::cat(outs, 1).swap_dims(0, 1).reshape([rows, d]);
        linear(&self.proj, out)
    }
}
