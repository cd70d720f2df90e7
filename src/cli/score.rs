//! `tsumugi score`: score text pairs in a JSONL file with a cross-encoder.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use tsumugi_stages::device::DeviceSpec;
use tsumugi_stages::precision::Precision;
use tsumugi_stages::score::{Interpreted, ScoreOptions, Scorer};
use tsumugi_stages::tokenize::Truncation;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model directory in Hugging Face layout (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// A PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for the
    /// model, merged into its weights before scoring.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// JSONL input: one {"text_a": …, "text_b": …} object per line; other fields are copied
    /// to the output.
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,
    /// Output JSONL (default: stdout): the input object plus `logits` and `score` (one-label
    /// heads: the logit through the activation recorded with the adapter or model, as
    /// sentence-transformers records it — identity after MSE training, sigmoid after BCE —
    /// and sigmoid when none is recorded) or `probs` (softmax, several labels), in input order.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// cpu, wgpu, wgpu:N, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, bf16 or f16: the number type of the encoder layers' matrix products (half the
    /// weights' memory, tensor-core speed on a GPU; wgpu has no bf16). Norms, softmax and
    /// the head stay f32.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Pairs per forward pass (pairs are grouped by length first).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Tokens per pair, special tokens included (capped at the model's limit).
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// longest_first or only_second.
    #[arg(long, default_value = "longest_first")]
    pub truncation: Truncation,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (records, pairs) = read_pairs(&args.pairs)?;
    let options = ScoreOptions {
        batch_size: args.batch,
        max_length: args.max_length,
        truncation: args.truncation,
        precision: args.precision,
    };
    let scorer =
        Scorer::load_with_adapter(&args.model, args.adapter.as_deref(), args.device, options)
            .with_context(|| match &args.adapter {
                Some(a) => format!(
                    "loading model {} with adapter {}",
                    args.model.display(),
                    a.display()
                ),
                None => format!("loading model {}", args.model.display()),
            })?;
    let report = scorer.load_report();
    if !report.unused.is_empty() {
        tracing::warn!(
            "weights not used by the model: {}",
            report.unused.join(", ")
        );
    }

    let bar = ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} scoring [{bar:30}] {pos}/{len} pairs {per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let logits = scorer
        .score(&pairs, &mut |done| bar.set_position(done as u64))
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.pairs.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "scored {} pairs in {secs:.2} s ({:.1} pairs/s) on {} in {}",
        pairs.len(),
        pairs.len() as f64 / secs.max(1e-9),
        scorer.device(),
        args.precision
    );

    let sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    for (mut record, logits) in records.into_iter().zip(logits) {
        let extra = match scorer.interpret(&logits) {
            Interpreted::Score(s) => ("score", Value::from(s)),
            Interpreted::Probs(p) => ("probs", Value::from(p)),
        };
        record.insert("logits".into(), Value::from(logits));
        record.insert(extra.0.into(), extra.1);
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
    }
    out.flush().context("writing scores")?;
    Ok(ExitCode::SUCCESS)
}

type Pairs = (Vec<Map<String, Value>>, Vec<(String, String)>);

/// Reads the JSONL input; every error names `file:line`.
fn read_pairs(path: &PathBuf) -> anyhow::Result<Pairs> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut records = Vec::new();
    let mut pairs = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let line = line.with_context(|| at.clone())?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("{at}: invalid JSON"))?;
        let Value::Object(record) = value else {
            bail!("{at}: expected a JSON object")
        };
        let text = |field: &str| match record.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!("{at}: \"{field}\" must be a string, found {other}"),
            None => bail!("{at}: missing \"{field}\""),
        };
        pairs.push((text("text_a")?, text("text_b")?));
        records.push(record);
    }
    Ok((records, pairs))
}
