//! LoRA and PEFT adapter files against Python PEFT, on the fixtures of
//! `scripts/make_lora_fixtures.py` (M's tiny BERT and RoBERTa models):
//! - a fresh LoRA (B = 0) leaves the logits unchanged;
//! - a PEFT adapter made in Python gives Python's logits here;
//! - merging gives the same logits as base + adapter, and unmerging restores the base;
//! - saving writes PEFT's keys and shapes, and loading what we saved gives the same model;
//! - the other direction (Python loading our adapter) is checked by
//!   `scripts/check_peft_adapter.py` on the directory `tsumugi_adapter_for_python` writes;
//! - the same for OFT adapters (`oft_*` tests, fixtures of `make_lora_fixtures.py oft`).
//!
//! The first three also run on wgpu (`--features wgpu`, the `wgpu::` tests).
#![cfg(feature = "ml")]

mod support;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use serde_json::Value;
use tsumugi_stages::lora::{AdapterLinear, LoraModel, LoraSettings};
use tsumugi_stages::models::{CrossEncoder, LoadOptions, ModelDir, ModelInput};
use tsumugi_stages::oft::{OftSettings, Rotation};
use tsumugi_stages::peft::{self, TensorSet};

type B = Flex;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    base: ModelDir,
    adapter: PathBuf,
    expected: Value,
}

fn case(name: &str) -> Case {
    case_of("lora", name)
}

fn case_of(kind: &str, name: &str) -> Case {
    let dir = fixtures().join(kind).join(name);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    Case {
        base: ModelDir::open(&fixtures().join(name)).unwrap(),
        adapter: dir.join("adapter"),
        expected,
    }
}

fn ints(v: &Value) -> (Vec<i64>, [usize; 2]) {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let shape = [rows.len(), rows[0].len()];
    (rows.concat(), shape)
}

fn input(c: &Case) -> ModelInput<B> {
    input_on::<B>(c, &Default::default())
}

fn input_on<X: Backend>(c: &Case, device: &X::Device) -> ModelInput<X> {
    let t = |k: &str| {
        let (v, s) = ints(&c.expected["inputs"][k]);
        Tensor::<X, 2, Int>::from_data(TensorData::new(v, s), device)
    };
    ModelInput {
        input_ids: t("input_ids"),
        attention_mask: t("attention_mask"),
        token_type_ids: c.expected["inputs"]
            .get("token_type_ids")
            .map(|_| t("token_type_ids")),
    }
}

fn floats(v: &Value) -> Vec<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    rows.concat()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn all_targets() -> LoraSettings {
    LoraSettings {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: ["query", "key", "value", "dense"]
            .map(String::from)
            .to_vec(),
        rslora: false,
        train_pooler: true,
        oft: None,
    }
}

support::on_backends! {
    fresh_lora_forward_equals_base_forward: fresh_lora_is_the_base();
    python_peft_adapter_gives_python_logits_and_merges: python_adapter_logits_and_merge();
    saved_adapter_has_peft_keys_and_loads_back: saved_adapter_loads_back();
}

fn fresh_lora_is_the_base<X: Backend>(d: &X::Device) {
    let backend = support::backend_name::<X>();
    for name in ["bert-1", "roberta-3"] {
        let c = case(name);
        let (base, _) = CrossEncoder::<X>::load(&c.base, &LoadOptions::default(), d).unwrap();
        let want = peft::values(base.forward(&input_on::<X>(&c, d)));
        let lora = LoraModel::new(base, &all_targets(), 3, d).unwrap();
        let got = peft::values(lora.forward(&input_on::<X>(&c, d)));
        let diff = max_diff(&got, &want);
        println!("{name} [{backend}]: fresh LoRA vs base max |Δ| = {diff:e}");
        assert!(diff <= 1e-6, "{name}: {diff}");
        // And A really is PEFT's Kaiming-uniform: within ±1/√in, not all zero.
        let a = peft::values(
            lora.layers[0].slots[0]
                .as_ref()
                .unwrap()
                .lora()
                .unwrap()
                .a
                .val(),
        );
        let bound = 1.0 / (32f32).sqrt();
        assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| x.abs() > bound / 2.0));
        assert!(
            peft::values(
                lora.layers[1].slots[5]
                    .as_ref()
                    .unwrap()
                    .lora()
                    .unwrap()
                    .b
                    .val()
            )
            .iter()
            .all(|x| *x == 0.0)
        );
    }
}

