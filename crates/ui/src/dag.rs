//! `/dag`: the graph of each pipeline file, every stage coloured fresh or stale with the
//! reasons — the same decision `tsumugi status` prints (`tsumugi_exec::executor::status`),
//! made when the page is loaded.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use tsumugi_pipeline::graph::Dag;

use crate::html::{Nav, badge, esc, page as frame};
use crate::svg::{self, Node};
use crate::{App, PageResult};

/// The pipeline files to show: those given on the command line, else `pipelines/*.yaml`
/// and the project root's `*.yaml` that have a top-level `stages:` key.
pub(crate) fn pipeline_files(app: &App) -> Vec<PathBuf> {
    if !app.files.is_empty() {
        return app.files.clone();
    }
    let root = app.project.root();
    let mut out = Vec::new();
    for dir in [Path::new("pipelines"), Path::new("")] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .filter(|p| {
                std::fs::read_to_string(p)
                    .is_ok_and(|t| t.lines().any(|l| l.trim_end() == "stages:"))
            })
            .filter_map(|p| p.file_name().map(|n| dir.join(n)))
            .collect();
        found.sort();
        out.extend(found);
    }
    out
}

pub(crate) fn page(app: &App) -> PageResult {
    let files = pipeline_files(app);
    let mut b = String::from("<h1>Pipelines</h1>");
    if files.is_empty() {
        b.push_str("<p class=\"empty\">No pipeline file found (pipelines/*.yaml, or *.yaml with <code>stages:</code> in the project root). Start <code>tsumugi ui FILE…</code> to name them.</p>");
    }
    for file in &files {
        let shown = file.display().to_string();
        let _ = write!(
            b,
            "<section class=\"pipeline\" data-file=\"{}\">",
            esc(&shown)
        );
        let pipeline = match tsumugi_pipeline::load(file, &app.project) {
            Ok(p) => p,
            Err(e) => {
                let _ = write!(
                    b,
                    "<h2>{}</h2><p class=\"error\">this file does not load:</p><pre class=\"error\">{}</pre></section>",
                    esc(&shown),
                    esc(&e.to_string())
                );
                continue;
            }
        };
        let status = Dag::build(&pipeline)
            .map_err(anyhow::Error::from)
            .and_then(|_| tsumugi_exec::executor::status(&app.project, &pipeline));
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = write!(
                    b,
                    "<h2>{} <small>{}</small></h2><pre class=\"error\">{}</pre></section>",
                    esc(&pipeline.name),
                    esc(&shown),
                    esc(&format!("{e:#}"))
                );
                continue;
            }
        };
        let stale = status.iter().filter(|s| !s.fresh).count();
        let _ = write!(
            b,
            "<h2>{} <small>{}</small></h2><p class=\"summary\">{}</p>",
            esc(&pipeline.name),
            esc(&shown),
            if stale == 0 {
                format!("everything is up to date ({} stages)", status.len())
            } else {
                format!("{stale} of {} stages stale", status.len())
            }
        );
        // Columns by longest path from a root, in the order status gives (topological).
        let index: HashMap<&str, usize> = status
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut layer = vec![0usize; status.len()];
        let mut edges = Vec::new();
        for (i, s) in status.iter().enumerate() {
            let stage = pipeline.stage(&s.name).expect("a stage of the pipeline");
            for up in &stage.needs {
                if let Some(&j) = index.get(up.as_str()) {
                    edges.push((j, i));
                    layer[i] = layer[i].max(layer[j] + 1);
                }
            }
        }
        let nodes: Vec<Node> = status
            .iter()
            .map(|s| Node {
                name: s.name.clone(),
                fresh: s.fresh,
                tooltip: s.reasons.join("\n"),
            })
            .collect();
        b.push_str("<div class=\"scroll\">");
        b.push_str(&svg::dag(&nodes, &layer, &edges));
        b.push_str("</div><table class=\"status\"><thead><tr><th>Stage</th><th>State</th><th>Why</th></tr></thead><tbody>");
        for s in &status {
            let _ = write!(
                b,
                "<tr data-stage=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                esc(&s.name),
                badge(if s.fresh { "fresh" } else { "stale" }),
                s.reasons
                    .iter()
                    .map(|r| esc(r))
                    .collect::<Vec<_>>()
                    .join("<br>"),
            );
        }
        b.push_str("</tbody></table></section>");
    }
    Ok(frame("Pipelines", Nav::Dag, &b))
}
