//! The VLM captioner: Qwen2-VL in burn ([`crate::models::qwen2_vl`]) behind [`Captioner`].
//!
//! It runs on the CPU backend: the Qwen2-VL port is proven there (parity with transformers
//! in f32); bf16 on wgpu/CUDA is not wired yet (docs/models.md).

use std::path::Path;

use anyhow::{Context, Result};

use super::Captioner;
use crate::device::CpuBackend;
use crate::models::qwen2_vl::Qwen2VlCaptioner;
use crate::models::qwen2_vl::generate::GenerateOptions;

/// Qwen2-VL with a prompt and generation settings.
pub struct VlmCaptioner {
    model: Qwen2VlCaptioner<CpuBackend>,
    prompt: String,
    options: GenerateOptions,
}

impl VlmCaptioner {
    /// Loads the Qwen2-VL checkpoint directory `dir`; greedy decoding of at most
    /// `max_new_tokens` tokens after `prompt`.
    pub fn load(dir: &Path, prompt: &str, max_new_tokens: usize) -> Result<Self> {
        let model = Qwen2VlCaptioner::load(dir, &Default::default())
            .with_context(|| format!("loading the Qwen2-VL model {}", dir.display()))?;
        Ok(Self {
            model,
            prompt: prompt.to_string(),
            options: GenerateOptions {
                max_new_tokens,
                ..GenerateOptions::default()
            },
        })
    }

    /// The prompt the model sees: the instruction, and with `ocr_text` what OCR read from
    /// the same image as a hint (`method: vlm+ocr`).
    pub fn prompt_for(&self, ocr_text: Option<&str>) -> String {
        match ocr_text.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => format!("{}\n画像内の文字（OCR）: {t}", self.prompt),
            None => self.prompt.clone(),
        }
    }
}

impl Captioner for VlmCaptioner {
    fn name(&self) -> String {
        self.model.name()
    }

    fn caption(&self, image: &image::RgbImage, ocr_text: Option<&str>) -> Result<String> {
        Ok(self
            .model
            .generate(image, &self.prompt_for(ocr_text), &self.options)?)
    }
}