fn python_adapter_logits_and_merge<X: Backend>(d: &X::Device) {
    let backend = support::backend_name::<X>();
    for name in ["bert-1", "roberta-3", "deberta-v3-1", "deberta-v2-3"] {
        let c = case(name);
        let (lora, settings) = peft::load_adapter::<X>(&c.base, &c.adapter, d).unwrap();
        assert_eq!(settings.r, 4);
        let got = peft::values(lora.forward(&input_on::<X>(&c, d)));
        let want = floats(&c.expected["lora_logits"]);
        let diff = max_diff(&got, &want);
        println!("{name} [{backend}]: PEFT adapter, tsumugi vs PEFT logits max |Δ| = {diff:e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
        let base_logits = floats(&c.expected["base_logits"]);
        assert!(
            max_diff(&got, &base_logits) > 0.1,
            "the adapter should change the logits"
        );

        let merged = lora.merged();
        let m = peft::values(merged.forward(&input_on::<X>(&c, d)));
        let diff = max_diff(&m, &got);
        println!("{name} [{backend}]: merged vs base + adapter max |Δ| = {diff:e}");
        assert!(diff <= 1e-5, "{name}: merged {diff}");
        let unmerged = lora.unmerge(merged);
        let u = peft::values(unmerged.forward(&input_on::<X>(&c, d)));
        let (base, _) = CrossEncoder::<X>::load(
            &c.base,
            &LoadOptions {
                num_labels: None,
                init_missing_head: false,
                ..Default::default()
            },
            d,
        )
        .unwrap();
        // The unmerged model keeps the adapter's head: compare against base + zeroed LoRA.
        let zero = LoraModel {
            base: lora.base.clone(),
            layers: LoraModel::new(base, &settings, 0, d).unwrap().layers,
        };
        let diff = max_diff(&u, &peft::values(zero.forward(&input_on::<X>(&c, d))));
        println!("{name} [{backend}]: unmerged vs base (adapter head) max |Δ| = {diff:e}");
        assert!(diff <= 1e-5, "{name}: unmerge {diff}");
    }
}

fn saved_adapter_loads_back<X: Backend>(d: &X::Device) {
    let backend = support::backend_name::<X>();
    for name in ["bert-1", "roberta-3", "deberta-v3-1", "deberta-v2-3"] {
        let c = case(name);
        let (lora, settings) = peft::load_adapter::<X>(&c.base, &c.adapter, d).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        peft::save_adapter(&lora, &settings, "fixture", tmp.path()).unwrap();
        // Same keys, shapes and values as the Python-made file.
        let ours = TensorSet::read(&tmp.path().join(peft::WEIGHTS_FILE)).unwrap();
        let theirs = TensorSet::read(&c.adapter.join(peft::WEIGHTS_FILE)).unwrap();
        assert_eq!(
            ours.0.keys().collect::<Vec<_>>(),
            theirs.0.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (k, (s, v)) in &theirs.0 {
            assert_eq!(&ours.0[k].0, s, "{name} {k}");
            assert_eq!(&ours.0[k].1, v, "{name} [{backend}] {k}: values");
        }
        let (again, s2) = peft::load_adapter::<X>(&c.base, tmp.path(), d).unwrap();
        assert_eq!(s2, settings);
        let a = peft::values(lora.forward(&input_on::<X>(&c, d)));
        let b = peft::values(again.forward(&input_on::<X>(&c, d)));
        assert_eq!(a, b, "{name} [{backend}]: reloaded adapter");
    }
}

#[test]
fn adapter_errors_name_file_and_key() {
    let c = case("bert-1");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        c.adapter.join(peft::WEIGHTS_FILE),
        tmp.path().join(peft::WEIGHTS_FILE),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(c.adapter.join(peft::CONFIG_FILE)).unwrap();
    std::fs::write(
        tmp.path().join(peft::CONFIG_FILE),
        cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    let err = peft::load_adapter::<B>(&c.base, tmp.path(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("use_dora"),
        "{err}"
    );
    // An adapter for fewer targets than its file holds: the extra tensors are named.
    std::fs::write(
        tmp.path().join(peft::CONFIG_FILE),
        cfg.replace("\"key\",", ""),
    )
    .unwrap();
    let err = peft::load_adapter::<B>(&c.base, tmp.path(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("attention.self.key.lora_A.weight") && err.contains("match no LoRA target"),
        "{err}"
    );
}

/// Writes an adapter made by tsumugi (fresh LoRA on every linear, B and head perturbed by
/// a seeded rule) plus the logits tsumugi computes with it, for
/// `scripts/check_peft_adapter.py` to load with Python PEFT. Directory:
/// `$TSUMUGI_PEFT_CHECK_DIR` or a temporary one (then only the write path is exercised).
#[test]
fn tsumugi_adapter_for_python() {
    // BERT into `$TSUMUGI_PEFT_CHECK_DIR` itself, DeBERTa (the pooler trained too) into
    // its `deberta-v3-1/`.
    let deberta = LoraSettings {
        targets: ["query_proj", "key_proj", "value_proj", "output.dense"]
            .map(String::from)
            .to_vec(),
        ..all_targets()
    };
    for (name, sub, settings) in [
        ("bert-1", "", all_targets()),
        ("deberta-v3-1", "deberta-v3-1", deberta),
    ] {
        adapter_for_python(name, sub, settings);
    }
}

fn adapter_for_python(name: &str, sub: &str, settings: LoraSettings) {
    let c = case(name);
    let d = Default::default();
    let (base, _) = CrossEncoder::<B>::load(&c.base, &LoadOptions::default(), &d).unwrap();
    let mut lora = LoraModel::new(base, &settings, 11, &d).unwrap();
    for a in lora
        .layers
        .iter_mut()
        .flat_map(|l| l.slots.iter_mut().flatten())
    {
        let AdapterLinear::Lora(l) = a else {
            unreachable!("LoRA settings give LoRA paths")
        };
        let b = l.b.val();
        let shape = b.dims();
        let n = shape[0] * shape[1];
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 0.4)
            .collect();
        l.b = burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), &d));
    }
    let keep = std::env::var_os("TSUMUGI_PEFT_CHECK_DIR").map(|k| PathBuf::from(k).join(sub));
    let tmp = tempfile::tempdir().unwrap();
    let out = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    peft::save_adapter(
        &lora,
        &settings,
        &c.base.path.display().to_string(),
        &out.join("adapter"),
    )
    .unwrap();
    let logits = peft::values(lora.forward(&input(&c)));
    let record =
        serde_json::json!({"base": c.base.path, "inputs": c.expected["inputs"], "logits": logits});
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&record).unwrap(),
    )
    .unwrap();
    let (again, _) = peft::load_adapter::<B>(&c.base, &out.join("adapter"), &d).unwrap();
    assert_eq!(peft::values(again.forward(&input(&c))), logits);
    if let Some(k) = keep {
        println!("wrote {} for scripts/check_peft_adapter.py", k.display());
    }
}

