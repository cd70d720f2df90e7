//! DeBERTa-v2 and DeBERTa-v3 (`model_type: deberta-v2`) as in transformers'
//! `modeling_deberta_v2.py`.
//!
//! What differs from BERT: no absolute positions (unless `position_biased_input`); each
//! layer's attention adds *disentangled* terms, content→position (c2p: queries against
//! projected relative-position embeddings) and position→content (p2c: keys against them),
//! with relative distances squashed into log buckets (`position_buckets`, v3) or clamped
//! (`max_relative_positions`, v2); a `ContextPooler` (dense + activation on the first token)
//! under the classifier. Field names follow the HF keys as in `bert.rs`.
//!
//! Every linear an adapter may wrap ([`LAYER_LINEARS`]) runs through the forward's
//! [`LinearHook`], including the query/key projections applied to the relative-position
//! embeddings when `share_att_key` is set, as PEFT's wrapped modules are there too.

use std::path::{Path, PathBuf};

use crate::models::dropout::{Dropout, shared_masks};
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation;
use serde::Deserialize;

use super::bert::trainable;
use super::bert::{BertIntermediate, BertSelfOutput, on_rows};
use super::config::{HiddenAct, ModelConfig};
use super::cpu;
use super::loader::Checkpoint;
use super::tensors::{TensorSet, values};
use super::{LinearHook, LoadOptions, ModelInput, Plain, SequenceClassifier, hooked};
use crate::error::{MlError, Result};

/// The linears of an encoder layer an adapter may wrap, by their PEFT module name relative
/// to `deberta.encoder.layer.N.`; a slot is an index into this list.
pub const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query_proj",
    "attention.self.key_proj",
    "attention.self.value_proj",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// The transformers class of the sequence-classification model.
pub const HF_CLASS: &str = "DebertaV2ForSequenceClassification";

/// Module path of encoder layer `i` in `DebertaV2ForSequenceClassification`.
pub fn layer_path(i: usize) -> String {
    format!("deberta.encoder.layer.{i}")
}

/// PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["deberta-v2"]`.
pub fn default_lora_targets() -> Vec<String> {
    vec!["query_proj".into(), "value_proj".into()]
}

/// `pos_att_type`: `"p2c|c2p"` or `["p2c", "c2p"]` in `config.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PosAttType {
    Joined(String),
    List(Vec<String>),
}

/// The DeBERTa-specific fields of `config.json`, with transformers' `DebertaV2Config`
/// defaults (which differ from BERT's for `type_vocab_size`, `layer_norm_eps` and
/// `pad_token_id`, hence read here rather than from [`ModelConfig`]).
#[derive(Debug, Clone, Deserialize)]
pub struct DebertaConfig {
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "minus_one")]
    pub max_relative_positions: i64,
    #[serde(default = "minus_one")]
    pub position_buckets: i64,
    #[serde(default = "yes")]
    pub position_biased_input: bool,
    #[serde(default)]
    pos_att_type: Option<PosAttType>,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default)]
    pub norm_rel_ebd: Option<String>,
    #[serde(default)]
    pub conv_kernel_size: usize,
    #[serde(default)]
    pub pooler_hidden_size: Option<usize>,
    #[serde(default)]
    pub pooler_dropout: f64,
    #[serde(default = "gelu")]
    pub pooler_hidden_act: String,
    #[serde(default)]
    pub cls_dropout: Option<f64>,
    #[serde(default)]
    pub attention_head_size: Option<usize>,
}

fn default_eps() -> f64 {
    1e-7
}
fn minus_one() -> i64 {
    -1
}
fn yes() -> bool {
    true
}
fn gelu() -> String {
    "gelu".into()
}

