//! `tsumugi models check DIR`: what a checkpoint directory is and whether tsumugi loads it.
//!
//! Nothing here re-implements loading: the verdict comes from running the real loaders
//! (`ModelConfig`, `CrossEncoder::load` on the CPU backend, `PairTokenizer::for_model`), so
//! "loads" means `score`, `evaluate` and `train-lora` will get past loading too. What the
//! loaders cannot say (the transformers class, the tokenizer files present, a missing
//! head) is read from the directory's JSON files around them.

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde::Serialize;
use serde_json::Value;

use super::{CrossEncoder, LoadOptions, ModelDir, SequenceClassifier};
use crate::device::CpuBackend;
use crate::tokenize::{PairTokenizer, Truncation};

/// What `models check` found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub path: PathBuf,
    /// `model_type` of config.json.
    pub model_type: Option<String>,
    /// `architectures` of config.json (the transformers classes it was saved from).
    pub architectures: Vec<String>,
    /// tsumugi's architecture, when supported.
    pub architecture: Option<String>,
    /// Which tokenizer the directory carries and how tsumugi reads it.
    pub tokenizer: String,
    /// The classification head: labels and whether the weights hold one.
    pub head: String,
    /// Weight files and their total size.
    pub weights: Vec<String>,
    pub weight_bytes: u64,
    /// Parameters of the loaded model (when it loaded).
    pub parameters: Option<usize>,
    /// The linears an adapter may target (PEFT names, relative to a layer).
    pub adapter_targets: Vec<String>,
    /// True when the model and its tokenizer load.
    pub loads: bool,
    /// Why not, or what to know (each a full sentence naming the file).
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Inspects `dir`; never fails: every problem is a line of the report.
pub fn check(dir: &Path) -> CheckReport {
    let mut r = CheckReport {
        path: dir.to_path_buf(),
        model_type: None,
        architectures: Vec::new(),
        architecture: None,
        tokenizer: tokenizer_files(dir),
        head: "unknown".into(),
        weights: Vec::new(),
        weight_bytes: 0,
        parameters: None,
        adapter_targets: Vec::new(),
        loads: false,
        problems: Vec::new(),
        notes: Vec::new(),
    };
    weight_files(dir, &mut r);
    let config_path = dir.join("config.json");
    match std::fs::read_to_string(&config_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => {
            r.model_type = v["model_type"].as_str().map(str::to_string);
            r.architectures = v["architectures"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
        }
        Err(e) => {
            r.problems
                .push(format!("{}: cannot read: {e}", config_path.display()));
            return r;
        }
    }
    if r.model_type.as_deref() == Some("qwen2_vl") {
        check_qwen2_vl(dir, &mut r);
        return r;
    }
    let model_dir = match ModelDir::open(dir) {
        Ok(d) => d,
        Err(e) => {
            r.problems.push(e.to_string());
            return r;
        }
    };
    r.architecture = Some(format!("{:?}", model_dir.architecture));
    r.adapter_targets = model_dir
        .architecture
        .layer_linears()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let opts = LoadOptions {
        num_labels: None,
        init_missing_head: true,
        init_seed: 0,
    };
    let model_ok = match CrossEncoder::<CpuBackend>::load(&model_dir, &opts, &Default::default()) {
        Ok((model, report)) => {
            r.parameters = Some(model.num_params());
            let labels = model.num_labels();
            r.head = if report.initialized.is_empty() {
                format!("sequence classification, {labels} label(s), trained head in the weights")
            } else {
                r.notes.push(format!(
                    "no classification head in the weights ({}): train-lora trains one; \
                     score and evaluate need that adapter",
                    report.initialized.join(", ")
                ));
                format!("none in the weights (a base encoder); config says {labels} label(s)")
            };
            if !report.unused.is_empty() {
                r.notes.push(format!(
                    "{} weight(s) the model does not use (e.g. {})",
                    report.unused.len(),
                    report.unused[0]
                ));
            }
            true
        }
        Err(e) => {
            r.problems.push(e.to_string());
            false
        }
    };
    let tokenizer_ok = match PairTokenizer::for_model(&model_dir, 512, Truncation::LongestFirst) {
        Ok(_) => true,
        Err(e) => {
            r.problems.push(e.to_string());
            false
        }
    };
    r.loads = model_ok && tokenizer_ok;
    r
}

/// A Qwen2-VL checkpoint: not a cross-encoder, so it is said what it is for rather than
/// refused; whether it loads comes from the captioner's own loader.
fn check_qwen2_vl(dir: &Path, r: &mut CheckReport) {
    r.architecture = Some("Qwen2VL".into());
    r.head = super::qwen2_vl::CHECK_SENTENCE.into();
    r.notes.push(format!(
        "{}; caption-images reads it with `method: vlm` and `model: {}`",
        super::qwen2_vl::CHECK_SENTENCE,
        dir.display()
    ));
    match super::qwen2_vl::Qwen2VlCaptioner::<CpuBackend>::load(dir, &Default::default()) {
        Ok(cap) => {
            r.parameters = Some(cap.model.num_params());
            r.loads = true;
        }
        Err(e) => r.problems.push(e.to_string()),
    }
}

/// The tokenizer the directory carries, by its files.
fn tokenizer_files(dir: &Path) -> String {
    let config: Option<Value> = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let class = config
        .as_ref()
        .and_then(|c| c["tokenizer_class"].as_str())
        .map(str::to_string);
    let has = |f: &str| dir.join(f).is_file();
    let mut s = if has("tokenizer.json") {
        "tokenizer.json (a fast tokenizer)".to_string()
    } else if has("vocab.txt") {
        "vocab.txt (no tokenizer.json)".to_string()
    } else if has("spm.model") || has("sentencepiece.bpe.model") {
        "a SentencePiece model only (no tokenizer.json)".to_string()
    } else {
        "no tokenizer files".to_string()
    };
    if let Some(c) = class {
        s.push_str(&format!(", tokenizer_class {c}"));
        if let Some(cfg) = &config
            && let Some(w) = cfg["word_tokenizer_type"].as_str()
        {
            let sub = cfg["subword_tokenizer_type"]
                .as_str()
                .unwrap_or("wordpiece");
            let dic = cfg["mecab_kwargs"]["mecab_dic"]
                .as_str()
                .unwrap_or("unidic_lite");
            s.push_str(&format!(" ({w} {dic} + {sub})"));
        }
    }
    s
}

fn weight_files(dir: &Path, r: &mut CheckReport) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        r.problems
            .push(format!("{}: not a readable directory", dir.display()));
        return;
    };
    let mut names: Vec<(String, u64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let weights = name.ends_with(".safetensors")
                || name.ends_with(".bin")
                || name.ends_with(".pt")
                || name.ends_with(".gguf");
            weights.then(|| (name, e.metadata().map(|m| m.len()).unwrap_or(0)))
        })
        .collect();
    names.sort();
    if !names.iter().any(|(n, _)| n.ends_with(".safetensors")) && !names.is_empty() {
        r.notes.push(
            "only non-safetensors weights: tsumugi reads safetensors (convert with \
             transformers: model.save_pretrained(dir, safe_serialization=True))"
                .into(),
        );
    }
    r.weight_bytes = names.iter().map(|(_, n)| n).sum();
    r.weights = names.into_iter().map(|(n, _)| n).collect();
}

