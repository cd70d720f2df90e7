//! `tsumugi serve`: an HTTP inference server for a cross-encoder, with its LoRA adapter
//! swapped while it serves.
//!
//! One process serves one base model on one device. On top of it sits at most one adapter
//! at a time, taken from the adapter registry (`adapters/<name>/vN`, see docs/adapters.md)
//! or from a directory inside the configured adapter roots. The pieces:
//!
//! | module | what |
//! | --- | --- |
//! | [`api`] | the JSON requests and responses, parsed with errors that say what was expected |
//! | `engine` | the loaded versions: a new one is loaded beside the serving one, then the pointer is swapped; `--follow` polls the registry's `current` link |
//! | `batcher` | one thread that scores the pairs of several queued requests in one call (a token budget and a short wait), behind a bounded queue |
//! | `http` | the axum routes, the bearer-token check, limits, graceful shutdown |
//! | [`metrics`] | the Prometheus counters and histograms of `GET /metrics` |
//!
//! A request holds an `Arc` of the version it was tokenized for until its scores come
//! back, so a swap never changes the model under a request in flight: the old version is
//! freed when its last request finishes.
//!
//! ```text
//! $ tsumugi serve --model models/minilm-l6 --follow nli --prefix /nli
//! listening on http://127.0.0.1:8080
//! $ curl -s localhost:8080/rerank -d '{"query":"q","texts":["a","b"]}'
//! [{"index":1,"score":0.93},{"index":0,"score":0.12}]
//! ```
//!
//! The whole server needs the burn models (feature `ml`); without it only [`api`] and
//! [`metrics`] are built, so that an engine-only workspace build stays free of burn.

pub mod api;
pub mod metrics;

#[cfg(feature = "ml")]
mod batcher;
#[cfg(feature = "ml")]
mod engine;
#[cfg(feature = "ml")]
mod http;

#[cfg(feature = "ml")]
pub use http::{Config, serve};
