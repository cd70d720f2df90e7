//! Qwen2-VL's image processor (transformers' `Qwen2VLImageProcessorPil`, the PIL/numpy
//! one): [`smart_resize`] to multiples of `patch_size · merge_size` within the pixel
//! bounds, a bicubic resize that reproduces Pillow's bit for bit, rescale to [0, 1],
//! normalise with CLIP's mean/std, and patchify into rows of `C · T · P · P` values.
//!
//! Why a resampler of our own: the processor resizes the 8-bit image with Pillow, whose
//! bicubic (`a = -0.5`, support widened by the scale when shrinking) works in fixed point
//! and rounds to 8 bits between its horizontal and vertical passes. Any other filter
//! differs by whole grey levels here and there, i.e. by ~0.015 after normalisation; this
//! one matches Pillow's output bytes, so the pixel values agree to f32 rounding.

use std::path::Path;

use image::RgbImage;
use serde_json::Value;

use crate::error::{MlError, Result};

/// `preprocessor_config.json`'s fields (transformers' defaults where absent).
#[derive(Debug, Clone)]
pub struct ImageProcessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            // OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`; the pixel bounds come from `size`
    /// (`shortest_edge`/`longest_edge`, transformers 5) or `min_pixels`/`max_pixels` (the Hub).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let bad = |message: String| MlError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut c = Self::default();
        let count = |value: Option<&Value>, key: &str, default: usize| -> Result<usize> {
            match value.filter(|v| !v.is_null()) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(format!("{key}: expected a whole number, found {v}"))),
            }
        };
        let size = v.get("size");
        c.min_pixels = count(
            v.get("min_pixels")
                .or(size.and_then(|s| s.get("shortest_edge"))),
            "size.shortest_edge",
            c.min_pixels,
        )?;
        c.max_pixels = count(
            v.get("max_pixels")
                .or(size.and_then(|s| s.get("longest_edge"))),
            "size.longest_edge",
            c.max_pixels,
        )?;
        c.patch_size = count(v.get("patch_size"), "patch_size", c.patch_size)?;
        c.temporal_patch_size = count(
            v.get("temporal_patch_size"),
            "temporal_patch_size",
            c.temporal_patch_size,
        )?;
        c.merge_size = count(v.get("merge_size"), "merge_size", c.merge_size)?;
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => {
                    let vals: Vec<f32> = x
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|n| n.as_f64().map(|f| f as f32))
                                .collect()
                        })
                        .unwrap_or_default();
                    <[f32; 3]>::try_from(vals)
                        .map_err(|_| bad(format!("{key}: expected three numbers, found {x}")))
                }
            }
        };
        c.image_mean = triple("image_mean", c.image_mean)?;
        c.image_std = triple("image_std", c.image_std)?;
        if let Some(f) = v.get("rescale_factor").and_then(Value::as_f64) {
            c.rescale_factor = f;
        }
        if let Some(r) = v.get("resample").and_then(Value::as_u64)
            && r != 3
        {
            return Err(bad(format!(
                "resample {r} is not supported (only 3, bicubic, as Qwen2-VL ships)"
            )));
        }
        if c.min_pixels > c.max_pixels || c.patch_size == 0 || c.merge_size == 0 {
            return Err(bad(format!(
                "min_pixels {} must not exceed max_pixels {}, patch and merge sizes must be > 0",
                c.min_pixels, c.max_pixels
            )));
        }
        Ok(c)
    }

    /// The side every resized dimension is a multiple of (28 for Qwen2-VL).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// An image as the vision tower takes it.
#[derive(Debug, Clone)]
pub struct Patches {
    /// `[rows, C · T · P · P]` row-major; rows in the merger's block order (each run of
    /// `merge²` rows is one merged token).
    pub values: Vec<f32>,
    /// `[grid_t, grid_h, grid_w]` in patches.
    pub grid_thw: [usize; 3],
    /// Values per row.
    pub row_len: usize,
}

impl Patches {
    pub fn rows(&self) -> usize {
        self.grid_thw.iter().product()
    }

    /// How many `<|image_pad|>` tokens (merged patches) stand for this image.
    pub fn merged_tokens(&self, merge_size: usize) -> usize {
        self.rows() / (merge_size * merge_size)
    }
}

