//! The routes, the token check, limits and the server's life: start, print the bound
//! address, serve until SIGTERM/SIGINT, finish the requests in flight, stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tsumugi_base::project::Project;
use tsumugi_stages::device::DeviceSpec;
use tsumugi_stages::head::HeadActivation;
use tsumugi_stages::score::{Interpreted, ScoreOptions, interpret};
use tsumugi_stages::tokenize::Truncation;

use crate::api::{self, ApiError, LoadRequest, LoadTarget, Prediction, Ranked};
use crate::batcher::{BatchLimits, Batcher, Job, Refused};
use crate::engine::Engine;
use crate::metrics::Metrics;

/// Everything `tsumugi serve` is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The base model directory.
    pub model: PathBuf,
    /// An adapter (or exported model) directory to serve from the start.
    pub adapter: Option<PathBuf>,
    /// A registry name to follow.
    pub follow: Option<String>,
    pub adapter_roots: Vec<PathBuf>,
    pub project: PathBuf,
    pub bind: SocketAddr,
    /// Path prefix of the adapter endpoints (`/nli` → `/nli/adapter/load`); `""` for none.
    pub prefix: String,
    pub device: DeviceSpec,
    /// Pairs per forward pass inside one batcher call.
    pub batch: usize,
    pub max_length: usize,
    pub precision: tsumugi_stages::precision::Precision,
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
    pub queue: usize,
    pub max_pairs: usize,
    pub max_body: usize,
    pub timeout: Duration,
    /// The bearer token of the adapter endpoints.
    pub token: Option<String>,
    /// How often `--follow` reads the registry's `current` link.
    pub poll: Duration,
}

struct AppState {
    engine: Engine,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    token: Option<String>,
    max_pairs: usize,
    timeout: Duration,
}

type Shared = Arc<AppState>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// The body, or the JSON error for one over `--max-body` (413) or unreadable.
fn body(b: Result<Bytes, BytesRejection>, limit_hint: &str) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        let status = e.status().as_u16();
        if status == 413 {
            ApiError::new(413, format!("request body too large: {limit_hint}"))
        } else {
            ApiError::new(status, format!("cannot read the body: {e}"))
        }
    })
}

/// Starts the server and serves until SIGTERM or SIGINT. `on_bound` gets the address
/// actually bound (port 0 picks a free one) before the first request is taken.
pub fn serve(config: Config, on_bound: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    if !config.bind.ip().is_loopback() && config.token.is_none() {
        anyhow::bail!(
            "--bind {}: listening beyond this machine needs a token for the adapter endpoints; \
             set TSUMUGI_SERVE_TOKEN or --token-file",
            config.bind
        );
    }
    let metrics = Arc::new(Metrics::new());
    let options = ScoreOptions {
        batch_size: config.batch.max(1),
        max_length: config.max_length,
        truncation: Truncation::LongestFirst,
        precision: config.precision,
    };
    let engine = Engine::start(
        config.model.clone(),
        config.adapter.clone(),
        config.device,
        options,
        Project::new(&config.project),
        config.adapter_roots.clone(),
        metrics.clone(),
    )
    .with_context(|| format!("loading {}", config.model.display()))?;
    if let Some(name) = &config.follow {
        engine
            .load(&LoadTarget::Registry {
                name: name.clone(),
                version: None,
                follow: true,
            })
            .map_err(|e| anyhow::anyhow!("--follow {name}: {}", e.message))?;
    }
    let (batcher, batch_thread) = Batcher::start(
        BatchLimits {
            max_tokens: config.max_batch_tokens.max(1),
            max_wait: config.max_wait,
            queue: config.queue,
        },
        metrics.clone(),
    );
    let state = Arc::new(AppState {
        engine,
        batcher,
        metrics: metrics.clone(),
        token: config.token.clone(),
        max_pairs: config.max_pairs,
        timeout: config.timeout,
    });

    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (state, stop, poll) = (state.clone(), stop.clone(), config.poll);
        std::thread::Builder::new()
            .name("tsumugi-follow".into())
            .spawn(move || state.engine.follow(poll, &|| stop.load(Ordering::Relaxed)))?
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding {}", config.bind))?;
        on_bound(listener.local_addr()?);
        let app = router(state.clone(), &config.prefix, config.max_body);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving")
    });
    stop.store(true, Ordering::Relaxed);
    // The handlers are done; dropping the last sender ends the batcher once drained.
    drop(runtime);
    let _ = follower.join();
    drop(state);
    let _ = batch_thread.join();
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    eprintln!("shutting down: finishing the requests in flight");
}

