//! `/adapters`: every registered adapter version with its gate result (the registry's
//! `version.json` files, which are the truth for what exists), and the one write action of
//! the UI, promoting a version.

use std::fmt::Write;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tsumugi_exec::registry::Registry;

use crate::html::{Nav, badge, enc, esc, num, page as frame, when};
use crate::{App, PageResult};

pub(crate) fn page(app: &App) -> PageResult {
    let reg = Registry::new(&app.project);
    let names = reg.names()?;
    let mut b = String::from("<h1>Adapters</h1>");
    if names.is_empty() {
        b.push_str("<p class=\"empty\">No adapter registered yet: a stage with <code>register:</code> keeps its output as a version (docs/adapters.md).</p>");
    }
    for name in &names {
        let current = reg.current(name)?;
        let versions = reg.versions(name)?;
        let _ = write!(
            b,
            "<section class=\"adapter\"><h2>{} <small>{}</small></h2>\
<table class=\"versions\"><thead><tr><th>Version</th><th>Status</th><th>Created</th><th>Metrics</th><th>Gate</th><th>Why</th><th>Run</th></tr></thead><tbody>",
            esc(name),
            match current {
                Some(v) => format!("current v{v}"),
                None => "no current version".into(),
            }
        );
        for v in versions.iter().rev() {
            let metrics: Vec<String> = v
                .metrics
                .iter()
                .map(|(k, x)| format!("{}={}", esc(k), num(*x)))
                .collect();
            let gate = if v.gate.metric.is_none() {
                "<span class=\"hint\">no gate</span>".to_string()
            } else if v.gate.passed {
                badge("passed")
            } else {
                badge("failed")
            };
            let _ = write!(
                b,
                "<tr><td>v{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{gate}</td><td>{}</td><td>{}</td></tr>",
                v.version,
                if current == Some(v.version) { " *" } else { "" },
                badge(v.status.as_str()),
                esc(&when(&v.created_at)),
                metrics.join("<br>"),
                esc(&v.gate.reason),
                v.run_id
                    .as_deref()
                    .map(|r| format!(
                        "<a class=\"run-id\" href=\"/runs/{}\">{}</a>",
                        enc(r),
                        esc(r)
                    ))
                    .unwrap_or_default(),
            );
        }
        b.push_str("</tbody></table></section>");
    }
    if app.token.is_some() {
        b.push_str("<p class=\"hint\">Write access: <code>curl -X POST -H 'Authorization: Bearer TOKEN' 'http://HOST/api/adapters/NAME/promote?version=N'</code></p>");
    }
    Ok(frame("Adapters", Nav::Adapters, &b))
}

/// Compares in time independent of where the strings first differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `POST /api/adapters/NAME/promote?version=N`: runs `tsumugi adapters promote NAME N
/// --no-wait` (the CLI holds the lock and writes the history), with the bearer token.
pub(crate) fn promote(app: &App, headers: &HeaderMap, name: &str, version: &str) -> Response {
    let Some(token) = &app.token else {
        return (
            StatusCode::FORBIDDEN,
            "the UI is read-only: start `tsumugi ui --token T` (or TSUMUGI_UI_TOKEN) to allow promoting\n",
        )
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| same_secret(g.trim(), token)) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong `Authorization: Bearer TOKEN`\n",
        )
            .into_response();
    }
    let version = version.trim_start_matches('v');
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?version=N (a version number)\n",
        )
            .into_response();
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    let out = std::process::Command::new(exe)
        .arg("-C")
        .arg(app.project.root())
        .args(["adapters", "promote", name, version, "--no-wait"])
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let status = match o.status.code() {
                Some(0) => StatusCode::OK,
                Some(3) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