impl DebertaConfig {
    /// Reads and checks the DeBERTa fields of `path` (a `config.json`); errors name the
    /// file and the field.
    pub fn from_file(path: &Path, cfg: &ModelConfig) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
        let bad = |message: String| MlError::Config {
            path: path.to_path_buf(),
            message,
        };
        let c: DebertaConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for t in c.pos_att_types() {
            if t != "c2p" && t != "p2c" {
                return Err(bad(format!(
                    "pos_att_type {t:?} is not supported (DeBERTa-v2 uses \"c2p\" and \"p2c\")"
                )));
            }
        }
        if c.conv_kernel_size > 0 {
            return Err(bad(format!(
                "conv_kernel_size {}: the convolution layer of DeBERTa-v2-xlarge/xxlarge is not \
                 supported (DeBERTa-v3 models have none)",
                c.conv_kernel_size
            )));
        }
        if let Some(n) = c.attention_head_size
            && n != cfg.head_dim()
        {
            return Err(bad(format!(
                "attention_head_size {n} differs from hidden_size / num_attention_heads = {}; \
                 not supported",
                cfg.head_dim()
            )));
        }
        if let Some(p) = c.pooler_hidden_size
            && p != cfg.hidden_size
        {
            return Err(bad(format!(
                "pooler_hidden_size {p} differs from hidden_size {}; not supported",
                cfg.hidden_size
            )));
        }
        activation_named(&c.pooler_hidden_act).map_err(|_| {
            bad(format!(
                "pooler_hidden_act {:?} is not supported (gelu, gelu_new, relu, tanh)",
                c.pooler_hidden_act
            ))
        })?;
        if let Some(n) = &c.norm_rel_ebd {
            for part in n.split('|').map(|s| s.trim().to_lowercase()) {
                if part != "none" && part != "layer_norm" {
                    return Err(bad(format!(
                        "norm_rel_ebd {part:?} is not supported (\"none\" or \"layer_norm\")"
                    )));
                }
            }
        }
        if c.relative_attention && c.att_span(cfg) == 0 {
            return Err(bad("relative_attention with no position span".into()));
        }
        Ok(c)
    }

    /// `pos_att_type` entries, lower-cased.
    pub fn pos_att_types(&self) -> Vec<String> {
        match &self.pos_att_type {
            None => vec![],
            Some(PosAttType::Joined(s)) => s.split('|').map(|t| t.trim().to_lowercase()).collect(),
            Some(PosAttType::List(v)) => v.iter().map(|t| t.trim().to_lowercase()).collect(),
        }
    }

    fn has(&self, kind: &str) -> bool {
        self.pos_att_types().iter().any(|t| t == kind)
    }

    /// `max_relative_positions`, or `max_position_embeddings` when below 1.
    fn max_relative(&self, cfg: &ModelConfig) -> usize {
        if self.max_relative_positions < 1 {
            cfg.max_position_embeddings
        } else {
            self.max_relative_positions as usize
        }
    }

    /// Half the number of relative-embedding rows (`pos_ebd_size` in transformers).
    fn att_span(&self, cfg: &ModelConfig) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative(cfg)
        }
    }

    fn norm_rel(&self) -> bool {
        self.norm_rel_ebd.as_deref().is_some_and(|n| {
            n.split('|')
                .any(|p| p.trim().eq_ignore_ascii_case("layer_norm"))
        })
    }
}

/// The activation of the pooler (`pooler_hidden_act`). `None` is tanh.
fn activation_named(name: &str) -> Result<Option<HiddenAct>> {
    match name {
        "gelu" => Ok(Some(HiddenAct::Gelu)),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Some(HiddenAct::GeluTanh)),
        "relu" => Ok(Some(HiddenAct::Relu)),
        "tanh" => Ok(None),
        other => Err(MlError::Unsupported(format!("activation {other:?}"))),
    }
}

fn act<B: Backend, const D: usize>(a: Option<HiddenAct>, x: Tensor<B, D>) -> Tensor<B, D> {
    match a {
        Some(HiddenAct::Gelu) => cpu::gelu(x),
        Some(HiddenAct::GeluTanh) => activation::gelu_approximate(x),
        Some(HiddenAct::Relu) => activation::relu(x),
        None => x.tanh(),
    }
}

/// The `config.json` next to a checkpoint's weights.
fn config_path(ck: &Checkpoint) -> PathBuf {
    ck.dir().join("config.json")
}

