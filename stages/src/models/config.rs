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
    /// ModernBERT: rotary positions, GeGLU, alternating local/global attention.
    ModernBert,
    /// DeBERTa-v2 and DeBERTa-v3 (`deberta-v2`): disentangled relative attention.
    DebertaV2,
}

impl Architecture {
    /// The `model_type` values of config.json that tsumugi loads.
    pub const MODEL_TYPES: &[&str] =
        &["bert", "roberta", "xlm-roberta", "modernbert", "deberta-v2"];

    /// The architecture of a `model_type`, or an error naming it and what is supported.
    pub fn from_model_type(model_type: &str) -> Result<Self> {
        match model_type {
            "bert" => Ok(Architecture::Bert),
            "roberta" => Ok(Architecture::Roberta),
            "xlm-roberta" => Ok(Architecture::XlmRoberta),
            "modernbert" => Ok(Architecture::ModernBert),
            "deberta-v2" => Ok(Architecture::DebertaV2),
            other => Err(MlError::UnsupportedModel(
                other.to_string(),
                Self::MODEL_TYPES.join(", "),
            )),
        }
    }

    /// The key prefix of the encoder's weights in a `*ForSequenceClassification` checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Roberta | Architecture::XlmRoberta => "roberta",
            Architecture::ModernBert => "model",
            Architecture::DebertaV2 => "deberta",
        }
    }

    /// The transformers class of its sequence-classification model (`architectures` in an
    /// exported `config.json`).
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Bert => "BertForSequenceClassification",
            Architecture::Roberta => "RobertaForSequenceClassification",
            Architecture::XlmRoberta => "XLMRobertaForSequenceClassification",
            Architecture::ModernBert => super::modernbert::HF_CLASS,
            Architecture::DebertaV2 => super::deberta_v2::HF_CLASS,
        }
    }

    /// The linears of one encoder layer an adapter may wrap (the model's
    /// `SequenceClassifier::layer_linears`).
    pub fn layer_linears(self) -> &'static [&'static str] {
        match self {
            Architecture::Bert | Architecture::Roberta | Architecture::XlmRoberta => {
                &super::bert::LAYER_LINEARS
            }
            Architecture::ModernBert => &super::modernbert::LAYER_LINEARS,
            Architecture::DebertaV2 => &super::deberta_v2::LAYER_LINEARS,
        }
    }

    /// PEFT's default LoRA targets for the model type
    /// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub fn default_lora_targets(self) -> Vec<String> {
        match self {
            Architecture::Bert | Architecture::Roberta | Architecture::XlmRoberta => {
                vec!["query".into(), "value".into()]
            }
            Architecture::ModernBert => super::modernbert::default_lora_targets(),
            Architecture::DebertaV2 => super::deberta_v2::default_lora_targets(),
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
    /// Every other field of `config.json`, for the architectures' own settings
    /// (read with [`ModelConfig::extra_field`]).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
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
        let bad = |message: String| MlError::Config {
            path: path.to_path_buf(),
            message,
        };
        // The model type first: an unsupported model (say Qwen2-VL) is named as such, not
        // reported as lacking a BERT field.
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        match raw.get("model_type").and_then(|t| t.as_str()) {
            None => return Err(bad("no model_type".into())),
            Some(t) => {
                Architecture::from_model_type(t).map_err(|e| bad(e.to_string()))?;
            }
        }
        let cfg: ModelConfig = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
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
        if self.architecture()? == Architecture::ModernBert {
            // Its own fields (window, layer types, rotary bases, pooling), checked here so
            // that a bad one fails when the directory is opened.
            super::modernbert::ModernBertConfig::from_config(self).map_err(|e| match e {
                MlError::Config { message, .. } => bad(message),
                other => other,
            })?;
        } else if matches!(
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
        Architecture::from_model_type(&self.model_type)
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

    /// An architecture-specific field of `config.json` (`None` when absent or null), or an
    /// error naming the field and what was expected.
    pub fn extra_field<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.extra.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| MlError::Unsupported(format!("config.json field {name:?}: {e}"))),
        }
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
            // ModernBERT's rotary positions have no table; its limit is the trained length.
            Ok(Architecture::Bert | Architecture::ModernBert | Architecture::DebertaV2)
            | Err(_) => self.max_position_embeddings,
            Ok(_) => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id.unwrap_or(1) + 1),
        }
    }
}
