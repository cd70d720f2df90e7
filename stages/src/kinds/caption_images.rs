//! `caption-images`: one caption per image, by local OCR (Tesseract) or a vision-language
//! model, as JSONL rows that `build-pairs` joins into pairs.
//!
//! ```yaml
//! caption:
//!   uses: caption-images
//!   with:
//!     images: data/images        # a directory (.png/.jpg/.jpeg/.webp/.tif/.tiff, recursively) or one file
//!     method: ocr                # ocr (default) | vlm | vlm+ocr
//!     language: jpn+eng          # Tesseract language packs
//!     on_error: skip             # fail (default) | skip | fallback
//!     preprocess: {deskew: true, upscale_min_height: 40}
//! ```
//! Output `captions`: one row per image, sorted by `image`, no timings (the same images give
//! the same bytes, so a per-item run under `map:` concatenates into a from-scratch run):
//! `{"image", "sha256", "caption", "method", "model", "status", "error"}`; `timings`: the
//! same `image` with `decode_ms`, `preprocess_ms`, `caption_ms`. See docs/caption.md.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tsumugi_base::atomic::write_atomic;

use crate::caption::ocr::{self, Tesseract};
use crate::caption::preprocess::Preprocess;
use crate::caption::{CaptionRow, Captioner, Status, TimingRow, images};
use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::{KindInfo, SettingsInfo, settings};

/// The `caption-images` kind.
pub struct CaptionImages;

/// Its descriptor. Bump `version` whenever the rows for the same images may change
/// (preprocessing, the text clean-up, the row layout).
pub const INFO: KindInfo = KindInfo {
    name: "caption-images",
    version: 1,
    summary: "one caption per image (local OCR with Tesseract, or a VLM) as JSONL rows",
    input_fields: &["images", "model"],
    outputs: &[("captions", "captions.jsonl"), ("timings", "timings.jsonl")],
    metrics: None,
    per_item: true,
    settings: SettingsInfo::of::<Config>(),
};

/// Seed 000's caption prompt ("describe this image briefly in Japanese").
pub const DEFAULT_PROMPT: &str = "この画像を日本語で簡潔に説明してください。";

/// `with:` of `caption-images`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// `prompt` and `max_new_tokens` are the VLM's, which needs the `ml` feature.
#[cfg_attr(not(feature = "ml"), allow(dead_code))]
pub(crate) struct Config {
    /// A directory (every .png/.jpg/.jpeg/.webp/.tif/.tiff below it) or one image file.
    images: PathBuf,
    /// `ocr` (default), `vlm`, or `vlm+ocr` (the OCR text goes into the VLM's prompt and is
    /// the fallback).
    #[serde(default)]
    method: Method,
    /// vlm only: a Hugging Face Qwen2-VL checkpoint directory.
    model: Option<PathBuf>,
    /// vlm only: the instruction (default: seed 000's Japanese caption prompt).
    prompt: Option<String>,
    /// Tesseract language packs joined by `+` (default `jpn+eng`).
    language: Option<String>,
    /// vlm only: the longest caption, in tokens (default 128).
    max_new_tokens: Option<NonZeroUsize>,
    /// Images captioned at once (default 1; OCR runs one Tesseract per image).
    batch_size: Option<NonZeroUsize>,
    /// What an image that cannot be captioned does: `fail` the stage (default), `skip` it
    /// (its row says why, caption null), or `fallback` (the OCR text for vlm+ocr, else an
    /// empty caption; the row says why).
    #[serde(default)]
    on_error: OnError,
    /// OCR preprocessing steps (see docs/caption.md).
    #[serde(default)]
    preprocess: Preprocess,
    /// Tesseract's page segmentation mode, 0..=13 (default: Tesseract's own, 3).
    psm: Option<u8>,
    /// vlm only: f32 (default) | bf16 | f16, the number type of Qwen2-VL's linears (half
    /// the memory: 7B in about 16 GB). wgpu has no bf16.
    precision: Option<crate::precision::Precision>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
enum Method {
    #[default]
    #[serde(rename = "ocr")]
    Ocr,
    #[serde(rename = "vlm")]
    Vlm,
    #[serde(rename = "vlm+ocr")]
    VlmOcr,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Ocr => "ocr",
            Method::Vlm => "vlm",
            Method::VlmOcr => "vlm+ocr",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnError {
    #[default]
    Fail,
    Skip,
    Fallback,
}

/// What captions one image: the OCR engine with its settings (`ocr`, `vlm+ocr`) and the VLM
/// (`vlm`, `vlm+ocr`).
struct Engine {
    ocr: Option<Tesseract>,
    vlm: Option<Box<dyn Captioner>>,
    preprocess: Preprocess,
    psm: Option<u8>,
    method: Method,
}

impl Engine {
    fn load(cfg: &Config, input: &StageInput<'_>, report: &dyn Reporter) -> Result<Engine> {
        if let Some(psm) = cfg.psm
            && psm > 13
        {
            bail!("caption-images: `psm` {psm} is not a Tesseract page segmentation mode (0..=13)");
        }
        match cfg.method {
            Method::Ocr => {
                if let Some(m) = &cfg.model {
                    bail!(
                        "caption-images: `model: {}` applies to `method: vlm` or `vlm+ocr`; `method: ocr` uses Tesseract",
                        m.display()
                    );
                }
            }
            Method::Vlm | Method::VlmOcr => {
                if cfg.model.is_none() {
                    bail!(
                        "caption-images: `method: {}` needs `model:` (a Qwen2-VL checkpoint directory)",
                        cfg.method.as_str()
                    );
                }
            }
        }
        let vlm = match (&cfg.model, cfg.method) {
            (Some(dir), Method::Vlm | Method::VlmOcr) => Some(load_vlm(cfg, input, dir, report)?),
            _ => None,
        };
        let ocr = if cfg.method == Method::Vlm {
            None
        } else {
            let explicit = input.env.get(ocr::ENV).map(PathBuf::from);
            let language = cfg.language.as_deref().unwrap_or("jpn+eng");
            Some(
                Tesseract::find(explicit.as_deref())
                    .and_then(|t| t.with_languages(language))
                    .map_err(|e| anyhow!("caption-images stage `{}`: {e}", input.name))?,
            )
        };
        Ok(Engine {
            ocr,
            vlm,
            preprocess: cfg.preprocess.clone(),
            psm: cfg.psm,
            method: cfg.method,
        })
    }

