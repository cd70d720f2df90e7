//! A page made easy for Tesseract, in Rust: grayscale, contrast stretch, dark-on-light,
//! despeckling, deskew by projection profile, upscaling of small text, Otsu binarisation
//! (off by default: Tesseract thresholds the gray page better, BENCHMARKS.md "OCR quality").
//!
//! Order matters: the skew and the text height are measured on an Otsu mask of the
//! stretched grayscale, the grayscale is rotated and scaled (interpolating gray levels, not
//! a binary image, keeps strokes smooth), and the threshold comes last.

use image::{DynamicImage, GrayImage, Luma, imageops};
use imageproc::geometric_transformations::{Interpolation, rotate_about_center};
use schemars::JsonSchema;
use serde::Deserialize;

/// `preprocess:` of `caption-images`. Every step is on by default except `binarize`; any
/// step but `grayscale` works on the grayscale image, so it implies it.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Preprocess {
    /// Convert to 8-bit grayscale (default true).
    pub grayscale: bool,
    /// Stretch the 1st..99th percentile of gray levels to the full range, and turn light
    /// text on a dark background into dark on light (default true).
    pub contrast: bool,
    /// Remove speckle noise: isolated dark pixels turn white and pinholes in strokes dark,
    /// judged against Otsu's threshold by the 8 neighbours (default true). Unlike a median
    /// filter it leaves thin strokes of small text alone.
    pub denoise: bool,
    /// `none` (default): hand Tesseract the gray levels (it thresholds them itself, and
    /// measured better: BENCHMARKS.md); `otsu`: black and white at Otsu's threshold.
    pub binarize: Binarize,
    /// Straighten text rotated by up to `max_skew_degrees` (default true).
    pub deskew: bool,
    /// The largest skew searched, in degrees either way (default 5).
    pub max_skew_degrees: f32,
    /// Text lines measured lower than this many pixels are scaled up to it, at most 4×
    /// (default 40; 0 turns it off). Tesseract reads best at 30–40 px per line.
    pub upscale_min_height: u32,
}

/// How the page is thresholded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Binarize {
    Otsu,
    None,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            grayscale: true,
            contrast: true,
            denoise: true,
            binarize: Binarize::None,
            deskew: true,
            max_skew_degrees: 5.0,
            upscale_min_height: 40,
        }
    }
}

/// What [`Preprocess::apply`] measured and did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Applied {
    /// The skew found, in degrees (positive: text rising to the right); 0 when not searched.
    pub skew_degrees: f32,
    /// The scale factor applied (1 when not upscaled).
    pub scale: f32,
    /// The median text-line height before scaling, in pixels (0 when not measured).
    pub line_height: u32,
}

impl Preprocess {
    /// Every step off: the image goes to the engine as it was decoded.
    pub fn none() -> Self {
        Preprocess {
            grayscale: false,
            contrast: false,
            denoise: false,
            binarize: Binarize::None,
            deskew: false,
            max_skew_degrees: 5.0,
            upscale_min_height: 0,
        }
    }

    fn needs_gray(&self) -> bool {
        self.grayscale
            || self.contrast
            || self.denoise
            || self.binarize != Binarize::None
            || self.deskew
            || self.upscale_min_height > 0
    }