/// `embeddings.*`: word (+ absolute position) (+ token type) embeddings, `embed_proj`
/// when `embedding_size` differs from `hidden_size`, LayerNorm, padding zeroed, dropout.
#[derive(Module, Debug)]
pub struct DebertaV2Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Option<Embedding<B>>,
    pub token_type_embeddings: Option<Embedding<B>>,
    pub embed_proj: Option<Linear<B>>,
    /// HF `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> DebertaV2Embeddings<B> {
    fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        dc: &DebertaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let e = dc.embedding_size.unwrap_or(h);
        let key = |ck: &Checkpoint, n: &str| ck.encoder_key(&format!("embeddings.{n}"));
        let word_embeddings =
            ck.embedding(&key(ck, "word_embeddings"), cfg.vocab_size, e, device)?;
        let position_embeddings = if dc.position_biased_input {
            let k = key(ck, "position_embeddings");
            Some(ck.embedding(&k, cfg.max_position_embeddings, e, device)?)
        } else {
            None
        };
        let token_type_embeddings = if dc.type_vocab_size > 0 {
            let k = key(ck, "token_type_embeddings");
            Some(ck.embedding(&k, dc.type_vocab_size, e, device)?)
        } else {
            None
        };
        let embed_proj = if e != h {
            let k = key(ck, "embed_proj");
            Some(ck.linear_no_bias(&k, e, h, device)?)
        } else {
            None
        };
        let k = key(ck, "LayerNorm");
        Ok(Self {
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embed_proj,
            layer_norm: ck.layer_norm(&k, h, dc.layer_norm_eps, device)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        let [b, seq] = input.input_ids.dims();
        let mut x = self.word_embeddings.forward(input.input_ids.clone());
        if let Some(p) = &self.position_embeddings {
            x = x + p.weight.val().slice(0..seq).unsqueeze::<3>();
        }
        if let Some(t) = &self.token_type_embeddings {
            x = x + match &input.token_type_ids {
                Some(ids) => t.forward(ids.clone()),
                None => t.weight.val().slice(0..1).unsqueeze::<3>(),
            };
        }
        if let Some(p) = &self.embed_proj {
            x = on_rows(x, |rows| p.forward(rows));
        }
        let x = self.layer_norm.forward(x);
        let mask = input.attention_mask.clone().float().reshape([b, seq, 1]);
        self.dropout.forward(x * mask)
    }
}

/// HF `attention.self`: content projections plus the disentangled position terms.
#[derive(Module, Debug)]
pub struct DisentangledSelfAttention<B: Backend> {
    pub query_proj: Linear<B>,
    pub key_proj: Linear<B>,
    pub value_proj: Linear<B>,
    /// Only without `share_att_key`, for c2p.
    pub pos_key_proj: Option<Linear<B>>,
    /// Only without `share_att_key`, for p2c.
    pub pos_query_proj: Option<Linear<B>>,
    pub dropout: Dropout,
    pub pos_dropout: Dropout,
    pub num_heads: usize,
    pub c2p: bool,
    pub p2c: bool,
}

/// Relative-position gather indices of one forward, shared by every layer: `c2p`
/// `[1, 1, q, k]` = clamp(δ(i, j) + span) and `p2c` `[1, 1, k, k]` = clamp(−δ(j, i) + span),
/// δ the (bucketed) distance, as transformers' `disentangled_attention_bias`.
#[derive(Debug, Clone)]
pub struct RelPos<B: Backend> {
    c2p: Tensor<B, 4, Int>,
    p2c: Tensor<B, 4, Int>,
    /// The same indices on the host, for [`cpu::disentangled_attention`].
    c2p_host: Vec<u32>,
    p2c_host: Vec<u32>,
}

/// transformers' `make_log_bucket_position` for one distance, in f32 as torch computes it.
fn log_bucket(rel: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let abs = if rel < mid && rel > -mid {
        mid - 1
    } else {
        rel.abs()
    };
    if abs <= mid {
        return rel;
    }
    let denom = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos = ((abs as f32 / mid as f32).ln() / denom * (mid - 1) as f32).ceil() + mid as f32;
    log_pos as i64 * rel.signum()
}

