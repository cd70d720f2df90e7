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
//! every `*.dense` linear of a BERT layer, `output.dense` both `attention.output.dense` and
//! the layer's `output.dense`). The candidates are each architecture's
//! [`SequenceClassifier::layer_linears`]; the pooler and the head are trained whole through
//! `modules_to_save` instead.

use crate::models::dropout::Dropout;
pub use crate::rng::SplitMix;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::models::{CrossEncoder, LinearHook, ModelInput, SequenceClassifier};
use crate::oft::{OftLinear, OftSettings};

/// Adapter hyper-parameters, named as in PEFT's `LoraConfig`; with `oft` set, an OFT
/// adapter (`crate::oft`) on the same targets instead, and `r`, `alpha`, `dropout` and
/// `rslora` unused.
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
    /// OFT instead of LoRA. Absent from the serialized form when `None`, so LoRA
    /// settings serialize (and fingerprint) as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oft: Option<OftSettings>,
}

impl LoraSettings {
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether layer linear `name` (one of the architecture's layer linears) is targeted.
    pub fn targets_linear(&self, name: &str) -> bool {
        let full = format!("layer.0.{name}");
        self.targets
            .iter()
            .any(|t| name == t || full.ends_with(&format!(".{t}")))
    }

    /// Checks the settings against an architecture's layer linears (`linears`); a target
    /// that matches none of them is an error (PEFT fails the same way), so a typo does not
    /// silently train only the head.
    pub fn validate(&self, linears: &[&str]) -> Result<()> {
        self.check_targets(linears)?;
        match &self.oft {
            Some(oft) => oft.validate(),
            None => self.validate_lora(),
        }
    }

    fn validate_lora(&self) -> Result<()> {
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
        Ok(())
    }

    fn check_targets(&self, linears: &[&str]) -> Result<()> {
        if self.targets.is_empty() {
            return Err(MlError::Input("adapter targets are empty".into()));
        }
        for t in &self.targets {
            let one = LoraSettings {
                targets: vec![t.clone()],
                ..self.clone()
            };
            if !linears.iter().any(|l| one.targets_linear(l)) {
                return Err(MlError::Input(format!(
                    "adapter target {t:?} matches no layer linear of this model (expected a suffix of one of {})",
                    linears.join(", ")
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
            dropout: Dropout::new(settings.dropout),
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
        crate::precision::linear(base, x) + lora.mul_scalar(self.scaling)
    }
}

/// What an adapter adds to one targeted linear.
#[derive(Module, Debug)]
pub enum AdapterLinear<B: Backend> {
    Lora(LoraLinear<B>),
    Oft(OftLinear<B>),
}

impl<B: Backend> AdapterLinear<B> {
    /// `base(x)` with the adapter.
    pub fn forward(&self, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            AdapterLinear::Lora(l) => l.forward(base, x),
            AdapterLinear::Oft(o) => o.forward(base, x),
        }
    }

    /// The LoRA path, if this is one.
    pub fn lora(&self) -> Option<&LoraLinear<B>> {
        match self {
            AdapterLinear::Lora(l) => Some(l),
            AdapterLinear::Oft(_) => None,
        }
    }

    pub fn lora_mut(&mut self) -> Option<&mut LoraLinear<B>> {
        match self {
            AdapterLinear::Lora(l) => Some(l),
            AdapterLinear::Oft(_) => None,
        }
    }

    /// The base weight `[in, out]` with the adapter merged in (`sign` −1 takes it out).
    fn merge_into(&self, w: Tensor<B, 2>, sign: f64) -> Tensor<B, 2> {
        match self {
            AdapterLinear::Lora(l) => w + l.delta().detach().mul_scalar(sign),
            AdapterLinear::Oft(o) => o.merge_into(w, sign < 0.0),
        }
    }
}

/// The adapter paths of one encoder layer: one slot per layer linear of the architecture,
/// `None` where the linear is not targeted.
#[derive(Module, Debug)]
pub struct LayerLora<B: Backend> {
    pub slots: Vec<Option<AdapterLinear<B>>>,
}

impl<B: Backend> LinearHook<B> for Vec<LayerLora<B>> {
    fn linear(&self, layer: usize, slot: usize, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.get(layer).and_then(|l| l.slots[slot].as_ref()) {
            Some(adapter) => adapter.forward(base, x),
            None => crate::precision::linear(base, x),
        }
    }
}

/// A cross-encoder with adapter paths (LoRA or OFT): the trainable module. Only the
/// adapter weights and the head (plus the pooler when asked) require gradients.
#[derive(Module, Debug)]
pub struct LoraModel<B: Backend> {
    pub base: CrossEncoder<B>,
    pub layers: Vec<LayerLora<B>>,
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
        let linears = base.layer_linears();
        settings.validate(linears)?;
        let mut rng = SplitMix(seed);
        let layers = (0..base.num_layers())
            .map(|i| {
                let slots = (0..linears.len())
                    .map(|s| {
                        if !settings.targets_linear(linears[s]) {
                            return Ok(None);
                        }
                        let [d_in, d_out] = base.layer_linear(i, s).weight.dims();
                        Ok(Some(match &settings.oft {
                            Some(oft) => {
                                let name = format!("{}.{}", base.layer_path(i), linears[s]);
                                AdapterLinear::Oft(OftLinear::init(d_in, oft, &name, device)?)
                            }
                            None => AdapterLinear::Lora(LoraLinear::init(
                                d_in, d_out, settings, &mut rng, device,
                            )),
                        }))
                    })
                    .collect::<Result<_>>()?;
                Ok(LayerLora { slots })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            base: base.freeze_except_head(settings.train_pooler),
            layers,
        })
    }

    /// Logits `[batch, num_labels]`: `CrossEncoder::forward` with the LoRA paths added.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 2> {
        self.base.forward_with(input, &self.layers)
    }

    /// Every targeted linear with its adapter: `(layer, slot, adapter)`.
    pub fn paths(&self) -> impl Iterator<Item = (usize, usize, &AdapterLinear<B>)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            l.slots
                .iter()
                .enumerate()
                .filter_map(move |(s, p)| p.as_ref().map(|p| (i, s, p)))
        })
    }

