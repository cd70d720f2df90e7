//! LoRA (Hu et al. 2021) on the burn cross-encoders, laid out as Hugging Face PEFT does it.
//!
//! A targeted linear `y = x W + b` becomes `y = x W + b + s · dropout(x) A B` with `A`
//! `[in, r]`, `B` `[r, out]` (burn's `[in, out]` layout: PEFT's `lora_A.weight` `[r, in]` and
//! `lora_B.weight` `[out, r]` transposed) and `s = alpha / r` (`alpha / √r` with rsLoRA).
//! PEFT's initialisation: `A` as `nn.Linear` initialises its weight (Kaiming-uniform with
//! `a = √5`, i.e. `U(−1/√in, 1/√in)`), `B = 0`, so a fresh adapter leaves the model's output
//! unchanged.
//!
//! The base model (M's [`CrossEncoder`]) is kept untouched and frozen; [`LoraModel`] runs
//! the same computation as `CrossEncoder::forward` with the LoRA paths added. The forward is
//! spelled out here instead of changing the model structs, so the encoder stays exactly
//! the inference model; `forward_equals_base_at_init` (tests/lora_forward.rs) pins that the
//! two stay in step.
//!
//! Targets are matched as PEFT matches `target_modules` given as a list: a module is
//! targeted when its name equals a target or ends with `"." + target` (so `dense` means
//! every `*.dense` linear of a layer, `output.dense` both `attention.output.dense` and the
//! layer's `output.dense`). The per-layer linears are candidates (`attention.self.query|key|
//! value`, `attention.output.dense`, `intermediate.dense`, `output.dense`); the pooler and
//! the head are trained whole through `modules_to_save` instead.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::activation;
use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::models::bert::{BertLayer, key_padding, multi_head_attention, on_rows};
use crate::models::roberta::position_ids;
use crate::models::{Architecture, CrossEncoder, HiddenAct, ModelInput};

/// The six linears of an encoder layer a LoRA may target, by their PEFT module name
/// relative to `encoder.layer.N.`.
pub const LAYER_LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// LoRA hyper-parameters, named as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSettings {
    pub r: usize,
    pub alpha: f64,
    /// Dropout on the LoRA path's input (`lora_dropout`), active in training only.
    pub dropout: f64,
    /// PEFT `target_modules` (suffix match, see the module docs).
    pub targets: Vec<String>,
    /// rsLoRA: scale by `alpha / √r` instead of `alpha / r`.
    pub rslora: bool,
    /// Train (and save) the pooler too (`modules_to_save` gets `pooler` for BERT).
    pub train_pooler: bool,
}

impl LoraSettings {
    /// PEFT's default targets per architecture
    /// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`): query and value.
    pub fn default_targets(arch: Architecture) -> Vec<String> {
        match arch {
            Architecture::Bert | Architecture::Roberta | Architecture::XlmRoberta => {
                vec!["query".into(), "value".into()]
            }
            Architecture::DebertaV2 => crate::models::deberta_v2::default_lora_targets(),
        }
    }

    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether layer linear `name` (one of [`LAYER_LINEARS`]) is targeted.
    pub fn targets_linear(&self, name: &str) -> bool {
        let full = format!("encoder.layer.0.{name}");
        self.targets
            .iter()
            .any(|t| name == t || full.ends_with(&format!(".{t}")))
    }

