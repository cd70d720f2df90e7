//! `config.json` of a Qwen2-VL checkpoint, in both layouts found in the wild: the Hub's
//! (Qwen2-VL-*-Instruct: the text fields at the top level, `rope_scaling.mrope_section`,
//! `rope_theta`) and transformers 5's (`text_config`, `rope_parameters`).

use std::path::Path;

use serde_json::Value;

use crate::error::{MlError, Result};

/// `vision_config` (`Qwen2VLVisionConfig`).
#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    /// The merger's output width: the text model's hidden size.
    pub hidden_size: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    pub rope_theta: f64,
}

/// The text decoder's fields (`Qwen2VLTextConfig`).
#[derive(Debug, Clone)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// How the rotary half-dimension is split between the temporal, height and width
    /// position axes (M-RoPE); sums to `head_dim / 2`.
    pub mrope_section: [usize; 3],
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A whole `Qwen2VLConfig`.
#[derive(Debug, Clone)]
pub struct Qwen2VlConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

/// True when `config.json`'s `model_type` is Qwen2-VL's (for `models check`).
pub fn is_qwen2_vl(config: &Value) -> bool {
    config.get("model_type").and_then(Value::as_str) == Some("qwen2_vl")
}

struct Fields<'a> {
    path: &'a Path,
    /// Where the field sits, for errors: "" or "text_config." or "vision_config.".
    scope: &'static str,
    map: &'a Value,
    /// Looked up when `map` lacks a field (the Hub layout keeps text fields at the top).
    fallback: Option<&'a Value>,
}

impl Fields<'_> {
    fn bad(&self, message: String) -> MlError {
        MlError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null()).or_else(|| {
            self.fallback
                .and_then(|f| f.get(key))
                .filter(|v| !v.is_null())
        })
    }

    fn float(&self, key: &str, default: Option<f64>) -> Result<f64> {
        match self.get(key) {
            Some(v) => v.as_f64().ok_or_else(|| {
                self.bad(format!("{}{key}: expected a number, found {v}", self.scope))
            }),
            None => default.ok_or_else(|| self.bad(format!("{}{key} is missing", self.scope))),
        }
    }

    fn count(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.bad(format!(
                    "{}{key}: expected a whole number, found {v}",
                    self.scope
                ))
            }),
            None => default.ok_or_else(|| self.bad(format!("{}{key} is missing", self.scope))),
        }
    }
}

impl Qwen2VlConfig {
    /// Reads `path` (a checkpoint's `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
        let root: Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(&root, path)
    }

    pub fn from_value(root: &Value, path: &Path) -> Result<Self> {
        let top = Fields {
            path,
            scope: "",
            map: root,
            fallback: None,
        };
        if !is_qwen2_vl(root) {
            return Err(top.bad(format!(
                "model_type {} is not \"qwen2_vl\"",
                root.get("model_type").unwrap_or(&Value::Null)
            )));
        }
        let text_map = root.get("text_config").unwrap_or(root);
        let t = Fields {
            path,
            scope: if text_map == root { "" } else { "text_config." },
            map: text_map,
            fallback: Some(root),
        };
        // transformers 5: rope_parameters {rope_theta, mrope_section}; the Hub:
        // rope_theta + rope_scaling {type: "mrope", mrope_section}.
        let rope = t.get("rope_parameters").or_else(|| t.get("rope_scaling"));
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| t.bad(format!("rope_theta: expected a number, found {v}")))?,
            None => t.float("rope_theta", Some(1_000_000.0))?,
        };
        let section = rope.and_then(|r| r.get("mrope_section")).ok_or_else(|| {
            t.bad("mrope_section is missing (rope_parameters or rope_scaling)".into())
        })?;
        let section: Vec<usize> = section
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|n| n as usize))
                    .collect()
            })
            .unwrap_or_default();
        let [s0, s1, s2] = section[..] else {
            return Err(t.bad(format!(
                "mrope_section: expected three whole numbers, found {section:?}"
            )));
        };
        let hidden_size = t.count("hidden_size", None)?;
        let num_attention_heads = t.count("num_attention_heads", None)?;
        let text = TextConfig {
            vocab_size: t.count("vocab_size", None)?,
            hidden_size,
            intermediate_size: t.count("intermediate_size", None)?,
            num_hidden_layers: t.count("num_hidden_layers", None)?,
            num_attention_heads,
            num_key_value_heads: t.count("num_key_value_heads", Some(num_attention_heads))?,
            rms_norm_eps: t.float("rms_norm_eps", Some(1e-6))?,
            rope_theta,
            mrope_section: [s0, s1, s2],
            tie_word_embeddings: root
                .get("tie_word_embeddings")
                .or_else(|| text_map.get("tie_word_embeddings"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        if hidden_size % num_attention_heads != 0
            || num_attention_heads % text.num_key_value_heads != 0
        {
            return Err(t.bad(format!(
                "hidden_size {hidden_size} must split into num_attention_heads {num_attention_heads}, \
                 a multiple of num_key_value_heads {}",
                text.num_key_value_heads
            )));
        }
        if s0 + s1 + s2 != text.head_dim() / 2 {
            return Err(t.bad(format!(
                "mrope_section {:?} sums to {}, not head_dim / 2 = {}",
                [s0, s1, s2],
                s0 + s1 + s2,
                text.head_dim() / 2
            )));
        }
        if let Some(act) = t.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(t.bad(format!(
                "hidden_act {act:?} is not supported (only \"silu\")"
            )));
        }
        let vmap = root
            .get("vision_config")
            .ok_or_else(|| top.bad("vision_config is missing".into()))?;
        let v = Fields {
            path,
            scope: "vision_config.",
            map: vmap,
            fallback: None,
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
            && act != "quick_gelu"
        {
            return Err(v.bad(format!(
                "vision_config.hidden_act {act:?} is not supported (only \"quick_gelu\")"
            )));
        }
        let embed_dim = v.count("embed_dim", Some(1280))?;
        let num_heads = v.count("num_heads", Some(16))?;
        let vision = VisionConfig {
            depth: v.count("depth", Some(32))?,
            embed_dim,
            hidden_size: v.count("hidden_size", Some(hidden_size))?,
            num_heads,
            mlp_ratio: v.float("mlp_ratio", Some(4.0))?,
            in_channels: v.count("in_channels", Some(3))?,
            patch_size: v.count("patch_size", Some(14))?,
            spatial_merge_size: v.count("spatial_merge_size", Some(2))?,
            temporal_patch_size: v.count("temporal_patch_size", Some(2))?,
            rope_theta: v
                .get("rope_parameters")
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        if embed_dim % num_heads != 0 || (embed_dim / num_heads) % 4 != 0 {
            return Err(v.bad(format!(
                "vision_config: embed_dim {embed_dim} / num_heads {num_heads} must be a multiple of 4 \
                 (two rotary axes, each rotating pairs)"
            )));
        }
        if vision.hidden_size != hidden_size {
            return Err(v.bad(format!(
                "vision_config.hidden_size {} differs from the text hidden_size {hidden_size}",
                vision.hidden_size
            )));
        }
        let id = |key: &str, default: u32| -> Result<u32> {
            Ok(top.count(key, Some(default as usize))? as u32)
        };
        // Defaults: Qwen2-VL's vocabulary (151652 <|vision_start|>, 151653 <|vision_end|>,
        // 151655 <|image_pad|>).
        Ok(Self {
            text,
            vision,
            image_token_id: id("image_token_id", 151_655)?,
            vision_start_token_id: id("vision_start_token_id", 151_652)?,
            vision_end_token_id: id("vision_end_token_id", 151_653)?,
        })
    }
}
