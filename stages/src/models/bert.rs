//! BERT (and BERT-shaped models such as MiniLM) as in transformers' `modeling_bert.py`.
//!
//! Module and field names follow the Hugging Face weight keys, so a key maps to a field
//! path mechanically (`encoder.layer.3.attention.self.query` is
//! `encoder.layer[3].attention.self_attention.query`; `self` is a Rust keyword, and
//! `LayerNorm` is `layer_norm`). The linears an adapter may wrap ([`LAYER_LINEARS`]) run
//! through the forward's [`LinearHook`], so LoRA and OFT add their paths without a second
//! copy of the forward.
//!
//! The encoder (`BertEncoder`) is shared with RoBERTa/XLM-R, which differ only in their
//! embeddings and classification head (see `roberta.rs`).

use crate::models::dropout::Dropout;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation;

use super::config::{HiddenAct, ModelConfig};
use super::cpu;
use super::loader::Checkpoint;
use super::tensors::TensorSet;
use super::{LinearHook, LoadOptions, ModelInput, Plain, SequenceClassifier, hooked};
use crate::error::Result;

/// The linears of an encoder layer an adapter may wrap, by their PEFT module name relative
/// to `encoder.layer.N.`; a slot is an index into this list. Shared by RoBERTa and XLM-R.
pub const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// Applies a linear that no adapter wraps (pooler, head) on rows.
pub fn dense<B: Backend, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    on_rows(x, |rows| linear.forward(rows))
}

/// Runs `f` on `x` seen as one `[rows, features]` matrix and restores the leading dims.
///
/// Why: burn's `linear` on a `[batch, seq, h]` input is a batched matmul against the
/// broadcast weight, which the CPU backend runs as one small gemm per sequence, packing the
/// whole weight matrix again for each (32 packings of a 384×1536 matrix per batch). One
/// `[batch·seq, h]` gemm packs it once and blocks over all the rows.
pub fn on_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let features = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let y = f(x.reshape([rows, features]));
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `embeddings.*`: word + absolute position + token type, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    /// HF `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> BertEmbeddings<B> {
    pub fn load(ck: &mut Checkpoint, cfg: &ModelConfig, device: &B::Device) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word_embeddings: ck.embedding(
                &ck.encoder_key("embeddings.word_embeddings"),
                cfg.vocab_size,
                h,
                device,
            )?,
            position_embeddings: ck.embedding(
                &ck.encoder_key("embeddings.position_embeddings"),
                cfg.max_position_embeddings,
                h,
                device,
            )?,
            token_type_embeddings: ck.embedding(
                &ck.encoder_key("embeddings.token_type_embeddings"),
                cfg.type_vocab_size,
                h,
                device,
            )?,
            layer_norm: ck.layer_norm(
                &ck.encoder_key("embeddings.LayerNorm"),
                h,
                cfg.layer_norm_eps,
                device,
            )?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// The embedding tables and LayerNorm under `{prefix}.embeddings.…`.
    pub fn tensors(&self, prefix: &str, set: &mut TensorSet) {
        for (name, t) in [
            ("word_embeddings", &self.word_embeddings),
            ("position_embeddings", &self.position_embeddings),
            ("token_type_embeddings", &self.token_type_embeddings),
        ] {
            // Embedding tables are `[rows, dim]` in both layouts: not transposed.
            let w = t.weight.val();
            let [n, d] = w.dims();
            set.0.insert(
                format!("{prefix}.embeddings.{name}.weight"),
                (vec![n, d], super::tensors::values(w)),
            );
        }
        set.norm(&format!("{prefix}.embeddings.LayerNorm"), &self.layer_norm);
    }

    /// `position_ids` `[batch, seq]`; BERT counts 0.. for every row, RoBERTa offsets them.
    /// `token_type_ids` default to zeros, as in transformers.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Option<Tensor<B, 2, Int>>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [_, seq] = input_ids.dims();
        let words = self.word_embeddings.forward(input_ids);
        let positions = match position_ids {
            Some(ids) => self.position_embeddings.forward(ids),
            // Same rows for every sequence: slice the table once and broadcast.
            None => self
                .position_embeddings
                .weight
                .val()
                .slice(0..seq)
                .unsqueeze::<3>(),
        };
        let types = match token_type_ids {
            Some(ids) => self.token_type_embeddings.forward(ids),
            None => self
                .token_type_embeddings
                .weight
                .val()
                .slice(0..1)
                .unsqueeze::<3>(),
        };
        self.dropout
            .forward(self.layer_norm.forward(words + positions + types))
    }
}

