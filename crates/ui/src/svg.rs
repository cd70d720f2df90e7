//! Inline SVG drawings: overlaid line charts (training curves), a run's stage timeline, a
//! pipeline's DAG. Colours are attributes, not `style=`, so the page's content security
//! policy can forbid inline styles.

use std::fmt::Write;

use crate::html::{esc, num};

/// Distinguishable on white and for the common colour-vision deficiencies (Okabe–Ito).
pub const PALETTE: &[&str] = &[
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One line of a chart.
pub struct Line {
    pub label: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Lines over shared axes (x: step), with min/max ticks and a legend.
pub fn line_chart(title: &str, lines: &[Line]) -> String {
    let (w, h, l, r, t, b) = (560.0, 260.0, 64.0, 12.0, 24.0, 28.0);
    let pts = lines.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return String::new();
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{te}\">\
<text x=\"{l}\" y=\"16\" class=\"ct\">{te}</text>\
<rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#ccc\"/>\
<text x=\"{tl}\" y=\"{ty1}\" text-anchor=\"end\" class=\"tick\">{y1s}</text>\
<text x=\"{tl}\" y=\"{ty0}\" text-anchor=\"end\" class=\"tick\">{y0s}</text>\
<text x=\"{l}\" y=\"{tx}\" class=\"tick\">{x0s}</text>\
<text x=\"{xr}\" y=\"{tx}\" text-anchor=\"end\" class=\"tick\">{x1s}</text>",
        te = esc(title),
        pw = w - l - r,
        ph = h - t - b,
        tl = l - 4.0,
        ty1 = t + 10.0,
        ty0 = h - b,
        tx = h - b + 16.0,
        xr = w - r,
        y1s = num(y1),
        y0s = num(y0),
        x0s = num(x0),
        x1s = num(x1),
    );
    for line in lines {
        let p: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            p.join(" "),
            esc(&line.label),
            c = line.colour,
        );
        if line.points.len() == 1 {
            let (x, y) = line.points[0];
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                sx(x),
                sy(y),
                line.colour
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// A stage on the timeline: offsets in ms from the run's start.
pub struct Bar {
    pub label: String,
    pub start: f64,
    pub end: f64,
    pub status: String,
}

fn status_fill(status: &str) -> &'static str {
    match status {
        "ran" => "#009E73",
        "cached" | "restored" | "skipped" => "#9aa5b1",
        "running" => "#E69F00",
        _ => "#D55E00",
    }
}

/// Stages as horizontal bars on a shared time axis.
pub fn timeline(bars: &[Bar]) -> String {
    let (w, row, l, r) = (900.0, 24.0, 160.0, 90.0);
    let h = row * bars.len() as f64 + 28.0;
    let total = bars.iter().map(|b| b.end).fold(1.0_f64, f64::max);
    let sx = |x: f64| l + x / total * (w - l - r);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"timeline\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"stage timeline\">"
    );
    for (i, b) in bars.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let x = sx(b.start);
        let bw = (sx(b.end) - x).max(2.0);
        let _ = write!(
            s,
            "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{name}</text>\
<rect x=\"{x:.1}\" y=\"{y}\" width=\"{bw:.1}\" height=\"{bh}\" rx=\"3\" fill=\"{f}\"><title>{name}: {st}, {d}</title></rect>\
<text x=\"{lx:.1}\" y=\"{ty}\" class=\"tick\">{d}</text>",
            tx = l - 8.0,
            ty = y + 13.0,
            name = esc(&b.label),
            bh = row - 8.0,
            f = status_fill(&b.status),
            st = esc(&b.status),
            d = crate::html::duration_ms((b.end - b.start).round() as i64),
            lx = x + bw + 4.0,
        );
    }
    let ay = h - 8.0;
    let _ = write!(
        s,
        "<text x=\"{l}\" y=\"{ay}\" class=\"tick\">0</text><text x=\"{xr}\" y=\"{ay}\" text-anchor=\"end\" class=\"tick\">{}</text></svg>",
        crate::html::duration_ms(total.round() as i64),
        xr = w - r,
    );
    s
}

/// A node of a DAG drawing.
pub struct Node {
    pub name: String,
    pub fresh: bool,
    /// Shown on hover: the stale reasons.
    pub tooltip: String,
}

/// Nodes in layers (longest path from a root), edges as curves from left to right.
/// `edges` are (from, to) indexes into `nodes`; `layer` gives each node's column.
pub fn dag(nodes: &[Node], layer: &[usize], edges: &[(usize, usize)]) -> String {
    let (nw, nh, gx, gy, pad) = (150.0, 34.0, 70.0, 18.0, 10.0);
    let mut row = vec![0usize; nodes.len()];
    let mut per_layer: Vec<usize> = Vec::new();
    for (i, &l) in layer.iter().enumerate() {
        if per_layer.len() <= l {
            per_layer.resize(l + 1, 0);
        }
        row[i] = per_layer[l];
        per_layer[l] += 1;
    }
    let cols = per_layer.len().max(1) as f64;
    let rows = per_layer.iter().copied().max().unwrap_or(1) as f64;
    let w = pad * 2.0 + cols * nw + (cols - 1.0) * gx;
    let h = pad * 2.0 + rows * nh + (rows - 1.0) * gy;
    let pos = |i: usize| {
        (
            pad + layer[i] as f64 * (nw + gx),
            pad + row[i] as f64 * (nh + gy),
        )
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"dag\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"pipeline graph\">\
<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#777\"/></marker></defs>"
    );
    for &(a, b) in edges {
        let (ax, ay) = pos(a);
        let (bx, by) = pos(b);
        let (x1, y1, x2, y2) = (ax + nw, ay + nh / 2.0, bx, by + nh / 2.0);
        let mx = (x1 + x2) / 2.0;
        let _ = write!(
            s,
            "<path d=\"M{x1:.1},{y1:.1} C{mx:.1},{y1:.1} {mx:.1},{y2:.1} {x2:.1},{y2:.1}\" fill=\"none\" stroke=\"#777\" marker-end=\"url(#arrow)\"/>"
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let (fill, stroke, word) = if n.fresh {
            ("#e3f4ec", "#009E73", "fresh")
        } else {
            ("#fdecdc", "#D55E00", "stale")
        };
        let _ = write!(
            s,
            "<g class=\"node {word}\" data-stage=\"{name}\"><title>{name}: {word}{tip}</title>\
<rect x=\"{x}\" y=\"{y}\" width=\"{nw}\" height=\"{nh}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"/>\
<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"middle\">{name}</text></g>",
            name = esc(&n.name),
            tip = if n.tooltip.is_empty() {
                String::new()
            } else {
                format!("\n{}", esc(&n.tooltip))
            },
            tx = x + nw / 2.0,
            ty = y + nh / 2.0 + 5.0,
        );
    }
    s.push_str("</svg>");
    s
}