fn oft_settings(rotation: Rotation) -> LoraSettings {
    LoraSettings {
        oft: Some(OftSettings {
            block_size: 8,
            rotation,
        }),
        ..all_targets()
    }
}

#[test]
fn oft_fresh_forward_equals_base_for_both_rotations() {
    for name in ["bert-1", "roberta-3"] {
        for rotation in [Rotation::Cayley { terms: 5 }, Rotation::Exp] {
            let c = case(name);
            let d = Default::default();
            let (base, _) = CrossEncoder::<B>::load(&c.base, &LoadOptions::default(), &d).unwrap();
            let want = peft::values(base.forward(&input(&c)));
            let oft = LoraModel::new(base, &oft_settings(rotation), 3, &d).unwrap();
            // Every linear the targets name is rotated: 6 per layer on BERT's 2 layers.
            assert_eq!(oft.paths().count(), 12);
            let diff = max_diff(&peft::values(oft.forward(&input(&c))), &want);
            println!("{name} {rotation:?}: fresh OFT vs base max |Δ| = {diff:e}");
            assert!(diff <= 1e-6, "{name}: {diff}");
        }
    }
}

#[test]
fn oft_python_peft_adapter_gives_python_logits_merges_and_saves_back() {
    let c = case_of("oft", "bert-1");
    let d = Default::default();
    let (oft, settings) = peft::load_adapter::<B>(&c.base, &c.adapter, &d).unwrap();
    assert_eq!(
        settings.oft,
        Some(OftSettings {
            block_size: 8,
            rotation: Rotation::Cayley { terms: 5 }
        })
    );
    let got = peft::values(oft.forward(&input(&c)));
    let want = floats(&c.expected["lora_logits"]);
    let diff = max_diff(&got, &want);
    println!("OFT: PEFT adapter, tsumugi vs PEFT logits max |Δ| = {diff:e}");
    assert!(diff <= 1e-4, "{diff}");
    assert!(max_diff(&got, &floats(&c.expected["base_logits"])) > 0.1);
    // PEFT at init (zero weights) is the base model, as tsumugi's fresh adapter is.
    let init = floats(&c.expected["init_logits"]);
    assert!(max_diff(&init, &floats(&c.expected["base_logits"])) <= 1e-5);

    let merged = peft::values(oft.merged().forward(&input(&c)));
    let diff = max_diff(&merged, &floats(&c.expected["merged_logits"]));
    println!("OFT: merged, tsumugi vs PEFT merge_and_unload max |Δ| = {diff:e}");
    assert!(diff <= 1e-4, "merged {diff}");

    let tmp = tempfile::tempdir().unwrap();
    peft::save_adapter(&oft, &settings, "fixture", tmp.path()).unwrap();
    let ours = TensorSet::read(&tmp.path().join(peft::WEIGHTS_FILE)).unwrap();
    let theirs = TensorSet::read(&c.adapter.join(peft::WEIGHTS_FILE)).unwrap();
    assert_eq!(
        ours.0.keys().collect::<Vec<_>>(),
        theirs.0.keys().collect::<Vec<_>>()
    );
    for (k, (s, v)) in &theirs.0 {
        assert_eq!(&ours.0[k].0, s, "{k}");
        assert_eq!(&ours.0[k].1, v, "{k}: values");
    }
    let (again, s2) = peft::load_adapter::<B>(&c.base, tmp.path(), &d).unwrap();
    assert_eq!(s2, settings);
    assert_eq!(peft::values(again.forward(&input(&c))), got);
}

