//! ModernBERT as in transformers' `modeling_modernbert.py` (gte-reranker-modernbert,
//! ruri-v3 and the `japanese-reranker-*-v2` rerankers built on it).
//!
//! What differs from BERT:
//! - no position table: rotary embeddings on queries and keys, with one base
//!   (`rope_theta`) for global layers and another for local ones;
//! - pre-norm layers (`attn_norm`, `mlp_norm`; layer 0's `attn_norm` is the identity, the
//!   embeddings' `norm` stands in for it) and a `final_norm`;
//! - alternating attention: a layer is global (every key) or local (keys within
//!   `local_attention / 2` positions of the query); `layer_types`, or in older configs every
//!   `global_attn_every_n_layers`-th layer, is global;
//! - fused projections: `attn.Wqkv` `[hidden → 3·hidden]` (queries, keys, values side by
//!   side) and `mlp.Wi` `[hidden → 2·intermediate]` (GeGLU: `act(input) · gate`);
//! - no biases in released models (`norm_bias`, `attention_bias`, `mlp_bias`,
//!   `classifier_bias` false), but all are honoured;
//! - the head pools the `[CLS]` row or the mean over the attention mask, then
//!   `head.dense → act → head.norm → drop → classifier`.
//!
//! Execution is padded (as transformers' eager/sdpa paths): positions count from 0 in every
//! row, so with right padding each sequence sees the same rotary angles and the same keys
//! as alone, and padded execution gives the numbers of each sequence on its own.
//!
//! Rust field names are the HF module names in snake case (`attn.Wqkv` is `attn.wqkv`).

use std::path::{Path, PathBuf};

use crate::models::dropout::Dropout;
use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation;
use serde_json::Value;

use super::config::{HiddenAct, ModelConfig};
use super::cpu;
use super::loader::Checkpoint;
use super::{LinearHook, LoadOptions, ModelInput, Plain, SequenceClassifier, TensorSet, hooked};
use crate::error::{MlError, Result};

/// The linears of one encoder layer an adapter may target, by their module name relative to
/// the layer (`model.layers.{i}`); the index is the `slot` of [`LinearHook::linear`].
pub const LAYER_LINEARS: [&str; 4] = ["attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"];
/// `slot`s of [`LAYER_LINEARS`].
const WQKV: usize = 0;
const ATTN_WO: usize = 1;
const WI: usize = 2;
const MLP_WO: usize = 3;

/// The transformers class of the sequence-classification model.
pub const HF_CLASS: &str = "ModernBertForSequenceClassification";

/// The module path of encoder layer `i` in `ModernBertForSequenceClassification`.
pub fn layer_path(i: usize) -> String {
    format!("model.layers.{i}")
}

/// LoRA targets when the user names none. PEFT 0.21 has no ModernBERT entry in
/// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`; the attention projection is what
/// its BERT entry (`query`, `value`) amounts to here. (`Wo` alone would also match `mlp.Wo`.)
pub fn default_lora_targets() -> Vec<String> {
    vec!["Wqkv".into()]
}

/// How the head reduces the last hidden state to one vector (`classifier_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first (`[CLS]`) row.
    Cls,
    /// The mean of the rows the attention mask keeps.
    Mean,
}

/// The ModernBERT fields of `config.json` (beyond [`ModelConfig`]'s), with transformers'
/// defaults (`ModernBertConfig`).
#[derive(Debug, Clone)]
pub struct ModernBertConfig {
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub classifier_bias: bool,
    pub hidden_activation: HiddenAct,
    pub classifier_activation: HiddenAct,
    pub classifier_pooling: Pooling,
    /// `local_attention`: a local layer's query sees keys within half of it on each side.
    pub local_attention: usize,
    /// Per layer: true for global (full) attention, false for local (sliding).
    pub global_layers: Vec<bool>,
    pub global_rope_theta: f64,
    pub local_rope_theta: f64,
    pub embedding_dropout: f64,
    pub mlp_dropout: f64,
    pub attention_dropout: f64,
    pub classifier_dropout: f64,
}

