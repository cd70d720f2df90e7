//! Captions for images: the `caption-images` kind's machinery without the kind itself.
//!
//! [`images`] lists and decodes the images (EXIF orientation applied), [`preprocess`]
//! prepares a page for OCR (grayscale, contrast stretch, despeckling, deskew, optional Otsu,
//! upscaling of small text), [`ocr`] runs Tesseract found at run time, and [`render`] draws
//! text into images for tests and the OCR benchmark. A [`Captioner`] turns one image into
//! text; the OCR one is [`ocr::OcrCaptioner`], a VLM (Qwen2-VL) implements the same trait.
//!
//! ```no_run
//! use tsumugi_stages::caption::{Captioner, ocr::{OcrCaptioner, Tesseract}, preprocess::Preprocess};
//! let tess = Tesseract::find(None)?.with_languages("jpn+eng")?;
//! let ocr = OcrCaptioner { engine: tess, preprocess: Preprocess::default(), psm: None };
//! let img = image::open("page.png")?.to_rgb8();
//! println!("{}", ocr.caption(&img, None)?);
//! # anyhow::Ok(())
//! ```

pub mod images;
pub mod ocr;
pub mod preprocess;
pub mod render;
#[cfg(feature = "ml")]
pub mod vlm;

// The image types of [`Captioner`]'s signature, for callers without their own `image`
// dependency (the OCR benchmark builds as a target of the root package too).
pub use image;
use serde::Serialize;

/// Turns one image into text. `ocr_text` is what OCR read from the same image, for a
/// captioner that takes it as a hint (`method: vlm+ocr`); others ignore it.
pub trait Captioner: Send + Sync {
    /// What made the caption, for the rows' `model` field (`tesseract 5.3.0 jpn+eng`).
    fn name(&self) -> String;
    /// The caption of `image`.
    fn caption(&self, image: &image::RgbImage, ocr_text: Option<&str>) -> anyhow::Result<String>;
}

/// How a row's caption came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Captioned by the stage's method.
    Ok,
    /// The image could not be captioned and `on_error: skip`: `caption` is null.
    Skipped,
    /// The method failed and `on_error: fallback` put the fallback text in its place.
    Fallback,
}

/// One line of `captions.jsonl`. Field order is the file's: no timings here, so the same
/// images give the same bytes (a per-item run concatenates into a from-scratch one).
#[derive(Debug, Clone, Serialize)]
pub struct CaptionRow {
    /// Path relative to the project root, `/`-separated.
    pub image: String,
    /// Hex SHA-256 of the file's bytes (`None` when the file could not be read).
    pub sha256: Option<String>,
    /// `None` for a skipped image.
    pub caption: Option<String>,
    /// `ocr`, `vlm` or `vlm+ocr`.
    pub method: String,
    /// The engine and its languages, or the VLM's directory name.
    pub model: String,
    pub status: Status,
    /// Why the image was skipped or fell back.
    pub error: Option<String>,
}

/// One line of `timings.jsonl`, keyed by the same `image`.
#[derive(Debug, Clone, Serialize)]
pub struct TimingRow {
    pub image: String,
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub caption_ms: f64,
}
