//! A [`PairScorer`] over the burn cross-encoder: `sample-negatives`' model-scored hard
//! negatives (`with: {model: …}`, see docs/ranking.md).
//!
//! Pairs are tokenized in parallel, sorted by length and run in batches of `batch` pairs
//! on the stage's device (the same path as [`crate::score`] and `evaluate`). A batch of
//! queries from [`hard_pools`](crate::ranking::negatives::hard_pools) is scored in one
//! call, so pairs of different queries share batches and padding stays small.
//!
//! The relevance score of a pair: the logit itself for a one-label head (a reranker's
//! head); for an N-label head, the log-probability `log_softmax(logits)[label]` of the
//! label chosen with `label:` (e.g. the entailment class of an NLI model), which, unlike a
//! raw logit of one class, is comparable between pairs. `margin` is in these units.

use crate::models::SequenceClassifier;
use std::path::Path;

use burn::prelude::*;

use crate::device::{CpuBackend, DeviceSpec};
use crate::error::{MlError, Result};
use crate::lora::LoraModel;
use crate::models::{CrossEncoder, LoadOptions, ModelDir};
use crate::ranking::negatives::PairScorer;
use crate::tokenize::{EncodedPair, PairTokenizer, Truncation};

/// Settings of a [`ModelScorer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelScorerOptions {
    /// Pairs per forward pass.
    pub batch: usize,
    /// Tokens per pair, special tokens included (capped at the model's limit).
    pub max_length: usize,
    /// Which logit is the relevance for a head of several labels; must be `None` or
    /// `Some(0)` for a one-label head.
    pub label: Option<usize>,
}

impl Default for ModelScorerOptions {
    fn default() -> Self {
        ModelScorerOptions {
            batch: 32,
            max_length: 256,
            label: None,
        }
    }
}

/// The network on one backend: the base model, or base + a PEFT adapter.
enum Net<B: Backend> {
    Base(CrossEncoder<B>),
    Lora(LoraModel<B>),
}

impl<B: Backend> Net<B> {
    fn load(dir: &ModelDir, adapter: Option<&Path>, device: &B::Device) -> Result<Self> {
        Ok(match adapter {
            None => Net::Base(
                CrossEncoder::load(dir, &LoadOptions::default(), device)
                    .map_err(no_head_hint)?
                    .0,
            ),
            Some(a) => Net::Lora(crate::peft::load_adapter::<B>(dir, a, device)?.0),
        })
    }

    fn num_labels(&self) -> usize {
        match self {
            Net::Base(m) => m.num_labels(),
            Net::Lora(m) => m.base.num_labels(),
        }
    }

    fn logits(
        &self,
        tok: &PairTokenizer,
        pairs: &[EncodedPair],
        batch: usize,
        device: &B::Device,
    ) -> Vec<Vec<f32>> {
        match self {
            Net::Base(m) => crate::score::score_encoded(m, tok, pairs, batch, device, &mut |_| {}),
            Net::Lora(m) => crate::train::predict(m, tok, pairs, batch, device),
        }
    }
}

/// A plain encoder (no classification head) cannot score relevance: say so.
fn no_head_hint(e: MlError) -> MlError {
    match &e {
        MlError::MissingWeights { keys, .. }
            if !keys.is_empty() && keys.iter().all(|k| k.starts_with("classifier")) =>
        {
            MlError::Input(format!(
                "{e}: the model has no classification head, so it cannot score relevance; \
                 use a trained cross-encoder (reranker), or the base model with the `adapter` \
                 train-lora wrote (it carries the head)"
            ))
        }
        _ => e,
    }
}