/// HF `attention.self`: the query/key/value projections and scaled dot-product attention.
#[derive(Module, Debug)]
pub struct BertSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dropout: Dropout,
    pub num_heads: usize,
}

impl<B: Backend> BertSelfAttention<B> {
    /// Attention of the rows of `queries` `[batch, q, hidden]` over all of `x`
    /// `[batch, seq, hidden]` (`queries` is `x` itself, or its first row in a
    /// classifier's last layer). `padding` `[batch, seq]`: true where a key is padding.
    /// The projections are slots 0–2 of layer `layer` for `hook`.
    pub fn forward<H: LinearHook<B>>(
        &self,
        layer: usize,
        hook: &H,
        queries: Tensor<B, 3>,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let q = hooked(hook, layer, 0, &self.query, queries);
        let k = hooked(hook, layer, 1, &self.key, x.clone());
        let v = hooked(hook, layer, 2, &self.value, x);
        multi_head_attention(q, k, v, padding, self.num_heads, &self.dropout)
    }
}

/// Scaled dot-product attention over the heads side by side in the hidden dim of the
/// projections `q` `[batch, q, hidden]`, `k` and `v` `[batch, seq, hidden]`; `padding`
/// `[batch, seq]` true where a key is padding. Returns `[batch, q, hidden]`.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
    num_heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    if !B::ad_enabled(&q.device()) {
        return cpu::attention(q, k, v, padding, num_heads);
    }
    if cpu::is_ad_flex_f32::<B>(q.dtype()) {
        let [b, sq, _] = q.dims();
        let shape = [b, num_heads, sq, k.dims()[1]];
        if let Some(mask) = dropout.host_factors::<B>(&q.device(), &shape) {
            return cpu::attention_tracked(q, k, v, padding, num_heads, mask);
        }
    }
    // Training elsewhere: spelled out, because transformers drops attention probabilities (no fused
    // kernel does), and so that gradients never depend on whether a backend's fused
    // attention has a backward pass.
    let [b, sq, h] = q.dims();
    let s = k.dims()[1];
    let hd = h / num_heads;
    let split = |t: Tensor<B, 3>, s: usize| t.reshape([b, s, num_heads, hd]).swap_dims(1, 2);
    let (q, k, v) = (split(q, sq), split(k, s), split(v, s));
    let mask = padding.reshape([b, 1, 1, s]).expand([b, 1, sq, s]);
    let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((hd as f64).sqrt());
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    let probs = dropout.forward(activation::softmax(scores, 3));
    probs.matmul(v).swap_dims(1, 2).reshape([b, sq, h])
}

/// HF `attention.output` (also the shape of the layer's final `output`): dense, dropout,
/// residual, LayerNorm.
#[derive(Module, Debug)]
pub struct BertSelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> BertSelfOutput<B> {
    /// `dense` is slot `slot` of layer `layer` for `hook`.
    pub fn forward<H: LinearHook<B>>(
        &self,
        (layer, slot, hook): (usize, usize, &H),
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let x = hooked(hook, layer, slot, &self.dense, x);
        self.layer_norm.forward(self.dropout.forward(x) + residual)
    }
}

/// HF `attention`.
#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    /// HF `attention.self`.
    pub self_attention: BertSelfAttention<B>,
    pub output: BertSelfOutput<B>,
}

/// HF `intermediate`: dense + activation.
#[derive(Module, Debug)]
pub struct BertIntermediate<B: Backend> {
    pub dense: Linear<B>,
    #[module(skip)]
    pub act: HiddenAct,
}

