//! Scoring text pairs with a cross-encoder: the library function behind `tsumugi score`
//! and the ML stages.

use crate::models::SequenceClassifier;
use std::path::Path;

use burn::prelude::*;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use crate::device;
use crate::device::{CpuBackend, DeviceSpec};
use crate::error::{MlError, Result};
use crate::head::HeadActivation;
use crate::models::{CrossEncoder, LoadOptions, LoadReport, ModelDir, ModelInput};
use crate::precision::Precision;
use crate::tokenize::{EncodedPair, PairTokenizer, Truncation, length_batches};

/// Batching and truncation of a scoring run.
#[derive(Debug, Clone, Copy)]
pub struct ScoreOptions {
    /// Pairs per forward pass.
    pub batch_size: usize,
    /// Tokens per pair, special tokens included (capped at the model's limit).
    pub max_length: usize,
    pub truncation: Truncation,
    /// The number type of the encoder layers' products ([`crate::precision`]).
    pub precision: Precision,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            max_length: 512,
            truncation: Truncation::LongestFirst,
            precision: Precision::F32,
        }
    }
}

/// Runs `model` over already tokenized pairs in length-sorted batches and returns the
/// logits in input order. `progress` gets the number of pairs finished so far.
///
/// On the CPU backend the batches run on as many threads as rayon has (`RAYON_NUM_THREADS`),
/// each thread running whole forward passes: flex parallelises inside an op only when the
/// op is large, and a MiniLM-sized batch is mostly small ops (on 2 cores, 2 threads were 1.4x
/// one thread when only ops were parallel). Each batch is computed exactly as it would be
/// alone, so the logits do not depend on the number of threads. GPU backends run one batch
/// after another: the device is the parallel part.
pub fn score_encoded<B: Backend>(
    model: &CrossEncoder<B>,
    tokenizer: &PairTokenizer,
    encoded: &[EncodedPair],
    batch_size: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(usize),
) -> Vec<Vec<f32>> {
    let lengths: Vec<usize> = encoded.iter().map(|p| p.ids.len()).collect();
    let batches = length_batches(&lengths, batch_size);
    let run = |model: &CrossEncoder<B>, batch: &[usize]| -> (Vec<f32>, usize) {
        let items: Vec<&EncodedPair> = batch.iter().map(|&i| &encoded[i]).collect();
        let input = ModelInput::<B>::from_batch(&tokenizer.pad(&items), device);
        let logits = model.forward(&input);
        let [_, labels] = logits.dims();
        let values = logits
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap_or_default();
        (values, labels)
    };
    let mut out = vec![Vec::new(); encoded.len()];
    let mut done = 0;
    let mut place = |batch: &[usize], values: Vec<f32>, labels: usize| {
        for (row, &i) in batch.iter().enumerate() {
            out[i] = values[row * labels..(row + 1) * labels].to_vec();
        }
        done += batch.len();
        progress(done);
    };
    let workers = if is_cpu::<B>() {
        rayon::current_num_threads().min(batches.len())
    } else {
        1
    };
    if workers <= 1 {
        for batch in &batches {
            let (values, labels) = run(model, batch);
            place(batch, values, labels);
        }
        return out;
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (tx, model, next, batches, run) =
                (tx.clone(), model.clone(), &next, &batches, &run);
            s.spawn(move || {
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(batch) = batches.get(b) else { break };
                    if tx.send((b, run(&model, batch))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (b, (values, labels)) in rx {
            place(&batches[b], values, labels);
        }
    });
    out
}

/// Whether `B` is the CPU backend, whose batches are worth running on several threads.
fn is_cpu<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<CpuBackend>()
}

/// What a head's logits mean for one pair.
#[derive(Debug, Clone, PartialEq)]
pub enum Interpreted {
    /// One label: the logit through the head's activation.
    Score(f32),
    /// Several labels: softmax over the logits.
    Probs(Vec<f32>),
}

/// One logit through `act` (sigmoid by default: see [`Scorer::activation`]), several
/// through softmax.
pub fn interpret(logits: &[f32], act: HeadActivation) -> Interpreted {
    if logits.len() == 1 {
        Interpreted::Score(act.apply(f64::from(logits[0])) as f32)
    } else {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        Interpreted::Probs(exps.into_iter().map(|e| e / sum).collect())
    }
}

/// The model alone, or with a PEFT adapter merged in (the head comes from the adapter).
/// In `precision` once merged.
fn load_net<B: Backend>(
    dir: &ModelDir,
    adapter: Option<&Path>,
    precision: Precision,
    device: &B::Device,
) -> Result<(CrossEncoder<B>, LoadReport)> {
    precision.check::<B>(device)?;
    let (net, report) = match adapter {
        None => CrossEncoder::load(dir, &LoadOptions::default(), device)?,
        Some(a) => {
            let (lora, _) = crate::peft::load_adapter::<B>(dir, a, device)?;
            (lora.merged(), LoadReport::default())
        }
    };
    Ok((net.with_precision(precision), report))
}

// One model per scorer, built once: the variants' size difference (the wgpu device) costs
// nothing.
#[allow(clippy::large_enum_variant)]
enum Loaded {
    Cpu(CrossEncoder<CpuBackend>),
    #[cfg(feature = "wgpu")]
    Wgpu(
        CrossEncoder<device::WgpuBackend>,
        burn::backend::wgpu::WgpuDevice,
    ),
    #[cfg(feature = "cuda")]
    Cuda(
        CrossEncoder<device::CudaBackend>,
        burn::backend::cuda::CudaDevice,
    ),
}

/// A cross-encoder and its tokenizer loaded on a device chosen at run time.
pub struct Scorer {
    model: Loaded,
    tokenizer: PairTokenizer,
    options: ScoreOptions,
    num_labels: usize,
    report: LoadReport,
    device: DeviceSpec,
    activation: HeadActivation,
}

impl Scorer {
    /// Loads the model directory `dir` (config.json, safetensors weights, tokenizer.json)
    /// onto `device`.
    pub fn load(dir: &Path, device: DeviceSpec, options: ScoreOptions) -> Result<Self> {
        Self::load_with_adapter(dir, None, device, options)
    }

    /// Loads the base model directory `dir` with the PEFT adapter directory `adapter`
    /// merged into its weights (PEFT's `merge_and_unload`), or the model alone without one:
    /// a merged adapter scores at the base model's speed, and the scoring path is the same.
    pub fn load_with_adapter(
        dir: &Path,
        adapter: Option<&Path>,
        device: DeviceSpec,
        options: ScoreOptions,
    ) -> Result<Self> {
        device.check_compiled()?;
        // sentence-transformers' rule: the recorded activation, else sigmoid for one label.
        let activation = crate::head::resolve(dir, adapter)
            .map_err(|e| MlError::Input(format!("{e:#}")))?
            .unwrap_or(HeadActivation::Sigmoid);
        let dir = ModelDir::open(dir)?;
        let tokenizer = PairTokenizer::for_model(&dir, options.max_length, options.truncation)?;
        let (model, report) = match device {
            DeviceSpec::Cpu => {
                let (m, r) =
                    load_net::<CpuBackend>(&dir, adapter, options.precision, &Default::default())?;
                (Loaded::Cpu(m), r)
            }
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(_) => {
                let d = device.wgpu_device();
                device::probe::<device::WgpuBackend>(&device, &d)?;
                let (m, r) = load_net(&dir, adapter, options.precision, &d)?;
                (Loaded::Wgpu(m, d), r)
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(_) => {
                let d = device.cuda_device();
                device::probe::<device::CudaBackend>(&device, &d)?;
                let (m, r) = load_net(&dir, adapter, options.precision, &d)?;
                (Loaded::Cuda(m, d), r)
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("check_compiled rejected backends this build lacks"),
        };
        let num_labels = match &model {
            Loaded::Cpu(m) => m.num_labels(),
            #[cfg(feature = "wgpu")]
            Loaded::Wgpu(m, _) => m.num_labels(),
            #[cfg(feature = "cuda")]
            Loaded::Cuda(m, _) => m.num_labels(),
        };
        Ok(Self {
            model,
            tokenizer,
            options,
            num_labels,
            report,
            device,
            activation,
        })
    }

    /// The head's activation for one-logit predictions: recorded with the adapter or the
    /// model (`config_sentence_transformers.json`), else sigmoid (sentence-transformers'
    /// default for one label).
    pub fn activation(&self) -> HeadActivation {
        self.activation
    }

    /// `logits` of one pair read through this model's head: see [`interpret`].
    pub fn interpret(&self, logits: &[f32]) -> Interpreted {
        interpret(logits, self.activation)
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Weights the checkpoint had but the model did not use, buffers skipped.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    pub fn tokenizer(&self) -> &PairTokenizer {
        &self.tokenizer
    }

    /// Scores `pairs` and returns their logits in input order. Tokenization errors (e.g.
    /// only-second truncation that cannot fit) name the pair's index.
    pub fn score<S: AsRef<str> + Sync>(
        &self,
        pairs: &[(S, S)],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let encoded = self.tokenizer.encode_all(pairs)?;
        let bs = self.options.batch_size;
        Ok(match &self.model {
            Loaded::Cpu(m) => score_encoded(
                m,
                &self.tokenizer,
                &encoded,
                bs,
                &Default::default(),
                progress,
            ),
            #[cfg(feature = "wgpu")]
            Loaded::Wgpu(m, d) => score_encoded(m, &self.tokenizer, &encoded, bs, d, progress),
            #[cfg(feature = "cuda")]
            Loaded::Cuda(m, d) => score_encoded(m, &self.tokenizer, &encoded, bs, d, progress),
        })
    }

    /// Scores pairs already tokenized with [`Scorer::tokenizer`] (a server tokenizes each
    /// request as it arrives and scores several requests' pairs together); logits in input
    /// order, computed exactly as [`Scorer::score`] computes them.
    pub fn score_encoded(&self, encoded: &[EncodedPair]) -> Vec<Vec<f32>> {
        let bs = self.options.batch_size;
        let mut quiet = |_| {};
        match &self.model {
            Loaded::Cpu(m) => score_encoded(
                m,
                &self.tokenizer,
                encoded,
                bs,
                &Default::default(),
                &mut quiet,
            ),
            #[cfg(feature = "wgpu")]
            Loaded::Wgpu(m, d) => score_encoded(m, &self.tokenizer, encoded, bs, d, &mut quiet),
            #[cfg(feature = "cuda")]
            Loaded::Cuda(m, d) => score_encoded(m, &self.tokenizer, encoded, bs, d, &mut quiet),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_for_one_label_softmax_for_more() {
        let sig = HeadActivation::Sigmoid;
        assert_eq!(interpret(&[0.0], sig), Interpreted::Score(0.5));
        assert_eq!(
            interpret(&[-2.5], HeadActivation::Identity),
            Interpreted::Score(-2.5)
        );
        let Interpreted::Probs(p) = interpret(&[1.0, 1.0, 1.0 + 2f32.ln()], sig) else {
            panic!("expected probs")
        };
        assert!(
            (p[0] - 0.25).abs() < 1e-6 && (p[2] - 0.5).abs() < 1e-6,
            "{p:?}"
        );
        // Large logits must not overflow.
        let Interpreted::Probs(p) = interpret(&[1000.0, 0.0], sig) else {
            panic!("expected probs")
        };
        assert!((p[0] - 1.0).abs() < 1e-6);
    }
}