impl<B: Backend> RelPos<B> {
    fn new(seq: usize, span: usize, buckets: i64, max_relative: usize, device: &B::Device) -> Self {
        let rel = |i: usize, j: usize| {
            let d = i as i64 - j as i64;
            if buckets > 0 && max_relative > 0 {
                log_bucket(d, buckets, max_relative as i64)
            } else {
                d
            }
        };
        let top = 2 * span as i64 - 1;
        let mut c2p = Vec::with_capacity(seq * seq);
        let mut p2c = Vec::with_capacity(seq * seq);
        for i in 0..seq {
            for j in 0..seq {
                c2p.push((rel(i, j) + span as i64).clamp(0, top));
                p2c.push((-rel(i, j) + span as i64).clamp(0, top));
            }
        }
        let t = |v: &[i64]| {
            Tensor::<B, 4, Int>::from_data(TensorData::new(v.to_vec(), [1, 1, seq, seq]), device)
        };
        // In 0..2·span by the clamp above.
        let host = |v: &[i64]| v.iter().map(|&x| x as u32).collect();
        Self {
            c2p: t(&c2p),
            p2c: t(&p2c),
            c2p_host: host(&c2p),
            p2c_host: host(&p2c),
        }
    }
}

impl<B: Backend> DisentangledSelfAttention<B> {
    /// [`Self::forward`] after the projections, through [`cpu::disentangled_attention`]:
    /// `None` off the flex backend (and under autodiff), where burn's ops run instead.
    fn forward_cpu<H: LinearHook<B>>(
        &self,
        layer: usize,
        hook: &H,
        [q, k, v]: [&Tensor<B, 3>; 3],
        padding: &Tensor<B, 2, Bool>,
        rel: &Option<(&RelPos<B>, Tensor<B, 2>)>,
    ) -> Option<Tensor<B, 3>> {
        if !cpu::is_flex_f32::<B>(q.dtype()) {
            return None;
        }
        let d = q.dims()[2] / self.num_heads;
        let mut terms = cpu::Disentangled {
            c2p: None,
            p2c: None,
        };
        if let Some((pos, rel_emb)) = rel {
            if self.c2p {
                let pk = match &self.pos_key_proj {
                    Some(p) => p.forward(rel_emb.clone()),
                    None => hooked(hook, layer, 1, &self.key_proj, rel_emb.clone()),
                };
                terms.c2p = Some((pk, pos.c2p_host.as_slice()));
            }
            if self.p2c {
                let pq = match &self.pos_query_proj {
                    Some(p) => p.forward(rel_emb.clone()),
                    None => hooked(hook, layer, 0, &self.query_proj, rel_emb.clone()),
                };
                terms.p2c = Some((pq, pos.p2c_host.as_slice()));
            }
        }
        let factor = 1 + usize::from(terms.c2p.is_some()) + usize::from(terms.p2c.is_some());
        let scale = 1.0 / ((d * factor) as f32).sqrt();
        cpu::disentangled_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            terms,
            padding.clone(),
            self.num_heads,
            scale,
        )
    }

    /// `x` `[batch, seq, hidden]` → `[batch, seq, hidden]`; `padding` `[batch, seq]` true
    /// where a key is padding; `rel_emb` `[2·span, hidden]` (already normalised).
    fn forward<H: LinearHook<B>>(
        &self,
        layer: usize,
        hook: &H,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2, Bool>,
        rel: Option<(&RelPos<B>, Tensor<B, 2>)>,
    ) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let nh = self.num_heads;
        let d = h / nh;
        let split = |t: Tensor<B, 3>| t.reshape([b, s, nh, d]).swap_dims(1, 2);
        let q3 = hooked(hook, layer, 0, &self.query_proj, x.clone());
        let k3 = hooked(hook, layer, 1, &self.key_proj, x.clone());
        let v3 = hooked(hook, layer, 2, &self.value_proj, x);
        if let Some(out) = self.forward_cpu(layer, hook, [&q3, &k3, &v3], &padding, &rel) {
            return out;
        }
        let (q, k, v) = (split(q3), split(k3), split(v3));
        let mut factor = 1;
        let mut scores = q.clone().matmul(k.clone().swap_dims(2, 3));
        if let Some((pos, rel_emb)) = rel {
            // One mask for the position embeddings all rows share (see models::dropout).
            let rel_emb = shared_masks(|| self.pos_dropout.forward(rel_emb));
            let rows = rel_emb.dims()[0];
            // [2·span, hidden] → [1, heads, 2·span, d], broadcast over the batch by matmul.
            // Not expanded to the batch first: on wgpu (burn-cubecl 0.21) the gradient of
            // an expanded (or repeated) swap_dims view through matmul comes out wrong
            // (0.7 off in tests/train_step.rs), while the broadcast one is right.
            let heads = |t: Tensor<B, 2>| t.reshape([rows, nh, d]).swap_dims(0, 1).unsqueeze::<4>();
            let idx = |i: &Tensor<B, 4, Int>| i.clone().expand([b, nh, s, s]);
            if self.c2p {
                factor += 1;
                let pk = match &self.pos_key_proj {
                    Some(p) => p.forward(rel_emb.clone()),
                    None => {
                        shared_masks(|| hooked(hook, layer, 1, &self.key_proj, rel_emb.clone()))
                    }
                };
                let c2p = q.matmul(heads(pk).swap_dims(2, 3));
                scores = scores + c2p.gather(3, idx(&pos.c2p));
            }
            if self.p2c {
                factor += 1;
                let pq = match &self.pos_query_proj {
                    Some(p) => p.forward(rel_emb),
                    None => shared_masks(|| hooked(hook, layer, 0, &self.query_proj, rel_emb)),
                };
                let p2c = k.matmul(heads(pq).swap_dims(2, 3));
                scores = scores + p2c.gather(3, idx(&pos.p2c)).swap_dims(2, 3);
            }
        }
        let scores = scores.div_scalar(((d * factor) as f64).sqrt());
        let mask = padding.reshape([b, 1, 1, s]).expand([b, nh, s, s]);
        let scores = scores.mask_fill(mask, f32::MIN);
        let probs = self.dropout.forward(activation::softmax(scores, 3));
        probs.matmul(v).swap_dims(1, 2).reshape([b, s, h])
    }
}