impl<B: Backend> BertIntermediate<B> {
    /// `dense` is slot 4 of layer `layer` for `hook`.
    pub fn forward<H: LinearHook<B>>(
        &self,
        layer: usize,
        hook: &H,
        x: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let x = hooked(hook, layer, 4, &self.dense, x);
        match self.act {
            HiddenAct::Gelu => cpu::gelu(x),
            HiddenAct::GeluTanh => activation::gelu_approximate(x),
            HiddenAct::Relu => activation::relu(x),
        }
    }
}

/// HF `encoder.layer.N`.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub attention: BertAttention<B>,
    pub intermediate: BertIntermediate<B>,
    /// HF `output` (dense from intermediate back to hidden, residual, LayerNorm).
    pub output: BertSelfOutput<B>,
}

impl<B: Backend> BertLayer<B> {
    fn load(ck: &mut Checkpoint, cfg: &ModelConfig, i: usize, device: &B::Device) -> Result<Self> {
        let (h, m, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let key = |name: &str| ck.encoder_key(&format!("encoder.layer.{i}.{name}"));
        let (kq, kk, kv, kao, kaol, ki, ko, kol) = (
            key("attention.self.query"),
            key("attention.self.key"),
            key("attention.self.value"),
            key("attention.output.dense"),
            key("attention.output.LayerNorm"),
            key("intermediate.dense"),
            key("output.dense"),
            key("output.LayerNorm"),
        );
        Ok(Self {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: ck.linear(&kq, h, h, device)?,
                    key: ck.linear(&kk, h, h, device)?,
                    value: ck.linear(&kv, h, h, device)?,
                    dropout: Dropout::new(cfg.attention_probs_dropout_prob),
                    num_heads: cfg.num_attention_heads,
                },
                output: BertSelfOutput {
                    dense: ck.linear(&kao, h, h, device)?,
                    layer_norm: ck.layer_norm(&kaol, h, eps, device)?,
                    dropout: Dropout::new(cfg.hidden_dropout_prob),
                },
            },
            intermediate: BertIntermediate {
                dense: ck.linear(&ki, h, m, device)?,
                act: cfg.activation()?,
            },
            output: BertSelfOutput {
                dense: ck.linear(&ko, m, h, device)?,
                layer_norm: ck.layer_norm(&kol, h, eps, device)?,
                dropout: Dropout::new(cfg.hidden_dropout_prob),
            },
        })
    }

    /// The output, for the rows of `queries` only, of this layer (number `i` for `hook`);
    /// keys and values still come from all of `x`. Each row's output depends on the other
    /// rows only through attention, so `queries = x` gives every row and a subset gives
    /// those rows (up to float rounding). `padding` `[batch, seq]`.
    pub fn forward_rows<H: LinearHook<B>>(
        &self,
        i: usize,
        hook: &H,
        queries: Tensor<B, 3>,
        x: Tensor<B, 3>,
        padding: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let attended = self
            .attention
            .self_attention
            .forward(i, hook, queries.clone(), x, padding);
        let x = self
            .attention
            .output
            .forward((i, 3, hook), attended, queries);
        let inner = self.intermediate.forward(i, hook, x.clone());
        self.output.forward((i, 5, hook), inner, x)
    }

    /// The linear of slot `slot` ([`LAYER_LINEARS`]).
    pub fn linear(&self, slot: usize) -> &Linear<B> {
        match slot {
            0 => &self.attention.self_attention.query,
            1 => &self.attention.self_attention.key,
            2 => &self.attention.self_attention.value,
            3 => &self.attention.output.dense,
            4 => &self.intermediate.dense,
            _ => &self.output.dense,
        }
    }

    pub fn linear_mut(&mut self, slot: usize) -> &mut Linear<B> {
        match slot {
            0 => &mut self.attention.self_attention.query,
            1 => &mut self.attention.self_attention.key,
            2 => &mut self.attention.self_attention.value,
            3 => &mut self.attention.output.dense,
            4 => &mut self.intermediate.dense,
            _ => &mut self.output.dense,
        }
    }

    pub fn without_dropout(&mut self) {
        self.attention.self_attention.dropout.prob = 0.0;
        self.attention.output.dropout.prob = 0.0;
        self.output.dropout.prob = 0.0;
    }

    /// Every weight under `{key}.…` (`key` = the layer's HF path).
    pub fn tensors(&self, key: &str, set: &mut TensorSet) {
        for (s, name) in LAYER_LINEARS.iter().enumerate() {
            set.linear(&format!("{key}.{name}"), self.linear(s));
        }
        set.norm(
            &format!("{key}.attention.output.LayerNorm"),
            &self.attention.output.layer_norm,
        );
        set.norm(&format!("{key}.output.LayerNorm"), &self.output.layer_norm);
    }
}

