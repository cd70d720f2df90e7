//! `plots:` on a stage, as DVC writes them: files the stage writes (JSON, CSV, TSV) drawn
//! as line, scatter or confusion plots. Parsing only; `tsumugi-plots` reads and draws.
//!
//! ```yaml
//! plots:
//!   - eval/plots/prc/test.json: {x: recall, y: precision, template: line, title: PR curve}
//!   - ROC:                       # named: several files on one plot
//!       x: fpr
//!       y: {eval/plots/roc/train.json: tpr, eval/plots/roc/test.json: tpr}
//!   - eval/plots/history.csv     # bare: every numeric column over the first
//! ```

use std::path::PathBuf;

use serde::Serialize;

use crate::yaml::{Kind, Node, Pos};

/// How a plot is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// Lines through the points in x order (DVC's `linear`, `simple`).
    Line,
    Scatter,
    /// Counts of (x = actual, y = predicted) pairs as a heatmap.
    Confusion,
}

impl Template {
    pub fn parse(s: &str) -> Option<Template> {
        Some(match s {
            "line" | "linear" | "simple" => Template::Line,
            "scatter" => Template::Scatter,
            "confusion" | "confusion_normalized" => Template::Confusion,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Line => "line",
            Template::Scatter => "scatter",
            Template::Confusion => "confusion",
        }
    }
}

/// One declared plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plot {
    /// Its name: the key of the named form, else the file path as written. Unique in a
    /// pipeline's stage; output files are named after it.
    pub id: String,
    pub template: Template,
    pub title: Option<String>,
    /// The field on the x axis; `None`: the first column (or the row index if none is numeric).
    pub x: Option<String>,
    /// One series per file (and y field).
    pub series: Vec<Series>,
}

/// A file of a plot and the field drawn from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Relative to the project root; an output of the stage (or inside one).
    pub file: PathBuf,
    /// The y field; `None`: every numeric field but x.
    pub y: Option<String>,
}

pub(crate) const PLOT_KEYS: &[(&str, &str)] = &[
    ("template", "line (or linear, simple), scatter, confusion"),
    ("x", "The field on the x axis (default: the first column)."),
    (
        "y",
        "The field on the y axis, or (named form) {FILE: FIELD, …}: one series per file.",
    ),
    ("title", "The plot's title."),
    (
        "x_label",
        "Ignored label of the x axis (DVC); the field name is used.",
    ),
    (
        "y_label",
        "Ignored label of the y axis (DVC); the field name is used.",
    ),
];

/// A parse problem at a position.
pub(crate) type Problem = (Pos, String);

