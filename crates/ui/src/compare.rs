//! `/compare?run=A&run=B…`: N runs side by side — the params that differ, the final
//! metrics with their change against the first run, the training curves overlaid, the
//! declared plots with a series per run, and the images each run wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use tsumugi_rundb::browse;

use crate::html::{Nav, Query, badge, enc, esc, num, page as frame, when};
use crate::svg;
use crate::{App, PageError, PageResult};

/// Runs a comparison shows at most (a legend and a table stay readable).
const MAX_RUNS: usize = 8;

fn picker(app: &App) -> PageResult {
    let runs = app
        .with_db(|c| tsumugi_rundb::list_runs(c, 30))?
        .unwrap_or_default();
    let mut b = String::from(
        "<h1>Compare runs</h1><p>Tick two runs or more (or use the checkboxes of the run list).</p>\
<form method=\"get\" action=\"/compare\" id=\"compare-form\"><p><button id=\"compare\" disabled>Compare selected</button></p><table><tbody>",
    );
    for r in &runs {
        let _ = write!(
            b,
            "<tr><td><input type=\"checkbox\" name=\"run\" value=\"{id}\" aria-label=\"select {id}\"></td><td class=\"run-id\">{id}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.pipeline),
            esc(&when(&r.started_at)),
            badge(&r.status),
            id = esc(&r.id),
        );
    }
    b.push_str("</tbody></table></form>");
    Ok(frame("Compare", Nav::Compare, &b))
}