/// HF `encoder`: the stack of layers. Shared by BERT, RoBERTa and XLM-R.
#[derive(Module, Debug)]
pub struct BertEncoder<B: Backend> {
    pub layer: Vec<BertLayer<B>>,
}

impl<B: Backend> BertEncoder<B> {
    pub fn load(ck: &mut Checkpoint, cfg: &ModelConfig, device: &B::Device) -> Result<Self> {
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| BertLayer::load(ck, cfg, i, device))
            .collect::<Result<_>>()?;
        Ok(Self { layer })
    }

    /// Last hidden state `[batch, seq, hidden]`. `attention_mask` `[batch, seq]`: 1 for
    /// tokens, 0 for padding.
    pub fn forward(&self, mut x: Tensor<B, 3>, attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let padding = key_padding(attention_mask);
        for (i, layer) in self.layer.iter().enumerate() {
            x = layer.forward_rows(i, &Plain, x.clone(), x, padding.clone());
        }
        x
    }

    /// Every layer's weights under `{prefix}.encoder.layer.N.…`.
    fn tensors(&self, prefix: &str, set: &mut TensorSet) {
        for (i, l) in self.layer.iter().enumerate() {
            l.tensors(&format!("{prefix}.encoder.layer.{i}"), set);
        }
    }

    /// The last hidden state of the first token only, `[batch, 1, hidden]`: all a
    /// classification head reads. The last layer runs its queries, attention output and
    /// feed-forward for that one row instead of all `seq`, which saves nearly a layer's
    /// work (a sixth of MiniLM's) with the same result up to float rounding.
    pub fn forward_first_token<H: LinearHook<B>>(
        &self,
        hook: &H,
        mut x: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let b = x.dims()[0];
        let Some((last, rest)) = self.layer.split_last() else {
            return x.slice([0..b, 0..1]);
        };
        let padding = key_padding(attention_mask);
        for (i, layer) in rest.iter().enumerate() {
            x = layer.forward_rows(i, hook, x.clone(), x, padding.clone());
        }
        let first = x.clone().slice([0..b, 0..1]);
        last.forward_rows(rest.len(), hook, first, x, padding)
    }
}

/// The `[batch, seq]` 1/0 attention mask as "this key is padding". Built once per forward
/// and shared by every layer and head.
pub fn key_padding<B: Backend>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 2, Bool> {
    attention_mask.equal_elem(0)
}

/// HF `pooler`: dense + tanh over the first token.
#[derive(Module, Debug)]
pub struct BertPooler<B: Backend> {
    pub dense: Linear<B>,
}

impl<B: Backend> BertPooler<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, h] = hidden.dims();
        let first = hidden.slice([0..b, 0..1]).reshape([b, h]);
        dense(&self.dense, first).tanh()
    }
}

/// HF `BertModel` without the pooler: embeddings + encoder.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub encoder: BertEncoder<B>,
}

impl<B: Backend> BertModel<B> {
    pub fn load(ck: &mut Checkpoint, cfg: &ModelConfig, device: &B::Device) -> Result<Self> {
        Ok(Self {
            embeddings: BertEmbeddings::load(ck, cfg, device)?,
            encoder: BertEncoder::load(ck, cfg, device)?,
        })
    }