    /// Checks the settings; a target that matches none of the layer linears is an error
    /// (PEFT fails the same way), so a typo does not silently train only the head.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(MlError::Input("lora.r must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(MlError::Input(format!(
                "lora.alpha must be a positive number, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(MlError::Input(format!(
                "lora.dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(MlError::Input("lora.targets is empty".into()));
        }
        for t in &self.targets {
            let one = LoraSettings {
                targets: vec![t.clone()],
                ..self.clone()
            };
            if !LAYER_LINEARS.iter().any(|l| one.targets_linear(l)) {
                return Err(MlError::Input(format!(
                    "lora target {t:?} matches no layer linear (expected a suffix of one of {})",
                    LAYER_LINEARS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// The LoRA path of one linear: `s · dropout(x) A B`.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[in, r]` (PEFT `lora_A.weight` transposed).
    pub a: Param<Tensor<B, 2>>,
    /// `[r, out]` (PEFT `lora_B.weight` transposed).
    pub b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    #[module(skip)]
    pub scaling: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// PEFT's init: `A ~ U(−1/√in, 1/√in)` drawn from `rng`, `B = 0`.
    pub fn init(
        d_in: usize,
        d_out: usize,
        settings: &LoraSettings,
        rng: &mut SplitMix,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let a: Vec<f32> = (0..d_in * settings.r)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        Self::from_values(
            Tensor::from_data(TensorData::new(a, [d_in, settings.r]), device),
            Tensor::zeros([settings.r, d_out], device),
            settings,
        )
    }

    /// From given `A` `[in, r]` and `B` `[r, out]`.
    pub fn from_values(a: Tensor<B, 2>, b: Tensor<B, 2>, settings: &LoraSettings) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            dropout: DropoutConfig::new(settings.dropout).init(),
            scaling: settings.scaling(),
        }
    }

    /// The weight delta `s · A B` `[in, out]` that merging adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()).mul_scalar(self.scaling)
    }

    /// `base(x) + s · dropout(x) A B`.
    pub fn forward<const D: usize>(&self, base: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
        let lora = self
            .dropout
            .forward(x.clone())
            .matmul(self.a.val().unsqueeze())
            .matmul(self.b.val().unsqueeze());
        base.forward(x) + lora.mul_scalar(self.scaling)
    }
}

/// A base linear with an optional LoRA path.
fn apply<B: Backend, const D: usize>(
    base: &Linear<B>,
    lora: &Option<LoraLinear<B>>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    on_rows(x, |x| match lora {
        Some(l) => l.forward(base, x),
        None => base.forward(x),
    })
}

/// The LoRA paths of one encoder layer, one slot per [`LAYER_LINEARS`] entry.
#[derive(Module, Debug)]
pub struct LayerLora<B: Backend> {
    pub query: Option<LoraLinear<B>>,
    pub key: Option<LoraLinear<B>>,
    pub value: Option<LoraLinear<B>>,
    pub attention_output: Option<LoraLinear<B>>,
    pub intermediate: Option<LoraLinear<B>>,
    pub output: Option<LoraLinear<B>>,
}

impl<B: Backend> LayerLora<B> {
    /// The slot of [`LAYER_LINEARS`]`[i]`.
    pub fn slot(&self, i: usize) -> &Option<LoraLinear<B>> {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ][i]
    }

    pub fn slot_mut(&mut self, i: usize) -> &mut Option<LoraLinear<B>> {
        match i {
            0 => &mut self.query,
            1 => &mut self.key,
            2 => &mut self.value,
            3 => &mut self.attention_output,
            4 => &mut self.intermediate,
            _ => &mut self.output,
        }
    }
}

/// The base layer's linear of [`LAYER_LINEARS`]`[i]`.
pub fn layer_linear<B: Backend>(layer: &BertLayer<B>, i: usize) -> &Linear<B> {
    match i {
        0 => &layer.attention.self_attention.query,
        1 => &layer.attention.self_attention.key,
        2 => &layer.attention.self_attention.value,
        3 => &layer.attention.output.dense,
        4 => &layer.intermediate.dense,
        _ => &layer.output.dense,
    }
}

fn layer_linear_mut<B: Backend>(layer: &mut BertLayer<B>, i: usize) -> &mut Linear<B> {
    match i {
        0 => &mut layer.attention.self_attention.query,
        1 => &mut layer.attention.self_attention.key,
        2 => &mut layer.attention.self_attention.value,
        3 => &mut layer.attention.output.dense,
        4 => &mut layer.intermediate.dense,
        _ => &mut layer.output.dense,
    }
}

/// The layers of a cross-encoder's encoder.
pub fn encoder_layers<B: Backend>(model: &CrossEncoder<B>) -> &Vec<BertLayer<B>> {
    match model {
        CrossEncoder::Bert(m) => &m.bert.encoder.layer,
        CrossEncoder::Roberta(m) => &m.roberta.encoder.layer,
    }
}

fn encoder_layers_mut<B: Backend>(model: &mut CrossEncoder<B>) -> &mut Vec<BertLayer<B>> {
    match model {
        CrossEncoder::Bert(m) => &mut m.bert.encoder.layer,
        CrossEncoder::Roberta(m) => &mut m.roberta.encoder.layer,
    }
}

/// A cross-encoder with LoRA paths: the trainable module. Only the LoRA matrices and the
/// head (plus the pooler when asked) require gradients.
#[derive(Module, Debug)]
pub struct LoraModel<B: Backend> {
    pub base: CrossEncoder<B>,
    pub layers: Vec<LayerLora<B>>,
}

/// A small, portable PRNG (splitmix64) for everything tsumugi draws itself (LoRA init,
/// shuffles, per-step dropout seeds), so a seed means the same on every machine and a
/// resumed run can re-derive any state from (seed, step).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher–Yates shuffle of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }
}