pub(crate) fn page(app: &App, q: &Query) -> PageResult {
    let wanted = q.all("run");
    if wanted.len() < 2 {
        return picker(app);
    }
    if wanted.len() > MAX_RUNS {
        return Err(PageError::Bad(format!(
            "{} runs asked for; compare at most {MAX_RUNS} at once",
            wanted.len()
        )));
    }
    let data = app.with_db(|c| {
        let mut out = Vec::new();
        for spec in &wanted {
            let run = match tsumugi_rundb::find_run(c, spec) {
                Ok(r) => r,
                Err(e) => return Ok(Err(format!("{e:#}"))),
            };
            let finals = browse::final_metrics(c, std::slice::from_ref(&run.id))?
                .remove(&run.id)
                .unwrap_or_default();
            let params = browse::run_params(c, std::slice::from_ref(&run.id))?
                .remove(&run.id)
                .unwrap_or_default();
            let series = browse::metric_series(c, &run.id)?;
            let artifacts = tsumugi_rundb::run_artifacts(c, &run.id)?;
            let exp = browse::run_experiment(c, &run.id)?;
            let stages = tsumugi_rundb::stage_records(c, &run.id)?;
            out.push((run, finals, params, series, artifacts, exp, stages));
        }
        Ok(Ok(out))
    })?;
    let runs = match data {
        None => return Err(PageError::NotFound("no run database yet".into())),
        Some(Err(m)) => return Err(PageError::NotFound(m)),
        Some(Ok(r)) => r,
    };

    let mut b = format!("<h1>Compare {} runs</h1>", runs.len());
    b.push_str("<table id=\"compared\"><thead><tr><th></th><th>Run</th><th>Pipeline</th><th>Started</th><th>Status</th><th>Experiment</th></tr></thead><tbody>");
    for (i, (run, _, _, _, _, (exp, ov), _)) in runs.iter().enumerate() {
        let _ = write!(
            b,
            "<tr><td><svg width=\"14\" height=\"14\" aria-hidden=\"true\"><rect width=\"14\" height=\"14\" rx=\"3\" fill=\"{}\"/></svg></td>\
<td><a class=\"run-id\" href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td></tr>",
            svg::colour(i),
            enc(&run.id),
            esc(&run.id),
            esc(&run.pipeline),
            esc(&when(&run.started_at)),
            badge(&run.status),
            esc(exp.as_deref().unwrap_or("")),
            ov.as_deref()
                .map(|o| format!("<code>{}</code>", esc(&crate::runs::overrides_text(o))))
                .unwrap_or_default(),
        );
    }
    b.push_str("</tbody></table>");
    let header: String = runs
        .iter()
        .map(|r| format!("<th class=\"run-id\">{}</th>", esc(&r.0.id)))
        .collect();

    // Params: key → value per run (a key's value is the same in every stage that uses it).
    let mut params: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for (i, (_, _, ps, _, _, _, _)) in runs.iter().enumerate() {
        for p in ps {
            let row = params
                .entry(p.key.clone())
                .or_insert_with(|| vec![None; runs.len()]);
            row[i].get_or_insert_with(|| p.value.clone());
        }
    }
    b.push_str("<h2>Params</h2>");
    if params.is_empty() {
        b.push_str("<p class=\"empty\">These runs recorded no params (experiments record the params each stage used).</p>");
    } else {
        let differ = |v: &Vec<Option<String>>| v.iter().collect::<BTreeSet<_>>().len() > 1;
        let _ = write!(
            b,
            "<table id=\"param-diff\"><thead><tr><th>Param</th>{header}</tr></thead><tbody>"
        );
        // Those that differ first: they are why the runs differ.
        let mut rows: Vec<_> = params.iter().collect();
        rows.sort_by_key(|(k, v)| (!differ(v), (*k).clone()));
        for (k, vals) in rows {
            let _ = write!(
                b,
                "<tr{}><td>{}</td>",
                if differ(vals) {
                    " class=\"differs\""
                } else {
                    ""
                },
                esc(k)
            );
            for v in vals {
                let _ = write!(
                    b,
                    "<td><code>{}</code></td>",
                    esc(v.as_deref().unwrap_or("—"))
                );
            }
            b.push_str("</tr>");
        }
        b.push_str("</tbody></table>");
    }

    // Metrics: (stage, name) → value per run, with the change against the first run.
    let mut metrics: BTreeMap<(String, String), Vec<Option<f64>>> = BTreeMap::new();
    for (i, (_, finals, _, _, _, _, _)) in runs.iter().enumerate() {
        for m in finals {
            metrics
                .entry((m.stage.clone(), m.name.clone()))
                .or_insert_with(|| vec![None; runs.len()])[i] = Some(m.value);
        }
    }
    b.push_str("<h2>Metrics</h2>");
    if metrics.is_empty() {
        b.push_str("<p class=\"empty\">No final metrics recorded.</p>");
    } else {
        let _ = write!(
            b,
            "<table id=\"metric-diff\"><thead><tr><th>Stage</th><th>Metric</th>{header}</tr></thead><tbody>"
        );
        for ((stage, name), vals) in &metrics {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td>", esc(stage), esc(name));
            for (i, v) in vals.iter().enumerate() {
                let delta = match (i, vals[0], v) {
                    (1.., Some(a), Some(v)) if *v != a => {
                        let d = v - a;
                        format!(
                            " <small class=\"{}\">{}{}</small>",
                            if d > 0.0 { "up" } else { "down" },
                            if d > 0.0 { "+" } else { "" },
                            num(d)
                        )
                    }
                    _ => String::new(),
                };
                let _ = write!(
                    b,
                    "<td class=\"num\">{}{delta}</td>",
                    v.map(num).unwrap_or_else(|| "—".into())
                );
            }
            b.push_str("</tr>");
        }
        b.push_str("</tbody></table>");
    }

    let series: Vec<(String, browse::Series)> =
        runs.iter().map(|r| (r.0.id.clone(), r.3.clone())).collect();
    let charts = crate::run::curves(&series);
    if !charts.is_empty() {
        b.push_str("<h2>Curves</h2><div class=\"charts\">");
        b.push_str(&charts);
        b.push_str("</div>");
    }

    // Declared plots: one figure per plot, a series per run (as `tsumugi plots diff`).
    let entries: Vec<crate::plots::RunEntries> = runs
        .iter()
        .map(|r| crate::plots::RunEntries::new(r.0.clone(), &r.6))
        .collect();
    let declared = crate::plots::declared(app, &entries);
    let mut any_plot = !declared.is_empty();
    let mut plots_html = String::new();
    if !declared.is_empty() {
        let _ = write!(plots_html, "<div class=\"plots\">{declared}</div>");
    }
    for (i, (run, _, _, _, artifacts, _, _)) in runs.iter().enumerate() {
        let plots = crate::run::plots(app, artifacts);
        if plots.is_empty() {
            continue;
        }
        any_plot = true;
        let _ = write!(
            plots_html,
            "<h3><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" height=\"12\" fill=\"{}\"/></svg> <span class=\"run-id\">{}</span></h3><div class=\"plots\">",
            svg::colour(i),
            esc(&run.id)
        );
        for p in &plots {
            plots_html.push_str(&crate::run::plot_img(p));
        }
        plots_html.push_str("</div>");
    }
    if any_plot {
        b.push_str("<h2 id=\"plots\">Plots</h2>");
        b.push_str(&plots_html);
    }
    Ok(frame("Compare", Nav::Compare, &b))
}