/// transformers' `smart_resize`: the (height, width) closest to the image's whose sides
/// are multiples of `factor` and whose area lies in `[min_pixels, max_pixels]`.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(MlError::Input(format!(
            "image of {width}×{height} pixels is empty"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(MlError::Input(format!(
            "image of {width}×{height} pixels: the aspect ratio must be below 200"
        )));
    }
    // Python's round() rounds halves to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Resize, rescale, normalise and patchify one image.
pub fn preprocess(image: &RgbImage, cfg: &ImageProcessorConfig) -> Result<Patches> {
    let (width, height) = image.dimensions();
    let (rh, rw) = smart_resize(
        height as usize,
        width as usize,
        cfg.factor(),
        cfg.min_pixels,
        cfg.max_pixels,
    )?;
    let resized = resize_bicubic(image, rw, rh);
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (rh / p, rw / p);
    // Normalised channel planes, as numpy computes them: (x·scale in f64 → f32 − mean) / std.
    let mut planes = vec![0f32; 3 * rh * rw];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = (px[c] as f64 * cfg.rescale_factor) as f32;
            planes[c * rh * rw + i] = (x - cfg.image_mean[c]) / cfg.image_std[c];
        }
    }
    let row_len = 3 * t * p * p;
    let mut values = Vec::with_capacity(gh * gw * row_len);
    // Rows (gh/m, gw/m, m, m); columns (C, T, P, P), the frame repeated T times.
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    for c in 0..3 {
                        for _ in 0..t {
                            for py in 0..p {
                                let start = c * rh * rw + (y0 + py) * rw + x0;
                                values.extend_from_slice(&planes[start..start + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Patches {
        values,
        grid_thw: [1, gh, gw],
        row_len,
    })
}

// ---- Pillow's bicubic resample (libImaging/Resample.c, 8 bits per channel) ----

/// Fixed-point precision of Pillow's 8-bit resampler (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `bicubic_filter` (Keys' cubic with `a = -0.5`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One pass's taps: for each output index, the first input index and the integer weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let mut k: Vec<f64> = (0..xmax)
            .map(|x| bicubic(((x + xmin) as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|w| *w /= ww);
        }
        let one = (1u64 << PRECISION_BITS) as f64;
        weights.push(
            k.iter()
                .map(|&w| {
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect(),
        );
        first.push(xmin as usize);
    }
    Taps { first, weights }
}

/// Pillow's `clip8`: a fixed-point sum back to a byte.
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((w, h), Image.BICUBIC)` of an RGB image: the horizontal pass first, its
/// result rounded to bytes, then the vertical one (each skipped when its size is unchanged).
pub fn resize_bicubic(image: &RgbImage, out_w: usize, out_h: usize) -> Vec<u8> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let mut data = image.as_raw().clone();
    let mut w = in_w;
    let half = 1i32 << (PRECISION_BITS - 1);
    if out_w != in_w {
        let t = taps(in_w, out_w);
        let mut out = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            let row = &data[y * w * 3..(y + 1) * w * 3];
            for xx in 0..out_w {
                for c in 0..3 {
                    let mut ss = half;
                    for (i, k) in t.weights[xx].iter().enumerate() {
                        ss += row[(t.first[xx] + i) * 3 + c] as i32 * k;
                    }
                    out[(y * out_w + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        data = out;
        w = out_w;
    }
    if out_h != in_h {
        let t = taps(in_h, out_h);
        let mut out = vec![0u8; out_h * w * 3];
        for yy in 0..out_h {
            for x in 0..w * 3 {
                let mut ss = half;
                for (i, k) in t.weights[yy].iter().enumerate() {
                    ss += data[(t.first[yy] + i) * w * 3 + x] as i32 * k;
                }
                out[yy * w * 3 + x] = clip8(ss);
            }
        }
        data = out;
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_as_transformers() {
        // Rounds halves to even (42/28 = 1.5 → 2, 70/28 = 2.5 → 2), then the bounds.
        assert_eq!(
            smart_resize(42, 70, 28, 56 * 56, 28 * 28 * 1280).unwrap(),
            (56, 56)
        );
        assert_eq!(
            smart_resize(20, 20, 28, 56 * 56, 28 * 28 * 1280).unwrap(),
            (56, 56)
        );
        assert_eq!(smart_resize(200, 300, 28, 3136, 6272).unwrap(), (56, 84));
        assert!(smart_resize(1, 300, 28, 3136, 6272).is_err());
    }
}