    /// The page to hand to the OCR engine, and what was done to it.
    pub fn apply(&self, img: &DynamicImage) -> (DynamicImage, Applied) {
        let mut applied = Applied {
            scale: 1.0,
            ..Applied::default()
        };
        if !self.needs_gray() {
            return (img.clone(), applied);
        }
        let mut gray = img.to_luma8();
        if gray.width() == 0 || gray.height() == 0 {
            return (DynamicImage::ImageLuma8(gray), applied);
        }
        if self.contrast {
            stretch(&mut gray);
        }
        if self.denoise {
            despeckle(&mut gray);
        }
        if self.deskew || self.upscale_min_height > 0 {
            let level = imageproc::contrast::otsu_level(&gray);
            let mut dark = dark_pixels(&gray, level);
            if self.deskew {
                let angle = find_skew(&dark, self.max_skew_degrees);
                // Rotating by less than a quarter degree moves a 1000-px line by < 5 px:
                // not worth the interpolation blur.
                if angle.abs() >= 0.25 {
                    gray = rotate(&gray, angle);
                    dark = dark_pixels(&gray, level);
                    applied.skew_degrees = angle;
                }
            }
            if self.upscale_min_height > 0 {
                let h = median_line_height(&dark, gray.height());
                applied.line_height = h;
                if h > 0 && h < self.upscale_min_height {
                    let f = (self.upscale_min_height as f32 / h as f32).min(4.0);
                    let (w, ht) = (gray.width(), gray.height());
                    gray = imageops::resize(
                        &gray,
                        (w as f32 * f).round() as u32,
                        (ht as f32 * f).round() as u32,
                        imageops::FilterType::CatmullRom,
                    );
                    applied.scale = f;
                }
            }
        }
        if self.binarize == Binarize::Otsu {
            let level = imageproc::contrast::otsu_level(&gray);
            for p in gray.pixels_mut() {
                p.0[0] = if p.0[0] > level { 255 } else { 0 };
            }
        }
        (DynamicImage::ImageLuma8(gray), applied)
    }
}

/// Linear stretch of the 1st..99th percentile to 0..255; inverts a page that is mostly dark
/// (light text on a dark background) so the text is dark, as Tesseract expects.
fn stretch(gray: &mut GrayImage) {
    let mut hist = [0u64; 256];
    for p in gray.pixels() {
        hist[p.0[0] as usize] += 1;
    }
    let n: u64 = hist.iter().sum();
    let pct = |q: f64| {
        let target = (n as f64 * q) as u64;
        let mut acc = 0;
        for (v, c) in hist.iter().enumerate() {
            acc += c;
            if acc > target {
                return v as u8;
            }
        }
        255
    };
    let (lo, hi) = (pct(0.01), pct(0.99));
    let mean = hist
        .iter()
        .enumerate()
        .map(|(v, c)| v as f64 * *c as f64)
        .sum::<f64>()
        / n as f64;
    let invert = mean < 110.0;
    let span = (hi as f32 - lo as f32).max(1.0);
    for p in gray.pixels_mut() {
        let v = if hi > lo {
            ((p.0[0] as f32 - lo as f32) / span * 255.0).clamp(0.0, 255.0) as u8
        } else {
            p.0[0]
        };
        p.0[0] = if invert { 255 - v } else { v };
    }
}

/// Isolated dark pixels (no dark 8-neighbour) become white, light pixels with at least 7
/// dark neighbours become dark: salt-and-pepper noise goes, strokes keep their width.
fn despeckle(gray: &mut GrayImage) {
    let level = imageproc::contrast::otsu_level(gray);
    let (w, h) = gray.dimensions();
    let dark: Vec<bool> = gray.pixels().map(|p| p.0[0] <= level).collect();
    let at = |x: i64, y: i64| {
        x >= 0 && y >= 0 && x < w as i64 && y < h as i64 && dark[(y as u32 * w + x as u32) as usize]
    };
    for y in 0..h {
        for x in 0..w {
            let (xi, yi) = (x as i64, y as i64);
            let mut n = 0;
            for (dx, dy) in [
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ] {
                n += u32::from(at(xi + dx, yi + dy));
            }
            let i = (y * w + x) as usize;
            if dark[i] && n == 0 {
                gray.put_pixel(x, y, Luma([255]));
            } else if !dark[i] && n >= 7 {
                gray.put_pixel(x, y, Luma([0]));
            }
        }
    }
}

/// Coordinates of the pixels at or below `level` (the ink), with the page's size.
struct Dark {
    points: Vec<(f32, f32)>,
    rows: Vec<u32>,
}

