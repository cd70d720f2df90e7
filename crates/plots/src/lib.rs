//! Declared plots (`plots:` on a stage) drawn from a run's cached outputs.
//!
//! A stage's `plots:` names files among its outputs (JSON, CSV, TSV; see [`data`]); each
//! plot becomes an SVG and a PNG ([`draw_plot`]), for one run or several overlaid (one
//! series per run; confusion matrices side by side), and [`write_index`] writes an HTML page
//! showing them. The bytes come from the cache ([`read_output_file`]), not the workspace, so
//! an old run's plots are drawn from what that run wrote.
//!
//! ```
//! use std::path::Path;
//! let dir = tempfile::tempdir().unwrap();
//! let plot = tsumugi_pipeline::Plot {
//!     id: "loss.csv".into(), template: tsumugi_pipeline::Template::Line, title: None, x: None,
//!     series: vec![tsumugi_pipeline::Series { file: "loss.csv".into(), y: None }],
//! };
//! let read = |_: &Path| Ok(b"step,loss\n1,0.9\n2,0.4\n".to_vec());
//! let runs = [tsumugi_plots::RunFiles { label: "r1".into(), read: &read }];
//! let files = tsumugi_plots::draw_plot(&plot, "train", &runs, dir.path()).unwrap();
//! assert!(files[0].ends_with("train.loss.csv.svg"));
//! ```

pub mod data;
mod draw;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tsumugi_base::atomic::write_atomic;
use tsumugi_pipeline::{Plot, Template};
use tsumugi_store::cache::{Cache, OutKind};

use crate::data::Table;

/// One run's files for a plot: `read` gives a file's bytes (a path relative to the project).
pub struct RunFiles<'a> {
    /// The series' name in a legend (a run id).
    pub label: String,
    pub read: &'a dyn Fn(&Path) -> Result<Vec<u8>>,
}

/// The file stem of a plot: `STAGE.ID` with anything but letters, digits, `.`, `-`, `_`
/// turned into `_` (`evaluate.eval_plots_prc_test.json`).
pub fn file_stem(stage: &str, plot_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}.{}", clean(stage), clean(plot_id))
}

/// Draws `plot` of `stage` for `runs` (overlaid when several) into `dir` as
/// `STEM.svg` and `STEM.png`; returns the paths written.
pub fn draw_plot(
    plot: &Plot,
    stage: &str,
    runs: &[RunFiles<'_>],
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    let stem = file_stem(stage, &plot.id);
    let title = plot.title.clone().unwrap_or_else(|| plot.id.clone());
    let several_files = plot.series.len() > 1;
    let several_runs = runs.len() > 1;
    let mut tables: Vec<(String, &tsumugi_pipeline::Series, Table)> = Vec::new();
    for run in runs {
        for s in &plot.series {
            let bytes = (run.read)(&s.file).with_context(|| {
                format!("plot '{}' of stage '{stage}' ({})", plot.id, run.label)
            })?;
            let fields: Vec<&str> = plot.x.iter().chain(&s.y).map(String::as_str).collect();
            let t = data::parse(&s.file, &bytes, &fields)?;
            let mut label = Vec::new();
            if several_runs {
                label.push(run.label.clone());
            }
            if several_files {
                label.push(s.file.display().to_string());
            }
            tables.push((label.join(" "), s, t));
        }
    }
    let mut written = Vec::new();
    match plot.template {
        Template::Line | Template::Scatter => {
            let mut series = Vec::new();
            let mut x_label = plot.x.clone().unwrap_or_default();
            let mut y_names = BTreeSet::new();
            for (label, s, t) in &tables {
                let xcol = match &plot.x {
                    Some(x) => Some(t.column(x).ok_or_else(|| {
                        anyhow!(
                            "plot '{}': {} has no field {x:?} (it has: {})",
                            plot.id,
                            s.file.display(),
                            t.columns.join(", ")
                        )
                    })?),
                    None => t.numeric_columns().first().copied(),
                };
                if x_label.is_empty() {
                    x_label = xcol
                        .map(|c| t.columns[c].clone())
                        .unwrap_or_else(|| "row".into());
                }
                let ycols: Vec<usize> = match &s.y {
                    Some(y) => vec![t.column(y).ok_or_else(|| {
                        anyhow!(
                            "plot '{}': {} has no field {y:?} (it has: {})",
                            plot.id,
                            s.file.display(),
                            t.columns.join(", ")
                        )
                    })?],
                    None => t
                        .numeric_columns()
                        .into_iter()
                        .filter(|c| Some(*c) != xcol)
                        .collect(),
                };
                if ycols.is_empty() {
                    bail!(
                        "plot '{}': {} has no numeric field to draw",
                        plot.id,
                        s.file.display()
                    );
                }
                for yc in &ycols {
                    y_names.insert(t.columns[*yc].clone());
                    let mut pts: Vec<(f64, f64)> = t
                        .rows
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| {
                            let x = match xcol {
                                Some(c) => r[c].as_ref()?.num()?,
                                None => i as f64,
                            };
                            Some((x, r[*yc].as_ref()?.num()?))
                        })
                        .collect();
                    if plot.template == Template::Line {
                        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                    let name = match (label.is_empty(), ycols.len() > 1 || s.y.is_none()) {
                        (true, _) => t.columns[*yc].clone(),
                        (false, true) => format!("{label} {}", t.columns[*yc]),
                        (false, false) => label.clone(),
                    };
                    series.push((name, pts));
                }
            }
            let xy = draw::Xy {
                title,
                x_label,
                y_label: y_names.into_iter().collect::<Vec<_>>().join(", "),
                scatter: plot.template == Template::Scatter,
                series,
            };
            for ext in ["svg", "png"] {
                let p = dir.join(format!("{stem}.{ext}"));
                tsumugi_stages::plots::render(&p, &xy)?;
                written.push(p);
            }
        }
        Template::Confusion => {
            let (xf, _) = (plot.x.as_deref().unwrap_or_default(), ());
            let mut panels = Vec::new();
            for (label, s, t) in &tables {
                let yf = s.y.as_deref().unwrap_or_default();
                let (ac, pc) = match (t.column(xf), t.column(yf)) {
                    (Some(a), Some(p)) => (a, p),
                    _ => bail!(
                        "confusion plot '{}': {} needs fields {xf:?} and {yf:?} (it has: {})",
                        plot.id,
                        s.file.display(),
                        t.columns.join(", ")
                    ),
                };
                let pairs: Vec<(String, String)> = t
                    .rows
                    .iter()
                    .filter_map(|r| Some((r[ac].as_ref()?.label(), r[pc].as_ref()?.label())))
                    .collect();
                let classes: Vec<String> = pairs
                    .iter()
                    .flat_map(|(a, p)| [a.clone(), p.clone()])
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let idx = |c: &str| classes.iter().position(|k| k == c).expect("class");
                let mut m = vec![vec![0u64; classes.len()]; classes.len()];
                for (a, p) in &pairs {
                    m[idx(a)][idx(p)] += 1;
                }
                let caption = if label.is_empty() {
                    s.file.display().to_string()
                } else {
                    label.clone()
                };
                panels.push((caption, classes, m));
            }
            let c = draw::Confusion { title, panels };
            for ext in ["svg", "png"] {
                let p = dir.join(format!("{stem}.{ext}"));
                tsumugi_stages::plots::render(&p, &c)?;
                written.push(p);
            }
        }
    }
    Ok(written)
}

/// Writes `dir/index.html` showing `figures` (caption, SVG file name in `dir`), in order.
pub fn write_index(dir: &Path, heading: &str, figures: &[(String, String)]) -> Result<PathBuf> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title>\n<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:1em;vertical-align:top}}img{{width:600px;border:1px solid #ddd}}</style></head>\n<body><h1>{0}</h1>\n",
        esc(heading)
    );
    for (caption, file) in figures {
        html.push_str(&format!(
            "<figure><a href=\"{0}\"><img src=\"{0}\" alt=\"{1}\"></a><figcaption>{1}</figcaption></figure>\n",
            esc(file),
            esc(caption)
        ));
    }
    html.push_str("</body></html>\n");
    let p = dir.join("index.html");
    write_atomic(&p, html.as_bytes())?;
    Ok(p)
}