/// HF `attention`.
#[derive(Module, Debug)]
pub struct DebertaV2Attention<B: Backend> {
    /// HF `attention.self`.
    pub self_attention: DisentangledSelfAttention<B>,
    pub output: BertSelfOutput<B>,
}

/// HF `encoder.layer.N`.
#[derive(Module, Debug)]
pub struct DebertaV2Layer<B: Backend> {
    pub attention: DebertaV2Attention<B>,
    pub intermediate: BertIntermediate<B>,
    pub output: BertSelfOutput<B>,
}

impl<B: Backend> DebertaV2Layer<B> {
    fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        dc: &DebertaConfig,
        i: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (h, m, eps) = (cfg.hidden_size, cfg.intermediate_size, dc.layer_norm_eps);
        let key = |ck: &Checkpoint, n: &str| ck.encoder_key(&format!("encoder.layer.{i}.{n}"));
        let lin = |ck: &mut Checkpoint, n: &str, a: usize, z: usize| {
            let k = key(ck, n);
            ck.linear(&k, a, z, device)
        };
        let relative = dc.relative_attention && !dc.share_att_key;
        let pos_key_proj = if relative && dc.has("c2p") {
            Some(lin(ck, "attention.self.pos_key_proj", h, h)?)
        } else {
            None
        };
        let pos_query_proj = if relative && dc.has("p2c") {
            Some(lin(ck, "attention.self.pos_query_proj", h, h)?)
        } else {
            None
        };
        let self_attention = DisentangledSelfAttention {
            query_proj: lin(ck, "attention.self.query_proj", h, h)?,
            key_proj: lin(ck, "attention.self.key_proj", h, h)?,
            value_proj: lin(ck, "attention.self.value_proj", h, h)?,
            pos_key_proj,
            pos_query_proj,
            dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            pos_dropout: Dropout::new(cfg.hidden_dropout_prob),
            num_heads: cfg.num_attention_heads,
            c2p: dc.has("c2p"),
            p2c: dc.has("p2c"),
        };
        let (kaol, kol) = (
            key(ck, "attention.output.LayerNorm"),
            key(ck, "output.LayerNorm"),
        );
        Ok(Self {
            attention: DebertaV2Attention {
                self_attention,
                output: BertSelfOutput {
                    dense: lin(ck, "attention.output.dense", h, h)?,
                    layer_norm: ck.layer_norm(&kaol, h, eps, device)?,
                    dropout: Dropout::new(cfg.hidden_dropout_prob),
                },
            },
            intermediate: BertIntermediate {
                dense: lin(ck, "intermediate.dense", h, m)?,
                act: cfg.activation()?,
            },
            output: BertSelfOutput {
                dense: lin(ck, "output.dense", m, h)?,
                layer_norm: ck.layer_norm(&kol, h, eps, device)?,
                dropout: Dropout::new(cfg.hidden_dropout_prob),
            },
        })
    }

    fn forward<H: LinearHook<B>>(
        &self,
        i: usize,
        hook: &H,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2, Bool>,
        rel: Option<(&RelPos<B>, Tensor<B, 2>)>,
    ) -> Tensor<B, 3> {
        let attended = self
            .attention
            .self_attention
            .forward(i, hook, x.clone(), padding, rel);
        let out = &self.attention.output;
        let x = out.layer_norm.forward(
            out.dropout
                .forward(hooked(hook, i, 3, &out.dense, attended))
                + x,
        );
        let inner = act(
            Some(self.intermediate.act),
            hooked(hook, i, 4, &self.intermediate.dense, x.clone()),
        );
        let o = &self.output;
        o.layer_norm
            .forward(o.dropout.forward(hooked(hook, i, 5, &o.dense, inner)) + x)
    }

    /// The linear of slot `slot` ([`LAYER_LINEARS`]).
    pub fn linear(&self, slot: usize) -> &Linear<B> {
        match slot {
            0 => &self.attention.self_attention.query_proj,
            1 => &self.attention.self_attention.key_proj,
            2 => &self.attention.self_attention.value_proj,
            3 => &self.attention.output.dense,
            4 => &self.intermediate.dense,
            _ => &self.output.dense,
        }
    }

    pub fn linear_mut(&mut self, slot: usize) -> &mut Linear<B> {
        match slot {
            0 => &mut self.attention.self_attention.query_proj,
            1 => &mut self.attention.self_attention.key_proj,
            2 => &mut self.attention.self_attention.value_proj,
            3 => &mut self.attention.output.dense,
            4 => &mut self.intermediate.dense,
            _ => &mut self.output.dense,
        }
    }

    fn without_dropout(&mut self) {
        self.attention.self_attention.dropout.prob = 0.0;
        self.attention.self_attention.pos_dropout.prob = 0.0;
        self.attention.output.dropout.prob = 0.0;
        self.output.dropout.prob = 0.0;
    }
}