fn dark_pixels(gray: &GrayImage, level: u8) -> Dark {
    let mut points = Vec::new();
    let mut rows = vec![0u32; gray.height() as usize];
    for (x, y, p) in gray.enumerate_pixels() {
        if p.0[0] <= level {
            points.push((x as f32, y as f32));
            rows[y as usize] += 1;
        }
    }
    // A page that is mostly "ink" is a dark photo, not text: measuring skew on it means nothing.
    if points.len() as u64 * 2 > gray.width() as u64 * gray.height() as u64 {
        points.clear();
    }
    Dark { points, rows }
}

/// The skew (degrees) whose horizontal projection profile is sharpest: text lines rotated
/// back to horizontal pile their ink into few rows, so the summed squared difference
/// between neighbouring rows peaks there. Coarse 0.5° steps, then 0.1° around the best.
fn find_skew(dark: &Dark, max_degrees: f32) -> f32 {
    if dark.points.len() < 50 || max_degrees <= 0.0 {
        return 0.0;
    }
    // Thousands of points are plenty to find the angle; subsample big pages.
    let step = (dark.points.len() / 40_000).max(1);
    let pts: Vec<(f32, f32)> = dark.points.iter().step_by(step).copied().collect();
    let score = |deg: f32| -> f64 {
        let (s, c) = deg.to_radians().sin_cos();
        let ys: Vec<f32> = pts.iter().map(|(x, y)| y * c + x * s).collect();
        let min = ys.iter().copied().fold(f32::INFINITY, f32::min);
        let max = ys.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut bins = vec![0f64; (max - min) as usize + 2];
        for y in ys {
            bins[(y - min) as usize] += 1.0;
        }
        bins.windows(2).map(|w| (w[1] - w[0]).powi(2)).sum()
    };
    let best_of = |from: f32, to: f32, by: f32| {
        let mut best = (0.0f32, f64::MIN);
        let mut a = from;
        while a <= to + 1e-4 {
            let s = score(a);
            // Ties keep the angle nearest 0 (tried first when the range is symmetric).
            if s > best.1 * (1.0 + 1e-9) || (s == best.1 && a.abs() < best.0.abs()) {
                best = (a, s);
            }
            a += by;
        }
        best.0
    };
    let coarse = best_of(-max_degrees, max_degrees, 0.5);
    best_of(coarse - 0.5, coarse + 0.5, 0.1)
}

/// The page turned by `degrees` (the skew [`find_skew`] measured, undone), on a canvas grown
/// so no corner of the text is cut, the new area white.
fn rotate(gray: &GrayImage, degrees: f32) -> GrayImage {
    let (w, h) = gray.dimensions();
    let t = degrees.to_radians().abs();
    let pad_x = ((h as f32 * t.sin()) / 2.0).ceil() as u32 + 2;
    let pad_y = ((w as f32 * t.sin()) / 2.0).ceil() as u32 + 2;
    let mut canvas = GrayImage::from_pixel(w + 2 * pad_x, h + 2 * pad_y, Luma([255]));
    imageops::replace(&mut canvas, gray, pad_x as i64, pad_y as i64);
    rotate_about_center(
        &canvas,
        degrees.to_radians(),
        Interpolation::Bilinear,
        Luma([255]),
    )
}

