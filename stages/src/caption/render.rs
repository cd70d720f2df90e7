//! Text drawn into images, for the tests and the OCR benchmark (`benches/ocr`): real fonts
//! from Debian's `fonts-noto-cjk` and `fonts-dejavu-core`, found by path.

use ab_glyph::{FontArc, FontVec, PxScale};
use anyhow::{Context, Result};
use image::{Rgb, RgbImage, imageops};
use imageproc::geometric_transformations::{Interpolation, rotate_about_center};

/// Where Debian puts the fonts [`Fonts::find`] loads, with the face index in the collection.
const NOTO_SANS_CJK: (&str, u32) = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 0);
const NOTO_SERIF_CJK: (&str, u32) = ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 0);
const DEJAVU_SANS: (&str, u32) = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 0);
const DEJAVU_SERIF: (&str, u32) = ("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", 0);

/// The fonts text is drawn with.
#[derive(Clone)]
pub struct Fonts {
    sans_cjk: FontArc,
    serif_cjk: FontArc,
    sans_latin: FontArc,
    serif_latin: FontArc,
}

impl Fonts {
    /// Loads Noto Sans/Serif CJK JP and DejaVu Sans/Serif; a missing one is an error naming
    /// the Debian packages to install.
    pub fn find() -> Result<Fonts> {
        let load = |(path, index): (&str, u32)| -> Result<FontArc> {
            let bytes = std::fs::read(path).with_context(|| {
                format!("font {path} not found: apt-get install fonts-noto-cjk fonts-dejavu-core")
            })?;
            let font = FontVec::try_from_vec_and_index(bytes, index)
                .with_context(|| format!("font {path}: not a font this build reads"))?;
            Ok(FontArc::new(font))
        };
        Ok(Fonts {
            sans_cjk: load(NOTO_SANS_CJK)?,
            serif_cjk: load(NOTO_SERIF_CJK)?,
            sans_latin: load(DEJAVU_SANS)?,
            serif_latin: load(DEJAVU_SERIF)?,
        })
    }
    /// Noto Sans CJK JP (also draws Latin).
    pub fn sans_cjk(&self) -> FontArc {
        self.sans_cjk.clone()
    }
    /// Noto Serif CJK JP.
    pub fn serif_cjk(&self) -> FontArc {
        self.serif_cjk.clone()
    }
    /// DejaVu Sans.
    pub fn sans_latin(&self) -> FontArc {
        self.sans_latin.clone()
    }
    /// DejaVu Serif.
    pub fn serif_latin(&self) -> FontArc {
        self.serif_latin.clone()
    }
}

/// One image to draw: black text on white, lines split at `\n`.
#[derive(Clone)]
pub struct Spec {
    pub text: String,
    pub font: FontArc,
    /// Font size in pixels.
    pub px: f32,
    /// Turned by this much after drawing (the canvas grows, white).
    pub rotate_degrees: f32,
    /// The fraction of pixels replaced by random gray levels (0: clean).
    pub noise: f32,
    /// Seed of the noise.
    pub seed: u64,
}

/// Draws `spec`.
pub fn render(spec: &Spec) -> RgbImage {
    let scale = PxScale::from(spec.px);
    let lines: Vec<&str> = spec.text.lines().collect();
    let line_h = (spec.px * 1.4).ceil() as u32;
    let margin = (spec.px * 0.8).ceil() as u32;
    let width = lines
        .iter()
        .map(|l| imageproc::drawing::text_size(scale, &spec.font, l).0)
        .max()
        .unwrap_or(0);
    let mut img = RgbImage::from_pixel(
        width + 2 * margin,
        line_h * lines.len().max(1) as u32 + 2 * margin,
        Rgb([255, 255, 255]),
    );
    for (i, line) in lines.iter().enumerate() {
        imageproc::drawing::draw_text_mut(
            &mut img,
            Rgb([0, 0, 0]),
            margin as i32,
            (margin + i as u32 * line_h) as i32,
            scale,
            &spec.font,
            line,
        );
    }
    if spec.rotate_degrees != 0.0 {
        let (w, h) = img.dimensions();
        let t = spec.rotate_degrees.to_radians().abs();
        let pad_x = ((h as f32 * t.sin()) / 2.0).ceil() as u32 + 2;
        let pad_y = ((w as f32 * t.sin()) / 2.0).ceil() as u32 + 2;
        let mut canvas = RgbImage::from_pixel(w + 2 * pad_x, h + 2 * pad_y, Rgb([255, 255, 255]));
        imageops::replace(&mut canvas, &img, pad_x as i64, pad_y as i64);
        img = rotate_about_center(
            &canvas,
            spec.rotate_degrees.to_radians(),
            Interpolation::Bilinear,
            Rgb([255, 255, 255]),
        );
    }
    if spec.noise > 0.0 {
        // xorshift64*: deterministic noise with no rand dependency.
        let mut s = spec.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let threshold = (spec.noise.clamp(0.0, 1.0) as f64 * u32::MAX as f64) as u64;
        for p in img.pixels_mut() {
            let r = next();
            if (r & 0xffff_ffff) < threshold {
                let v = (r >> 32) as u8;
                *p = Rgb([v, v, v]);
            }
        }
    }
    img
}

/// Character error rate: the edit distance between `hypothesis` and `reference` over the
/// reference's length, both with whitespace removed (Tesseract's spacing of Japanese is not an
/// error worth counting). 0 is perfect; above 1 is possible (many inserted characters).
pub fn char_error_rate(hypothesis: &str, reference: &str) -> f64 {
    let h: Vec<char> = hypothesis.chars().filter(|c| !c.is_whitespace()).collect();
    let r: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0; h.len() + 1];
    for (i, rc) in r.iter().enumerate() {
        cur[0] = i + 1;
        for (j, hc) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rc != hc);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[h.len()] as f64 / r.len() as f64
}
