//! tsumugi: declarative, content-hashed pipelines for fine-tuning and evaluating
//! cross-encoders with LoRA.
//!
//! The engine's ideas, each in one place, in the order a run goes through them:
//!
//! | step | module | what it does |
//! | --- | --- | --- |
//! | spec | [`spec`] | YAML pipeline file → validated, interpolated [`spec::Pipeline`] |
//! | graph | [`graph`] | stages → DAG (edges from references, deps on outs, `needs:`) |
//! | hashing | [`hash`] | content hashes of files and directories, with a stat cache |
//! | fingerprint | [`fingerprint`] | a stage's identity: action, params, env, input hashes |
//! | cache | [`cache`] | content-addressed objects + fingerprint → output manifest |
//! | executor | [`executor`] | runs the stale stages in parallel under slots, restores the rest |
//! | run record | [`rundb`] | the SQLite run database, written by one writer task |
//!
//! A `map:` stage runs per item through [`map`], inside the executor's one stage run.
//!
//! A stage with `register:` keeps an output as a version in the adapter registry
//! ([`registry`]), after it completes.
//!
//! [`project`] knows where things live; [`lock`] keeps two processes from racing;
//! [`safepath`] resolves output paths without following a symlink out of the project.

pub mod cache;
pub mod cli;
pub mod executor;
pub mod fingerprint;
pub mod fsmonitor;
pub mod graph;
pub mod hash;
pub mod lock;
pub mod map;
pub mod project;
pub mod registry;
pub mod rundb;
pub mod safepath;
pub mod spec;
pub mod trigger;