/// Parses the `plots:` list. `path` turns a node holding a path into a normalised path (it
/// reports its own errors, returning `None`). Returns the plots and each series' position.
pub(crate) fn parse(
    node: &Node,
    stage: &str,
    path: &mut dyn FnMut(&Node) -> Option<PathBuf>,
) -> (Vec<(Plot, Vec<Pos>)>, Vec<Problem>) {
    let mut out = Vec::new();
    let mut errs: Vec<Problem> = Vec::new();
    let what = format!("'plots' of stage '{stage}'");
    let items: &[Node] = match &node.kind {
        Kind::Seq(v) => v,
        _ if node.is_null() => &[],
        _ => {
            errs.push((
                node.pos,
                format!("expected a list for {what}, found {}", node.type_name()),
            ));
            return (out, errs);
        }
    };
    for item in items {
        match &item.kind {
            Kind::Scalar { .. } => {
                let Some(file) = path(item) else { continue };
                out.push((
                    Plot {
                        id: item.scalar_text().unwrap_or_default().to_owned(),
                        template: Template::Line,
                        title: None,
                        x: None,
                        series: vec![Series { file, y: None }],
                    },
                    vec![item.pos],
                ));
            }
            Kind::Map(entries) if entries.len() == 1 => {
                let (key, props) = &entries[0];
                let id = key.scalar_text().unwrap_or_default().to_owned();
                if let Some(p) = one(key, &id, props, &what, path, &mut errs) {
                    out.push(p);
                }
            }
            _ => errs.push((
                item.pos,
                format!(
                    "expected a path or {{PATH-or-NAME: {{x, y, template, title}}}} in {what}, found {}",
                    item.type_name()
                ),
            )),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (p, pos) in &out {
        if !seen.insert(p.id.clone()) {
            errs.push((
                pos[0],
                format!("plot '{}' is declared twice in {what}", p.id),
            ));
        }
    }
    (out, errs)
}

fn one(
    key: &Node,
    id: &str,
    props: &Node,
    what: &str,
    path: &mut dyn FnMut(&Node) -> Option<PathBuf>,
    errs: &mut Vec<Problem>,
) -> Option<(Plot, Vec<Pos>)> {
    let entries: &[(Node, Node)] = match &props.kind {
        Kind::Map(e) => e,
        _ if props.is_null() => &[],
        _ => {
            errs.push((
                props.pos,
                format!(
                    "expected a mapping {{x, y, template, title}} for plot '{id}' in {what}, found {}",
                    props.type_name()
                ),
            ));
            return None;
        }
    };
    let get = |k: &str| entries.iter().find(|(n, _)| n.scalar_text() == Some(k));
    for (k, _) in entries {
        let name = k.scalar_text().unwrap_or_default();
        if !PLOT_KEYS.iter().any(|(n, _)| *n == name) {
            let hint = crate::did_you_mean(name, PLOT_KEYS.iter().map(|(n, _)| *n))
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            errs.push((
                k.pos,
                format!(
                    "unknown key '{name}' in plot '{id}' of {what} (expected one of: template, x, y, title{hint})"
                ),
            ));
        }
    }
    let mut text = |k: &str| -> Option<String> {
        let (_, v) = get(k)?;
        match v.scalar_text() {
            Some(t) if !matches!(v.kind, Kind::Map(_) | Kind::Seq(_)) => Some(t.to_owned()),
            _ => {
                errs.push((
                    v.pos,
                    format!(
                        "expected a string for '{k}' of plot '{id}', found {}",
                        v.type_name()
                    ),
                ));
                None
            }
        }
    };
    let (template_text, title, x) = (text("template"), text("title"), text("x"));
    let template = match template_text {
        None => Template::Line,
        Some(t) => match Template::parse(&t) {
            Some(t) => t,
            None => {
                let pos = get("template").map(|(_, v)| v.pos).unwrap_or(key.pos);
                errs.push((
                    pos,
                    format!(
                        "unknown template '{t}' for plot '{id}' (expected line, linear, simple, scatter or confusion)"
                    ),
                ));
                Template::Line
            }
        },
    };
    let (series, positions) = match get("y").map(|(_, v)| v) {
        // The named form: {FILE: FIELD, …}.
        Some(y) if matches!(y.kind, Kind::Map(_)) => {
            let Kind::Map(files) = &y.kind else {
                unreachable!()
            };
            let mut s = Vec::new();
            let mut ps = Vec::new();
            for (f, field) in files {
                let Some(file) = path(f) else { continue };
                let y = match field.scalar_text() {
                    Some(t) if !matches!(field.kind, Kind::Map(_) | Kind::Seq(_)) => t.to_owned(),
                    _ => {
                        errs.push((
                            field.pos,
                            format!(
                                "expected the field to draw from {} in plot '{id}', found {}",
                                file.display(),
                                field.type_name()
                            ),
                        ));
                        continue;
                    }
                };
                s.push(Series { file, y: Some(y) });
                ps.push(f.pos);
            }
            (s, ps)
        }
        other => {
            let y = match other {
                None => None,
                Some(v) => match v.scalar_text() {
                    Some(t) if !matches!(v.kind, Kind::Seq(_)) => Some(t.to_owned()),
                    _ => {
                        errs.push((
                            v.pos,
                            format!(
                                "expected a field name or {{FILE: FIELD}} for 'y' of plot '{id}', found {}",
                                v.type_name()
                            ),
                        ));
                        None
                    }
                },
            };
            let file = path(key)?;
            (vec![Series { file, y }], vec![key.pos])
        }
    };
    if series.is_empty() {
        errs.push((key.pos, format!("plot '{id}' in {what} names no file")));
        return None;
    }
    if template == Template::Confusion && (x.is_none() || series.iter().any(|s| s.y.is_none())) {
        errs.push((
            key.pos,
            format!(
                "confusion plot '{id}' needs x (the actual class field) and y (the predicted one)"
            ),
        ));
    }
    Some((
        Plot {
            id: id.to_owned(),
            template,
            title,
            x,
            series,
        },
        positions,
    ))
}
