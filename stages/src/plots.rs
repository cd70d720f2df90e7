//! Evaluation plots as PNG or SVG (chosen by the output path's extension), drawn with
//! plotters in pure Rust: text uses an embedded DejaVu Sans through ab_glyph (no
//! fontconfig / freetype), PNGs are encoded by the `png` crate. Files are written
//! atomically; every plot is [`SIZE`] pixels.
//!
//! - [`training_history`]: training loss per step and the dev metric per evaluation.
//! - [`predicted_vs_true`]: regression scatter with the y = x diagonal.
//! - [`confusion_matrix`]: heatmap, rows = true class, columns = predicted, shaded by the
//!   row-normalised share, annotated with counts.
//! - [`reliability_diagram`]: accuracy per confidence bin against the diagonal, ECE in the
//!   title.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::metrics::CalibrationBin;
use tsumugi_base::atomic::write_atomic;

/// Width and height of every plot, in pixels (SVG user units).
pub const SIZE: (u32, u32) = (900, 600);

/// DejaVu Sans (Bitstream Vera licence, see assets/DejaVuSans-LICENSE.txt), unmodified.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if !ok {
        bail!("plots: the embedded font could not be loaded");
    }
    Ok(())
}

/// A plotters error as an `anyhow` one.
pub fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plots: {e}")
}

/// A plot that can be drawn on any plotters backend (also `tsumugi-plots`' declared plots,
/// so that every plot tsumugi writes has one size, font and encoder).
pub trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Draws `plot` into `path`, PNG or SVG by extension.
pub fn render(path: &Path, plot: &impl Draw) -> Result<()> {
    register_font()?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let (w, h) = SIZE;
    match ext.as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                root.fill(&WHITE).map_err(err)?;
                plot.draw(&root)?;
                root.present().map_err(err)?;
            }
            write_atomic(path, svg.as_bytes())
        }
        Some("png") => {
            let mut rgb = vec![0u8; (w * h * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                root.fill(&WHITE).map_err(err)?;
                plot.draw(&root)?;
                root.present().map_err(err)?;
            }
            let mut png_bytes = Vec::new();
            {
                let mut enc = png::Encoder::new(&mut png_bytes, w, h);
                enc.set_color(png::ColorType::Rgb);
                enc.set_depth(png::BitDepth::Eight);
                let mut writer = enc.write_header().map_err(err)?;
                writer.write_image_data(&rgb).map_err(err)?;
                writer.finish().map_err(err)?;
            }
            write_atomic(path, &png_bytes)
        }
        _ => bail!("plots: {} must end in .png or .svg", path.display()),
    }
}

/// (min, max) of the finite values, widened when they coincide so an axis has extent.
pub fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if lo == hi {
        let pad = if lo == 0.0 { 0.5 } else { lo.abs() * 0.1 };
        return Some((lo - pad, hi + pad));
    }
    let pad = (hi - lo) * 0.05;
    Some((lo - pad, hi + pad))
}

/// One panel of the history plot: points, caption, colour, y-axis label.
type Panel<'a> = (&'a [(u64, f64)], &'a str, RGBColor, &'a str);

struct History<'a> {
    loss: &'a [(u64, f64)],
    dev: &'a [(u64, f64)],
    dev_metric: &'a str,
}

impl Draw for History<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let last_step = self
            .loss
            .iter()
            .chain(self.dev)
            .map(|p| p.0)
            .max()
            .unwrap_or(1)
            .max(1);
        let panels: Vec<DrawingArea<DB, Shift>> = if self.dev.is_empty() {
            vec![root.clone()]
        } else {
            root.split_evenly((2, 1))
        };
        let series: [Panel<'_>; 2] = [
            (self.loss, "training loss", BLUE, "loss"),
            (self.dev, self.dev_metric, RED, self.dev_metric),
        ];
        for (area, (points, caption, colour, y_desc)) in panels.iter().zip(series) {
            let (lo, hi) = extent(points.iter().map(|p| p.1))
                .ok_or_else(|| anyhow!("plots: no finite {caption} value to plot"))?;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..last_step as f64, lo..hi)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .draw()
                .map_err(err)?;
            let finite = points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(s, v)| (s as f64, v));
            chart
                .draw_series(LineSeries::new(finite.clone(), colour.stroke_width(2)))
                .map_err(err)?;
            if points.len() <= 60 {
                // Few points (evaluations): mark each one.
                chart
                    .draw_series(finite.map(|p| Circle::new(p, 3, colour.filled())))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Training loss per step (top) and, when there are evaluations, the dev metric per
/// evaluation step (bottom). Non-finite values are left out of the lines.
pub fn training_history(
    path: &Path,
    loss: &[(u64, f64)],
    dev: &[(u64, f64)],
    dev_metric: &str,
) -> Result<()> {
    if loss.is_empty() {
        bail!("plots: training_history needs at least one loss value");
    }
    render(
        path,
        &History {
            loss,
            dev,
            dev_metric,
        },
    )
}

struct Scatter<'a> {
    y: &'a [f64],
    p: &'a [f64],
}

