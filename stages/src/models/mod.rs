//! Cross-encoder models in burn, loaded from Hugging Face model directories.
//!
//! [`ModelDir`] reads `config.json` and finds the weights and `tokenizer.json`;
//! [`CrossEncoder::load`] builds the sequence-classification model of the directory's
//! architecture; [`Encoder::load`] the bare encoder. Everything is generic over the burn
//! [`Backend`], so the same code runs inference on flex/wgpu/cuda and training under
//! `Autodiff<…>`.
//!
//! One file per architecture (`bert.rs`, `roberta.rs`); `cpu.rs` holds the two kernels
//! (GELU, attention) that replace slow burn ops when the backend is the CPU one.
//!
//! Every architecture's `*ForSequenceClassification` implements [`SequenceClassifier`]:
//! the contract that adapters (`lora.rs`), their PEFT files (`peft.rs`), training and export
//! are written against, so none of them names an architecture. A new architecture is one
//! file implementing it, a `CrossEncoder` variant, an arm in [`each_arch!`] and its
//! `model_type` in `config.rs`.

pub mod bert;
pub mod check;
pub mod config;
pub mod cpu;
pub mod deberta_v2;
pub mod dropout;
pub mod loader;
pub mod modernbert;
pub mod qwen2_vl;
pub mod roberta;
pub mod tensors;

use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::prelude::*;

pub use config::{Architecture, HiddenAct, ModelConfig};
pub use loader::{Checkpoint, LoadReport};
pub use tensors::TensorSet;

/// Runs the linears an adapter may wrap: [`Plain`] for inference; `LoraModel` (and OFT)
/// add their paths. One forward per architecture serves both, monomorphised per hook.
pub trait LinearHook<B: Backend> {
    /// `x` `[rows, in]` through linear `slot` (an index into the architecture's
    /// [`SequenceClassifier::layer_linears`]) of encoder layer `layer`, whose base weights
    /// are `base`. Returns `[rows, out]`.
    fn linear(&self, layer: usize, slot: usize, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2>;
}

/// No adapter: the base linear.
pub struct Plain;

impl<B: Backend> LinearHook<B> for Plain {
    fn linear(&self, _: usize, _: usize, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        crate::precision::linear(base, x)
    }
}

/// `hook.linear` on `x` of any rank, seen as one `[rows, features]` matrix
/// (see [`bert::on_rows`] for why rows).
pub fn hooked<B: Backend, H: LinearHook<B>, const D: usize>(
    hook: &H,
    layer: usize,
    slot: usize,
    base: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    bert::on_rows(x, |rows| hook.linear(layer, slot, base, rows))
}

/// What each architecture's sequence-classification model provides.
pub trait SequenceClassifier<B: Backend>: Sized {
    /// The linears of one encoder layer an adapter may wrap, by their PEFT/transformers
    /// module name relative to the layer's path; a slot is an index into this list.
    fn layer_linears(&self) -> &'static [&'static str];
    /// The module path of encoder layer `i` in the transformers model
    /// (`bert.encoder.layer.3`): PEFT's adapter keys start with it.
    fn layer_path(&self, i: usize) -> String;
    fn num_layers(&self) -> usize;
    fn layer_linear(&self, layer: usize, slot: usize) -> &Linear<B>;
    fn layer_linear_mut(&mut self, layer: usize, slot: usize) -> &mut Linear<B>;
    /// Logits `[batch, num_labels]`, every adaptable linear run through `hook`.
    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 2>;
    /// The last hidden state `[batch, seq, hidden]` of the encoder under the head.
    fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3>;
    /// Number of outputs of the head.
    fn num_labels(&self) -> usize;
    /// Sets every dropout probability to 0 (gradient checks against PyTorch in eval mode).
    fn without_dropout(&mut self);
    /// Freezes every weight, then lets the head (and with `train_pooler` the pooler, where
    /// the architecture has one outside its head) learn.
    fn freeze_except_head(self, train_pooler: bool) -> Self;
    /// PEFT's `modules_to_save` for the trained head.
    fn modules_to_save(&self, train_pooler: bool) -> Vec<&'static str>;
    /// The trained head's tensors under `prefix` + their transformers keys.
    fn head_tensors(&self, train_pooler: bool, set: &mut TensorSet, prefix: &str);
    /// Takes the head's tensors (as [`SequenceClassifier::head_tensors`] writes them) out of
    /// `set`, read from `path`.
    fn load_head(
        &mut self,
        train_pooler: bool,
        set: &mut TensorSet,
        path: &Path,
        prefix: &str,
        device: &B::Device,
    ) -> Result<()>;
    /// Every weight under its transformers key, PyTorch layout: a full `model.safetensors`.
    fn model_tensors(&self, set: &mut TensorSet);
}

