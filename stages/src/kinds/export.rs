//! `export`: a trained adapter as a deliverable.
//!
//! ```yaml
//! export:
//!   uses: export
//!   with:
//!     base: models/minilm-l6
//!     adapter: ${stages.train.outs.adapter}
//!     merge: true        # false (default): the PEFT adapter directory as is
//! ```
//! `merge: true` writes a full Hugging Face checkpoint (`config.json`, `model.safetensors`,
//! `tokenizer.json` and the base's other tokenizer files) with the LoRA deltas merged into
//! the weights and the trained head, which `AutoModelForSequenceClassification` loads
//! without PEFT (`scripts/check_export.py` checks that). The output also holds
//! `export.json`: an identifier (FNV-1a 64 + length) of the adapter weights it came from, the version of the
//! export, so exported models can be told apart and traced back.

// Without `ml` only the descriptor and the `with:` parsing are compiled.
#![cfg_attr(not(feature = "ml"), allow(dead_code, unused_imports))]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::train_lora::{out, parse, resolve, write_json};
use crate::kinds::{KindInfo, SettingsInfo};

pub struct Export;

pub const INFO: KindInfo = KindInfo {
    name: "export",
    // 2: the head's activation goes with the export (config_sentence_transformers.json).
    version: 2,
    summary: "a LoRA adapter as a PEFT directory, or merged into a full Hugging Face checkpoint",
    input_fields: &["base", "adapter"],
    outputs: &[("model", "model")],
    metrics: None,
    per_item: false,
    settings: SettingsInfo::of::<Config>(),
};

/// `with:` of `export`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "ml"), allow(dead_code))]
pub(crate) struct Config {
    /// The base model the adapter was trained on (Hugging Face directory).
    base: PathBuf,
    /// train-lora's adapter.
    adapter: PathBuf,
    /// true: a full Hugging Face checkpoint with the LoRA deltas merged in; false: the PEFT
    /// adapter directory as is.
    #[serde(default)]
    merge: bool,
    /// Class names for config.json (default: the adapter's labels.json).
    labels: Option<Vec<String>>,
}

impl Stage for Export {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let cfg: Config = parse(input, INFO.name)?;
        run(cfg, input, report)
    }
}

#[cfg(not(feature = "ml"))]
fn run(_: Config, input: &StageInput<'_>, _: &dyn Reporter) -> Result<()> {
    bail!(
        "stage {}: export needs a build with the `ml` feature",
        input.name
    )
}

fn content_id(bytes: &[u8]) -> String {
    // The engine hashes with sha2; the stages crate has no hashing dependency of its own,
    // so the adapter is identified by FNV-1a 64 of its bytes plus its length instead.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}:{}", bytes.len())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    tsumugi_base::atomic::write_atomic(to, &bytes)
}

#[cfg(feature = "ml")]
fn run(cfg: Config, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
    use crate::device::CpuBackend;
    use crate::models::{ModelDir, SequenceClassifier};
    use crate::peft::{CONFIG_FILE, WEIGHTS_FILE};

    let root = input.project_root;
    let base = resolve(root, &cfg.base);
    let adapter = resolve(root, &cfg.adapter);
    let dest = out(input, "model")?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let weights = std::fs::read(adapter.join(WEIGHTS_FILE))
        .with_context(|| format!("reading {}", adapter.join(WEIGHTS_FILE).display()))?;
    let id = content_id(&weights);
    if !cfg.merge {
        for f in [
            CONFIG_FILE,
            WEIGHTS_FILE,
            "labels.json",
            crate::head::ST_CONFIG_FILE,
        ] {
            if adapter.join(f).is_file() {
                copy(&adapter.join(f), &dest.join(f))?;
            }
        }
        write_json(
            &dest.join("export.json"),
            &json!({"kind": "adapter", "adapter": id, "export_version": INFO.version}),
        )?;
        return Ok(());
    }
    let dir = ModelDir::open(&base)?;
    let (model, settings) =
        crate::peft::load_adapter::<CpuBackend>(&dir, &adapter, &Default::default())
            .with_context(|| format!("stage {}: loading the adapter", input.name))?;
    report.progress(1, Some(3), "merging");
    let merged = model.merged();
    let tensors = crate::peft::model_tensors(&merged);
    let bytes = tensors.to_bytes(Some([("format".to_string(), "pt".to_string())].into()))?;
    tsumugi_base::atomic::write_atomic(&dest.join("model.safetensors"), &bytes)?;
    report.progress(2, Some(3), "config and tokenizer");

    // config.json: the base's, with the head's labels and the classification architecture.
    let cpath = base.join("config.json");
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(&cpath).with_context(|| format!("reading {}", cpath.display()))?,
    )
    .with_context(|| format!("{}: not JSON", cpath.display()))?;
    let k = merged.num_labels();
    let labels: Vec<String> = cfg
        .labels
        .clone()
        .or_else(|| {
            std::fs::read_to_string(adapter.join("labels.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        })
        .unwrap_or_else(|| (0..k).map(|i| format!("LABEL_{i}")).collect());
    if labels.len() != k {
        bail!(
            "stage {}: {} label names for a head of {k} outputs",
            input.name,
            labels.len()
        );
    }
    config["architectures"] = json!([dir.architecture.hf_class()]);
    config["id2label"] = Value::Object(
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), json!(l)))
            .collect(),
    );
    config["label2id"] = Value::Object(
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), json!(i)))
            .collect(),
    );
    if k == 1 {
        config["problem_type"] = json!("regression");
    }
    write_json(&dest.join("config.json"), &config)?;
    // sentence-transformers' CrossEncoder (and tsumugi score/serve) read the head's
    // activation from here: sigmoid for a BCE-trained head, identity after MSE.
    if k == 1
        && let Some(act) = crate::head::resolve(&base, Some(&adapter))?
    {
        crate::head::write(dest, act)?;
    }
    let mut copied = vec![];
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "sentencepiece.bpe.model",
        "spm.model",
    ] {
        if base.join(f).is_file() {
            copy(&base.join(f), &dest.join(f))?;
            copied.push(f);
        }
    }
    // Japanese BERTs have no tokenizer.json: vocab.txt + tokenizer_config.json are theirs.
    if !copied.contains(&"tokenizer.json") && !crate::tokenize::japanese::is_bert_japanese(&base) {
        bail!(
            "stage {}: {} has no tokenizer.json",
            input.name,
            base.display()
        );
    }
    write_json(
        &dest.join("export.json"),
        &json!({"kind": "merged", "adapter": id, "lora": settings, "export_version": INFO.version, "files": copied}),
    )?;
    report.progress(3, Some(3), "done");
    Ok(())
}
