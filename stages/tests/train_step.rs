//! Two training steps (dropout off) against PyTorch + PEFT on the fixtures of
//! `scripts/make_lora_fixtures.py` (LoRA, and OFT with `oft`): the gradients of every
//! trainable tensor (LoRA A/B or OFT's rotation weights, and the head) before clipping,
//! and the values after global-norm clipping + AdamW, ≤ 1e-4.
//! Step 2 checks AdamW's moments and bias correction as well. On flex and
//! (`--features wgpu`, the `wgpu::` tests) on wgpu.
#![cfg(feature = "ml")]

mod support;

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde_json::Value;
use tsumugi_stages::lora::{AdapterLinear, LoraModel};
use tsumugi_stages::models::SequenceClassifier;
use tsumugi_stages::models::{ModelDir, ModelInput};
use tsumugi_stages::peft::{self, TensorSet};
use tsumugi_stages::train::{loss, optim};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn input<B: Backend>(e: &Value, device: &B::Device) -> ModelInput<B> {
    let t = |k: &str| {
        let rows: Vec<Vec<i64>> = serde_json::from_value(e["inputs"][k].clone()).unwrap();
        let s = [rows.len(), rows[0].len()];
        Tensor::<B, 2, Int>::from_data(TensorData::new(rows.concat(), s), device)
    };
    ModelInput {
        input_ids: t("input_ids"),
        attention_mask: t("attention_mask"),
        token_type_ids: e["inputs"]
            .get("token_type_ids")
            .map(|_| t("token_type_ids")),
    }
}

/// The gradients of the trainable tensors, under PEFT's key names and PyTorch's layout.
fn named_grads<B: AutodiffBackend>(
    model: &LoraModel<B>,
    grads: &B::Gradients,
    arch: &str,
) -> TensorSet {
    let mut set = TensorSet::default();
    let p = "base_model.model.";
    for (i, s, l) in model.paths() {
        let key = format!(
            "{p}{}.{}",
            model.base.layer_path(i),
            model.base.layer_linears()[s]
        );
        assert!(key.starts_with(&format!("{p}{arch}.")), "{key}");
        match l {
            AdapterLinear::Lora(l) => {
                set.matrix(
                    format!("{key}.lora_A.weight"),
                    l.a.val().grad(grads).expect("A has a gradient"),
                );
                set.matrix(
                    format!("{key}.lora_B.weight"),
                    l.b.val().grad(grads).expect("B has a gradient"),
                );
            }
            AdapterLinear::Oft(o) => {
                let g = o
                    .weight
                    .val()
                    .grad(grads)
                    .expect("OFT weight has a gradient");
                let shape = g.dims().to_vec();
                set.0
                    .insert(format!("{key}.oft_R.weight"), (shape, peft::values(g)));
            }
        }
    }
    let mut lin = |key: &str, l: &burn::nn::Linear<B>| {
        set.matrix(
            format!("{p}{key}.weight"),
            l.weight.val().grad(grads).expect("head gradient"),
        );
        set.vector(
            format!("{p}{key}.bias"),
            l.bias
                .as_ref()
                .unwrap()
                .val()
                .grad(grads)
                .expect("head gradient"),
        );
    };
    match &model.base {
        tsumugi_stages::models::CrossEncoder::Bert(m) => {
            lin("classifier", &m.classifier);
            // The frozen base gets no gradient.
            assert!(m.pooler.dense.weight.val().grad(grads).is_none());
            assert!(
                m.bert.encoder.layer[0]
                    .attention
                    .self_attention
                    .query
                    .weight
                    .val()
                    .grad(grads)
                    .is_none()
            );
        }
        tsumugi_stages::models::CrossEncoder::Roberta(m) => {
            lin("classifier.dense", &m.classifier.dense);
            lin("classifier.out_proj", &m.classifier.out_proj);
            assert!(
                m.roberta
                    .embeddings
                    .word_embeddings
                    .weight
                    .val()
                    .grad(grads)
                    .is_none()
            );
        }
        // ModernBERT's steps are checked in tests/modernbert_lora.rs.
        tsumugi_stages::models::CrossEncoder::DebertaV2(m) => {
            lin("classifier", &m.classifier);
            assert!(m.pooler.dense.weight.val().grad(grads).is_none());
        }
        tsumugi_stages::models::CrossEncoder::ModernBert(_) => {
            unreachable!("ModernBERT's steps are checked in modernbert_lora.rs")
        }
    }
    set
}