/// HF `encoder`: the layers, the relative-position embeddings and their LayerNorm.
#[derive(Module, Debug)]
pub struct DebertaV2Encoder<B: Backend> {
    pub layer: Vec<DebertaV2Layer<B>>,
    pub rel_embeddings: Option<Embedding<B>>,
    /// HF `encoder.LayerNorm` (`norm_rel_ebd: layer_norm`), applied to `rel_embeddings`.
    pub layer_norm: Option<LayerNorm<B>>,
    /// Half the rows of `rel_embeddings`.
    pub span: usize,
    pub buckets: i64,
    pub max_relative: usize,
}

impl<B: Backend> DebertaV2Encoder<B> {
    fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        dc: &DebertaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| DebertaV2Layer::load(ck, cfg, dc, i, device))
            .collect::<Result<_>>()?;
        let span = dc.att_span(cfg);
        let rel_embeddings = if dc.relative_attention {
            let k = ck.encoder_key("encoder.rel_embeddings");
            Some(ck.embedding(&k, 2 * span, cfg.hidden_size, device)?)
        } else {
            None
        };
        let layer_norm = if dc.norm_rel() {
            let k = ck.encoder_key("encoder.LayerNorm");
            Some(ck.layer_norm(&k, cfg.hidden_size, dc.layer_norm_eps, device)?)
        } else {
            None
        };
        Ok(Self {
            layer,
            rel_embeddings,
            layer_norm,
            span,
            buckets: dc.position_buckets,
            max_relative: dc.max_relative(cfg),
        })
    }

    fn forward<H: LinearHook<B>>(
        &self,
        hook: &H,
        mut x: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let seq = x.dims()[1];
        let padding = attention_mask.equal_elem(0);
        let rel = self.rel_embeddings.as_ref().map(|e| {
            let w = e.weight.val();
            let w = match &self.layer_norm {
                Some(n) => n.forward(w),
                None => w,
            };
            let pos = RelPos::new(seq, self.span, self.buckets, self.max_relative, &x.device());
            (pos, w)
        });
        for (i, layer) in self.layer.iter().enumerate() {
            let r = rel.as_ref().map(|(p, w)| (p, w.clone()));
            x = layer.forward(i, hook, x, padding.clone(), r);
        }
        x
    }
}