// One model per scorer, built once: the variants' size difference (the wgpu device) costs
// nothing.
#[allow(clippy::large_enum_variant)]
enum Loaded {
    Cpu(Net<CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(
        Net<crate::device::WgpuBackend>,
        burn::backend::wgpu::WgpuDevice,
    ),
    #[cfg(feature = "cuda")]
    Cuda(
        Net<crate::device::CudaBackend>,
        burn::backend::cuda::CudaDevice,
    ),
}

/// A cross-encoder (optionally with a LoRA adapter) scoring (query, passage) pairs.
pub struct ModelScorer {
    net: Loaded,
    tokenizer: PairTokenizer,
    options: ModelScorerOptions,
    label: usize,
    num_labels: usize,
}

impl ModelScorer {
    /// Loads the Hugging Face model directory `model` (config.json, safetensors weights,
    /// tokenizer.json), with the PEFT adapter directory `adapter` when given, onto `device`.
    pub fn load(
        model: &Path,
        adapter: Option<&Path>,
        device: DeviceSpec,
        options: ModelScorerOptions,
    ) -> Result<Self> {
        if options.batch == 0 || options.max_length == 0 {
            return Err(MlError::Input(
                "batch and max_length must be at least 1".into(),
            ));
        }
        device.check_compiled()?;
        let dir = ModelDir::open(model)?;
        let tokenizer =
            PairTokenizer::for_model(&dir, options.max_length, Truncation::LongestFirst)?;
        let net = match device {
            DeviceSpec::Cpu => Loaded::Cpu(Net::load(&dir, adapter, &Default::default())?),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(_) => {
                let d = device.wgpu_device();
                crate::device::probe::<crate::device::WgpuBackend>(&device, &d)?;
                Loaded::Wgpu(Net::load(&dir, adapter, &d)?, d)
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(_) => {
                let d = device.cuda_device();
                crate::device::probe::<crate::device::CudaBackend>(&device, &d)?;
                Loaded::Cuda(Net::load(&dir, adapter, &d)?, d)
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("check_compiled rejected backends this build lacks"),
        };
        let num_labels = match &net {
            Loaded::Cpu(n) => n.num_labels(),
            #[cfg(feature = "wgpu")]
            Loaded::Wgpu(n, _) => n.num_labels(),
            #[cfg(feature = "cuda")]
            Loaded::Cuda(n, _) => n.num_labels(),
        };
        let label = match (num_labels, options.label) {
            (1, None | Some(0)) => 0,
            (1, Some(l)) => {
                return Err(MlError::Input(format!(
                    "label {l}: the model has a one-label head (its logit is the score); leave `label` out"
                )));
            }
            (n, None) => {
                return Err(MlError::Input(format!(
                    "the model has {n} labels: say which one means relevant with `label: 0..{}`",
                    n - 1
                )));
            }
            (n, Some(l)) if l >= n => {
                return Err(MlError::Input(format!(
                    "label {l}: the model has {n} labels (0..{})",
                    n - 1
                )));
            }
            (_, Some(l)) => l,
        };
        Ok(ModelScorer {
            net,
            tokenizer,
            options,
            label,
            num_labels,
        })
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Logits of `pairs`, in input order (length-sorted batches of `batch` pairs).
    pub fn logits<S: AsRef<str> + Sync>(&self, pairs: &[(S, S)]) -> Result<Vec<Vec<f32>>> {
        let enc = self.tokenizer.encode_all(pairs)?;
        let (tok, bs) = (&self.tokenizer, self.options.batch);
        Ok(match &self.net {
            Loaded::Cpu(n) => n.logits(tok, &enc, bs, &Default::default()),
            #[cfg(feature = "wgpu")]
            Loaded::Wgpu(n, d) => n.logits(tok, &enc, bs, d),
            #[cfg(feature = "cuda")]
            Loaded::Cuda(n, d) => n.logits(tok, &enc, bs, d),
        })
    }

    /// The relevance of one pair from its logits (see the module's documentation).
    pub fn relevance(&self, logits: &[f32]) -> f64 {
        if logits.len() == 1 {
            return logits[0] as f64;
        }
        let x: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + x.iter().map(|&l| (l - max).exp()).sum::<f64>().ln();
        x[self.label] - lse
    }
}

impl PairScorer for ModelScorer {
    fn score(&self, query: &str, passages: &[&str]) -> anyhow::Result<Vec<f64>> {
        Ok(self.score_many(&[(query, passages.to_vec())])?.remove(0))
    }

    fn score_many(&self, queries: &[(&str, Vec<&str>)]) -> anyhow::Result<Vec<Vec<f64>>> {
        let pairs: Vec<(&str, &str)> = queries
            .iter()
            .flat_map(|(q, ps)| ps.iter().map(move |p| (*q, *p)))
            .collect();
        let logits = self.logits(&pairs)?;
        let mut it = logits.iter().map(|l| self.relevance(l));
        Ok(queries
            .iter()
            .map(|(_, ps)| it.by_ref().take(ps.len()).collect())
            .collect())
    }
}
