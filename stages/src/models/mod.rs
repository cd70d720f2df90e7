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

pub mod bert;
pub mod config;
pub mod cpu;
pub mod deberta_v2;
pub mod loader;
pub mod roberta;

use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::prelude::*;

pub use config::{Architecture, HiddenAct, ModelConfig};
pub use loader::{Checkpoint, LoadReport};

/// Runs the linears an adapter may wrap: [`Plain`] for inference; `LoraModel` (and OFT)
/// add their paths. One forward per architecture serves both, monomorphised per hook.
pub trait LinearHook<B: Backend> {
    /// `x` `[rows, in]` through linear `slot` (an index into the architecture's
    /// `LAYER_LINEARS`) of encoder layer `layer`, whose base weights are `base`.
    /// Returns `[rows, out]`.
    fn linear(&self, layer: usize, slot: usize, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2>;
}

/// No adapter: the base linear.
pub struct Plain;

impl<B: Backend> LinearHook<B> for Plain {
    fn linear(&self, _: usize, _: usize, base: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        base.forward(x)
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
#[derive(Module, Debug)]
pub enum CrossEncoder<B: Backend> {
    Bert(bert::BertForSequenceClassification<B>),
    /// RoBERTa and XLM-RoBERTa.
    Roberta(roberta::RobertaForSequenceClassification<B>),
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
                Architecture::DebertaV2 => return Err(not_yet()),
            };
        Ok((model, ck.finish()?))
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 2> {
        match self {
            CrossEncoder::Bert(m) => m.forward(input),
            CrossEncoder::Roberta(m) => m.forward(input),
        }
    }

    /// The last hidden state `[batch, seq, hidden]` of the encoder under the head.
    pub fn encode(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        match self {
            CrossEncoder::Bert(m) => m.bert.forward(input),
            CrossEncoder::Roberta(m) => m.roberta.forward(input),
        }
    }

    /// Number of outputs of the head.
    pub fn num_labels(&self) -> usize {
        let out = match self {
            CrossEncoder::Bert(m) => &m.classifier,
            CrossEncoder::Roberta(m) => &m.classifier.out_proj,
        };
        out.weight.dims()[1]
    }
}

/// The bare encoder (no head) of any supported architecture.
#[derive(Module, Debug)]
pub enum Encoder<B: Backend> {
    Bert(bert::BertModel<B>),
    Roberta(roberta::RobertaModel<B>),
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
            Architecture::DebertaV2 => return Err(not_yet()),
        };
        Ok((model, ck.finish()?))
    }

    /// The last hidden state `[batch, seq, hidden]`.
    pub fn forward(&self, input: &ModelInput<B>) -> Tensor<B, 3> {
        match self {
            Encoder::Bert(m) => m.forward(input),
            Encoder::Roberta(m) => m.forward(input),
        }
    }
}

// TEMPORARY until the adapter refactor lands: DeBERTa loads through its own type only.
fn not_yet() -> MlError {
    MlError::Unsupported(
        "DeBERTa-v2 in CrossEncoder/Encoder (wired after the adapter refactor)".into(),
    )
}

// Here rather than in `tokenize`, which knows nothing of model directories.
impl PairTokenizer {
    /// The tokenizer of a model directory, with the model's pad id; `max_length` is capped
    /// at what the model's position table allows.
    pub fn for_model(dir: &ModelDir, max_length: usize, truncation: Truncation) -> Result<Self> {
        let path = dir.tokenizer_path();
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
