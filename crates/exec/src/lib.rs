//! tsumugi's executor: runs a pipeline's stale stages and restores the fresh ones.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`executor`] | the run: freshness, slots (`-j`, GPUs), processes, retries, cancellation, commit, records |
//! | [`freshness`] | the one freshness decision (`run`, `status`, `--dry-run`): fresh, or dirty with typed reasons |
//! | [`map`] | per-item stages (`map:`): one fingerprint and cache entry per item |
//! | [`registry`] | adapter versions kept by `register:`, with gates, promotion and rollback |
//!
//! Below it: `tsumugi-pipeline` (what to run), `tsumugi-store` (fingerprints and the
//! cache), `tsumugi-rundb` (the record), `tsumugi-stages` (the stage contract and the
//! built-in kinds). Above it: the triggers and the CLI.

pub mod executor;
pub mod freshness;
pub mod map;
pub mod registry;