/// The median height of the runs of rows holding ink (text lines), ignoring runs under 3
/// rows (speckles, underlines); 0 when there is no text. A row holds ink when it has more
/// than a tenth of the inkiest row's dark pixels, so scattered noise does not join lines.
fn median_line_height(dark: &Dark, height: u32) -> u32 {
    let width_ink_min = (dark.rows.iter().copied().max().unwrap_or(0) / 10).max(1);
    let mut runs = Vec::new();
    let mut start = None;
    for y in 0..=height as usize {
        let inked = dark.rows.get(y).is_some_and(|&n| n > width_ink_min);
        match (inked, start) {
            (true, None) => start = Some(y),
            (false, Some(s)) => {
                if y - s >= 3 {
                    runs.push((y - s) as u32);
                }
                start = None;
            }
            _ => {}
        }
    }
    if runs.is_empty() {
        return 0;
    }
    runs.sort_unstable();
    runs[runs.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::render::{self, Fonts};

    #[test]
    fn a_rotated_line_is_measured_and_straightened() {
        let fonts = Fonts::find().unwrap();
        for deg in [-3.0f32, 2.0, 4.0] {
            let img = render::render(&render::Spec {
                text: "The quick brown fox jumps over the lazy dog".into(),
                font: fonts.sans_latin(),
                px: 28.0,
                rotate_degrees: deg,
                noise: 0.0,
                seed: 1,
            });
            let gray = DynamicImage::ImageRgb8(img).to_luma8();
            let level = imageproc::contrast::otsu_level(&gray);
            let found = find_skew(&dark_pixels(&gray, level), 5.0);
            // The skew found undoes the rotation drawn.
            assert!((found + deg).abs() <= 0.3, "drew {deg}°, found {found}°");
            let straight = rotate(&gray, found);
            let again = find_skew(&dark_pixels(&straight, level), 5.0);
            assert!(again.abs() <= 0.3, "after deskew {again}°");
        }
    }

    #[test]
    fn small_text_is_scaled_up_and_the_result_is_black_and_white() {
        let fonts = Fonts::find().unwrap();
        let img = render::render(&render::Spec {
            text: "small".into(),
            font: fonts.sans_latin(),
            px: 12.0,
            rotate_degrees: 0.0,
            noise: 0.0,
            seed: 1,
        });
        let otsu = Preprocess {
            binarize: Binarize::Otsu,
            ..Preprocess::default()
        };
        let (out, applied) = otsu.apply(&DynamicImage::ImageRgb8(img.clone()));
        assert!(applied.scale > 2.0, "{applied:?}");
        assert_eq!(
            out.height(),
            (img.height() as f32 * applied.scale).round() as u32
        );
        assert!(
            out.to_luma8()
                .pixels()
                .all(|p| p.0[0] == 0 || p.0[0] == 255)
        );
        let (same, none) = Preprocess::none().apply(&DynamicImage::ImageRgb8(img.clone()));
        assert_eq!(none.scale, 1.0);
        assert_eq!(same.to_rgb8(), img);
    }

    #[test]
    fn speckles_go_and_strokes_stay() {
        let mut g = GrayImage::from_pixel(30, 30, Luma([255]));
        // A 3-px stroke and a 1-px one.
        for x in 5..25 {
            for y in 9..12 {
                g.put_pixel(x, y, Luma([0]));
            }
            g.put_pixel(x, 20, Luma([0]));
        }
        g.put_pixel(3, 25, Luma([0])); // a speckle
        g.put_pixel(12, 10, Luma([200])); // a pinhole in the thick stroke
        despeckle(&mut g);
        assert_eq!(g.get_pixel(3, 25).0[0], 255);
        assert_eq!(g.get_pixel(12, 10).0[0], 0);
        assert!((5..25).all(|x| (9..12).all(|y| g.get_pixel(x, y).0[0] == 0)));
        assert!(
            (5..25).all(|x| g.get_pixel(x, 20).0[0] == 0),
            "a thin stroke stays"
        );
    }

    #[test]
    fn light_text_on_dark_is_turned_dark_on_light() {
        let mut g = GrayImage::from_pixel(40, 20, Luma([20]));
        for x in 10..30 {
            g.put_pixel(x, 10, Luma([230]));
        }
        stretch(&mut g);
        assert_eq!(g.get_pixel(0, 0).0[0], 255);
        assert_eq!(g.get_pixel(15, 10).0[0], 0);
    }
}