#[test]
fn oft_exp_adapter_round_trips_and_says_it_is_not_cayley() {
    let c = case("bert-1");
    let d = Default::default();
    let (base, _) = CrossEncoder::<B>::load(&c.base, &LoadOptions::default(), &d).unwrap();
    let settings = oft_settings(Rotation::Exp);
    let mut oft = LoraModel::new(base, &settings, 3, &d).unwrap();
    perturb(&mut oft);
    let tmp = tempfile::tempdir().unwrap();
    peft::save_adapter(&oft, &settings, "fixture", tmp.path()).unwrap();
    let config = std::fs::read_to_string(tmp.path().join(peft::CONFIG_FILE)).unwrap();
    assert!(config.contains("\"tsumugi_rotation\": \"exp\""), "{config}");
    let (again, s2) = peft::load_adapter::<B>(&c.base, tmp.path(), &d).unwrap();
    assert_eq!((&s2.oft, &s2.targets), (&settings.oft, &settings.targets));
    let a = peft::values(oft.forward(&input(&c)));
    assert_eq!(peft::values(again.forward(&input(&c))), a);
    // exp rotations are exact, so merging is exact up to rounding too.
    let m = peft::values(oft.merged().forward(&input(&c)));
    assert!(max_diff(&m, &a) <= 1e-5);
}

#[test]
fn oft_errors_name_the_setting() {
    let c = case_of("oft", "bert-1");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        c.adapter.join(peft::WEIGHTS_FILE),
        tmp.path().join(peft::WEIGHTS_FILE),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(c.adapter.join(peft::CONFIG_FILE)).unwrap();
    for (from, to, says) in [
        (
            "\"use_cayley_neumann\": true",
            "\"use_cayley_neumann\": false",
            "use_cayley_neumann",
        ),
        (
            "\"coft\": false",
            "\"coft\": true",
            "coft: true is not supported",
        ),
        (
            "\"oft_block_size\": 8",
            "\"oft_block_size\": 5",
            "block_size 5 does not divide the 32 input features of bert.encoder.layer.0.attention.self.query",
        ),
    ] {
        std::fs::write(tmp.path().join(peft::CONFIG_FILE), cfg.replace(from, to)).unwrap();
        let err = peft::load_adapter::<B>(&c.base, tmp.path(), &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("adapter_config.json") && err.contains(says),
            "{err}"
        );
    }
}

