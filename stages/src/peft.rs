//! LoRA adapters in Hugging Face PEFT's on-disk format.
//!
//! A PEFT adapter directory holds `adapter_config.json` (PEFT's `LoraConfig`) and
//! `adapter_model.safetensors`. The tensor keys are what `get_peft_model_state_dict`
//! writes for a `PeftModelForSequenceClassification`: the module path under
//! `base_model.model.` with the adapter name (`default`) removed, e.g.
//!
//! - `base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight` `[r, in]`
//! - `base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight` `[out, r]`
//! - `base_model.model.classifier.weight` / `.bias` (the head, PEFT `modules_to_save`:
//!   saved as `classifier.modules_to_save.default.weight` with `modules_to_save.default.`
//!   dropped); RoBERTa's head is `classifier.dense.*` + `classifier.out_proj.*`;
//! - `base_model.model.bert.pooler.dense.weight` / `.bias` when the pooler was trained.
//!
//! Weights are PyTorch `[out, in]`; burn's are `[in, out]`, so every matrix is transposed
//! on the way in and out. Files are written atomically (temporary file, fsync, rename).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::{Value, json};

use crate::error::{MlError, Result};
use crate::lora::{AdapterLinear, LoraLinear, LoraModel, LoraSettings};
pub use crate::models::tensors::{TensorSet, transpose, values};
use crate::models::{CrossEncoder, LoadOptions, ModelDir, SequenceClassifier};
use crate::oft::{OftLinear, OftSettings, Rotation};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// Writes `bytes` to `path` atomically (see [`crate::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tsumugi_base::atomic::write_atomic_io(path, bytes).map_err(|e| MlError::io(path, e))
}

/// The PEFT key of LoRA slot `slot` of layer `layer`, without `.lora_A.weight`.
fn lora_key<B: Backend>(model: &CrossEncoder<B>, layer: usize, slot: usize) -> String {
    format!(
        "{PREFIX}{}.{}",
        model.layer_path(layer),
        model.layer_linears()[slot]
    )
}

/// PEFT's `adapter_config.json` for these settings.
pub fn adapter_config<B: Backend>(
    settings: &LoraSettings,
    model: &CrossEncoder<B>,
    base_model: &str,
) -> Value {
    let modules_to_save = model.modules_to_save(settings.train_pooler);
    if let Some(oft) = &settings.oft {
        let (neumann, terms) = match oft.rotation {
            Rotation::Cayley { terms } => (true, terms),
            Rotation::Exp => (false, 5),
        };
        let mut config = json!({
            "auto_mapping": null,
            "base_model_name_or_path": base_model,
            "bias": "none",
            "block_share": false,
            "coft": false,
            "eps": 6e-05,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "module_dropout": 0.0,
            "modules_to_save": modules_to_save,
            "num_cayley_neumann_terms": terms,
            "oft_block_size": oft.block_size,
            "peft_type": "OFT",
            "r": 0,
            "revision": null,
            "target_modules": settings.targets,
            "task_type": "SEQ_CLS",
            "use_cayley_neumann": neumann,
        });
        if oft.rotation == Rotation::Exp {
            // PEFT has no exponential rotation; the key tells tsumugi (and a reader) that
            // PEFT's Cayley reading of these weights is not what was trained.
            config["tsumugi_rotation"] = json!("exp");
        }
        return config;
    }
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "modules_to_save": modules_to_save,
        "peft_type": "LORA",
        "r": settings.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": settings.targets,
        "task_type": "SEQ_CLS",
        "use_dora": false,
        "use_rslora": settings.rslora,
    })
}

/// The adapter's tensors under PEFT's key names.
pub fn adapter_tensors<B: Backend>(model: &LoraModel<B>, settings: &LoraSettings) -> TensorSet {
    let mut set = TensorSet::default();
    for (i, s, adapter) in model.paths() {
        let key = lora_key(&model.base, i, s);
        match adapter {
            AdapterLinear::Lora(l) => {
                set.matrix(format!("{key}.lora_A.weight"), l.a.val());
                set.matrix(format!("{key}.lora_B.weight"), l.b.val());
            }
            // `[blocks, n]` in both layouts: not a linear's weight, not transposed.
            AdapterLinear::Oft(o) => {
                let w = o.weight.val();
                set.0.insert(
                    format!("{key}.oft_R.weight"),
                    (w.dims().to_vec(), values(w)),
                );
            }
        }
    }
    model
        .base
        .head_tensors(settings.train_pooler, &mut set, PREFIX);
    set
}