/// HF `DebertaV2Model`: embeddings + encoder.
#[derive(Module, Debug)]
pub struct DebertaV2Model<B: Backend> {
    pub embeddings: DebertaV2Embeddings<B>,
    pub encoder: DebertaV2Encoder<B>,
}

impl<B: Backend> DebertaV2Model<B> {
    /// The encoder of the checkpoint (`deberta.` prefix optional); the DeBERTa fields are
    /// read from the `config.json` next to the weights.
    pub fn load(ck: &mut Checkpoint, cfg: &ModelConfig, device: &B::Device) -> Result<Self> {
        let dc = DebertaConfig::from_file(&config_path(ck), cfg)?;
        Self::load_with(ck, cfg, &dc, device)
    }

    fn load_with(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        dc: &DebertaConfig,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self {
            embeddings: DebertaV2Embeddings::load(ck, cfg, dc, device)?,
            encoder: DebertaV2Encoder::load(ck, cfg, dc, device)?,
        })
    }

    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.forward_with(input, &Plain)
    }

    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 3> {
        self.encoder.forward(
            hook,
            self.embeddings.forward(input),
            input.attention_mask.clone(),
        )
    }
}

/// HF `pooler` (`ContextPooler`): dropout, dense and `pooler_hidden_act` on the first token.
#[derive(Module, Debug)]
pub struct ContextPooler<B: Backend> {
    pub dense: Linear<B>,
    pub dropout: Dropout,
    /// `None` is tanh.
    #[module(skip)]
    pub act: Option<HiddenAct>,
}

impl<B: Backend> ContextPooler<B> {
    fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, h] = hidden.dims();
        let first = self
            .dropout
            .forward(hidden.slice([0..b, 0..1]).reshape([b, h]));
        act(self.act, self.dense.forward(first))
    }
}

/// HF `DebertaV2ForSequenceClassification`: encoder, context pooler, dropout, classifier.
#[derive(Module, Debug)]
pub struct DebertaV2ForSequenceClassification<B: Backend> {
    /// HF `deberta.*`.
    pub deberta: DebertaV2Model<B>,
    pub pooler: ContextPooler<B>,
    pub dropout: Dropout,
    /// HF `classifier`: `[hidden] → [num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> DebertaV2ForSequenceClassification<B> {
    pub fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let dc = DebertaConfig::from_file(&config_path(ck), cfg)?;
        let h = cfg.hidden_size;
        let init = opts.init_missing_head.then_some(cfg.initializer_range);
        let deberta = DebertaV2Model::load_with(ck, cfg, &dc, device)?;
        let pooler = ContextPooler {
            dense: ck.head_linear("pooler.dense", h, h, init, device)?,
            dropout: Dropout::new(dc.pooler_dropout),
            act: activation_named(&dc.pooler_hidden_act)?,
        };
        let classifier = ck.head_linear(
            "classifier",
            h,
            opts.num_labels.unwrap_or(cfg.num_labels()),
            init,
            device,
        )?;
        Ok(Self {
            deberta,
            pooler,
            dropout: Dropout::new(dc.cls_dropout.unwrap_or(cfg.hidden_dropout_prob)),
            classifier,
        })
    }
}

