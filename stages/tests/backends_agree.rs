//! One seed, two backends (issue 11): flex (CPU) and wgpu start from bit-identical weights
//! (the LoRA A/B and a new head, all drawn on the host), train on the same batches in the
//! same order, and then differ only by floating-point rounding: one training step with
//! dropout on (its masks come from the host as well) agrees within [`TOL`] in the loss, the
//! gradient norm and every updated adapter value.
//!
//! Needs `--features wgpu`: `cargo test -p tsumugi-stages --features wgpu --test
//! backends_agree`. Without a wgpu adapter the tests print why and pass, unless
//! `TSUMUGI_REQUIRE_WGPU=1` (CI, on lavapipe).
#![cfg(feature = "wgpu")]

mod support;

use std::path::Path;

use burn::backend::{Autodiff, Flex, Wgpu};
use burn::prelude::Backend;
use support::training::{headless_bert, lora, max_diff, run, spec, train_file};
use tsumugi_stages::lora::LoraModel;
use tsumugi_stages::models::{CrossEncoder, LoadOptions, ModelDir};
use tsumugi_stages::peft::{self, TensorSet};
use tsumugi_stages::train::{OptimSettings, TrainOutcome};

/// Bound on |CPU − wgpu| of each step's loss and gradient norm and of the adapter after
/// training: f32 rounding of reductions done in another order. Measured on lavapipe: one
/// step 0 / 6.9e-8 / 5.7e-9, eight steps 6.0e-8 (losses) / 7.5e-7 (adapter); docs/gpu.md.
const TOL: f64 = 1e-4;

/// The adapter a run of `seed` starts from, on `B`: what `train` builds before step 1.
fn initial_adapter<B: Backend>(model: &Path, seed: u64, device: &B::Device) -> TensorSet {
    let dir = ModelDir::open(model).unwrap();
    let opts = LoadOptions {
        num_labels: Some(1),
        init_missing_head: true,
        init_seed: seed,
    };
    let (base, report) = CrossEncoder::<B>::load(&dir, &opts, device).unwrap();
    assert!(
        report
            .initialized
            .iter()
            .any(|k| k.starts_with("classifier.")),
        "{:?}",
        report.initialized
    );
    let model = LoraModel::new(base, &lora(), seed, device).unwrap();
    peft::adapter_tensors(&model, &lora())
}

#[test]
fn same_seed_gives_bit_identical_initial_weights() {
    let Some(gpu) = support::wgpu_device() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = headless_bert(tmp.path());
    let cpu = initial_adapter::<Flex>(&model, 13, &Default::default());
    let wgpu = initial_adapter::<Wgpu>(&model, 13, &gpu);
    // LoRA A (Kaiming-uniform), B (zeros), the pooler and the classifier (normal draws).
    for part in [
        "lora_A",
        "lora_B",
        "pooler.dense.weight",
        "classifier.weight",
    ] {
        assert!(cpu.0.keys().any(|k| k.contains(part)), "no {part} tensor");
    }
    assert_eq!(
        cpu.0.keys().collect::<Vec<_>>(),
        wgpu.0.keys().collect::<Vec<_>>()
    );
    for (k, (shape, v)) in &cpu.0 {
        let (s, w) = &wgpu.0[k];
        assert_eq!(shape, s, "{k}");
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(v), bits(w), "{k}: the initial values differ");
    }
    println!(
        "{} tensors, {} values: bit-identical on flex and wgpu",
        cpu.0.len(),
        cpu.0.values().map(|(_, v)| v.len()).sum::<usize>()
    );
    // …and the seed decides them: another seed, other weights.
    let other = initial_adapter::<Flex>(&model, 14, &Default::default());
    assert!(max_diff(&cpu, &other).0 > 1e-3);
}