impl CheckReport {
    /// The report as lines for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<15} {v}\n"));
        line("model", &self.path.display().to_string());
        line(
            "model_type",
            &format!(
                "{} ({})",
                self.model_type.as_deref().unwrap_or("?"),
                if self.architectures.is_empty() {
                    "no architectures listed".to_string()
                } else {
                    self.architectures.join(", ")
                }
            ),
        );
        line(
            "architecture",
            self.architecture.as_deref().unwrap_or("not supported"),
        );
        line("tokenizer", &self.tokenizer);
        line("head", &self.head);
        line(
            "weights",
            &format!(
                "{} ({:.1} MB)",
                if self.weights.is_empty() {
                    "none".to_string()
                } else {
                    self.weights.join(", ")
                },
                self.weight_bytes as f64 / 1e6
            ),
        );
        if let Some(p) = self.parameters {
            let shown = if p < 10_000_000 {
                p.to_string()
            } else {
                format!("{:.1} M", p as f64 / 1e6)
            };
            line("parameters", &shown);
        }
        if !self.adapter_targets.is_empty() {
            line("adapter targets", &self.adapter_targets.join(", "));
        }
        line("loads", if self.loads { "yes" } else { "no" });
        for p in &self.problems {
            line("problem", p);
        }
        for n in &self.notes {
            line("note", n);
        }
        out
    }
}
