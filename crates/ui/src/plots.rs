//! The plots a run's stages declare (`plots:` in the pipeline file), drawn by tsumugi-plots
//! from the run's cached outputs — the same drawing as `tsumugi plots show` — and inlined
//! as SVG; for several runs, one series per run overlaid (confusion matrices side by side),
//! as `tsumugi plots diff` draws them.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use tsumugi_rundb::{RunRow, StageRecord};
use tsumugi_store::cache::Cache;

use crate::App;
use crate::html::esc;

/// A run and, per stage that completed in it, its cache entry (fingerprint).
pub(crate) struct RunEntries {
    pub run: RunRow,
    pub entries: HashMap<String, String>,
}

impl RunEntries {
    pub fn new(run: RunRow, stages: &[StageRecord]) -> Self {
        let entries = stages
            .iter()
            .filter(|s| matches!(s.status.as_str(), "ran" | "cached" | "restored"))
            .filter_map(|s| Some((s.stage.clone(), s.fingerprint.clone()?)))
            .collect();
        RunEntries { run, entries }
    }
}

/// Figures of every declared plot of `runs`' pipeline files (in the order the runs name
/// them), each run a series; empty when no stage declares one. A plot that cannot be drawn
/// (its data missing from the cache, a field absent) is a sentence in its place.
pub(crate) fn declared(app: &App, runs: &[RunEntries]) -> String {
    let mut files: Vec<&str> = Vec::new();
    for r in runs {
        if !files.contains(&r.run.pipeline_file.as_str()) {
            files.push(&r.run.pipeline_file);
        }
    }
    let cache = Cache::new(app.project.cache_dir());
    let mut out = String::new();
    for file in files {
        // The declarations are the file as it is now (as for `tsumugi plots`); a file that
        // no longer loads has no plots to show here (the DAG page says why).
        let Ok(pipeline) = tsumugi_pipeline::load(Path::new(file), &app.project) else {
            continue;
        };
        let of_file: Vec<&RunEntries> = runs
            .iter()
            .filter(|r| r.run.pipeline_file == file)
            .collect();
        for stage in &pipeline.stages {
            let present: Vec<(&str, &str)> = of_file
                .iter()
                .filter_map(|r| Some((r.run.id.as_str(), r.entries.get(&stage.name)?.as_str())))
                .collect();
            if present.is_empty() {
                continue;
            }
            for plot in &stage.plots {
                let caption = format!(
                    "{}: {}",
                    stage.name,
                    plot.title.as_deref().unwrap_or(&plot.id)
                );
                let body = match draw(&cache, plot, &stage.name, &present) {
                    Ok(svg) => svg,
                    Err(e) => format!("<p class=\"error\">{}</p>", esc(&format!("{e:#}"))),
                };
                let _ = write!(
                    out,
                    "<figure class=\"plot declared\" data-plot=\"{}\">{body}<figcaption>{}</figcaption></figure>",
                    esc(&tsumugi_plots::file_stem(&stage.name, &plot.id)),
                    esc(&caption),
                );
            }
        }
    }
    out
}

/// One plot as an SVG document, marked so the page's chart styles leave its text alone.
fn draw(
    cache: &Cache,
    plot: &tsumugi_pipeline::Plot,
    stage: &str,
    present: &[(&str, &str)],
) -> anyhow::Result<String> {
    type Reader<'a> = Box<dyn Fn(&Path) -> anyhow::Result<Vec<u8>> + 'a>;
    let readers: Vec<Reader<'_>> = present
        .iter()
        .map(|(_, fp)| {
            let fp = fp.to_string();
            Box::new(move |p: &Path| tsumugi_plots::read_output_file(cache, &fp, p)) as Reader<'_>
        })
        .collect();
    let files: Vec<tsumugi_plots::RunFiles<'_>> = present
        .iter()
        .zip(&readers)
        .map(|((id, _), read)| tsumugi_plots::RunFiles {
            label: id.to_string(),
            read: read.as_ref(),
        })
        .collect();
    // tsumugi-plots draws into files (SVG and PNG); a scratch directory per plot.
    let dir = tempfile::tempdir()?;
    let written = tsumugi_plots::draw_plot(plot, stage, &files, dir.path())?;
    let svg_path: PathBuf = written
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .ok_or_else(|| anyhow::anyhow!("tsumugi-plots wrote no SVG"))?;
    let svg = std::fs::read_to_string(&svg_path)?;
    // Inline: the element starts at `<svg`, without an XML declaration before it.
    let start = svg.find("<svg").unwrap_or(0);
    Ok(svg[start..].replacen("<svg ", "<svg class=\"declared\" ", 1))
}