impl<B: Backend> LoraModel<B> {
    /// Wraps `base` with fresh LoRA paths on the targeted linears (A drawn from `seed`).
    /// The base is frozen; the head (and the pooler with `train_pooler`) stays trainable.
    pub fn new(
        base: CrossEncoder<B>,
        settings: &LoraSettings,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        settings.validate()?;
        let mut rng = SplitMix(seed);
        let layers = encoder_layers(&base)
            .iter()
            .map(|layer| {
                let mut slots = LayerLora {
                    query: None,
                    key: None,
                    value: None,
                    attention_output: None,
                    intermediate: None,
                    output: None,
                };
                for (i, name) in LAYER_LINEARS.iter().enumerate() {
                    if settings.targets_linear(name) {
                        let [d_in, d_out] = layer_linear(layer, i).weight.dims();
                        *slots.slot_mut(i) =
                            Some(LoraLinear::init(d_in, d_out, settings, &mut rng, device));
                    }
                }
                slots
            })
            .collect();
        Ok(Self {
            base: freeze_base(base, settings.train_pooler),
            layers,
        })
    }

    /// Logits `[batch, num_labels]`: `CrossEncoder::forward` with the LoRA paths added.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 2> {
        match &self.base {
            CrossEncoder::Bert(m) => {
                let x = m.bert.embeddings.forward(
                    input.input_ids.clone(),
                    None,
                    input.token_type_ids.clone(),
                );
                let hidden = self.encode(&m.bert.encoder.layer, x, input.attention_mask.clone());
                m.classifier
                    .forward(m.dropout.forward(m.pooler.forward(hidden)))
            }
            CrossEncoder::Roberta(m) => {
                let positions = position_ids(input.input_ids.clone(), m.roberta.padding_idx);
                let x =
                    m.roberta
                        .embeddings
                        .forward(input.input_ids.clone(), Some(positions), None);
                let hidden = self.encode(&m.roberta.encoder.layer, x, input.attention_mask.clone());
                m.classifier.forward(hidden)
            }
        }
    }

    /// `BertEncoder::forward_first_token` with the LoRA paths: `[batch, 1, hidden]`.
    fn encode(
        &self,
        layers: &[BertLayer<B>],
        mut x: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let b = x.dims()[0];
        let padding = key_padding(attention_mask);
        let n = layers.len().min(self.layers.len());
        for (layer, lora) in layers.iter().zip(&self.layers).take(n.saturating_sub(1)) {
            x = layer_forward(layer, lora, x.clone(), x, padding.clone());
        }
        let first = x.clone().slice([0..b, 0..1]);
        match n {
            0 => first,
            _ => layer_forward(&layers[n - 1], &self.layers[n - 1], first, x, padding),
        }
    }

    /// The base model with every `s · A B` added to its weight (PEFT `merge_and_unload`).
    pub fn merged(&self) -> CrossEncoder<B> {
        let mut base = self.base.clone();
        for (layer, lora) in encoder_layers_mut(&mut base).iter_mut().zip(&self.layers) {
            for i in 0..LAYER_LINEARS.len() {
                if let Some(l) = lora.slot(i) {
                    let lin = layer_linear_mut(layer, i);
                    let w = lin.weight.val().detach() + l.delta().detach();
                    lin.weight = Param::from_tensor(w);
                }
            }
        }
        base
    }

    /// Removes the LoRA deltas from a model made by [`LoraModel::merged`] (PEFT `unmerge`):
    /// the base weights again, up to rounding.
    pub fn unmerge(&self, mut merged: CrossEncoder<B>) -> CrossEncoder<B> {
        for (layer, lora) in encoder_layers_mut(&mut merged).iter_mut().zip(&self.layers) {
            for i in 0..LAYER_LINEARS.len() {
                if let Some(l) = lora.slot(i) {
                    let lin = layer_linear_mut(layer, i);
                    let w = lin.weight.val().detach() - l.delta().detach();
                    lin.weight = Param::from_tensor(w);
                }
            }
        }
        merged
    }

    /// Sets every dropout probability (model and LoRA paths) to 0: for gradient checks
    /// against PyTorch in eval mode.
    pub fn without_dropout(mut self) -> Self {
        let off = |d: &mut Dropout| d.prob = 0.0;
        let layers = match &mut self.base {
            CrossEncoder::Bert(m) => {
                off(&mut m.dropout);
                off(&mut m.bert.embeddings.dropout);
                &mut m.bert.encoder.layer
            }
            CrossEncoder::Roberta(m) => {
                off(&mut m.classifier.dropout);
                off(&mut m.roberta.embeddings.dropout);
                &mut m.roberta.encoder.layer
            }
        };
        for layer in layers.iter_mut() {
            off(&mut layer.attention.self_attention.dropout);
            off(&mut layer.attention.output.dropout);
            off(&mut layer.output.dropout);
        }
        for lora in &mut self.layers {
            for i in 0..LAYER_LINEARS.len() {
                if let Some(l) = lora.slot_mut(i) {
                    off(&mut l.dropout);
                }
            }
        }
        self
    }
}