/// Saves `model`'s adapter into `dir` (created if needed) in PEFT's format.
pub fn save_adapter<B: Backend>(
    model: &LoraModel<B>,
    settings: &LoraSettings,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    let bytes = adapter_tensors(model, settings)
        .to_bytes(Some([("format".to_string(), "pt".to_string())].into()))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let config = serde_json::to_string_pretty(&adapter_config(settings, &model.base, base_model))
        .expect("JSON value");
    write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())
}

/// `adapter_config.json` read back into LoRA settings; what tsumugi cannot reproduce
/// (DoRA, LoRA biases, per-module ranks, regex targets, …) is an error naming the key.
/// The targets are checked against the model when the adapter is applied to one.
pub fn read_adapter_config(dir: &Path) -> Result<LoraSettings> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| MlError::io(&path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    let bad = |message: String| MlError::Config {
        path: path.clone(),
        message,
    };
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let is_oft = match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => false,
        Some("OFT") => true,
        other => {
            return Err(bad(format!(
                "peft_type: expected \"LORA\" or \"OFT\", found {other:?}"
            )));
        }
    };
    let truthy = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
    for k in [
        "use_dora",
        "fan_in_fan_out",
        "lora_bias",
        "coft",
        "block_share",
    ] {
        if truthy(k) {
            return Err(bad(format!("{k}: true is not supported")));
        }
    }
    if let Some(b) = get("bias").and_then(Value::as_str)
        && b != "none"
    {
        return Err(bad(format!(
            "bias: {b:?} is not supported (expected \"none\")"
        )));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k)
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
        {
            return Err(bad(format!(
                "{k}: per-module ranks/alphas are not supported"
            )));
        }
    }
    if get("layers_to_transform").is_some() {
        return Err(bad("layers_to_transform is not supported".into()));
    }
    let (r, alpha, dropout, oft) = if is_oft {
        (0, 0.0, 0.0, Some(read_oft_config(&v, &bad)?))
    } else {
        let r = get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("r: expected a positive integer".into()))? as usize;
        let alpha = get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("lora_alpha: expected a number".into()))?;
        let dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        (r, alpha, dropout, None)
    };
    let targets = match get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("target_modules: expected strings".into()))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Value::String(s)) => {
            return Err(bad(format!(
                "target_modules: a regular expression ({s:?}) is not supported; give a list"
            )));
        }
        _ => return Err(bad("target_modules: expected a list of module names".into())),
    };
    let saved: Vec<&str> = get("modules_to_save")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let settings = LoraSettings {
        r,
        alpha,
        dropout,
        targets,
        rslora: truthy("use_rslora"),
        // `head` is ModernBERT's pooler (dense + norm before the classifier).
        train_pooler: saved
            .iter()
            .any(|m| *m == "pooler" || m.ends_with(".pooler") || *m == "head"),
        oft,
    };
    Ok(settings)
}

/// The OFT part of an `adapter_config.json` (`peft_type: OFT`): the block-size form
/// (`r: 0`, PEFT's default) with the Cayley–Neumann rotation, or tsumugi's `exp`.
fn read_oft_config(v: &Value, bad: &dyn Fn(String) -> MlError) -> Result<OftSettings> {
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if get("r").and_then(Value::as_u64).is_some_and(|r| r != 0) {
        return Err(bad(
            "r: OFT by number of blocks is not supported; give oft_block_size with r: 0".into(),
        ));
    }
    let block_size = get("oft_block_size")
        .and_then(Value::as_u64)
        .filter(|&b| b >= 2)
        .ok_or_else(|| bad("oft_block_size: expected an integer ≥ 2".into()))?
        as usize;
    let exp = get("tsumugi_rotation").and_then(Value::as_str) == Some("exp");
    let neumann = get("use_cayley_neumann")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let rotation = if exp {
        Rotation::Exp
    } else if neumann {
        let terms = get("num_cayley_neumann_terms")
            .and_then(Value::as_u64)
            .unwrap_or(5) as usize;
        Rotation::Cayley { terms }
    } else {
        return Err(bad(
            "use_cayley_neumann: false (the exact Cayley transform) is not supported; \
             tsumugi computes PEFT's default Neumann series"
                .into(),
        ));
    };
    let settings = OftSettings {
        block_size,
        rotation,
    };
    settings.validate().map_err(|e| bad(e.to_string()))?;
    Ok(settings)
}