impl ModernBertConfig {
    /// Reads the ModernBERT fields from `cfg` (its `extra` map holds config.json's other
    /// fields); errors name `config.json` and the field.
    pub fn from_config(cfg: &ModelConfig) -> Result<Self> {
        let extra = &cfg.extra;
        let bad = |message: String| MlError::Config {
            path: PathBuf::from("config.json"),
            message,
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            match extra.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| bad(format!("{key}: expected a number, found {v}"))),
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match extra.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(format!("{key}: expected true or false, found {v}"))),
            }
        };
        let text = |key: &str, default: &str| -> Result<String> {
            match extra.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(v) => v
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{key}: expected a string, found {v}"))),
            }
        };
        let act = |key: &str| -> Result<HiddenAct> {
            match text(key, "gelu")?.as_str() {
                "gelu" => Ok(HiddenAct::Gelu),
                "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(HiddenAct::GeluTanh),
                "relu" => Ok(HiddenAct::Relu),
                other => Err(bad(format!(
                    "{key} {other:?} is not supported (gelu, gelu_pytorch_tanh, gelu_new, relu)"
                ))),
            }
        };
        let n = cfg.num_hidden_layers;
        let global_layers = match extra.get("layer_types") {
            Some(Value::Array(types)) => {
                if types.len() != n {
                    return Err(bad(format!(
                        "layer_types has {} entries for num_hidden_layers {n}",
                        types.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(true),
                        Some("sliding_attention") => Ok(false),
                        _ => Err(bad(format!(
                            "layer_types: {t} is not \"full_attention\" or \"sliding_attention\""
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None | Some(Value::Null) => {
                let every = float("global_attn_every_n_layers", 3.0)?;
                if every < 1.0 || every.fract() != 0.0 {
                    return Err(bad(format!(
                        "global_attn_every_n_layers: expected a whole number ≥ 1, found {every}"
                    )));
                }
                (0..n).map(|i| i % every as usize == 0).collect()
            }
            Some(v) => return Err(bad(format!("layer_types: expected a list, found {v}"))),
        };
        if extra.get("rope_scaling").is_some_and(|v| !v.is_null()) {
            return Err(bad("rope_scaling is not supported".into()));
        }
        // transformers 5 writes `rope_parameters`; the Hub's configs have the older keys.
        let theta = |kind: &str, legacy: &str, default: f64| -> Result<f64> {
            let Some(params) = extra.get("rope_parameters").and_then(|p| p.get(kind)) else {
                return float(legacy, default);
            };
            if let Some(t) = params.get("rope_type").and_then(Value::as_str)
                && t != "default"
            {
                return Err(bad(format!(
                    "rope_parameters.{kind}.rope_type {t:?} is not supported (only \"default\")"
                )));
            }
            if let Some(f) = params.get("partial_rotary_factor").and_then(Value::as_f64)
                && f != 1.0
            {
                return Err(bad(format!(
                    "rope_parameters.{kind}.partial_rotary_factor {f} is not supported (only 1)"
                )));
            }
            match params.get("rope_theta") {
                Some(v) => v.as_f64().ok_or_else(|| {
                    bad(format!(
                        "rope_parameters.{kind}.rope_theta: expected a number, found {v}"
                    ))
                }),
                None => float(legacy, default),
            }
        };
        let pooling = match text("classifier_pooling", "cls")?.as_str() {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => {
                return Err(bad(format!(
                    "classifier_pooling {other:?} is not supported (\"cls\" or \"mean\")"
                )));
            }
        };
        let local_attention = float("local_attention", 128.0)?;
        if local_attention < 0.0 || local_attention.fract() != 0.0 {
            return Err(bad(format!(
                "local_attention: expected a whole number ≥ 0, found {local_attention}"
            )));
        }
        Ok(Self {
            norm_eps: float("norm_eps", 1e-5)?,
            norm_bias: flag("norm_bias")?,
            attention_bias: flag("attention_bias")?,
            mlp_bias: flag("mlp_bias")?,
            classifier_bias: flag("classifier_bias")?,
            hidden_activation: act("hidden_activation")?,
            classifier_activation: act("classifier_activation")?,
            classifier_pooling: pooling,
            local_attention: local_attention as usize,
            global_layers,
            global_rope_theta: theta("full_attention", "global_rope_theta", 160_000.0)?,
            local_rope_theta: theta("sliding_attention", "local_rope_theta", 10_000.0)?,
            embedding_dropout: float("embedding_dropout", 0.0)?,
            mlp_dropout: float("mlp_dropout", 0.0)?,
            attention_dropout: float("attention_dropout", 0.0)?,
            classifier_dropout: cfg.classifier_dropout.unwrap_or(0.0),
        })
    }
}

/// A linear that has a bias or not, as the config says (a missing bias is then an error
/// only when the config promises one).
fn linear<B: Backend>(
    ck: &mut Checkpoint,
    key: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Linear<B>> {
    if bias {
        ck.linear(key, d_in, d_out, device)
    } else {
        ck.linear_no_bias(key, d_in, d_out, device)
    }
}

fn norm<B: Backend>(
    ck: &mut Checkpoint,
    key: &str,
    d: usize,
    mb: &ModernBertConfig,
    device: &B::Device,
) -> Result<LayerNorm<B>> {
    if mb.norm_bias {
        ck.layer_norm(key, d, mb.norm_eps, device)
    } else {
        ck.layer_norm_no_bias(key, d, mb.norm_eps, device)
    }
}

fn act<B: Backend, const D: usize>(act: HiddenAct, x: Tensor<B, D>) -> Tensor<B, D> {
    match act {
        HiddenAct::Gelu => cpu::gelu(x),
        HiddenAct::GeluTanh => activation::gelu_approximate(x),
        HiddenAct::Relu => activation::relu(x),
    }
}

/// HF `model.embeddings`: token embeddings, LayerNorm, dropout (no positions: rotary).
#[derive(Module, Debug)]
pub struct ModernBertEmbeddings<B: Backend> {
    pub tok_embeddings: Embedding<B>,
    pub norm: LayerNorm<B>,
    pub drop: Dropout,
}

/// HF `attn`: fused `Wqkv`, rotary embeddings, global or local attention, `Wo`.
#[derive(Module, Debug)]
pub struct ModernBertAttention<B: Backend> {
    /// HF `Wqkv`: `[hidden → 3·hidden]`, queries, keys and values side by side.
    pub wqkv: Linear<B>,
    /// HF `Wo`.
    pub wo: Linear<B>,
    /// On the attention probabilities (`attention_dropout`).
    pub drop: Dropout,
    /// HF `out_drop`, after `Wo` (also `attention_dropout`).
    pub out_drop: Dropout,
    #[module(skip)]
    pub num_heads: usize,
    /// `Some(w)` for a local layer: keys within `w` positions of the query.
    #[module(skip)]
    pub window: Option<usize>,
}

/// HF `mlp`: `Wi` → GeGLU → dropout → `Wo`.
#[derive(Module, Debug)]
pub struct ModernBertMlp<B: Backend> {
    /// HF `Wi`: `[hidden → 2·intermediate]`, input and gate side by side.
    pub wi: Linear<B>,
    /// HF `Wo`.
    pub wo: Linear<B>,
    pub drop: Dropout,
    #[module(skip)]
    pub act: HiddenAct,
}

/// HF `model.layers.N`.
#[derive(Module, Debug)]
pub struct ModernBertLayer<B: Backend> {
    /// `None` in layer 0 (HF `nn.Identity`).
    pub attn_norm: Option<LayerNorm<B>>,
    pub attn: ModernBertAttention<B>,
    pub mlp_norm: LayerNorm<B>,
    pub mlp: ModernBertMlp<B>,
}

/// What every layer of one forward pass shares, built once.
struct Context<B: Backend> {
    /// `[batch, seq]`: true where a key is padding.
    padding: Tensor<B, 2, Bool>,
    /// Rotary tables for global and for local layers.
    global_rope: Rope,
    local_rope: Rope,
}

/// Rotary `cos`, `sin` tables `[seq, head_dim]`, row-major.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    seq: usize,
    head_dim: usize,
}

impl Rope {
    /// The tables for base `theta`, computed as transformers does in f32
    /// (`inv_freq = 1 / theta^(2i/d)`, angle = position · inv_freq, the half-table repeated).
    fn new(seq: usize, head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = vec![0.0f32; seq * head_dim];
        let mut sin = vec![0.0f32; seq * head_dim];
        for p in 0..seq {
            for (i, f) in inv_freq.iter().enumerate() {
                let angle = (p as f32 * f) as f64;
                let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                for j in [i, i + half] {
                    cos[p * head_dim + j] = c;
                    sin[p * head_dim + j] = s;
                }
            }
        }
        Self {
            cos,
            sin,
            seq,
            head_dim,
        }
    }

    /// As tensors `[1, seq, 1, head_dim]` (burn's path: training, other backends).
    fn tensors<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let shape = [1, self.seq, 1, self.head_dim];
        let t = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), shape), device);
        (t(&self.cos), t(&self.sin))
    }
}

impl<B: Backend> ModernBertLayer<B> {
    fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        mb: &ModernBertConfig,
        i: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        let key = |name: &str| ck.encoder_key(&format!("layers.{i}.{name}"));
        let (kan, kqkv, kao, kmn, kwi, kwo) = (
            key("attn_norm"),
            key("attn.Wqkv"),
            key("attn.Wo"),
            key("mlp_norm"),
            key("mlp.Wi"),
            key("mlp.Wo"),
        );
        Ok(Self {
            attn_norm: if i == 0 {
                None
            } else {
                Some(norm(ck, &kan, h, mb, device)?)
            },
            attn: ModernBertAttention {
                wqkv: linear(ck, &kqkv, h, 3 * h, mb.attention_bias, device)?,
                wo: linear(ck, &kao, h, h, mb.attention_bias, device)?,
                drop: Dropout::new(mb.attention_dropout),
                out_drop: Dropout::new(mb.attention_dropout),
                num_heads: cfg.num_attention_heads,
                window: (!mb.global_layers[i]).then_some(mb.local_attention / 2),
            },
            mlp_norm: norm(ck, &kmn, h, mb, device)?,
            mlp: ModernBertMlp {
                wi: linear(ck, &kwi, h, 2 * m, mb.mlp_bias, device)?,
                wo: linear(ck, &kwo, m, h, mb.mlp_bias, device)?,
                drop: Dropout::new(mb.mlp_dropout),
                act: mb.hidden_activation,
            },
        })
    }

    fn forward<H: LinearHook<B>>(
        &self,
        x: Tensor<B, 3>,
        ctx: &Context<B>,
        hook: &H,
        li: usize,
    ) -> Tensor<B, 3> {
        let [b, s, h] = x.dims();
        let normed = match &self.attn_norm {
            Some(n) => n.forward(x.clone()),
            None => x.clone(),
        };
        let a = &self.attn;
        let qkv = hooked(hook, li, WQKV, &a.wqkv, normed);
        let rope = if a.window.is_some() {
            &ctx.local_rope
        } else {
            &ctx.global_rope
        };
        let (q, k, v) = match cpu::split_qkv_rotary(qkv.clone(), &rope.cos, &rope.sin, a.num_heads)
        {
            Some(qkv) => qkv,
            None => {
                let (cos, sin) = rope.tensors(&qkv.device());
                let q = qkv.clone().slice([0..b, 0..s, 0..h]);
                let k = qkv.clone().slice([0..b, 0..s, h..2 * h]);
                let v = qkv.slice([0..b, 0..s, 2 * h..3 * h]);
                (
                    rotary(q, &cos, &sin, a.num_heads),
                    rotary(k, &cos, &sin, a.num_heads),
                    v,
                )
            }
        };
        let attended = attention(q, k, v, ctx.padding.clone(), a);
        let x = x + a
            .out_drop
            .forward(hooked(hook, li, ATTN_WO, &a.wo, attended));
        let inner = hooked(hook, li, WI, &self.mlp.wi, self.mlp_norm.forward(x.clone()));
        let fused = match self.mlp.act {
            HiddenAct::Gelu => cpu::geglu(inner.clone()),
            _ => None,
        };
        let glu = fused.unwrap_or_else(|| {
            let m = inner.dims()[2] / 2;
            let input = inner.clone().slice([0..b, 0..s, 0..m]);
            let gate = inner.slice([0..b, 0..s, m..2 * m]);
            act(self.mlp.act, input) * gate
        });
        let glu = self.mlp.drop.forward(glu);
        x + hooked(hook, li, MLP_WO, &self.mlp.wo, glu)
    }
}

/// transformers' `apply_rotary_pos_emb`: `x·cos + rotate_half(x)·sin` per head, where
/// `rotate_half([x1, x2]) = [−x2, x1]` over the halves of the head dim. `x`
/// `[batch, seq, hidden]` with the heads side by side; `cos`, `sin` `[1, seq, 1, head_dim]`.
fn rotary<B: Backend>(
    x: Tensor<B, 3>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    heads: usize,
) -> Tensor<B, 3> {
    let [b, s, h] = x.dims();
    let hd = h / heads;
    let x = x.reshape([b, s, heads, hd]);
    let x1 = x.clone().slice([0..b, 0..s, 0..heads, 0..hd / 2]);
    let x2 = x.clone().slice([0..b, 0..s, 0..heads, hd / 2..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    (x * cos.clone() + rotated * sin.clone()).reshape([b, s, h])
}

/// Scaled dot-product attention of `q` over `k`, `v` (all `[batch, seq, hidden]`, heads
/// side by side) for a global or local layer.
fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
    a: &ModernBertAttention<B>,
) -> Tensor<B, 3> {
    if !B::ad_enabled(&q.device()) {
        return cpu::attention_windowed(q, k, v, padding, a.num_heads, a.window);
    }
    // Training: spelled out (dropout on the probabilities, as transformers; a backward
    // pass on every backend).
    let [b, s, h] = q.dims();
    let heads = a.num_heads;
    let hd = h / heads;
    let device = q.device();
    let split = |t: Tensor<B, 3>| t.reshape([b, s, heads, hd]).swap_dims(1, 2);
    let (q, k, v) = (split(q), split(k), split(v));
    let mask = padding.reshape([b, 1, 1, s]).expand([b, 1, s, s]);
    let mask = match a.window {
        Some(w) => mask.bool_or(outside_window::<B>(s, w, &device).expand([b, 1, s, s])),
        None => mask,
    };
    // A padded query may have no key left in a local window: keeping its own key avoids
    // NaN rows (which 0 · NaN would spread); real queries never lose their own key.
    let mask = mask.bool_and(off_diagonal::<B>(s, &device).expand([b, 1, s, s]));
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .div_scalar((hd as f64).sqrt())
        .mask_fill(mask, f32::NEG_INFINITY);
    let probs = a.drop.forward(activation::softmax(scores, 3));
    probs.matmul(v).swap_dims(1, 2).reshape([b, s, h])
}

/// `[1, 1, seq, seq]`: true where key `j` is more than `w` positions from query `i`.
fn outside_window<B: Backend>(seq: usize, w: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let v: Vec<bool> = (0..seq * seq)
        .map(|n| (n / seq).abs_diff(n % seq) > w)
        .collect();
    Tensor::from_data(TensorData::new(v, [1, 1, seq, seq]), device)
}

/// `[1, 1, seq, seq]`: false on the diagonal.
fn off_diagonal<B: Backend>(seq: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let v: Vec<bool> = (0..seq * seq).map(|n| n / seq != n % seq).collect();
    Tensor::from_data(TensorData::new(v, [1, 1, seq, seq]), device)
}

/// HF `ModernBertModel`: embeddings, layers, `final_norm`.
#[derive(Module, Debug)]
pub struct ModernBertModel<B: Backend> {
    pub embeddings: ModernBertEmbeddings<B>,
    pub layers: Vec<ModernBertLayer<B>>,
    pub final_norm: LayerNorm<B>,
    #[module(skip)]
    pub global_rope_theta: f64,
    #[module(skip)]
    pub local_rope_theta: f64,
}

impl<B: Backend> ModernBertModel<B> {
    pub fn load(ck: &mut Checkpoint, cfg: &ModelConfig, device: &B::Device) -> Result<Self> {
        let mb = ModernBertConfig::from_config(cfg)?;
        Self::load_with(ck, cfg, &mb, device)
    }

    fn load_with(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        mb: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let (ke, kn, kf) = (
            ck.encoder_key("embeddings.tok_embeddings"),
            ck.encoder_key("embeddings.norm"),
            ck.encoder_key("final_norm"),
        );
        let embeddings = ModernBertEmbeddings {
            tok_embeddings: ck.embedding(&ke, cfg.vocab_size, h, device)?,
            norm: norm(ck, &kn, h, mb, device)?,
            drop: Dropout::new(mb.embedding_dropout),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ModernBertLayer::load(ck, cfg, mb, i, device))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings,
            layers,
            final_norm: norm(ck, &kf, h, mb, device)?,
            global_rope_theta: mb.global_rope_theta,
            local_rope_theta: mb.local_rope_theta,
        })
    }

    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.forward_with(input, &Plain)
    }

    /// [`Self::forward`] with the layers' linears run through `hook`.
    pub fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 3> {
        let [_, s] = input.input_ids.dims();
        let e = &self.embeddings;
        let mut x = e.drop.forward(
            e.norm
                .forward(e.tok_embeddings.forward(input.input_ids.clone())),
        );
        let heads = self.layers.first().map_or(1, |l| l.attn.num_heads);
        let hd = x.dims()[2] / heads;
        let ctx = Context {
            padding: input.attention_mask.clone().equal_elem(0),
            global_rope: Rope::new(s, hd, self.global_rope_theta),
            local_rope: Rope::new(s, hd, self.local_rope_theta),
        };
        for (li, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &ctx, hook, li);
        }
        self.final_norm.forward(x)
    }
}

