//! The trained head's activation: how a one-logit head's logit becomes its prediction.
//!
//! A head trained with MSE on scaled scores predicts the raw logit; one trained with BCE
//! predicts `sigmoid(logit)`. Comparing the wrong one with the labels gives nonsense
//! (R² −7 for a head whose Spearman is 0.78), so the activation travels with the adapter
//! and the exported model, in sentence-transformers' own place: `activation_fn` in
//! `config_sentence_transformers.json` (a class path such as
//! `torch.nn.modules.activation.Sigmoid`). sentence-transformers ≥ 4 also reads it from
//! `config.json`'s `sentence_transformers.activation_fn`, and older versions from
//! `sbert_ce_default_activation_function`; both are read here too.
//!
//! Heads of several labels are always read through softmax for probabilities, whatever
//! the file says (sentence-transformers' `Identity` there means "return the logits").

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// sentence-transformers' file for model-level settings.
pub const ST_CONFIG_FILE: &str = "config_sentence_transformers.json";

/// What a one-logit head's logit goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadActivation {
    /// The logit is the prediction (MSE regression).
    Identity,
    /// `sigmoid(logit)` (BCE; sentence-transformers' default for one label).
    Sigmoid,
}

impl HeadActivation {
    /// The class path sentence-transformers writes and imports.
    pub fn class_path(self) -> &'static str {
        match self {
            HeadActivation::Identity => "torch.nn.modules.linear.Identity",
            HeadActivation::Sigmoid => "torch.nn.modules.activation.Sigmoid",
        }
    }

    /// The short name (`identity`, `sigmoid`) used in metrics and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            HeadActivation::Identity => "identity",
            HeadActivation::Sigmoid => "sigmoid",
        }
    }

    /// From a sentence-transformers class path (or a short name).
    pub fn from_class_path(path: &str) -> Option<Self> {
        match path.rsplit('.').next().unwrap_or(path) {
            "Identity" | "identity" => Some(HeadActivation::Identity),
            "Sigmoid" | "sigmoid" => Some(HeadActivation::Sigmoid),
            _ => None,
        }
    }

    /// The prediction for one logit.
    pub fn apply(self, logit: f64) -> f64 {
        match self {
            HeadActivation::Identity => logit,
            HeadActivation::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
        }
    }

    /// The activation a head trained with `loss` predicts through: the raw logit for MSE,
    /// the sigmoid for every other one-logit loss (BCE, and ranking losses, whose scores are
    /// only ordered, so the sigmoid changes no ranking metric).
    pub fn for_loss(loss: &str) -> Self {
        if loss == "mse" {
            HeadActivation::Identity
        } else {
            HeadActivation::Sigmoid
        }
    }
}

/// The activation recorded in model or adapter directory `dir`, if any. A recorded
/// activation tsumugi cannot apply is an error naming the file.
pub fn read(dir: &Path) -> Result<Option<HeadActivation>> {
    let parse = |file: &Path, path: &str| {
        HeadActivation::from_class_path(path)
            .map(Some)
            .with_context(|| {
                format!(
                    "{}: activation_fn {path:?} is not one tsumugi applies (expected {} or {})",
                    file.display(),
                    HeadActivation::Identity.class_path(),
                    HeadActivation::Sigmoid.class_path()
                )
            })
    };
    let st = dir.join(ST_CONFIG_FILE);
    if let Some(v) = read_json(&st)? {
        match v.get("activation_fn") {
            Some(Value::String(p)) => return parse(&st, p),
            Some(Value::Null) | None => {}
            Some(other) => bail!(
                "{}: activation_fn must be a class path string, found {other}",
                st.display()
            ),
        }
    }
    let config = dir.join("config.json");
    if let Some(v) = read_json(&config)? {
        let path = v
            .get("sentence_transformers")
            .and_then(|s| s.get("activation_fn"))
            .or_else(|| v.get("sbert_ce_default_activation_function"))
            .and_then(Value::as_str);
        if let Some(p) = path {
            return parse(&config, p);
        }
    }
    Ok(None)
}

/// The activation of an adapter over a base model: the adapter's record, else the base's.
pub fn resolve(base: &Path, adapter: Option<&Path>) -> Result<Option<HeadActivation>> {
    if let Some(a) = adapter
        && let Some(act) = read(a)?
    {
        return Ok(Some(act));
    }
    read(base)
}

/// Records `act` in `dir`'s `config_sentence_transformers.json`, keeping what else the
/// file holds (atomic write).
pub fn write(dir: &Path, act: HeadActivation) -> Result<()> {
    let path = dir.join(ST_CONFIG_FILE);
    let mut v = read_json(&path)?.unwrap_or_else(|| json!({"model_type": "CrossEncoder"}));
    let Some(obj) = v.as_object_mut() else {
        bail!("{}: expected a JSON object", path.display());
    };
    obj.insert("activation_fn".into(), json!(act.class_path()));
    let mut text = serde_json::to_string_pretty(&v).expect("JSON value");
    text.push('\n');
    tsumugi_base::atomic::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .with_context(|| format!("{}: not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_other_settings_and_reads_older_places() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(d.path()).expect("read"), None);
        std::fs::write(
            d.path().join(ST_CONFIG_FILE),
            r#"{"model_type": "CrossEncoder", "prompts": {}}"#,
        )
        .expect("write");
        write(d.path(), HeadActivation::Sigmoid).expect("write");
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join(ST_CONFIG_FILE)).expect("read"),
        )
        .expect("json");
        assert_eq!(v["prompts"], json!({}));
        assert_eq!(v["activation_fn"], "torch.nn.modules.activation.Sigmoid");
        assert_eq!(read(d.path()).expect("read"), Some(HeadActivation::Sigmoid));

        let old = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            old.path().join("config.json"),
            r#"{"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}"#,
        )
        .expect("write");
        assert_eq!(
            read(old.path()).expect("read"),
            Some(HeadActivation::Identity)
        );
        // The adapter's record wins over the base's.
        assert_eq!(
            resolve(old.path(), Some(d.path())).expect("resolve"),
            Some(HeadActivation::Sigmoid)
        );
    }

    #[test]
    fn an_unknown_activation_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            d.path().join(ST_CONFIG_FILE),
            r#"{"activation_fn": "torch.nn.modules.activation.Tanh"}"#,
        )
        .expect("write");
        let e = format!("{:#}", read(d.path()).expect_err("Tanh"));
        assert!(e.contains(ST_CONFIG_FILE) && e.contains("Tanh"), "{e}");
    }

    #[test]
    fn mse_predicts_the_logit_other_losses_the_sigmoid() {
        assert_eq!(HeadActivation::for_loss("mse"), HeadActivation::Identity);
        assert_eq!(HeadActivation::for_loss("bce"), HeadActivation::Sigmoid);
        assert!((HeadActivation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-12);
        assert_eq!(HeadActivation::Identity.apply(-3.0), -3.0);
    }
}
