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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

use crate::error::{MlError, Result};
use crate::lora::{LAYER_LINEARS, LoraLinear, LoraModel, LoraSettings, encoder_layers};
use crate::models::{Architecture, CrossEncoder, LoadOptions, ModelDir};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// Writes `bytes` to `path` atomically (see [`crate::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tsumugi_base::atomic::write_atomic_io(path, bytes).map_err(|e| MlError::io(path, e))
}

/// f32 values of a tensor, row-major.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .expect("f32 data after convert")
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// The PEFT module-name prefix of the encoder (`bert.` / `roberta.`).
fn arch_prefix(arch: Architecture) -> &'static str {
    arch.prefix()
}

/// Named f32 tensors in PyTorch layout, for safetensors.
#[derive(Default)]
pub struct TensorSet(pub BTreeMap<String, (Vec<usize>, Vec<f32>)>);

impl TensorSet {
    /// A burn `[in, out]` matrix saved as PyTorch `[out, in]`.
    pub fn matrix<B: Backend>(&mut self, key: String, t: Tensor<B, 2>) {
        let [i, o] = t.dims();
        self.0
            .insert(key, (vec![o, i], transpose(&values(t), i, o)));
    }

    pub fn vector<B: Backend>(&mut self, key: String, t: Tensor<B, 1>) {
        let [n] = t.dims();
        self.0.insert(key, (vec![n], values(t)));
    }

    pub fn linear<B: Backend>(&mut self, key: &str, l: &Linear<B>) {
        self.matrix(format!("{key}.weight"), l.weight.val());
        if let Some(b) = &l.bias {
            self.vector(format!("{key}.bias"), b.val());
        }
    }

    /// safetensors bytes (keys sorted, so the same tensors give the same bytes).
    pub fn to_bytes(
        &self,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .0
            .iter()
            .map(|(k, (shape, v))| {
                (
                    k.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    shape.clone(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, b, s)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| MlError::Input(format!("safetensors: {e}")))?;
        safetensors::serialize(views, metadata)
            .map_err(|e| MlError::Input(format!("safetensors: {e}")))
    }

    /// Reads a safetensors file (f32, f16, bf16 or f64 tensors as f32).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| MlError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| MlError::Weights {
            path: path.into(),
            message: format!("not a safetensors file: {e}"),
        })?;
        let mut out = TensorSet::default();
        for (name, view) in st.tensors() {
            let data = view.data();
            let v: Vec<f32> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(MlError::Weights {
                        path: path.into(),
                        message: format!("{name}: dtype {other:?}, expected a float type"),
                    });
                }
            };
            out.0.insert(name, (view.shape().to_vec(), v));
        }
        Ok(out)
    }

    /// Removes `key`, checking its PyTorch shape; returns burn's layout (matrices transposed).
    fn take(&mut self, path: &Path, key: &str, torch_shape: &[usize]) -> Result<Vec<f32>> {
        let (shape, v) = self.0.remove(key).ok_or_else(|| MlError::Weights {
            path: path.into(),
            message: format!("missing tensor {key}"),
        })?;
        if shape != torch_shape {
            return Err(MlError::Weights {
                path: path.into(),
                message: format!("{key}: expected shape {torch_shape:?}, found {shape:?}"),
            });
        }
        Ok(match torch_shape {
            [o, i] => transpose(&v, *o, *i),
            _ => v,
        })
    }
}

/// The PEFT key of LoRA slot `slot` of layer `layer`, without `.lora_A.weight`.
fn lora_key(arch: Architecture, layer: usize, slot: usize) -> String {
    format!(
        "{PREFIX}{}.encoder.layer.{layer}.{}",
        arch_prefix(arch),
        LAYER_LINEARS[slot]
    )
}

/// `modules_to_save` as PEFT names them: the head, and the pooler when trained.
fn modules_to_save(settings: &LoraSettings, arch: Architecture) -> Vec<&'static str> {
    let mut m = vec!["classifier"];
    if settings.train_pooler && arch == Architecture::Bert {
        m.push("pooler");
    }
    m
}

/// PEFT's `adapter_config.json` for these settings.
pub fn adapter_config(settings: &LoraSettings, arch: Architecture, base_model: &str) -> Value {
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
        "modules_to_save": modules_to_save(settings, arch),
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
pub fn adapter_tensors<B: Backend>(
    model: &LoraModel<B>,
    settings: &LoraSettings,
    arch: Architecture,
) -> TensorSet {
    let mut set = TensorSet::default();
    for (i, layer) in model.layers.iter().enumerate() {
        for s in 0..LAYER_LINEARS.len() {
            if let Some(l) = layer.slot(s) {
                let key = lora_key(arch, i, s);
                set.matrix(format!("{key}.lora_A.weight"), l.a.val());
                set.matrix(format!("{key}.lora_B.weight"), l.b.val());
            }
        }
    }
    match &model.base {
        CrossEncoder::Bert(m) => {
            set.linear(&format!("{PREFIX}classifier"), &m.classifier);
            if settings.train_pooler {
                set.linear(&format!("{PREFIX}bert.pooler.dense"), &m.pooler.dense);
            }
        }
        CrossEncoder::Roberta(m) => {
            set.linear(&format!("{PREFIX}classifier.dense"), &m.classifier.dense);
            set.linear(
                &format!("{PREFIX}classifier.out_proj"),
                &m.classifier.out_proj,
            );
        }
    }
    set
}

/// Saves `model`'s adapter into `dir` (created if needed) in PEFT's format.
pub fn save_adapter<B: Backend>(
    model: &LoraModel<B>,
    settings: &LoraSettings,
    arch: Architecture,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    let bytes = adapter_tensors(model, settings, arch)
        .to_bytes(Some([("format".to_string(), "pt".to_string())].into()))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let config = serde_json::to_string_pretty(&adapter_config(settings, arch, base_model))
        .expect("JSON value");
    write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())
}