/// HF `head` (`ModernBertPredictionHead`): dense → act → norm.
#[derive(Module, Debug)]
pub struct ModernBertPredictionHead<B: Backend> {
    pub dense: Linear<B>,
    pub norm: LayerNorm<B>,
    #[module(skip)]
    pub act: HiddenAct,
}

/// HF `ModernBertForSequenceClassification`.
#[derive(Module, Debug)]
pub struct ModernBertForSequenceClassification<B: Backend> {
    /// HF `model.*` (key prefix optional in the checkpoint).
    pub model: ModernBertModel<B>,
    pub head: ModernBertPredictionHead<B>,
    pub drop: Dropout,
    /// HF `classifier`: `[hidden] → [num_labels]`, always with a bias.
    pub classifier: Linear<B>,
    #[module(skip)]
    pub pooling: Pooling,
}

impl<B: Backend> ModernBertForSequenceClassification<B> {
    pub fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let mb = ModernBertConfig::from_config(cfg)?;
        let h = cfg.hidden_size;
        let model = ModernBertModel::load_with(ck, cfg, &mb, device)?;
        let labels = opts.num_labels.unwrap_or(cfg.num_labels());
        // transformers' `_init_weights`: head.dense std range/√(2·layers), classifier
        // std hidden^-½, biases 0, norm weight 1 (truncated normals there, plain here).
        let init = opts.init_missing_head;
        let dense_std = cfg.initializer_range / (2.0 * cfg.num_hidden_layers as f64).sqrt();
        let head = ModernBertPredictionHead {
            dense: head_linear(
                ck,
                "head.dense",
                h,
                h,
                mb.classifier_bias,
                init.then_some(dense_std),
                device,
            )?,
            norm: if init && !ck.contains("head.norm.weight") {
                ck.mark_initialized("head.norm.weight");
                let mut n = burn::nn::LayerNormConfig::new(h)
                    .with_epsilon(mb.norm_eps)
                    .init(device);
                if !mb.norm_bias {
                    n.beta = None;
                } else {
                    ck.mark_initialized("head.norm.bias");
                }
                n
            } else {
                norm(ck, "head.norm", h, &mb, device)?
            },
            act: mb.classifier_activation,
        };
        let classifier = head_linear(
            ck,
            "classifier",
            h,
            labels,
            true,
            init.then_some(1.0 / (h as f64).sqrt()),
            device,
        )?;
        Ok(Self {
            model,
            head,
            drop: Dropout::new(mb.classifier_dropout),
            classifier,
            pooling: mb.classifier_pooling,
        })
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 2> {
        self.forward_with(input, &Plain)
    }