impl<B: Backend> SequenceClassifier<B> for DebertaV2ForSequenceClassification<B> {
    fn layer_linears(&self) -> &'static [&'static str] {
        &LAYER_LINEARS
    }

    fn layer_path(&self, i: usize) -> String {
        layer_path(i)
    }

    fn num_layers(&self) -> usize {
        self.deberta.encoder.layer.len()
    }

    fn layer_linear(&self, layer: usize, slot: usize) -> &Linear<B> {
        self.deberta.encoder.layer[layer].linear(slot)
    }

    fn layer_linear_mut(&mut self, layer: usize, slot: usize) -> &mut Linear<B> {
        self.deberta.encoder.layer[layer].linear_mut(slot)
    }

    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 2> {
        let hidden = self.deberta.forward_with(input, hook);
        self.classifier
            .forward(self.dropout.forward(self.pooler.forward(hidden)))
    }

    fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.deberta.forward(input)
    }

    fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    fn without_dropout(&mut self) {
        self.deberta.embeddings.dropout.prob = 0.0;
        for l in &mut self.deberta.encoder.layer {
            l.without_dropout();
        }
        self.pooler.dropout.prob = 0.0;
        self.dropout.prob = 0.0;
    }

    fn freeze_except_head(self, train_pooler: bool) -> Self {
        let mut m = self.no_grad();
        m.classifier = trainable(m.classifier);
        if train_pooler {
            m.pooler.dense = trainable(m.pooler.dense);
        }
        m
    }

    fn modules_to_save(&self, train_pooler: bool) -> Vec<&'static str> {
        if train_pooler {
            vec!["classifier", "pooler"]
        } else {
            vec!["classifier"]
        }
    }

    fn head_tensors(&self, train_pooler: bool, set: &mut TensorSet, prefix: &str) {
        set.linear(&format!("{prefix}classifier"), &self.classifier);
        if train_pooler {
            set.linear(&format!("{prefix}pooler.dense"), &self.pooler.dense);
        }
    }

    fn load_head(
        &mut self,
        train_pooler: bool,
        set: &mut TensorSet,
        path: &Path,
        prefix: &str,
        device: &B::Device,
    ) -> Result<()> {
        set.take_linear(
            path,
            &format!("{prefix}classifier"),
            &mut self.classifier,
            true,
            device,
        )?;
        set.take_linear(
            path,
            &format!("{prefix}pooler.dense"),
            &mut self.pooler.dense,
            train_pooler,
            device,
        )
    }

    fn model_tensors(&self, set: &mut TensorSet) {
        let e = &self.deberta.embeddings;
        let table = |set: &mut TensorSet, key: &str, t: &Embedding<B>| {
            // Embedding tables are `[rows, dim]` in both layouts: not transposed.
            let w = t.weight.val();
            set.0
                .insert(key.to_string(), (w.dims().to_vec(), values(w)));
        };
        table(
            set,
            "deberta.embeddings.word_embeddings.weight",
            &e.word_embeddings,
        );
        if let Some(p) = &e.position_embeddings {
            table(set, "deberta.embeddings.position_embeddings.weight", p);
        }
        if let Some(t) = &e.token_type_embeddings {
            table(set, "deberta.embeddings.token_type_embeddings.weight", t);
        }
        if let Some(p) = &e.embed_proj {
            set.linear("deberta.embeddings.embed_proj", p);
        }
        set.norm("deberta.embeddings.LayerNorm", &e.layer_norm);
        for (i, l) in self.deberta.encoder.layer.iter().enumerate() {
            let k = layer_path(i);
            for (s, name) in LAYER_LINEARS.iter().enumerate() {
                set.linear(&format!("{k}.{name}"), l.linear(s));
            }
            let sa = &l.attention.self_attention;
            if let Some(p) = &sa.pos_key_proj {
                set.linear(&format!("{k}.attention.self.pos_key_proj"), p);
            }
            if let Some(p) = &sa.pos_query_proj {
                set.linear(&format!("{k}.attention.self.pos_query_proj"), p);
            }
            set.norm(
                &format!("{k}.attention.output.LayerNorm"),
                &l.attention.output.layer_norm,
            );
            set.norm(&format!("{k}.output.LayerNorm"), &l.output.layer_norm);
        }
        if let Some(r) = &self.deberta.encoder.rel_embeddings {
            table(set, "deberta.encoder.rel_embeddings.weight", r);
        }
        if let Some(n) = &self.deberta.encoder.layer_norm {
            set.norm("deberta.encoder.LayerNorm", n);
        }
        set.linear("pooler.dense", &self.pooler.dense);
        set.linear("classifier", &self.classifier);
    }
}
