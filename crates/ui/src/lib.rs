//! `tsumugi ui`: a local web UI over a project's run database, cache, pipeline files and
//! adapter registry.
//!
//! The pages are rendered on the server from the same code and queries the CLI uses —
//! freshness comes from `tsumugi_exec::executor::status` (what `tsumugi status` prints),
//! runs from `tsumugi_rundb` (one page at a time, sorted in SQL: see
//! `tsumugi_rundb::browse`). Charts are inline SVG; the only script is a few lines of
//! vanilla JS for the comparison checkboxes; CSS and JS are compiled into the binary with
//! `include_str!`, so there is no build step and no external resource.
//!
//! | module | page |
//! | --- | --- |
//! | `runs` | `/`: runs and experiments, sortable by any column, filtered by pipeline, paginated |
//! | `compare` | `/compare?run=A&run=B…`: param and metric diffs, overlaid curves, plots |
//! | `run` | `/runs/ID`: stage timeline, logs (tail), metrics, artifacts |
//! | `dag` | `/dag`: each pipeline's graph coloured stale/fresh, with the reasons |
//! | `adapters` | `/adapters`: registry versions and their gate results |
//! | `plots` | the declared plots (`plots:`) of a run or several, drawn by tsumugi-plots |
//! | [`html`], `svg` | escaping and the page frame; the drawings |
//!
//! It listens on 127.0.0.1 unless told otherwise, and is read-only unless started with a
//! token: then `POST /api/adapters/NAME/promote?version=N` (the one write action, running
//! `tsumugi adapters promote` so the lock and history are the CLI's) needs
//! `Authorization: Bearer TOKEN`. Everything from the database, logs and files is
//! HTML-escaped, and every page carries a content security policy that allows no inline
//! script or style.
//!
//! ```text
//! $ tsumugi ui --port 8470
//! listening on http://127.0.0.1:8470
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rusqlite::Connection;

use tsumugi_base::project::Project;

mod adapters;
mod compare;
mod dag;
pub mod html;
mod plots;
mod run;
mod runs;
mod svg;

/// How the server is started.
#[derive(Debug, Clone)]
pub struct Config {
    pub project: PathBuf,
    pub bind: SocketAddr,
    /// Pipeline files to show (relative to the project); empty: found (see `dag`).
    pub files: Vec<PathBuf>,
    /// With a token, the write action is enabled behind `Authorization: Bearer`.
    pub token: Option<String>,
}

/// What every page handler gets.
pub(crate) struct App {
    pub project: Project,
    pub files: Vec<PathBuf>,
    pub token: Option<String>,
    /// One read connection, opened on the first request that finds the database.
    db: Mutex<Option<Connection>>,
}

impl App {
    /// Runs `f` on the run database; `None` when nothing has run yet.
    pub fn with_db<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<Option<T>> {
        let mut guard = self.db.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = tsumugi_rundb::open_read(&self.project)?;
        }
        match guard.as_ref() {
            Some(c) => f(c).map(Some),
            None => Ok(None),
        }
    }
}

/// A page's failure, as the browser sees it.
pub(crate) enum PageError {
    NotFound(String),
    Bad(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError::Internal(e)
    }
}

pub(crate) type PageResult = std::result::Result<String, PageError>;

/// Pages may not run inline script or style, nor load anything from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Renders a page on a blocking thread (SQLite, file hashing), turning errors into pages.
async fn render<F>(app: Arc<App>, f: F) -> Response
where
    F: FnOnce(&App) -> PageResult + Send + 'static,
{
    let res = tokio::task::spawn_blocking(move || f(&app)).await;
    let (status, msg) = match res {
        Ok(Ok(body)) => return html_response(StatusCode::OK, body),
        Ok(Err(PageError::NotFound(m))) => (StatusCode::NOT_FOUND, m),
        Ok(Err(PageError::Bad(m))) => (StatusCode::BAD_REQUEST, m),
        Ok(Err(PageError::Internal(e))) => {
            tracing::error!("{e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
    };
    let body = html::page(
        status.canonical_reason().unwrap_or("error"),
        html::Nav::None,
        &format!(
            "<h1>{}</h1><p class=\"error\">{}</p>",
            status.as_u16(),
            html::esc(&msg)
        ),
    );
    html_response(status, body)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The routes, over `app`.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/",
            get(|State(a): State<Arc<App>>, RawQuery(q): RawQuery| {
                render(a, move |a| runs::page(a, &html::Query::parse(q.as_deref())))
            }),
        )
        .route(
            "/compare",
            get(|State(a): State<Arc<App>>, RawQuery(q): RawQuery| {
                render(a, move |a| {
                    compare::page(a, &html::Query::parse(q.as_deref()))
                })
            }),
        )
        .route(
            "/runs/{id}",
            get(|State(a): State<Arc<App>>, UrlPath(id): UrlPath<String>| {
                render(a, move |a| run::page(a, &id))
            }),
        )
        .route(
            "/dag",
            get(|State(a): State<Arc<App>>| render(a, dag::page)),
        )
        .route(
            "/adapters",
            get(|State(a): State<Arc<App>>| render(a, adapters::page)),
        )
        .route(
            "/object/{hash}",
            get(
                |State(a): State<Arc<App>>,
                 UrlPath(hash): UrlPath<String>,
                 RawQuery(q): RawQuery| async move {
                    let q = html::Query::parse(q.as_deref());
                    tokio::task::spawn_blocking(move || {
                        run::object(&a, &hash, q.get("name").unwrap_or(""))
                    })
                    .await
                    .unwrap_or_else(|e| {
                        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    })
                },
            ),
        )
        .route(
            "/api/adapters/{name}/promote",
            post(
                |State(a): State<Arc<App>>,
                 UrlPath(name): UrlPath<String>,
                 headers: HeaderMap,
                 RawQuery(q): RawQuery| async move {
                    let q = html::Query::parse(q.as_deref());
                    let version = q.get("version").unwrap_or("").to_string();
                    tokio::task::spawn_blocking(move || {
                        adapters::promote(&a, &headers, &name, &version)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                    })
                },
            ),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("../assets/app.css")) }),
        )
        .route(
            "/static/app.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("../assets/app.js"),
                )
            }),
        )
        .with_state(app)
}

/// Serves until SIGINT or SIGTERM; `ready` gets the bound address (port 0 picks one).
pub fn serve(config: Config, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let addr = listener.local_addr()?;
        let app = Arc::new(App {
            project: Project::new(&config.project),
            files: config.files,
            token: config.token,
            db: Mutex::new(None),
        });
        ready(addr);
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shutdown())
            .await
            .context("the UI server failed")
    })
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