/// Freezes every base weight, then lets the head (and, when asked, the pooler) learn.
pub fn freeze_base<B: Backend>(base: CrossEncoder<B>, train_pooler: bool) -> CrossEncoder<B> {
    let trainable = |l: Linear<B>| -> Linear<B> {
        Linear {
            weight: l.weight.set_require_grad(true),
            bias: l.bias.map(|b| b.set_require_grad(true)),
        }
    };
    match base.no_grad() {
        CrossEncoder::Bert(mut m) => {
            m.classifier = trainable(m.classifier);
            if train_pooler {
                m.pooler.dense = trainable(m.pooler.dense);
            }
            CrossEncoder::Bert(m)
        }
        CrossEncoder::Roberta(mut m) => {
            // RoBERTa's head has its own dense layer (PEFT's modules_to_save `classifier`
            // covers both), so `train_pooler` changes nothing here.
            m.classifier.dense = trainable(m.classifier.dense);
            m.classifier.out_proj = trainable(m.classifier.out_proj);
            CrossEncoder::Roberta(m)
        }
    }
}

/// One encoder layer as `BertLayer::forward_rows`, with the LoRA paths: the output for the
/// rows of `queries`, attending over all of `x`.
fn layer_forward<B: Backend>(
    layer: &BertLayer<B>,
    lora: &LayerLora<B>,
    queries: Tensor<B, 3>,
    x: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
) -> Tensor<B, 3> {
    let sa = &layer.attention.self_attention;
    let q = apply(&sa.query, &lora.query, queries.clone());
    let k = apply(&sa.key, &lora.key, x.clone());
    let v = apply(&sa.value, &lora.value, x);
    let attended = multi_head_attention(q, k, v, padding, sa.num_heads, &sa.dropout);
    let ao = &layer.attention.output;
    let x = ao.layer_norm.forward(
        ao.dropout
            .forward(apply(&ao.dense, &lora.attention_output, attended))
            + queries,
    );
    let inner = apply(&layer.intermediate.dense, &lora.intermediate, x.clone());
    let inner = match layer.intermediate.act {
        HiddenAct::Gelu => crate::models::cpu::gelu(inner),
        HiddenAct::GeluTanh => activation::gelu_approximate(inner),
        HiddenAct::Relu => activation::relu(inner),
    };
    let out = &layer.output;
    out.layer_norm
        .forward(out.dropout.forward(apply(&out.dense, &lora.output, inner)) + x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(targets: &[&str]) -> LoraSettings {
        LoraSettings {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: targets.iter().map(|s| s.to_string()).collect(),
            rslora: false,
            train_pooler: false,
        }
    }

    #[test]
    fn targets_match_as_peft_suffixes() {
        let s = settings(&["query", "value"]);
        let hit: Vec<_> = LAYER_LINEARS
            .iter()
            .filter(|l| s.targets_linear(l))
            .collect();
        assert_eq!(hit, [&"attention.self.query", &"attention.self.value"]);
        let s = settings(&["output.dense"]);
        let hit: Vec<_> = LAYER_LINEARS
            .iter()
            .filter(|l| s.targets_linear(l))
            .collect();
        assert_eq!(hit, [&"attention.output.dense", &"output.dense"]);
        let s = settings(&["dense"]);
        assert_eq!(
            LAYER_LINEARS.iter().filter(|l| s.targets_linear(l)).count(),
            3
        );
        // "ery" is not a module-name suffix at a dot.
        let err = settings(&["ery"]).validate().unwrap_err().to_string();
        assert!(err.contains("\"ery\" matches no layer linear"), "{err}");
        assert!(settings(&["query"]).validate().is_ok());
    }

    #[test]
    fn scaling_plain_and_rslora() {
        let mut s = settings(&["query"]);
        assert_eq!(s.scaling(), 2.0);
        s.rslora = true;
        assert!((s.scaling() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn splitmix_is_pinned_and_shuffles_are_permutations() {
        // Reference values of splitmix64 seeded with 0 (Vigna's reference implementation).
        let mut r = SplitMix(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut p = SplitMix(13).permutation(100);
        assert_ne!(p, (0..100).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