    /// Last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.encoder
            .forward(self.embed(input), input.attention_mask.clone())
    }

    /// Last hidden state of the first (`[CLS]`) token, `[batch, 1, hidden]`.
    pub fn forward_first_token<H: LinearHook<B>>(
        &self,
        hook: &H,
        input: &ModelInput<B>,
    ) -> Tensor<B, 3> {
        self.encoder
            .forward_first_token(hook, self.embed(input), input.attention_mask.clone())
    }

    /// Embedding and encoder weights under `{prefix}.…`.
    pub fn tensors(&self, prefix: &str, set: &mut TensorSet) {
        self.embeddings.tensors(prefix, set);
        self.encoder.tensors(prefix, set);
    }

    fn embed(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.embeddings
            .forward(input.input_ids.clone(), None, input.token_type_ids.clone())
    }
}

/// HF `BertForSequenceClassification`: encoder, pooler, dropout, classifier.
#[derive(Module, Debug)]
pub struct BertForSequenceClassification<B: Backend> {
    /// HF `bert.*` (key prefix optional in the checkpoint).
    pub bert: BertModel<B>,
    /// HF `bert.pooler`.
    pub pooler: BertPooler<B>,
    pub dropout: Dropout,
    /// HF `classifier`: `[hidden] → [num_labels]`.
    pub classifier: Linear<B>,
}

impl<B: Backend> BertForSequenceClassification<B> {
    pub fn load(
        ck: &mut Checkpoint,
        cfg: &ModelConfig,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let init = opts.init_missing_head.then_some(cfg.initializer_range);
        let bert = BertModel::load(ck, cfg, device)?;
        let pooler_key = ck.encoder_key("pooler.dense");
        let pooler = BertPooler {
            dense: ck.head_linear(&pooler_key, h, h, init, device)?,
        };
        let classifier = ck.head_linear(
            "classifier",
            h,
            opts.num_labels.unwrap_or(cfg.num_labels()),
            init,
            device,
        )?;
        Ok(Self {
            bert,
            pooler,
            dropout: Dropout::new(cfg.classifier_dropout()),
            classifier,
        })
    }
}

impl<B: Backend> SequenceClassifier<B> for BertForSequenceClassification<B> {
    fn layer_linears(&self) -> &'static [&'static str] {
        &LAYER_LINEARS
    }

    fn layer_path(&self, i: usize) -> String {
        format!("bert.encoder.layer.{i}")
    }

    fn num_layers(&self) -> usize {
        self.bert.encoder.layer.len()
    }

    fn layer_linear(&self, layer: usize, slot: usize) -> &Linear<B> {
        self.bert.encoder.layer[layer].linear(slot)
    }

    fn layer_linear_mut(&mut self, layer: usize, slot: usize) -> &mut Linear<B> {
        self.bert.encoder.layer[layer].linear_mut(slot)
    }

    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 2> {
        let hidden = self.bert.forward_first_token(hook, input);
        dense(
            &self.classifier,
            self.dropout.forward(self.pooler.forward(hidden)),
        )
    }

    fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        self.bert.forward(input)
    }

    fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    fn without_dropout(&mut self) {
        self.dropout.prob = 0.0;
        self.bert.embeddings.dropout.prob = 0.0;
        self.bert
            .encoder
            .layer
            .iter_mut()
            .for_each(BertLayer::without_dropout);
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
            set.linear(&format!("{prefix}bert.pooler.dense"), &self.pooler.dense);
        }
    }

    fn load_head(
        &mut self,
        train_pooler: bool,
        set: &mut TensorSet,
        path: &std::path::Path,
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
            &format!("{prefix}bert.pooler.dense"),
            &mut self.pooler.dense,
            train_pooler,
            device,
        )
    }

    fn model_tensors(&self, set: &mut TensorSet) {
        self.bert.tensors("bert", set);
        set.linear("bert.pooler.dense", &self.pooler.dense);
        set.linear("classifier", &self.classifier);
    }
}

/// `l` with its weight and bias learning (after a `no_grad()` of the whole model).
pub fn trainable<B: Backend>(l: Linear<B>) -> Linear<B> {
    Linear {
        weight: l.weight.set_require_grad(true),
        bias: l.bias.map(|b| b.set_require_grad(true)),
    }
}