    /// The base model with every adapter merged into its weight (PEFT `merge_and_unload`):
    /// `W + s · A B` for LoRA, `R W` for OFT.
    pub fn merged(&self) -> CrossEncoder<B> {
        self.shifted(self.base.clone(), 1.0)
    }

    /// Removes the adapters from a model made by [`LoraModel::merged`] (PEFT `unmerge`):
    /// the base weights again, up to rounding (and, for OFT's truncated Cayley series, up
    /// to its distance from a true rotation).
    pub fn unmerge(&self, merged: CrossEncoder<B>) -> CrossEncoder<B> {
        self.shifted(merged, -1.0)
    }

    /// `model` with each adapter merged into (`sign` 1) or out of (−1) its weight.
    fn shifted(&self, mut model: CrossEncoder<B>, sign: f64) -> CrossEncoder<B> {
        for (i, s, adapter) in self.paths() {
            let lin = model.layer_linear_mut(i, s);
            let w = adapter.merge_into(lin.weight.val().detach(), sign).detach();
            lin.weight = Param::from_tensor(w);
        }
        model
    }

    /// Sets every dropout probability (model and LoRA paths) to 0: for gradient checks
    /// against PyTorch in eval mode.
    pub fn without_dropout(mut self) -> Self {
        self.base.without_dropout();
        for layer in &mut self.layers {
            for adapter in layer.slots.iter_mut().flatten() {
                if let AdapterLinear::Lora(lora) = adapter {
                    lora.dropout.prob = 0.0;
                }
            }
        }
        self
    }
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
            oft: None,
        }
    }

    #[test]
    fn targets_match_as_peft_suffixes() {
        use crate::models::bert::LAYER_LINEARS;
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
        let err = settings(&["ery"])
            .validate(&LAYER_LINEARS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"ery\" matches no layer linear"), "{err}");
        assert!(settings(&["query"]).validate(&LAYER_LINEARS).is_ok());
    }

    #[test]
    fn scaling_plain_and_rslora() {
        let mut s = settings(&["query"]);
        assert_eq!(s.scaling(), 2.0);
        s.rslora = true;
        assert!((s.scaling() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    }
}