    /// PEFT's `modules_to_save` for this head: the classifier, and `head` (dense + norm)
    /// when it trains too.
    pub fn modules_to_save(train_pooler: bool) -> Vec<&'static str> {
        if train_pooler {
            vec!["classifier", "head"]
        } else {
            vec!["classifier"]
        }
    }
}

impl<B: Backend> SequenceClassifier<B> for ModernBertForSequenceClassification<B> {
    fn layer_linears(&self) -> &'static [&'static str] {
        &LAYER_LINEARS
    }

    fn layer_path(&self, i: usize) -> String {
        layer_path(i)
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    fn layer_linear(&self, layer: usize, slot: usize) -> &Linear<B> {
        let l = &self.model.layers[layer];
        match slot {
            WQKV => &l.attn.wqkv,
            ATTN_WO => &l.attn.wo,
            WI => &l.mlp.wi,
            MLP_WO => &l.mlp.wo,
            _ => panic!(
                "ModernBERT has {} layer linears, not {slot}",
                LAYER_LINEARS.len()
            ),
        }
    }

    fn layer_linear_mut(&mut self, layer: usize, slot: usize) -> &mut Linear<B> {
        let l = &mut self.model.layers[layer];
        match slot {
            WQKV => &mut l.attn.wqkv,
            ATTN_WO => &mut l.attn.wo,
            WI => &mut l.mlp.wi,
            MLP_WO => &mut l.mlp.wo,
            _ => panic!(
                "ModernBERT has {} layer linears, not {slot}",
                LAYER_LINEARS.len()
            ),
        }
    }

    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 2> {
        let hidden = self.model.forward_with(input, hook);
        let [b, s, h] = hidden.dims();
        let pooled = match self.pooling {
            Pooling::Cls => hidden.slice([0..b, 0..1]).reshape([b, h]),
            Pooling::Mean => {
                let mask = input.attention_mask.clone().float().reshape([b, s, 1]);
                let count = mask.clone().sum_dim(1).reshape([b, 1]);
                (hidden * mask).sum_dim(1).reshape([b, h]) / count
            }
        };
        let x = self.head.norm.forward(act(
            self.head.act,
            super::bert::dense(&self.head.dense, pooled),
        ));
        super::bert::dense(&self.classifier, self.drop.forward(x))
    }

    fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.model.forward(input)
    }

    fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    fn without_dropout(&mut self) {
        let off = || Dropout::new(0.0);
        self.model.embeddings.drop = off();
        for l in &mut self.model.layers {
            l.attn.drop = off();
            l.attn.out_drop = off();
            l.mlp.drop = off();
        }
        self.drop = off();
    }

    /// Every base weight frozen; the classifier, and with `train_pooler` the `head`
    /// (dense + norm: ModernBERT's pooler), trainable.
    fn freeze_except_head(self, train_pooler: bool) -> Self {
        let mut m = self.no_grad();
        m.classifier = trainable_linear(m.classifier);
        if train_pooler {
            m.head.dense = trainable_linear(m.head.dense);
            m.head.norm.gamma = m.head.norm.gamma.set_require_grad(true);
            m.head.norm.beta = m.head.norm.beta.map(|b| b.set_require_grad(true));
        }
        m
    }

    fn modules_to_save(&self, train_pooler: bool) -> Vec<&'static str> {
        Self::modules_to_save(train_pooler)
    }

    fn head_tensors(&self, train_pooler: bool, set: &mut TensorSet, prefix: &str) {
        set.linear(&format!("{prefix}classifier"), &self.classifier);
        if train_pooler {
            set.linear(&format!("{prefix}head.dense"), &self.head.dense);
            set.norm(&format!("{prefix}head.norm"), &self.head.norm);
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
        if train_pooler {
            let (d, n) = (format!("{prefix}head.dense"), format!("{prefix}head.norm"));
            set.take_linear(path, &d, &mut self.head.dense, true, device)?;
            set.take_norm(path, &n, &mut self.head.norm, true, device)?;
        }
        Ok(())
    }

    fn model_tensors(&self, set: &mut TensorSet) {
        let e = &self.model.embeddings;
        let w = e.tok_embeddings.weight.val();
        let [n, d] = w.dims();
        set.0.insert(
            "model.embeddings.tok_embeddings.weight".into(),
            (vec![n, d], super::tensors::values(w)),
        );
        set.norm("model.embeddings.norm", &e.norm);
        for (i, l) in self.model.layers.iter().enumerate() {
            let k = layer_path(i);
            if let Some(n) = &l.attn_norm {
                set.norm(&format!("{k}.attn_norm"), n);
            }
            set.norm(&format!("{k}.mlp_norm"), &l.mlp_norm);
            for (slot, name) in LAYER_LINEARS.iter().enumerate() {
                set.linear(&format!("{k}.{name}"), self.layer_linear(i, slot));
            }
        }
        set.norm("model.final_norm", &self.model.final_norm);
        set.linear("head.dense", &self.head.dense);
        set.norm("head.norm", &self.head.norm);
        set.linear("classifier", &self.classifier);
    }
}

fn trainable_linear<B: Backend>(l: Linear<B>) -> Linear<B> {
    Linear {
        weight: l.weight.set_require_grad(true),
        bias: l.bias.map(|b| b.set_require_grad(true)),
    }
}

/// A head linear (`head.dense`, `classifier`) that a base checkpoint may lack: with `init`
/// and no weight in the checkpoint, weight ~ N(0, std) and bias 0, listed as initialised.
fn head_linear<B: Backend>(
    ck: &mut Checkpoint,
    key: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    init: Option<f64>,
    device: &B::Device,
) -> Result<Linear<B>> {
    let wk = format!("{key}.weight");
    if let Some(std) = init
        && !ck.contains(&wk)
    {
        let mut l = LinearConfig::new(d_in, d_out)
            .with_bias(bias)
            .with_initializer(burn::nn::Initializer::Zeros)
            .init::<B>(device);
        l.weight = ck.init_normal(&wk, d_in, d_out, std, device);
        ck.mark_initialized(&wk);
        if bias {
            l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            ck.mark_initialized(&format!("{key}.bias"));
        }
        return Ok(l);
    }
    linear(ck, key, d_in, d_out, bias, device)
}