/// `$body` with `$m` bound to the architecture's model, whatever variant `$model` is.
macro_rules! each_arch {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            CrossEncoder::Bert($m) => $body,
            CrossEncoder::Roberta($m) => $body,
            CrossEncoder::ModernBert($m) => $body,
            CrossEncoder::DebertaV2($m) => $body,
        }
    };
}

use crate::error::{MlError, Result};
use crate::tokenize::{EncodedBatch, PairTokenizer, Truncation};

/// A Hugging Face model directory: `config.json`, weights, `tokenizer.json`.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    pub config: ModelConfig,
    pub architecture: Architecture,
}

impl ModelDir {
    /// Reads `DIR/config.json`; an unsupported `model_type` is an error here.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_dir() {
            return Err(MlError::Config {
                path: path.to_path_buf(),
                message: "not a directory".into(),
            });
        }
        let config = ModelConfig::from_file(&path.join("config.json"))?;
        let architecture = config.architecture()?;
        Ok(Self {
            path: path.to_path_buf(),
            config,
            architecture,
        })
    }

    /// `DIR/tokenizer.json`.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }

    /// Opens the directory's weights.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Checkpoint::open(&self.path, self.architecture.prefix())
    }
}

/// How to build a model from a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Override the number of labels of the head (default: from `config.json`).
    pub num_labels: Option<usize>,
    /// Initialise head weights (pooler/classifier) that the checkpoint lacks, as
    /// transformers does, instead of failing: for training a head on a base encoder.
    pub init_missing_head: bool,
    /// Seed of those initial weights. They are drawn on the host from `(seed, weight
    /// name)`, so a seed gives the same head on every backend (burn's own generators
    /// differ between CPU and GPU backends).
    pub init_seed: u64,
}