impl Draw for Scatter<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (lo, hi) = extent(self.y.iter().chain(self.p).copied())
            .ok_or_else(|| anyhow!("plots: no finite value to plot"))?;
        let caption = format!("predicted vs true (n = {})", self.y.len());
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("true")
            .y_desc("predicted")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                [(lo, lo), (hi, hi)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(err)?;
        let points = self
            .y
            .iter()
            .zip(self.p)
            .filter(|(a, b)| a.is_finite() && b.is_finite());
        chart
            .draw_series(points.map(|(&a, &b)| Circle::new((a, b), 2, BLUE.mix(0.45).filled())))
            .map_err(err)?;
        Ok(())
    }
}

/// Regression scatter of predictions against the truth, with the y = x diagonal.
pub fn predicted_vs_true(path: &Path, y_true: &[f64], y_pred: &[f64]) -> Result<()> {
    if y_true.len() != y_pred.len() || y_true.is_empty() {
        bail!(
            "plots: predicted_vs_true needs equally long, non-empty inputs ({} true, {} predicted)",
            y_true.len(),
            y_pred.len()
        );
    }
    render(
        path,
        &Scatter {
            y: y_true,
            p: y_pred,
        },
    )
}

/// A confusion-matrix heatmap (`m[true][pred]`), rows shaded by their share; also drawn by
/// `tsumugi-plots` for declared confusion plots.
pub struct Heatmap<'a> {
    pub m: &'a [Vec<u64>],
    pub labels: &'a [String],
    pub caption: &'a str,
}