fn router(state: Shared, prefix: &str, max_body: usize) -> Router {
    let prefix = prefix.trim_end_matches('/');
    let admin = Router::new()
        .route(&format!("{prefix}/adapter/load"), post(load))
        .route(&format!("{prefix}/adapter/unload"), post(unload))
        .route(&format!("{prefix}/adapter/status"), get(status))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/predict", post(predict))
        .route("/rerank", post(rerank))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every answer and its time by route pattern.
async fn observe(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let r = next.run(req).await;
    s.metrics.request(
        &endpoint,
        r.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    r
}

/// The adapter endpoints need `Authorization: Bearer <token>` when a token is set.
async fn authorize(
    State(s): State<Shared>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| same(g.as_bytes(), token.as_bytes()));
        if !ok {
            let msg = if given.is_none() {
                "the adapter endpoints need Authorization: Bearer <token>"
            } else {
                "wrong token"
            };
            return ApiError::new(401, msg).into_response();
        }
    }
    next.run(req).await
}

/// Compares in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        404,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn health(State(s): State<Shared>) -> axum::Json<Value> {
    let v = s.engine.current();
    axum::Json(json!({"status": "ok", "adapter": v.brief()}))
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Tokenizes for the serving version, queues, waits for the logits.
async fn logits(
    s: &Shared,
    pairs: Vec<(String, String)>,
) -> Result<(Vec<Vec<f32>>, Arc<crate::engine::Version>), ApiError> {
    if pairs.len() > s.max_pairs {
        return Err(ApiError::new(
            413,
            format!(
                "{} pairs in one request; the limit is {} (--max-pairs)",
                pairs.len(),
                s.max_pairs
            ),
        ));
    }
    let version = s.engine.current();
    if pairs.is_empty() {
        return Ok((Vec::new(), version));
    }
    let encoded = version
        .scorer
        .tokenizer()
        .encode_all(&pairs)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job = Job {
        version: version.clone(),
        pairs: encoded,
        reply: tx,
    };
    match s.batcher.submit(job) {
        Ok(()) => {}
        Err(Refused::Full) => {
            let mut e = ApiError::new(503, "the queue is full; retry shortly");
            e.retry_after = Some(1);
            return Err(e);
        }
        Err(Refused::Closed) => return Err(ApiError::new(503, "shutting down")),
    }
    match tokio::time::timeout(s.timeout, rx).await {
        Ok(Ok(Ok(l))) => Ok((l, version)),
        Ok(Ok(Err(msg))) => Err(ApiError::new(500, msg)),
        Ok(Err(_)) => Err(ApiError::new(500, "the batcher dropped the request")),
        Err(_) => Err(ApiError::new(
            504,
            format!("no answer within {} (--timeout)", humanize(s.timeout)),
        )),
    }
}

fn humanize(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

async fn predict(
    State(s): State<Shared>,
    b: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let b = body(b, "see --max-body")?;
    let req: api::PredictRequest = api::parse(&b)?;
    let (logits, version) = logits(&s, req.into_pairs()?).await?;
    let act = version.scorer.activation();
    let results: Vec<Prediction> = logits.into_iter().map(|l| prediction(l, act)).collect();
    Ok(axum::Json(
        json!({"adapter": version.brief(), "results": results}),
    ))
}

fn prediction(logits: Vec<f32>, act: HeadActivation) -> Prediction {
    match interpret(&logits, act) {
        Interpreted::Score(s) => Prediction {
            logits,
            score: Some(s),
            probs: None,
            label: None,
        },
        Interpreted::Probs(p) => {
            let label = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            Prediction {
                logits,
                score: None,
                probs: Some(p),
                label,
            }
        }
    }
}

async fn rerank(
    State(s): State<Shared>,
    b: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Vec<Ranked>>, ApiError> {
    let b = body(b, "see --max-body")?;
    let req: api::RerankRequest = api::parse(&b)?;
    let labels = s.engine.current().scorer.num_labels();
    if labels != 1 {
        return Err(ApiError::invalid(format!(
            "rerank needs a one-label (relevance) head; this model has {labels} labels: use /predict"
        )));
    }
    let pairs: Vec<(String, String)> = req
        .texts
        .iter()
        .map(|t| (req.query.clone(), t.clone()))
        .collect();
    let (logits, version) = logits(&s, pairs).await?;
    let act = version.scorer.activation();
    let results = logits
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let x = l.first().copied().unwrap_or(f32::NAN);
            Ranked {
                index: i,
                score: if req.raw_scores {
                    x
                } else {
                    act.apply(f64::from(x)) as f32
                },
                text: req.return_text.then(|| req.texts[i].clone()),
            }
        })
        .collect();
    Ok(axum::Json(api::rank(results)))
}

async fn load(
    State(s): State<Shared>,
    b: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let b = body(b, "see --max-body")?;
    let target = api::parse::<LoadRequest>(&b)?.target()?;
    // Loading takes seconds of CPU: off the async workers.
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.engine.load(&target))
        .await
        .map_err(|e| ApiError::new(500, format!("loading failed: {e}")))??;
    Ok(axum::Json(s.engine.status()))
}

async fn unload(State(s): State<Shared>) -> Result<axum::Json<Value>, ApiError> {
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.engine.unload())
        .await
        .map_err(|e| ApiError::new(500, format!("unloading failed: {e}")))?;
    Ok(axum::Json(s.engine.status()))
}

async fn status(State(s): State<Shared>) -> axum::Json<Value> {
    axum::Json(s.engine.status())
}