/// The bytes of `file` (relative to the project) as the cache entry `fingerprint` holds
/// them: an output file itself, or a file inside an output directory.
pub fn read_output_file(cache: &Cache, fingerprint: &str, file: &Path) -> Result<Vec<u8>> {
    let entry = cache
        .get_action(fingerprint)
        .ok_or_else(|| anyhow!("the cache has no entry {fingerprint} (removed by gc?)"))?;
    let want = tsumugi_base::paths::path_str(file);
    for rec in entry.outs.values() {
        let hash = match rec.kind {
            OutKind::File if rec.path == want => rec.hash.clone(),
            OutKind::Dir => match want.strip_prefix(&format!("{}/", rec.path)) {
                Some(rel) => {
                    let m = cache.manifest(&rec.hash)?;
                    match m.entries.iter().find(|e| e.path == rel) {
                        Some(e) => e.hash.clone(),
                        None => bail!("{want} is not in output {} of that run", rec.path),
                    }
                }
                None => continue,
            },
            _ => continue,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(cache.object_path(&hash))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("reading cache object {hash} ({want})"))?;
        return Ok(bytes);
    }
    bail!("{want} is not among the cached outputs of entry {fingerprint}")
}

/// The files of output `out_key` of cache entry `fingerprint` whose names end in one of
/// `exts` (a built-in kind's plot directory): (path inside the output, bytes).
pub fn output_dir_files(
    cache: &Cache,
    fingerprint: &str,
    out_key: &str,
    exts: &[&str],
) -> Result<Vec<(String, Vec<u8>)>> {
    let entry = cache
        .get_action(fingerprint)
        .ok_or_else(|| anyhow!("the cache has no entry {fingerprint} (removed by gc?)"))?;
    let Some(rec) = entry.outs.get(out_key) else {
        return Ok(Vec::new());
    };
    if rec.kind != OutKind::Dir {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in cache.manifest(&rec.hash)?.entries {
        if exts.iter().any(|x| e.path.ends_with(&format!(".{x}"))) {
            let bytes = std::fs::read(cache.object_path(&e.hash))
                .with_context(|| format!("reading cache object {}", e.hash))?;
            out.push((e.path, bytes));
        }
    }
    Ok(out)
}
