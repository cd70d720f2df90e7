//! The Qwen2 decoder of Qwen2-VL (transformers' `Qwen2VLTextModel` + `lm_head`): RMSNorm
//! pre-norm layers, grouped-query attention (biased q/k/v, unbiased o), SwiGLU MLP, and
//! multimodal rotary embeddings (M-RoPE): every position has three ids (temporal, height,
//! width; equal for text) and `mrope_section` says which slice of the rotary half-dimension
//! each one turns. A KV cache makes each generated token one row of work.

use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::activation;

use super::config::TextConfig;
use super::{Weights, rotate_half};
use crate::error::Result;
use crate::precision::linear;

/// HF `Qwen2VLRMSNorm`: `x · rsqrt(mean(x²) + eps) · weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Tensor<B, 1>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn load(w: &mut Weights, key: &str, d: usize, eps: f64, device: &B::Device) -> Result<Self> {
        Ok(Self {
            weight: w.tensor::<B, 1>(&format!("{key}.weight"), &[d], [d], device)?,
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (var + self.eps).sqrt().recip();
        normed * self.weight.clone().unsqueeze::<D>()
    }
}

/// HF `layers.N.self_attn`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
}

/// HF `layers.N.mlp`: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

/// HF `layers.N`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

/// HF `model.language_model` + `lm_head`.
#[derive(Module, Debug)]
pub struct TextModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when tied to `embed_tokens` (`tie_word_embeddings`, Qwen2-VL-2B).
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub rope_theta: f64,
    #[module(skip)]
    pub mrope_section: [usize; 3],
}