impl Draw for Heatmap<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let n = self.m.len();
        let label_of = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) => self.labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        // Row 0 (the first true class) at the top: y segment i shows row n-1-i.
        let y_label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) if (*i as usize) < n => {
                self.labels[n - 1 - *i as usize].clone()
            }
            _ => String::new(),
        };
        let mut chart = ChartBuilder::on(root)
            .caption(self.caption, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(110)
            // An integer range a..b is inclusive as plotters keys go: 0..n-1 gives n cells.
            .build_cartesian_2d(
                (0u32..n as u32 - 1).into_segmented(),
                (0u32..n as u32 - 1).into_segmented(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(n)
            .y_labels(n)
            .x_label_formatter(&label_of)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(err)?;
        let font_size = if n <= 6 {
            20
        } else if n <= 12 {
            14
        } else {
            10
        };
        for (t, row) in self.m.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total == 0 {
                    0.0
                } else {
                    count as f64 / total as f64
                };
                let shade = |full: u8| (255.0 - share * (255.0 - f64::from(full))).round() as u8;
                let fill = RGBColor(shade(8), shade(48), shade(107));
                let (x, y) = (p as u32, (n - 1 - t) as u32);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [
                            (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                            (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                        ],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = ("sans-serif", font_size).into_font().color(&ink).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                );
                chart
                    .draw_series(std::iter::once(Text::new(
                        count.to_string(),
                        (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                        style,
                    )))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Confusion-matrix heatmap; `matrix[true][pred]` counts as from
/// [`crate::metrics::confusion_matrix`], `labels` the class names in index order.
pub fn confusion_matrix(path: &Path, matrix: &[Vec<u64>], labels: &[String]) -> Result<()> {
    let n = matrix.len();
    if n == 0 || labels.len() != n || matrix.iter().any(|r| r.len() != n) {
        bail!(
            "plots: confusion_matrix needs a square n × n matrix and n labels (got {n} rows, {} labels)",
            labels.len()
        );
    }
    render(
        path,
        &Heatmap {
            m: matrix,
            labels,
            caption: "confusion matrix (row-normalised shading)",
        },
    )
}

struct Reliability<'a> {
    bins: &'a [CalibrationBin],
}

impl Draw for Reliability<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let n: usize = self.bins.iter().map(|b| b.count).sum();
        let ece: f64 = self
            .bins
            .iter()
            .map(|b| b.count as f64 / n.max(1) as f64 * (b.accuracy - b.confidence).abs())
            .sum();
        let caption = format!(
            "reliability diagram ({} bins, n = {n}, ECE = {ece:.4})",
            self.bins.len()
        );
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("confidence (max probability)")
            .y_desc("accuracy")
            .draw()
            .map_err(err)?;
        let filled = self.bins.iter().filter(|b| b.count > 0);
        chart
            .draw_series(filled.clone().map(|b| {
                Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    BLUE.mix(0.6).filled(),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(filled.clone().map(|b| {
                Rectangle::new(
                    [(b.lower, 0.0), (b.upper, b.accuracy)],
                    BLUE.stroke_width(1),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(err)?;
        // Mean confidence of each bin: where its bar would end if it were calibrated.
        chart
            .draw_series(filled.map(|b| {
                PathElement::new(
                    vec![(b.lower, b.confidence), (b.upper, b.confidence)],
                    RED.stroke_width(3),
                )
            }))
            .map_err(err)?
            .label("mean confidence")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(3)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// Reliability diagram from [`crate::metrics::calibration_bins`]: one bar per non-empty
/// bin up to its accuracy, a red tick across it at its mean confidence, the diagonal for
/// perfect calibration.
pub fn reliability_diagram(path: &Path, bins: &[CalibrationBin]) -> Result<()> {
    if bins.is_empty() {
        bail!("plots: reliability_diagram needs at least one bin");
    }
    render(path, &Reliability { bins })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(bytes: &[u8]) -> (u32, u32) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().expect("a valid PNG");
        let info = reader.info();
        (info.width, info.height)
    }

    fn check_svg(text: &str) {
        assert!(text.starts_with("<svg"), "SVG root element");
        assert!(
            text.contains(&format!("width=\"{}\"", SIZE.0))
                && text.contains(&format!("height=\"{}\"", SIZE.1))
        );
        assert!(text.trim_end().ends_with("</svg>"));
        assert!(text.contains("<text"), "labels are drawn");
    }

    /// Renders each plot as PNG and SVG; checks both decode / parse at the expected size
    /// and that the PNG is not blank.
    #[test]
    fn every_plot_renders_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let keep = std::env::var_os("TSUMUGI_KEEP_PLOTS").map(std::path::PathBuf::from);
        let out = keep.as_deref().unwrap_or(dir.path());
        let loss: Vec<(u64, f64)> = (1..=200)
            .map(|s| {
                (
                    s,
                    1.0 / (1.0 + s as f64 * 0.05) + 0.02 * ((s * 7) % 5) as f64,
                )
            })
            .collect();
        let dev: Vec<(u64, f64)> = (1..=5).map(|k| (k * 40, 0.6 + 0.04 * k as f64)).collect();
        let y: Vec<f64> = (0..300).map(|i| (i % 26) as f64 / 5.0).collect();
        let p: Vec<f64> = y
            .iter()
            .enumerate()
            .map(|(i, v)| v * 0.8 + 0.5 + ((i * 37) % 11) as f64 / 10.0 - 0.5)
            .collect();
        let m = vec![vec![50, 7, 3], vec![6, 41, 12], vec![2, 9, 70]];
        let labels: Vec<String> = ["entailment", "neutral", "contradiction"]
            .map(String::from)
            .to_vec();
        let probs: Vec<f64> = (0..200)
            .flat_map(|i| {
                let c = 0.34 + 0.65 * ((i * 13) % 100) as f64 / 100.0;
                [c, (1.0 - c) / 2.0, (1.0 - c) / 2.0]
            })
            .collect();
        let truth: Vec<usize> = (0..200)
            .map(|i| if (i * 7) % 10 < 7 { 0 } else { 1 })
            .collect();
        let bins = crate::metrics::calibration_bins(&probs, 3, &truth, 15).unwrap();

        for ext in ["png", "svg"] {
            let f = |name: &str| out.join(format!("{name}.{ext}"));
            training_history(&f("history"), &loss, &dev, "spearman").unwrap();
            predicted_vs_true(&f("scatter"), &y, &p).unwrap();
            confusion_matrix(&f("confusion"), &m, &labels).unwrap();
            reliability_diagram(&f("reliability"), &bins).unwrap();
            for name in ["history", "scatter", "confusion", "reliability"] {
                let bytes = std::fs::read(f(name)).unwrap();
                if ext == "png" {
                    assert_eq!(png_size(&bytes), SIZE, "{name}.png");
                    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
                        .read_info()
                        .unwrap();
                    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
                    reader.next_frame(&mut buf).unwrap();
                    let dark = buf.iter().filter(|&&b| b < 128).count();
                    assert!(
                        dark > 1000,
                        "{name}.png has something drawn ({dark} dark bytes)"
                    );
                } else {
                    check_svg(&String::from_utf8(bytes).unwrap());
                }
            }
        }
        training_history(&out.join("history-no-dev.png"), &loss, &[], "").unwrap();
        confusion_matrix(&out.join("confusion-1.png"), &[vec![3]], &["only".into()]).unwrap();
    }

    #[test]
    fn bad_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(training_history(&dir.path().join("a.png"), &[], &[], "x").is_err());
        assert!(predicted_vs_true(&dir.path().join("a.png"), &[1.0], &[]).is_err());
        assert!(confusion_matrix(&dir.path().join("a.png"), &[vec![1, 2]], &["a".into()]).is_err());
        let err = predicted_vs_true(&dir.path().join("a.jpg"), &[1.0], &[1.0]).unwrap_err();
        assert!(err.to_string().contains(".png or .svg"));
        assert!(training_history(&dir.path().join("b.png"), &[(1, f64::NAN)], &[], "x").is_err());
    }
}
