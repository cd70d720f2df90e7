//! `/runs/ID`: one run — its stages on a timeline, each stage's log (the tail), its
//! metrics and curves, its declared plots (`plots:`), its artifacts and the images among
//! them. Also `/object/HASH`, which serves a cached file (a plot) by content hash.

use std::fmt::Write;
use std::io::{Read, Seek, SeekFrom};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use tsumugi_rundb::{ArtifactRecord, browse};
use tsumugi_store::cache::Cache;

use crate::html::{Nav, badge, duration_ms, enc, esc, num, page as frame, when};
use crate::svg::{self, Bar, Line};
use crate::{App, PageError, PageResult};

/// How much of the end of a log the page shows.
const LOG_TAIL: u64 = 64 * 1024;

fn millis(ts: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The last [`LOG_TAIL`] bytes of a log, and whether the start was cut.
fn tail(path: &std::path::Path) -> Option<(String, bool)> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let cut = len > LOG_TAIL;
    if cut {
        f.seek(SeekFrom::Start(len - LOG_TAIL)).ok()?;
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    Some((String::from_utf8_lossy(&bytes).into_owned(), cut))
}

/// A plot: an image file the run wrote, served from the cache by hash.
pub(crate) struct Plot {
    pub stage: String,
    pub path: String,
    pub hash: String,
}

const IMAGE_EXTS: &[&str] = &["svg", "png", "jpg", "jpeg", "gif", "webp"];

fn is_image(path: &str) -> bool {
    path.rsplit_once('.')
        .is_some_and(|(_, e)| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The images among a run's artifacts: files, and files inside output directories.
pub(crate) fn plots(app: &App, artifacts: &[ArtifactRecord]) -> Vec<Plot> {
    let cache = Cache::new(app.project.cache_dir());
    let mut out = Vec::new();
    for a in artifacts {
        if is_image(&a.path) {
            out.push(Plot {
                stage: a.stage.clone(),
                path: a.path.clone(),
                hash: a.hash.clone(),
            });
        } else if let Ok(m) = cache.manifest(&a.hash) {
            // A directory output: its manifest lists the files (a file's object is not a
            // manifest and fails to parse, which is fine).
            for e in m.entries.iter().filter(|e| is_image(&e.path)) {
                out.push(Plot {
                    stage: a.stage.clone(),
                    path: format!("{}/{}", a.path, e.path),
                    hash: e.hash.clone(),
                });
            }
        }
    }
    out
}

pub(crate) fn plot_img(p: &Plot) -> String {
    let name = p.path.rsplit('/').next().unwrap_or(&p.path);
    format!(
        "<figure class=\"plot\"><img src=\"/object/{}?name={}\" alt=\"{path}\" loading=\"lazy\"><figcaption>{path} <small>({})</small></figcaption></figure>",
        enc(&p.hash),
        enc(name),
        esc(&p.stage),
        path = esc(&p.path),
    )
}

/// Charts of a run's (or several runs') metric series: one chart per (stage, name).
pub(crate) fn curves(series_by_run: &[(String, browse::Series)]) -> String {
    let mut keys: Vec<(String, String)> = Vec::new();
    for (_, s) in series_by_run {
        for (k, _) in s {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.sort();
    let mut out = String::new();
    for k in &keys {
        let lines: Vec<Line> = series_by_run
            .iter()
            .enumerate()
            .filter_map(|(i, (run, s))| {
                s.iter().find(|(kk, _)| kk == k).map(|(_, pts)| Line {
                    label: run.clone(),
                    colour: svg::colour(i),
                    points: pts.iter().map(|&(x, y)| (x as f64, y)).collect(),
                })
            })
            .collect();
        out.push_str(&svg::line_chart(&format!("{} · {}", k.0, k.1), &lines));
    }
    out
}

pub(crate) fn page(app: &App, id: &str) -> PageResult {
    let found = app.with_db(|c| {
        let run = match tsumugi_rundb::find_run(c, id) {
            Ok(r) if r.id == id => r,
            _ => return Ok(None),
        };
        Ok(Some((
            tsumugi_rundb::stage_records(c, &run.id)?,
            tsumugi_rundb::run_metrics(c, &run.id)?,
            tsumugi_rundb::run_artifacts(c, &run.id)?,
            browse::metric_series(c, &run.id)?,
            browse::run_experiment(c, &run.id)?,
            browse::run_params(c, std::slice::from_ref(&run.id))?,
            run,
        )))
    })?;
    let Some(Some((stages, metrics, artifacts, series, (exp, overrides), mut params, run))) = found
    else {
        return Err(PageError::NotFound(format!(
            "no run {id:?} in the run database"
        )));
    };
    let mut b = String::new();
    let start = millis(&run.started_at).unwrap_or(0);
    let dur = run
        .ended_at
        .as_deref()
        .and_then(millis)
        .map(|e| duration_ms(e - start));
    let _ = write!(
        b,
        "<h1>Run <span class=\"run-id\">{}</span> {}</h1><dl class=\"meta\">\
<dt>pipeline</dt><dd>{} <small>{}</small></dd><dt>trigger</dt><dd>{}</dd><dt>started</dt><dd>{}</dd><dt>duration</dt><dd>{}</dd>",
        esc(&run.id),
        badge(&run.status),
        esc(&run.pipeline),
        esc(&run.pipeline_file),
        esc(&run.trigger),
        esc(&when(&run.started_at)),
        dur.unwrap_or_else(|| "—".into()),
    );
    if let Some(e) = &exp {
        let _ = write!(b, "<dt>experiment</dt><dd>{}</dd>", esc(e));
    }
    if let Some(o) = &overrides {
        let _ = write!(
            b,
            "<dt>overrides</dt><dd><code>{}</code></dd>",
            esc(&crate::runs::overrides_text(o))
        );
    }
    if !run.targets.is_empty() {
        let _ = write!(b, "<dt>targets</dt><dd>{}</dd>", esc(&run.targets));
    }
    b.push_str("</dl>");

    // Timeline: a stage without a start (cached, restored) is a sliver at its end.
    let bars: Vec<Bar> = stages
        .iter()
        .map(|s| {
            let end = s.ended_at.as_deref().and_then(millis);
            let st = s.started_at.as_deref().and_then(millis).or(end);
            let (st, end) = (st.unwrap_or(start), end.or(st).unwrap_or(start));
            Bar {
                label: s.stage.clone(),
                start: (st - start).max(0) as f64,
                end: (end - start).max(0) as f64,
                status: s.status.clone(),
            }
        })
        .collect();
    b.push_str("<h2>Stages</h2>");
    if !bars.is_empty() {
        b.push_str(&svg::timeline(&bars));
    }
    b.push_str("<table id=\"stages\"><thead><tr><th>Stage</th><th>Status</th><th>Duration</th><th>Exit</th><th>Attempt</th><th>Message</th></tr></thead><tbody>");
    for s in &stages {
        let _ = write!(
            b,
            "<tr><td><a href=\"#log-{a}\">{}</a></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&s.stage),
            badge(&s.status),
            s.duration_ms.map(duration_ms).unwrap_or_default(),
            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            s.attempt,
            esc(s.message.as_deref().unwrap_or("")),
            a = esc(&enc(&s.stage)),
        );
    }
    b.push_str("</tbody></table>");

    let params = params.remove(&run.id).unwrap_or_default();
    if !params.is_empty() {
        b.push_str("<h2>Params</h2><table id=\"params\"><thead><tr><th>Stage</th><th>Key</th><th>Value</th></tr></thead><tbody>");
        for p in &params {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(&p.stage),
                esc(&p.key),
                esc(&p.value)
            );
        }
        b.push_str("</tbody></table>");
    }

    let finals: Vec<_> = metrics.iter().filter(|m| m.step.is_none()).collect();
    b.push_str("<h2>Metrics</h2>");
    if finals.is_empty() && series.is_empty() {
        b.push_str("<p class=\"empty\">No metrics recorded.</p>");
    } else {
        b.push_str("<table id=\"metrics\"><thead><tr><th>Stage</th><th>Metric</th><th>Value</th></tr></thead><tbody>");
        for m in finals {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&m.stage),
                esc(&m.name),
                num(m.value)
            );
        }
        b.push_str("</tbody></table>");
        b.push_str(&curves(&[(run.id.clone(), series)]));
    }

    let declared =
        crate::plots::declared(app, &[crate::plots::RunEntries::new(run.clone(), &stages)]);
    let plots = plots(app, &artifacts);
    if !declared.is_empty() || !plots.is_empty() {
        b.push_str("<h2 id=\"plots\">Plots</h2><div class=\"plots\">");
        b.push_str(&declared);
        for p in &plots {
            b.push_str(&plot_img(p));
        }
        b.push_str("</div>");
    }
    if !artifacts.is_empty() {
        b.push_str("<h2>Artifacts</h2><table id=\"artifacts\"><thead><tr><th>Stage</th><th>Output</th><th>Path</th><th>Hash</th></tr></thead><tbody>");
        for a in &artifacts {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code title=\"{h}\">{}</code></td></tr>",
                esc(&a.stage),
                esc(&a.out_key),
                esc(&a.path),
                esc(a.hash.get(..12).unwrap_or(&a.hash)),
                h = esc(&a.hash),
            );
        }
        b.push_str("</tbody></table>");
    }

    b.push_str("<h2>Logs</h2>");
    for s in &stages {
        // The log's place comes from the project layout, never from a path in the request.
        let path = app.project.log_path(&run.id, &s.stage);
        let (text, cut) = tail(&path).unwrap_or_default();
        let open = if s.status == "failed" { " open" } else { "" };
        let _ = write!(
            b,
            "<details id=\"log-{}\" class=\"log\"{open}><summary>{} <small>{}</small></summary>{}<pre>{}</pre></details>",
            esc(&enc(&s.stage)),
            esc(&s.stage),
            if text.is_empty() { "(empty)" } else { "" },
            if cut {
                "<p class=\"hint\">… the start is cut; the whole log is in the file</p>"
            } else {
                ""
            },
            esc(&text),
        );
    }
    Ok(frame(&format!("Run {}", run.id), Nav::Runs, &b))
}

/// `/object/HASH?name=F`: a cached file, typed by `name`'s extension (images and text
/// only); never run as a page (a sandboxing policy on an SVG that carries script).
pub(crate) fn object(app: &App, hash: &str, name: &str) -> Response {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return (StatusCode::BAD_REQUEST, "expected a SHA-256 hex hash").into_response();
    }
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let ct = match ext.as_str() {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "json" => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    let path = Cache::new(app.project.cache_dir()).object_path(hash);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut r = bytes.into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
            );
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        }
        Err(_) => (
            StatusCode::NOT_FOUND,
            "no such object in the cache (removed by gc?)",
        )
            .into_response(),
    }
}
