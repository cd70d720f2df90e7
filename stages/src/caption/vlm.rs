//! The VLM captioner: Qwen2-VL in burn ([`crate::models::qwen2_vl`]) behind [`Captioner`],
//! on the device and in the precision the stage asks for.

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::Backend;

use super::Captioner;
use crate::device::{CpuBackend, DeviceSpec};
use crate::models::qwen2_vl::Qwen2VlCaptioner;
use crate::models::qwen2_vl::generate::GenerateOptions;
use crate::precision::Precision;

/// Qwen2-VL with a prompt and generation settings, on backend `B`.
pub struct VlmCaptioner<B: Backend> {
    model: Qwen2VlCaptioner<B>,
    prompt: String,
    options: GenerateOptions,
}

/// Loads the Qwen2-VL checkpoint directory `dir` onto `device` in `precision`; greedy
/// decoding of at most `max_new_tokens` tokens after `prompt`.
pub fn load(
    dir: &Path,
    prompt: &str,
    max_new_tokens: usize,
    device: DeviceSpec,
    precision: Precision,
) -> Result<Box<dyn Captioner>> {
    device.check_compiled()?;
    Ok(match device {
        DeviceSpec::Cpu => Box::new(VlmCaptioner::<CpuBackend>::load(
            dir,
            prompt,
            max_new_tokens,
            &Default::default(),
            precision,
        )?),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(_) => {
            let d = device.wgpu_device();
            crate::device::probe::<crate::device::WgpuBackend>(&device, &d)?;
            Box::new(VlmCaptioner::<crate::device::WgpuBackend>::load(
                dir,
                prompt,
                max_new_tokens,
                &d,
                precision,
            )?)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => {
            let d = device.cuda_device();
            crate::device::probe::<crate::device::CudaBackend>(&device, &d)?;
            Box::new(VlmCaptioner::<crate::device::CudaBackend>::load(
                dir,
                prompt,
                max_new_tokens,
                &d,
                precision,
            )?)
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("check_compiled rejected backends this build lacks"),
    })
}

impl<B: Backend> VlmCaptioner<B> {
    pub fn load(
        dir: &Path,
        prompt: &str,
        max_new_tokens: usize,
        device: &B::Device,
        precision: Precision,
    ) -> Result<Self> {
        let model = Qwen2VlCaptioner::load(dir, device)
            .and_then(|m| m.with_precision(precision))
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

impl<B: Backend> Captioner for VlmCaptioner<B> {
    fn name(&self) -> String {
        self.model.name()
    }

    fn caption(&self, image: &image::RgbImage, ocr_text: Option<&str>) -> Result<String> {
        Ok(self
            .model
            .generate(image, &self.prompt_for(ocr_text), &self.options)?)
    }
}