/// Keys and values seen so far, per layer: `[1, kv_heads, past, head_dim]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    /// Rows already in the cache.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Backend> TextModel<B> {
    /// `w` scoped at the decoder (`model.language_model.` or the Hub's `model.`); the head
    /// is read from `lm_head` (the caller's key) unless tied.
    pub fn load(
        w: &mut Weights,
        lm_head: Option<&str>,
        cfg: &TextConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let hd = cfg.head_dim();
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let embed_tokens = w.embedding("embed_tokens", cfg.vocab_size, d, device)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("layers.{i}");
                let eps = cfg.rms_norm_eps;
                Ok(DecoderLayer {
                    input_layernorm: RmsNorm::load(
                        w,
                        &format!("{p}.input_layernorm"),
                        d,
                        eps,
                        device,
                    )?,
                    self_attn: Attention {
                        q_proj: w.linear(&format!("{p}.self_attn.q_proj"), d, nh * hd, device)?,
                        k_proj: w.linear(&format!("{p}.self_attn.k_proj"), d, nkv * hd, device)?,
                        v_proj: w.linear(&format!("{p}.self_attn.v_proj"), d, nkv * hd, device)?,
                        o_proj: w.linear_no_bias(
                            &format!("{p}.self_attn.o_proj"),
                            nh * hd,
                            d,
                            device,
                        )?,
                        num_heads: nh,
                        num_kv_heads: nkv,
                    },
                    post_attention_layernorm: RmsNorm::load(
                        w,
                        &format!("{p}.post_attention_layernorm"),
                        d,
                        eps,
                        device,
                    )?,
                    mlp: Mlp {
                        gate_proj: w.linear_no_bias(
                            &format!("{p}.mlp.gate_proj"),
                            d,
                            cfg.intermediate_size,
                            device,
                        )?,
                        up_proj: w.linear_no_bias(
                            &format!("{p}.mlp.up_proj"),
                            d,
                            cfg.intermediate_size,
                            device,
                        )?,
                        down_proj: w.linear_no_bias(
                            &format!("{p}.mlp.down_proj"),
                            cfg.intermediate_size,
                            d,
                            device,
                        )?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "norm", d, cfg.rms_norm_eps, device)?;
        let lm_head = match lm_head {
            Some(key) => Some(w.linear_no_bias_abs(key, d, cfg.vocab_size, device)?),
            None => None,
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_theta: cfg.rope_theta,
            mrope_section: cfg.mrope_section,
        })
    }

    /// Token embeddings `[1, seq, hidden]`.
    pub fn embed(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 3> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        self.embed_tokens
            .forward(Tensor::from_data(TensorData::new(ids, [1, n]), device))
    }

    /// Logits `[seq, vocab]` of `embeds` `[1, seq, hidden]` at M-RoPE `positions`
    /// (`[3][seq]`), after the rows already in `cache` (which grows by `seq`). With `last_only`
    /// only the last row's logits are computed (`[1, vocab]`).
    pub fn forward(
        &self,
        embeds: Tensor<B, 3>,
        positions: &[Vec<i64>; 3],
        cache: &mut KvCache<B>,
        last_only: bool,
    ) -> Tensor<B, 2> {
        let device = embeds.device();
        let [_, seq, d] = embeds.dims();
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        let past = cache.len();
        let head_dim = d / self.layers[0].self_attn.num_heads;
        let (cos, sin) = self.rotary(positions, head_dim, &device);
        // Causal: query i (absolute past + i) sees keys 0..=past + i.
        let mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                (0..seq)
                    .flat_map(|i| (0..past + seq).map(move |j| (j > past + i) as i64))
                    .collect::<Vec<_>>(),
                [seq, past + seq],
            ),
            &device,
        )
        .bool()
        .unsqueeze::<4>();
        let mut x = embeds;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let h = layer.input_layernorm.forward(x.clone());
            x = x + layer.self_attn.forward(h, &cos, &sin, &mask, slot);
            let h = layer.post_attention_layernorm.forward(x.clone());
            let m = &layer.mlp;
            let h = activation::silu(linear(&m.gate_proj, h.clone())) * linear(&m.up_proj, h);
            x = x + linear(&m.down_proj, h);
        }
        let x = if last_only {
            x.slice([0..1, seq - 1..seq, 0..d])
        } else {
            x
        };
        let rows = x.dims()[1];
        let x = self.norm.forward(x).reshape([rows, d]);
        match &self.lm_head {
            Some(head) => linear(head, x),
            None => x.matmul(self.embed_tokens.weight.val().transpose()),
        }
    }

    /// `cos`, `sin` `[1, 1, seq, head_dim]`: rotary slot `j < head_dim / 2` turns by the
    /// position id of the axis whose `mrope_section` covers `j` (transformers'
    /// `Qwen2VLRotaryEmbedding.recomposition_frequencies`), the half repeated.
    fn rotary(
        &self,
        positions: &[Vec<i64>; 3],
        head_dim: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let [s0, s1, _] = self.mrope_section;
        let axis = |j: usize| (j >= s0) as usize + (j >= s0 + s1) as usize;
        let seq = positions[0].len();
        let mut cos = Vec::with_capacity(seq * head_dim);
        let mut sin = Vec::with_capacity(seq * head_dim);
        let rows = positions[0].iter().zip(&positions[1]).zip(&positions[2]);
        for ((&t, &h), &w) in rows {
            let ids = [t, h, w];
            let angles: Vec<f32> = (0..half)
                .map(|j| ids[axis(j)] as f32 * inv_freq[j])
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [1, 1, seq, head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        mask: &Tensor<B, 4, Bool>,
        cache: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> Tensor<B, 3> {
        let [b, seq, _] = x.dims();
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        let split = |t: Tensor<B, 3>, heads: usize| {
            let hd = t.dims()[2] / heads;
            t.reshape([b, seq, heads, hd]).swap_dims(1, 2)
        };
        let q = split(linear(&self.q_proj, x.clone()), nh);
        let k = split(linear(&self.k_proj, x.clone()), nkv);
        let v = split(linear(&self.v_proj, x), nkv);
        let hd = q.dims()[3];
        let rope = |t: Tensor<B, 4>| t.clone() * cos.clone() + rotate_half(t) * sin.clone();
        let (q, mut k, mut v) = (rope(q), rope(k), v);
        if let Some((pk, pv)) = cache.take() {
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        *cache = Some((k.clone(), v.clone()));
        let total = k.dims()[2];
        // Grouped-query attention: query head h reads key/value head h / (nh / nkv).
        let rep = nh / nkv;
        let expand = |t: Tensor<B, 4>| {
            t.unsqueeze_dim::<5>(2)
                .expand([b, nkv, rep, total, hd])
                .reshape([b, nh, total, hd])
        };
        let (k, v) = (expand(k), expand(v));
        let scores = q.matmul(k.swap_dims(2, 3)) * (hd as f64).powf(-0.5);
        let scores = scores.mask_fill(mask.clone(), f32::NEG_INFINITY);
        let probs = activation::softmax(scores, 3);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, seq, nh * hd]);
        linear(&self.o_proj, out)
    }
}