/// One padded batch on a device, as the models take it.
#[derive(Debug, Clone)]
pub struct ModelInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[batch, seq]` segment ids (BERT); `None` means all 0.
    pub token_type_ids: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> ModelInput<B> {
    /// Moves a tokenized batch onto `device`.
    pub fn from_batch(batch: &EncodedBatch, device: &B::Device) -> Self {
        let shape = [batch.batch, batch.seq];
        let ints =
            |v: &[i64]| Tensor::<B, 2, Int>::from_data(TensorData::new(v.to_vec(), shape), device);
        Self {
            input_ids: ints(&batch.input_ids),
            attention_mask: ints(&batch.attention_mask),
            token_type_ids: batch.token_type_ids.as_deref().map(ints),
        }
    }
}

/// A sequence-classification model of any supported architecture.
// One model per run, moved rarely: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CrossEncoder<B: Backend> {
    Bert(bert::BertForSequenceClassification<B>),
    /// RoBERTa and XLM-RoBERTa.
    Roberta(roberta::RobertaForSequenceClassification<B>),
    ModernBert(modernbert::ModernBertForSequenceClassification<B>),
    /// DeBERTa-v2 and -v3.
    DebertaV2(deberta_v2::DebertaV2ForSequenceClassification<B>),
}

impl<B: Backend> CrossEncoder<B> {
    /// Loads the model in `dir` onto `device`. Missing weights are an error naming them
    /// all; weights left unused are listed in the report.
    pub fn load(
        dir: &ModelDir,
        opts: &LoadOptions,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        let mut ck = dir.checkpoint()?;
        ck.set_init_seed(opts.init_seed);
        let model =
            match dir.architecture {
                Architecture::Bert => CrossEncoder::Bert(
                    bert::BertForSequenceClassification::load(&mut ck, &dir.config, opts, device)?,
                ),
                Architecture::Roberta | Architecture::XlmRoberta => {
                    CrossEncoder::Roberta(roberta::RobertaForSequenceClassification::load(
                        &mut ck,
                        &dir.config,
                        opts,
                        device,
                    )?)
                }
                Architecture::DebertaV2 => {
                    CrossEncoder::DebertaV2(deberta_v2::DebertaV2ForSequenceClassification::load(
                        &mut ck,
                        &dir.config,
                        opts,
                        device,
                    )?)
                }
                Architecture::ModernBert => {
                    CrossEncoder::ModernBert(modernbert::ModernBertForSequenceClassification::load(
                        &mut ck,
                        &dir.config,
                        opts,
                        device,
                    )?)
                }
            };
        Ok((model, ck.finish()?))
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 2> {
        self.forward_with(input, &Plain)
    }

    /// The model with every encoder-layer linear (the frozen bulk of the weights) held in
    /// `precision`'s half type; embeddings, norms, pooler and head stay f32 (see
    /// [`crate::precision`]). Merge adapters before this: a merge wants f32 weights.
    pub fn with_precision(mut self, precision: crate::precision::Precision) -> Self {
        let Some(half) = precision.half() else {
            return self;
        };
        for layer in 0..self.num_layers() {
            for slot in 0..self.layer_linears().len() {
                let l = self.layer_linear_mut(layer, slot);
                *l = crate::precision::cast_linear(l.clone(), half);
            }
        }
        self
    }
}

impl<B: Backend> SequenceClassifier<B> for CrossEncoder<B> {
    fn layer_linears(&self) -> &'static [&'static str] {
        each_arch!(self, m => m.layer_linears())
    }
    fn layer_path(&self, i: usize) -> String {
        each_arch!(self, m => m.layer_path(i))
    }
    fn num_layers(&self) -> usize {
        each_arch!(self, m => m.num_layers())
    }
    fn layer_linear(&self, layer: usize, slot: usize) -> &Linear<B> {
        each_arch!(self, m => m.layer_linear(layer, slot))
    }
    fn layer_linear_mut(&mut self, layer: usize, slot: usize) -> &mut Linear<B> {
        each_arch!(self, m => m.layer_linear_mut(layer, slot))
    }
    fn forward_with<H: LinearHook<B>>(&self, input: &ModelInput<B>, hook: &H) -> Tensor<B, 2> {
        each_arch!(self, m => m.forward_with(input, hook))
    }
    fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        each_arch!(self, m => m.encode(input))
    }
    fn num_labels(&self) -> usize {
        each_arch!(self, m => m.num_labels())
    }
    fn without_dropout(&mut self) {
        each_arch!(self, m => m.without_dropout())
    }
    fn freeze_except_head(self, train_pooler: bool) -> Self {
        match self {
            CrossEncoder::Bert(m) => CrossEncoder::Bert(m.freeze_except_head(train_pooler)),
            CrossEncoder::Roberta(m) => CrossEncoder::Roberta(m.freeze_except_head(train_pooler)),
            CrossEncoder::ModernBert(m) => {
                CrossEncoder::ModernBert(m.freeze_except_head(train_pooler))
            }
            CrossEncoder::DebertaV2(m) => {
                CrossEncoder::DebertaV2(m.freeze_except_head(train_pooler))
            }
        }
    }
    fn modules_to_save(&self, train_pooler: bool) -> Vec<&'static str> {
        each_arch!(self, m => m.modules_to_save(train_pooler))
    }
    fn head_tensors(&self, train_pooler: bool, set: &mut TensorSet, prefix: &str) {
        each_arch!(self, m => m.head_tensors(train_pooler, set, prefix))
    }
    fn load_head(
        &mut self,
        train_pooler: bool,
        set: &mut TensorSet,
        path: &Path,
        prefix: &str,
        device: &B::Device,
    ) -> Result<()> {
        each_arch!(self, m => m.load_head(train_pooler, set, path, prefix, device))
    }
    fn model_tensors(&self, set: &mut TensorSet) {
        each_arch!(self, m => m.model_tensors(set))
    }
}

/// The bare encoder (no head) of any supported architecture.
// As for CrossEncoder: one per run, the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Encoder<B: Backend> {
    Bert(bert::BertModel<B>),
    Roberta(roberta::RobertaModel<B>),
    ModernBert(modernbert::ModernBertModel<B>),
    DebertaV2(deberta_v2::DebertaV2Model<B>),
}

impl<B: Backend> Encoder<B> {
    /// Loads the encoder in `dir`; head weights in the checkpoint are reported unused.
    pub fn load(dir: &ModelDir, device: &B::Device) -> Result<(Self, LoadReport)> {
        let mut ck = dir.checkpoint()?;
        let model = match dir.architecture {
            Architecture::Bert => {
                Encoder::Bert(bert::BertModel::load(&mut ck, &dir.config, device)?)
            }
            Architecture::Roberta | Architecture::XlmRoberta => {
                Encoder::Roberta(roberta::RobertaModel::load(&mut ck, &dir.config, device)?)
            }
            Architecture::DebertaV2 => Encoder::DebertaV2(deberta_v2::DebertaV2Model::load(
                &mut ck,
                &dir.config,
                device,
            )?),
            Architecture::ModernBert => Encoder::ModernBert(modernbert::ModernBertModel::load(
                &mut ck,
                &dir.config,
                device,
            )?),
        };
        Ok((model, ck.finish()?))
    }

    /// The last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        match self {
            Encoder::Bert(m) => m.forward(input),
            Encoder::Roberta(m) => m.forward(input),
            Encoder::ModernBert(m) => m.forward(input),
            Encoder::DebertaV2(m) => m.forward(input),
        }
    }
}

// Here rather than in `tokenize`, which knows nothing of model directories.
impl PairTokenizer {
    /// The tokenizer of a model directory, with the model's pad id; `max_length` is capped
    /// at what the model's position table allows.
    pub fn for_model(dir: &ModelDir, max_length: usize, truncation: Truncation) -> Result<Self> {
        let path = dir.tokenizer_path();
        // Japanese BERTs ship vocab.txt + tokenizer_config.json and no tokenizer.json.
        if !path.exists() && crate::tokenize::japanese::is_bert_japanese(&dir.path) {
            return Self::japanese(
                &dir.path,
                dir.architecture.uses_token_types(),
                max_length.min(dir.config.max_input_length()),
                truncation,
                dir.config.pad_token_id.map(|id| id as u32),
            );
        }
        let probe = tokenizers::Tokenizer::from_file(&path).map_err(|e| MlError::Tokenizer {
            path: path.clone(),
            message: format!("cannot load tokenizer: {e}"),
        })?;
        // The model's own pad id decides RoBERTa positions, so it wins over the tokenizer's.
        let pad_id = match dir.config.pad_token_id {
            Some(id) => id as u32,
            None => probe
                .get_padding()
                .map(|p| p.pad_id)
                .or_else(|| ["[PAD]", "<pad>"].iter().find_map(|t| probe.token_to_id(t)))
                .ok_or_else(|| MlError::Tokenizer {
                    path: path.clone(),
                    message: "no pad token: config.json has no pad_token_id and the tokenizer has no [PAD]/<pad>"
                        .into(),
                })?,
        };
        let max_length = max_length.min(dir.config.max_input_length());
        // DeBERTa feeds segment ids only when its config has token types (v3 has none).
        let token_types = match dir.architecture {
            Architecture::DebertaV2 => {
                let config = dir.path.join("config.json");
                deberta_v2::DebertaConfig::from_file(&config, &dir.config)?.type_vocab_size > 0
            }
            arch => arch.uses_token_types(),
        };
        Self::from_file(&path, pad_id, token_types, max_length, truncation)
    }
}