/// The number of labels of the head stored in an adapter (`classifier.weight` or
/// `classifier.out_proj.weight` rows), if it has one.
pub fn adapter_num_labels(tensors: &TensorSet) -> Option<usize> {
    ["classifier.weight", "classifier.out_proj.weight"]
        .iter()
        .find_map(|k| tensors.0.get(&format!("{PREFIX}{k}")).map(|(s, _)| s[0]))
}

/// Loads the base model in `model_dir` and the PEFT adapter in `adapter_dir` onto
/// `device`. The head comes from the adapter (a base without one gets it from there).
/// Every tensor of the adapter must be used; a missing or unknown one is an error.
pub fn load_adapter<B: Backend>(
    model_dir: &ModelDir,
    adapter_dir: &Path,
    device: &B::Device,
) -> Result<(LoraModel<B>, LoraSettings)> {
    let settings = read_adapter_config(adapter_dir)?;
    let path: PathBuf = adapter_dir.join(WEIGHTS_FILE);
    let mut tensors = TensorSet::read(&path)?;
    let opts = LoadOptions {
        num_labels: adapter_num_labels(&tensors),
        init_missing_head: true,
        init_seed: 0,
    };
    let (base, _) = CrossEncoder::<B>::load(model_dir, &opts, device)?;
    let bad_targets = |e: MlError| MlError::Config {
        path: adapter_dir.join(CONFIG_FILE),
        message: e.to_string(),
    };
    let mut model = LoraModel::new(base, &settings, 0, device).map_err(bad_targets)?;
    for i in 0..model.layers.len() {
        for s in 0..model.layers[i].slots.len() {
            let key = lora_key(&model.base, i, s);
            let loaded = match &model.layers[i].slots[s] {
                None => continue,
                Some(AdapterLinear::Lora(old)) => {
                    let [d_in, r] = old.a.dims();
                    let [_, d_out] = old.b.dims();
                    let a = tensors.take(&path, &format!("{key}.lora_A.weight"), &[r, d_in])?;
                    let b = tensors.take(&path, &format!("{key}.lora_B.weight"), &[d_out, r])?;
                    AdapterLinear::Lora(LoraLinear::from_values(
                        Tensor::from_data(TensorData::new(a, [d_in, r]), device),
                        Tensor::from_data(TensorData::new(b, [r, d_out]), device),
                        &settings,
                    ))
                }
                Some(AdapterLinear::Oft(old)) => {
                    let shape = old.weight.dims();
                    let w =
                        tensors.take_as_stored(&path, &format!("{key}.oft_R.weight"), &shape)?;
                    let oft = settings
                        .oft
                        .as_ref()
                        .expect("OFT slots come from OFT settings");
                    AdapterLinear::Oft(OftLinear::from_values(
                        Tensor::from_data(TensorData::new(w, shape), device),
                        oft,
                    ))
                }
            };
            model.layers[i].slots[s] = Some(loaded);
        }
    }
    model
        .base
        .load_head(settings.train_pooler, &mut tensors, &path, PREFIX, device)?;
    if !tensors.0.is_empty() {
        let left: Vec<&str> = tensors.0.keys().map(String::as_str).collect();
        return Err(MlError::Weights {
            path,
            message: format!(
                "{} tensor(s) that match no LoRA target or head of this model: {}",
                left.len(),
                left.join(", ")
            ),
        });
    }
    // Re-freeze: the head linears were replaced by trainable params above, which is what
    // training wants; the base stays frozen as `LoraModel::new` left it.
    Ok((model, settings))
}

/// Every weight of `model` under Hugging Face's key names (`bert.embeddings.…`,
/// `classifier.…`) in PyTorch layout: a full `model.safetensors` for transformers.
pub fn model_tensors<B: Backend>(model: &CrossEncoder<B>) -> TensorSet {
    let mut set = TensorSet::default();
    model.model_tensors(&mut set);
    set
}
