//! `/`: the runs (and experiments) of the project, one page at a time. Sorting, filtering
//! and paging happen in SQL (`tsumugi_rundb::browse::runs_page`); this only lays out the
//! rows of the page.

use std::collections::BTreeSet;
use std::fmt::Write;

use tsumugi_rundb::browse::{self, RunQuery, SortKey};

use crate::html::{Nav, Query, badge, duration_ms, enc, esc, num, page as frame, qs, when};
use crate::{App, PageError, PageResult};

const PER_PAGE: usize = 50;

/// `KEY=VALUE, …` of an overrides JSON object, or the text as it is when it is not one.
pub(crate) fn overrides_text(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => json.to_string(),
    }
}

pub(crate) fn page(app: &App, q: &Query) -> PageResult {
    let sort_param = q.get("sort").unwrap_or("started");
    let sort = SortKey::parse(sort_param)
        .ok_or_else(|| PageError::Bad(format!("unknown sort {sort_param:?}: expected started, duration, status, pipeline or metric:STAGE/NAME")))?;
    let descending = q.get("order") != Some("asc");
    let page_no: usize = match q.get("page") {
        Some(p) => p
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| PageError::Bad(format!("page {p:?}: expected a number from 1")))?,
        None => 1,
    };
    let pipeline = q.get("pipeline").map(str::to_string);
    let experiments_only = q.get("exp") == Some("1");
    let query = RunQuery {
        pipeline: pipeline.clone(),
        experiments_only,
        sort: sort.clone(),
        descending,
        limit: PER_PAGE,
        offset: (page_no - 1) * PER_PAGE,
    };
    let found = app.with_db(|c| Ok((browse::runs_page(c, &query)?, browse::pipelines(c)?)))?;
    let Some((runs, pipelines)) = found else {
        return Ok(frame(
            "Runs",
            Nav::Runs,
            "<h1>Runs</h1><p class=\"empty\">No runs yet: <code>tsumugi run</code> a pipeline and reload.</p>",
        ));
    };

    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Runs <small id=\"total\">{} {}{}</small></h1>",
        runs.total,
        if experiments_only {
            "experiment"
        } else {
            "run"
        },
        if runs.total == 1 { "" } else { "s" }
    );
    // The filter keeps the sort; the sort links keep the filter.
    let _ = write!(
        b,
        "<form class=\"filter\" method=\"get\" action=\"/\"><label>Pipeline <select name=\"pipeline\"><option value=\"\">all</option>"
    );
    for p in &pipelines {
        let sel = if pipeline.as_deref() == Some(p) {
            " selected"
        } else {
            ""
        };
        let _ = write!(b, "<option value=\"{0}\"{sel}>{0}</option>", esc(p));
    }
    let _ = write!(
        b,
        "</select></label> <label><input type=\"checkbox\" name=\"exp\" value=\"1\"{}> experiments only</label>\
<input type=\"hidden\" name=\"sort\" value=\"{}\"><input type=\"hidden\" name=\"order\" value=\"{}\"> <button>Filter</button></form>",
        if experiments_only { " checked" } else { "" },
        esc(sort_param),
        if descending { "desc" } else { "asc" },
    );

    // Metric columns: those of the runs on this page, and the one sorted by.
    let mut metric_cols: BTreeSet<(String, String)> = runs
        .rows
        .iter()
        .flat_map(|r| r.metrics.iter().map(|m| (m.stage.clone(), m.name.clone())))
        .collect();
    if let SortKey::Metric { stage, name } = &sort {
        metric_cols.insert((stage.clone(), name.clone()));
    }
    // Columns that would be empty on every row are left out (a database without
    // experiments has no experiment or params to show).
    let show_exp = runs
        .rows
        .iter()
        .any(|r| r.exp.is_some() || r.overrides.is_some());
    let show_params = runs.rows.iter().any(|r| !r.params.is_empty());
    let pipeline_s = pipeline.clone().unwrap_or_default();
    let exp_s = if experiments_only { "1" } else { "" };
    let head = |key: String, label: &str| {
        let on = key == sort.as_param();
        let next = if on && descending { "asc" } else { "desc" };
        let arrow = match (on, descending) {
            (true, true) => " ▼",
            (true, false) => " ▲",
            _ => "",
        };
        format!(
            "<th><a href=\"/{}\" class=\"sort{}\">{label}{arrow}</a></th>",
            esc(&qs(&[
                ("pipeline", &pipeline_s),
                ("exp", exp_s),
                ("sort", &key),
                ("order", next),
            ])),
            if on { " on" } else { "" },
        )
    };
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/compare\" id=\"compare-form\">\
<p><button id=\"compare\" disabled>Compare selected</button> <span class=\"hint\">tick two runs or more</span></p>\
<div class=\"scroll\"><table id=\"runs\"><thead><tr><th></th><th>Run</th>{}{}{}{}{}{}",
        head("pipeline".into(), "Pipeline"),
        head("started".into(), "Started"),
        head("duration".into(), "Duration"),
        head("status".into(), "Status"),
        if show_exp { "<th>Experiment</th>" } else { "" },
        if show_params { "<th>Params</th>" } else { "" },
    );
    for (stage, name) in &metric_cols {
        let label = format!("{} <small>{}</small>", esc(name), esc(stage));
        b.push_str(&head(format!("metric:{stage}/{name}"), &label));
    }
    b.push_str("</tr></thead><tbody>");
    for r in &runs.rows {
        let id = esc(&r.run.id);
        let params: Vec<String> = {
            let mut seen = BTreeSet::new();
            r.params
                .iter()
                .filter(|p| seen.insert(p.key.clone()))
                .map(|p| format!("{}={}", p.key, p.value))
                .collect()
        };
        let _ = write!(
            b,
            "<tr><td><input type=\"checkbox\" name=\"run\" value=\"{id}\" aria-label=\"select {id}\"></td>\
<td><a href=\"/runs/{}\" class=\"run-id\">{id}</a></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td>",
            enc(&r.run.id),
            esc(&r.run.pipeline),
            esc(&when(&r.run.started_at)),
            r.duration_ms.map(duration_ms).unwrap_or_default(),
            badge(&r.run.status),
        );
        if show_exp {
            let cell = match (&r.exp, &r.overrides) {
                (Some(e), Some(o)) => {
                    format!("{} <code>{}</code>", esc(e), esc(&overrides_text(o)))
                }
                (Some(e), None) => esc(e),
                (None, Some(o)) => format!("<code>{}</code>", esc(&overrides_text(o))),
                (None, None) => String::new(),
            };
            let _ = write!(b, "<td class=\"exp\">{cell}</td>");
        }
        if show_params {
            let _ = write!(b, "<td class=\"params\">{}</td>", esc(&params.join(", ")));
        }
        for (stage, name) in &metric_cols {
            let v = r
                .metrics
                .iter()
                .find(|m| &m.stage == stage && &m.name == name)
                .map(|m| num(m.value))
                .unwrap_or_default();
            let _ = write!(b, "<td class=\"num\">{v}</td>");
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table></div></form>");

    let pages = (runs.total as usize).div_ceil(PER_PAGE).max(1);
    let link = |n: usize, label: &str| {
        format!(
            "<a href=\"/{}\">{label}</a>",
            esc(&qs(&[
                ("pipeline", &pipeline_s),
                ("exp", exp_s),
                ("sort", sort_param),
                ("order", if descending { "desc" } else { "asc" }),
                ("page", &n.to_string()),
            ]))
        )
    };
    let _ = write!(
        b,
        "<p class=\"pager\">{} page {page_no} of {pages} {}</p>",
        if page_no > 1 {
            link(page_no - 1, "← previous")
        } else {
            String::new()
        },
        if page_no < pages {
            link(page_no + 1, "next →")
        } else {
            String::new()
        },
    );
    Ok(frame("Runs", Nav::Runs, &b))
}