/// `adapter_config.json` read back into LoRA settings; what tsumugi cannot reproduce
/// (DoRA, LoRA biases, per-module ranks, regex targets, …) is an error naming the key.
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
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(bad(format!(
                "peft_type: expected \"LORA\", found {other:?}"
            )));
        }
    }
    let truthy = |k: &str| get(k).and_then(Value::as_bool).unwrap_or(false);
    for k in ["use_dora", "fan_in_fan_out", "lora_bias"] {
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
    let r = get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("r: expected a positive integer".into()))? as usize;
    let alpha = get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("lora_alpha: expected a number".into()))?;
    let dropout = get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
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
        train_pooler: saved
            .iter()
            .any(|m| *m == "pooler" || m.ends_with(".pooler")),
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
    };
    let (base, _) = CrossEncoder::<B>::load(model_dir, &opts, device)?;
    let arch = model_dir.architecture;
    let mut model = LoraModel::new(base, &settings, 0, device)?;
    let n_layers = encoder_layers(&model.base).len();
    for i in 0..n_layers {
        for s in 0..LAYER_LINEARS.len() {
            let Some(old) = model.layers[i].slot(s) else {
                continue;
            };
            let [d_in, r] = old.a.dims();
            let [_, d_out] = old.b.dims();
            let key = lora_key(arch, i, s);
            let a = tensors.take(&path, &format!("{key}.lora_A.weight"), &[r, d_in])?;
            let b = tensors.take(&path, &format!("{key}.lora_B.weight"), &[d_out, r])?;
            *model.layers[i].slot_mut(s) = Some(LoraLinear::from_values(
                Tensor::from_data(TensorData::new(a, [d_in, r]), device),
                Tensor::from_data(TensorData::new(b, [r, d_out]), device),
                &settings,
            ));
        }
    }
    let mut set_linear = |l: &mut Linear<B>, key: &str, required: bool| -> Result<()> {
        let [d_in, d_out] = l.weight.dims();
        let wk = format!("{PREFIX}{key}.weight");
        if !required && !tensors.0.contains_key(&wk) {
            return Ok(());
        }
        let w = tensors.take(&path, &wk, &[d_out, d_in])?;
        l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device));
        let bk = format!("{PREFIX}{key}.bias");
        if tensors.0.contains_key(&bk) {
            let b = tensors.take(&path, &bk, &[d_out])?;
            l.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [d_out]),
                device,
            )));
        }
        Ok(())
    };
    match &mut model.base {
        CrossEncoder::Bert(m) => {
            set_linear(&mut m.classifier, "classifier", true)?;
            set_linear(
                &mut m.pooler.dense,
                "bert.pooler.dense",
                settings.train_pooler,
            )?;
        }
        CrossEncoder::Roberta(m) => {
            set_linear(&mut m.classifier.dense, "classifier.dense", true)?;
            set_linear(&mut m.classifier.out_proj, "classifier.out_proj", true)?;
        }
    }
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
pub fn model_tensors<B: Backend>(model: &CrossEncoder<B>, arch: Architecture) -> TensorSet {
    use crate::models::bert::{BertEmbeddings, BertLayer};
    let mut set = TensorSet::default();
    let p = arch_prefix(arch);
    let norm = |set: &mut TensorSet, key: &str, n: &burn::nn::LayerNorm<B>| {
        set.vector(format!("{key}.weight"), n.gamma.val());
        if let Some(b) = &n.beta {
            set.vector(format!("{key}.bias"), b.val());
        }
    };
    let emb = |set: &mut TensorSet, e: &BertEmbeddings<B>| {
        for (name, t) in [
            ("word_embeddings", &e.word_embeddings),
            ("position_embeddings", &e.position_embeddings),
            ("token_type_embeddings", &e.token_type_embeddings),
        ] {
            let w = t.weight.val();
            let [n, d] = w.dims();
            set.0.insert(
                format!("{p}.embeddings.{name}.weight"),
                (vec![n, d], values(w)),
            );
        }
        norm(set, &format!("{p}.embeddings.LayerNorm"), &e.layer_norm);
    };
    let layers = |set: &mut TensorSet, layers: &[BertLayer<B>]| {
        for (i, l) in layers.iter().enumerate() {
            let k = format!("{p}.encoder.layer.{i}");
            for (s, name) in LAYER_LINEARS.iter().enumerate() {
                set.linear(&format!("{k}.{name}"), crate::lora::layer_linear(l, s));
            }
            norm(
                set,
                &format!("{k}.attention.output.LayerNorm"),
                &l.attention.output.layer_norm,
            );
            norm(set, &format!("{k}.output.LayerNorm"), &l.output.layer_norm);
        }
    };
    match model {
        CrossEncoder::Bert(m) => {
            emb(&mut set, &m.bert.embeddings);
            layers(&mut set, &m.bert.encoder.layer);
            set.linear(&format!("{p}.pooler.dense"), &m.pooler.dense);
            set.linear("classifier", &m.classifier);
        }
        CrossEncoder::Roberta(m) => {
            emb(&mut set, &m.roberta.embeddings);
            layers(&mut set, &m.roberta.encoder.layer);
            set.linear("classifier.dense", &m.classifier.dense);
            set.linear("classifier.out_proj", &m.classifier.out_proj);
        }
    }
    set
}
