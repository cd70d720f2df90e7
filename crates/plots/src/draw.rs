//! Declared plots drawn with tsumugi-stages' plotters setup (size, font, PNG encoder).

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use tsumugi_stages::plots::{Draw, Heatmap, err, extent};

/// Colours of successive series (Tableau 10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Lines or points: one series per (run, file, field).
pub struct Xy {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub scatter: bool,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Draw for Xy {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let all = || self.series.iter().flat_map(|(_, p)| p.iter());
        let (x0, x1) =
            extent(all().map(|p| p.0)).ok_or_else(|| anyhow!("plots: no point to draw"))?;
        let (y0, y1) =
            extent(all().map(|p| p.1)).ok_or_else(|| anyhow!("plots: no point to draw"))?;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .draw()
            .map_err(err)?;
        for (i, (label, points)) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let finite: Vec<(f64, f64)> = points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            if self.scatter {
                chart
                    .draw_series(finite.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
            } else {
                chart
                    .draw_series(LineSeries::new(finite, colour.stroke_width(2)))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

/// One confusion matrix per run, side by side.
pub struct Confusion {
    pub title: String,
    /// (panel caption, class labels, counts[actual][predicted]).
    pub panels: Vec<(String, Vec<String>, Vec<Vec<u64>>)>,
}

impl Draw for Confusion {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let root = root.titled(&self.title, ("sans-serif", 22)).map_err(err)?;
        let areas = root.split_evenly((1, self.panels.len().max(1)));
        for (area, (caption, labels, m)) in areas.iter().zip(&self.panels) {
            if labels.is_empty() {
                continue;
            }
            Heatmap { m, labels, caption }.draw(area)?;
        }
        Ok(())
    }
}