    /// The rows' `model`: the VLM's directory name and/or the OCR engine.
    fn model(&self) -> String {
        let names: Vec<String> = [
            self.vlm.as_ref().map(|v| v.name()),
            self.ocr.as_ref().map(Tesseract::name),
        ]
        .into_iter()
        .flatten()
        .collect();
        names.join(" + ")
    }
}

/// The Qwen2-VL captioner of `model:` (the `ml` feature's).
#[cfg(feature = "ml")]
fn load_vlm(
    cfg: &Config,
    input: &StageInput<'_>,
    dir: &Path,
    report: &dyn Reporter,
) -> Result<Box<dyn Captioner>> {
    let prompt = cfg.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    let max = cfg.max_new_tokens.map_or(128, NonZeroUsize::get);
    let precision = cfg.precision.unwrap_or_default();
    let device: crate::device::DeviceSpec = input.device.parse()?;
    report.log(&format!(
        "caption-images: Qwen2-VL on {device} in {precision}"
    ));
    crate::caption::vlm::load(
        &input.project_root.join(dir),
        prompt,
        max,
        device,
        precision,
    )
    .map_err(|e| anyhow!("caption-images stage `{}`: {e:#}", input.name))
}

/// Without burn there is no VLM: refused before any image is read, never a stand-in.
#[cfg(not(feature = "ml"))]
fn load_vlm(
    cfg: &Config,
    _input: &StageInput<'_>,
    _dir: &Path,
    _report: &dyn Reporter,
) -> Result<Box<dyn Captioner>> {
    bail!(
        "caption-images: `method: {}` needs the Qwen2-VL captioner, which needs a build with the `ml` feature (the default); use `method: ocr`",
        cfg.method.as_str()
    )
}

/// The VLM's error, with what OCR read from the same image (vlm+ocr's fallback).
#[derive(Debug)]
struct VlmFailed(anyhow::Error, Option<String>);

impl std::fmt::Display for VlmFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the VLM failed: {:#}", self.0)
    }
}

impl std::error::Error for VlmFailed {}

/// One image's rows, or the error that fails the stage (`on_error: fail`).
fn caption_one(
    engine: &Engine,
    on_error: OnError,
    root: &Path,
    path: &Path,
) -> Result<(CaptionRow, TimingRow)> {
    let image = images::display_path(root, path);
    let mut timing = TimingRow {
        image: image.clone(),
        decode_ms: 0.0,
        preprocess_ms: 0.0,
        caption_ms: 0.0,
    };
    let mut sha256 = None;
    let ms = |t: Instant| (t.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
    let result: Result<String> = (|| {
        let t = Instant::now();
        let bytes = std::fs::read(path).context("cannot read the file")?;
        sha256 = Some(hex::encode(Sha256::digest(&bytes)));
        let img = images::decode(&bytes)?;
        timing.decode_ms = ms(t);
        let mut ocr_text = None;
        if let Some(tess) = &engine.ocr {
            let t = Instant::now();
            let (page, _) = engine.preprocess.apply(&img);
            timing.preprocess_ms = ms(t);
            let t = Instant::now();
            ocr_text = Some(tess.read(&page, engine.psm)?);
            timing.caption_ms = ms(t);
        }
        let Some(vlm) = &engine.vlm else {
            return Ok(ocr_text.unwrap_or_default());
        };
        let t = Instant::now();
        let caption = vlm.caption(&img.to_rgb8(), ocr_text.as_deref());
        timing.caption_ms += ms(t);
        // vlm+ocr: what OCR read is the fallback when the VLM fails.
        caption.map_err(|e| VlmFailed(e, ocr_text).into())
    })();
    let (caption, status, error) = match result {
        Ok(text) => (Some(text), Status::Ok, None),
        Err(e) => {
            let msg = format!("{e:#}");
            let ocr_fallback = e.downcast_ref::<VlmFailed>().and_then(|v| v.1.clone());
            match on_error {
                OnError::Fail => bail!(
                    "caption-images: image {image}: {msg} (`on_error: skip` records such an image and goes on)"
                ),
                OnError::Skip => (None, Status::Skipped, Some(msg)),
                // The OCR text when there is one (vlm+ocr); else an empty caption keeps the
                // row joinable, and `status`/`error` say it is not a real one.
                OnError::Fallback => (
                    Some(ocr_fallback.unwrap_or_default()),
                    Status::Fallback,
                    Some(msg),
                ),
            }
        }
    };
    let row = CaptionRow {
        image,
        sha256,
        caption,
        method: engine.method.as_str().to_string(),
        model: engine.model(),
        status,
        error,
    };
    Ok((row, timing))
}

impl Stage for CaptionImages {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let cfg: Config = settings::parse(input.with)
            .map_err(|e| anyhow!("caption-images `with:` of stage `{}`: {e}", input.name))?;
        let outs = output_paths(input)?;
        let engine = Engine::load(&cfg, input, report)?;
        let root = input.project_root;
        let paths = images::list(root, &root.join(&cfg.images)).with_context(|| {
            format!(
                "caption-images stage `{}`: `images: {}`",
                input.name,
                cfg.images.display()
            )
        })?;
        let total = paths.len();
        let batch = cfg.batch_size.map_or(1, NonZeroUsize::get);
        report.log(&format!(
            "caption-images: {total} image(s), method {}, {}",
            cfg.method.as_str(),
            engine.model()
        ));

        let started = Instant::now();
        let mut rows = Vec::with_capacity(total);
        let mut timings = Vec::with_capacity(total);
        report.progress(0, Some(total as u64), "starting");
        for chunk in paths.chunks(batch) {
            if report.cancelled() {
                bail!(
                    "caption-images: cancelled after {} of {total} images",
                    rows.len()
                );
            }
            let done: Vec<Result<(CaptionRow, TimingRow)>> = chunk
                .par_iter()
                .map(|p| caption_one(&engine, cfg.on_error, root, p))
                .collect();
            for r in done {
                let (row, timing) = r?;
                if let Some(e) = &row.error {
                    report.log(&format!(
                        "warning: {}: {} ({})",
                        row.image,
                        e,
                        if row.status == Status::Skipped {
                            "skipped"
                        } else {
                            "empty caption as fallback"
                        }
                    ));
                }
                rows.push(row);
                timings.push(timing);
            }
            let n = rows.len();
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            let rate = n as f64 / secs;
            // The engine's display adds done/total, the percentage and the ETA.
            report.progress(n as u64, Some(total as u64), &format!("{rate:.1} images/s"));
        }

        let mut buf = Vec::new();
        for row in &rows {
            serde_json::to_writer(&mut buf, row)?;
            buf.push(b'\n');
        }
        write_atomic(&outs["captions"], &buf)?;
        let mut buf = Vec::new();
        for t in &timings {
            serde_json::to_writer(&mut buf, t)?;
            buf.push(b'\n');
        }
        write_atomic(&outs["timings"], &buf)?;

        let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
        let (ok, skipped, fallback) = (
            count(Status::Ok),
            count(Status::Skipped),
            count(Status::Fallback),
        );
        report.metric("images", None, total as f64);
        report.metric("skipped", None, skipped as f64);
        report.metric("fallback", None, fallback as f64);
        report.log(&format!(
            "caption-images: {ok} captioned, {skipped} skipped, {fallback} fallback, {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

fn output_paths(input: &StageInput<'_>) -> Result<BTreeMap<&'static str, PathBuf>> {
    let mut out = BTreeMap::new();
    for (key, _) in INFO.outputs {
        let path = input
            .outs
            .get(*key)
            .ok_or_else(|| anyhow!("caption-images: the engine gave no path for output `{key}`"))?;
        out.insert(*key, path.clone());
    }
    Ok(out)
}