/// max |ours − reference| over every tensor, and the tensor where it is.
fn compare(what: &str, ours: &TensorSet, reference: &TensorSet, prefix: &str) -> (f32, String) {
    let mut worst = (0f32, String::new());
    let mut n = 0;
    for (k, (shape, v)) in &ours.0 {
        let (rs, rv) = reference
            .0
            .get(&format!("{prefix}{k}"))
            .unwrap_or_else(|| panic!("{what}: reference lacks {prefix}{k}"));
        assert_eq!(shape, rs, "{what} {k}");
        let d = v
            .iter()
            .zip(rv)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        if d > worst.0 {
            worst = (d, k.clone());
        }
        n += 1;
    }
    let expected = reference.0.keys().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(n, expected, "{what}: every reference tensor compared");
    worst
}

support::on_backends! {
    two_adamw_steps_match_pytorch_peft: two_adamw_steps();
}

fn two_adamw_steps<I: Backend>(device: &I::Device) {
    steps_on::<Autodiff<I>>(device);
}

fn steps_on<B: AutodiffBackend>(d: &B::Device) {
    let backend = support::backend_name::<B::InnerBackend>();
    for (kind, name, arch) in [
        ("lora", "bert-1", "bert"),
        ("lora", "roberta-3", "roberta"),
        ("oft", "bert-1", "bert"),
        ("lora", "deberta-v3-1", "deberta"),
        ("lora", "deberta-v2-3", "deberta"),
    ] {
        let dir = fixtures().join(kind).join(name);
        let e: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let reference = TensorSet::read(&dir.join("steps.safetensors")).unwrap();
        let base = ModelDir::open(&fixtures().join(name)).unwrap();
        let (model, settings) = peft::load_adapter::<B>(&base, &dir.join("adapter"), d).unwrap();
        let mut model = model.without_dropout();
        let o = &e["optim"];
        let cfg = optim::AdamWConfig {
            beta1: o["betas"][0].as_f64().unwrap(),
            beta2: o["betas"][1].as_f64().unwrap(),
            eps: o["eps"].as_f64().unwrap(),
            weight_decay: o["weight_decay"].as_f64().unwrap(),
        };
        let lr = o["lr"].as_f64().unwrap();
        let mut state = optim::AdamWState::default();
        let x = input::<B>(&e, d);
        for step in 1..=2 {
            let rec = &e["steps"][step - 1];
            let logits = model.forward(&x);
            let [n, k] = logits.dims();
            let loss = if k == 1 {
                let y: Vec<f32> = serde_json::from_value(e["labels"].clone()).unwrap();
                loss::mse(
                    logits.reshape([n]),
                    Tensor::from_data(TensorData::new(y, [n]), d),
                )
            } else {
                let y: Vec<i64> = serde_json::from_value(e["labels"].clone()).unwrap();
                loss::cross_entropy(logits, Tensor::from_data(TensorData::new(y, [n]), d))
            };
            let value: f64 = loss.clone().into_scalar().elem();
            let dl = (value - rec["loss"].as_f64().unwrap()).abs();
            let g = loss.backward();
            let ours = named_grads::<B>(&model, &g, arch);
            let (gd, gd_at) = compare("grad", &ours, &reference, &format!("grad.{step}."));
            let mut grads = optim::collect_grads(&model, &g);
            let norm = optim::clip_grad_norm::<B>(&mut grads, rec["max_norm"].as_f64().unwrap());
            let dn = (norm - rec["grad_norm"].as_f64().unwrap()).abs();
            model = optim::adamw_step(model, grads, lr, cfg, &mut state);
            let after = peft::adapter_tensors(&model, &settings);
            let (vd, vd_at) = compare("value", &after, &reference, &format!("value.{step}."));
            println!(
                "{kind} {name} [{backend}] step {step}: |Δloss| {dl:.2e}, |Δgrad_norm| {dn:.2e}, max |Δgrad| {gd:.2e} ({gd_at}), max |Δvalue| {vd:.2e} ({vd_at})"
            );
            assert!(
                dl <= 1e-5 && dn <= 1e-4 && gd <= 1e-4 && vd <= 1e-4,
                "{kind} {name} step {step}"
            );
        }
    }
}
