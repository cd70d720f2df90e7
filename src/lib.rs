//! tsumugi: declarative, content-hashed pipelines for fine-tuning and evaluating
//! cross-encoders with LoRA. This crate is the command line; the engine lives in workspace
//! crates, each a layer that only uses the ones below it (see the README's "Where things
//! are"):
//!
//! | layer | crate | what it does |
//! | --- | --- | --- |
//! | base | `tsumugi-base` | project paths, atomic writes, the project lock, durations, metrics files |
//! | stages | `tsumugi-stages` | the stage contract; built-in kinds (their ML in burn) |
//! | pipeline | `tsumugi-pipeline` | YAML pipeline file → validated [`spec::Pipeline`] → [`graph::Dag`] |
//! | store | `tsumugi-store` | content hashes + stat cache, fingerprints, object store + action cache |
//! | plots | `tsumugi-plots` | declared plots drawn from a run's cached outputs (SVG, PNG, index page) |
//! | remote | `tsumugi-remote` | the cache mirrored on object storage (S3, shared directories) |
//! | run record | `tsumugi-rundb` | the SQLite run database and its one writer |
//! | executor | `tsumugi-exec` | freshness, slots, processes, per-item stages, registry |
//! | triggers | `tsumugi-triggers` | watch, cron schedules, data conditions |
//! | CLI | `tsumugi` (here) | [`cli`]: argument parsing and output |
//!
//! The layers are re-exported below under the short names the CLI uses.

pub mod cli;

pub use tsumugi_base::{lock, project, safepath, supervise};
pub use tsumugi_exec::{executor, freshness, map, registry, remote_cache};
pub use tsumugi_pipeline as spec;
pub use tsumugi_pipeline::graph;
pub use tsumugi_rundb as rundb;
pub use tsumugi_store::{cache, dirty_reason, fingerprint, fsmonitor, hash};
pub use tsumugi_triggers as trigger;
