//! `config.json` of a Hugging Face model directory, as far as the supported encoders need it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{MlError, Result};

/// Which architecture family a checkpoint belongs to (`model_type` in `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT and BERT-shaped models (MiniLM, most Japanese BERTs).
    Bert,
    /// RoBERTa: BERT's encoder, positions offset by the padding index, no token types.
    Roberta,
    /// XLM-RoBERTa: the RoBERTa architecture with a SentencePiece vocabulary.
    XlmRoberta,
    /// DeBERTa-v2 and DeBERTa-v3 (`deberta-v2`): disentangled relative attention.
    DebertaV2,
}

impl Architecture {
    /// The key prefix of the encoder's weights in a `*ForSequenceClassification` checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Roberta | Architecture::XlmRoberta => "roberta",
            Architecture::DebertaV2 => "deberta",
        }
    }

    /// True when the architecture feeds token type ids (segment ids) to the model.
    pub fn uses_token_types(self) -> bool {
        matches!(self, Architecture::Bert)
    }
}

/// Feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// Exact GELU with erf (`gelu`).
    Gelu,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// `relu`.
    Relu,
}

/// The fields of `config.json` that the encoders use, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default, rename = "_num_labels")]
    pub legacy_num_labels: Option<usize>,
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}

impl ModelConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
        let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| MlError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| MlError::Config {
            path: path.to_path_buf(),
            message,
        };
        self.architecture().map_err(|e| bad(e.to_string()))?;
        self.activation().map_err(|e| bad(e.to_string()))?;
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if let Some(kind) = &self.position_embedding_type
            && kind != "absolute"
        {
            return Err(bad(format!(
                "position_embedding_type {kind:?} is not supported (only \"absolute\")"
            )));
        }
        if self.num_labels() == 0 {
            return Err(bad("the model declares 0 labels".into()));
        }
        if matches!(
            self.architecture()?,
            Architecture::Roberta | Architecture::XlmRoberta
        ) && self.pad_token_id.is_none()
        {
            return Err(bad(
                "RoBERTa-style models need pad_token_id (positions are offset by it)".into(),
            ));
        }
        Ok(())
    }

    /// The architecture named by `model_type`, or an error naming the unsupported type.
    pub fn architecture(&self) -> Result<Architecture> {
        match self.model_type.as_str() {
            "bert" => Ok(Architecture::Bert),
            "roberta" => Ok(Architecture::Roberta),
            "xlm-roberta" => Ok(Architecture::XlmRoberta),
            "deberta-v2" => Ok(Architecture::DebertaV2),
            other => Err(MlError::UnsupportedModel(other.to_string())),
        }
    }

    /// The feed-forward activation named by `hidden_act`.
    pub fn activation(&self) -> Result<HiddenAct> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(HiddenAct::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(HiddenAct::GeluTanh),
            "relu" => Ok(HiddenAct::Relu),
            other => Err(MlError::Unsupported(format!("hidden_act {other:?}"))),
        }
    }

    /// Number of labels of the classification head, derived as transformers does: from
    /// `id2label` when present, else `num_labels`, else 2 (transformers' default).
    pub fn num_labels(&self) -> usize {
        self.id2label
            .as_ref()
            .map(|m| m.len())
            .or(self.num_labels)
            .or(self.legacy_num_labels)
            .unwrap_or(2)
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Dropout before the classifier (`classifier_dropout`, else `hidden_dropout_prob`).
    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// The longest input (in tokens, special tokens included) the position table allows.
    /// RoBERTa positions start after the padding index, so it loses `pad + 1` positions.
    pub fn max_input_length(&self) -> usize {
        match self.architecture() {
            Ok(Architecture::Bert | Architecture::DebertaV2) | Err(_) => {
                self.max_position_embeddings
            }
            Ok(_) => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id.unwrap_or(1) + 1),
        }
    }
}