/// Every OFT weight set to a seeded pattern, so the rotations are not the identity.
fn perturb(model: &mut LoraModel<B>) {
    for a in model
        .layers
        .iter_mut()
        .flat_map(|l| l.slots.iter_mut().flatten())
    {
        if let AdapterLinear::Oft(o) = a {
            let w = o.weight.val();
            let shape = w.dims();
            let v: Vec<f32> = (0..shape[0] * shape[1])
                .map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * 0.3)
                .collect();
            o.weight = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(v, shape),
                &Default::default(),
            ));
        }
    }
}

/// `tsumugi_adapter_for_python` for OFT (Cayley, which PEFT computes): a tsumugi-made OFT
/// adapter and its logits, for `scripts/check_peft_adapter.py`
/// (`$TSUMUGI_PEFT_CHECK_DIR/oft`).
#[test]
fn oft_tsumugi_adapter_for_python() {
    let c = case("bert-1");
    let d = Default::default();
    let (base, _) = CrossEncoder::<B>::load(&c.base, &LoadOptions::default(), &d).unwrap();
    let settings = oft_settings(Rotation::Cayley { terms: 5 });
    let mut oft = LoraModel::new(base, &settings, 3, &d).unwrap();
    perturb(&mut oft);
    let keep = std::env::var_os("TSUMUGI_PEFT_CHECK_DIR").map(|d| PathBuf::from(d).join("oft"));
    let tmp = tempfile::tempdir().unwrap();
    let out = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    peft::save_adapter(
        &oft,
        &settings,
        &c.base.path.display().to_string(),
        &out.join("adapter"),
    )
    .unwrap();
    let logits = peft::values(oft.forward(&input(&c)));
    let record = serde_json::json!({
        "base": c.base.path,
        "inputs": c.expected["inputs"],
        "logits": logits,
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&record).unwrap(),
    )
    .unwrap();
    if let Some(k) = keep {
        println!("wrote {} for scripts/check_peft_adapter.py", k.display());
    }
}

struct Quiet;

impl tsumugi_stages::contract::Reporter for Quiet {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, _: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// `export` with `merge: true` on PEFT's DeBERTa adapters: a plain checkpoint with PEFT's
/// merged logits. Kept under `$TSUMUGI_EXPORT_CHECK_DIR/<fixture>/{model,adapter}` for
/// `scripts/check_export.py` (transformers loading it).
#[test]
fn deberta_merged_export_is_a_plain_checkpoint_with_the_adapter_logits() {
    for name in ["deberta-v3-1", "deberta-v2-3"] {
        let c = case(name);
        let root = tempfile::tempdir().unwrap();
        let outs = support::run_kind(
            "export",
            root.path(),
            "export",
            &serde_json::json!({"base": c.base.path, "adapter": c.adapter, "merge": true}),
            &Quiet,
        )
        .unwrap();
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(outs["model"].join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            config["architectures"],
            serde_json::json!(["DebertaV2ForSequenceClassification"])
        );
        let d = Default::default();
        let (merged, report) = CrossEncoder::<B>::load(
            &ModelDir::open(&outs["model"]).unwrap(),
            &LoadOptions::default(),
            &d,
        )
        .unwrap();
        assert!(report.unused.is_empty(), "{:?}", report.unused);
        let got = peft::values(merged.forward(&input(&c)));
        let diff = max_diff(&got, &floats(&c.expected["merged_logits"]));
        println!("{name}: merged export vs PEFT merge_and_unload max |Δ| = {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
        if let Some(keep) = std::env::var_os("TSUMUGI_EXPORT_CHECK_DIR") {
            let keep = PathBuf::from(keep).join(name);
            for (from, to) in [(&outs["model"], "model"), (&c.adapter, "adapter")] {
                std::fs::create_dir_all(keep.join(to)).unwrap();
                for f in std::fs::read_dir(from).unwrap() {
                    let f = f.unwrap().path();
                    std::fs::copy(&f, keep.join(to).join(f.file_name().unwrap())).unwrap();
                }
            }
        }
    }
}