#[test]
fn one_training_step_with_dropout_matches_cpu() {
    let Some(gpu) = support::wgpu_device() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = headless_bert(&tmp.path().join("model"));
    let data = train_file(tmp.path());
    let optim = OptimSettings {
        batch: 4,
        max_steps: Some(1),
        warmup: 0.0,
        lr: 1e-3,
        ..Default::default()
    };
    let at = |name: &str| spec(&model, &data, &tmp.path().join(name), optim.clone());
    let (cpu, cpu_adapter) = run::<Autodiff<Flex>>(&at("cpu"), &Default::default());
    let (gpu_run, gpu_adapter) = run::<Autodiff<Wgpu>>(&at("wgpu"), &gpu);
    assert_eq!((cpu.steps, gpu_run.steps), (1, 1));
    let (c, g) = (&cpu.history[0], &gpu_run.history[0]);
    let d_loss = (c.loss - g.loss).abs();
    let d_norm = (c.grad_norm - g.grad_norm).abs();
    let (d_values, at_key) = max_diff(&cpu_adapter, &gpu_adapter);
    println!(
        "one step, dropout on: loss {:.6} (flex) vs {:.6} (wgpu), |Δloss| {d_loss:.2e}, |Δgrad_norm| {d_norm:.2e}, max |Δ adapter value| {d_values:.2e} ({at_key})",
        c.loss, g.loss
    );
    assert!(d_loss <= TOL, "|Δloss| {d_loss}");
    assert!(d_norm <= TOL, "|Δgrad_norm| {d_norm}");
    assert!(d_values <= TOL, "max |Δ value| {d_values}");
    // The step moved the weights (AdamW's first step: by about lr) far more than the two
    // backends differ…
    let start = initial_adapter::<Flex>(&model, optim.seed, &Default::default());
    let moved = max_diff(&start, &cpu_adapter).0;
    assert!(
        moved > 0.5 * optim.lr && moved > 10.0 * d_values,
        "the step moved the adapter by {moved}"
    );
    // …and dropout was live: without it the same step has another loss.
    let mut off = at("off");
    off.dropout_off = true;
    let (no_dropout, _) = run::<Autodiff<Flex>>(&off, &Default::default());
    let d_dropout = (no_dropout.history[0].loss - c.loss).abs();
    println!("the same step without dropout: |Δloss| {d_dropout:.2e}");
    assert!(
        d_dropout > 10.0 * TOL,
        "dropout changed the loss by only {d_dropout}"
    );
}

#[test]
fn same_batches_in_the_same_order_over_two_epochs() {
    let Some(gpu) = support::wgpu_device() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = headless_bert(&tmp.path().join("model"));
    let data = train_file(tmp.path());
    // 8 pairs in batches of 2: four steps per epoch, each epoch its own shuffle.
    let optim = OptimSettings {
        batch: 2,
        epochs: 2,
        warmup: 0.0,
        ..Default::default()
    };
    let at = |name: &str| spec(&model, &data, &tmp.path().join(name), optim.clone());
    let (cpu, cpu_adapter) = run::<Autodiff<Flex>>(&at("cpu"), &Default::default());
    let (gpu_run, gpu_adapter) = run::<Autodiff<Wgpu>>(&at("wgpu"), &gpu);
    let losses = |o: &TrainOutcome| o.history.iter().map(|h| h.loss).collect::<Vec<_>>();
    let (c, g) = (losses(&cpu), losses(&gpu_run));
    assert_eq!(c.len(), 8);
    assert_eq!(g.len(), 8);
    let d_loss = c
        .iter()
        .zip(&g)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let (d_values, at_key) = max_diff(&cpu_adapter, &gpu_adapter);
    println!(
        "8 steps, 2 epochs: max |Δloss| per step {d_loss:.2e}, max |Δ adapter value| {d_values:.2e} ({at_key})\n  flex {c:.5?}\n  wgpu {g:.5?}"
    );
    assert!(d_loss <= TOL, "per-step losses differ by {d_loss}");
    assert!(d_values <= TOL, "max |Δ value| {d_values}");
    // No two steps have losses within TOL, so had wgpu taken the batches in another order
    // (or made other batches), the per-step comparison above would have failed.
    let mut sorted = c.clone();
    sorted.sort_by(f64::total_cmp);
    let gap = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    assert!(gap > TOL, "two steps have losses within {gap}");
}
