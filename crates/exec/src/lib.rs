//! tsumugi's executor: runs a pipeline's stale stages and restores the fresh ones.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`executor`] | the run: order, retries, timeouts, cancellation, the stage lifecycle; its API re-exported from the private modules below |
//! | `outcome` | what a run is asked and what it answers (`RunOptions`, `RunSummary`, `StageStatus`) |
//! | `process` | command stages as supervised process groups; built-in kinds |
//! | `launch` | where a stage's work runs: the `Launcher` trait, local or Slurm |
//! | `slurm` | the Slurm executor: batch scripts, one `squeue` per interval, `__stage-exec` requests |
//! | `ui` | what a running stage reports, and the terminal's progress bars or plain lines |
//! | `slots` | `-j` and GPU slots (`CUDA_VISIBLE_DEVICES`) |
//! | `ctx` | the shared state of one run |
//! | `commit` | outputs into the store, the action entry, records, `register:` |
//! | `status` | `status` and `--dry-run`, through the one freshness decision |
//! | [`freshness`] | the one freshness decision (`run`, `status`, `--dry-run`): fresh, or dirty with typed reasons |
//! | [`map`] | per-item stages (`map:`): one fingerprint and cache entry per item |
//! | [`remote_cache`] | `run --remote` read-through / write-through; `push` and `pull` |
//! | [`registry`] | adapter versions kept by `register:`, with gates, promotion and rollback |
//!
//! Below it: `tsumugi-pipeline` (what to run), `tsumugi-store` (fingerprints and the
//! cache), `tsumugi-rundb` (the record), `tsumugi-stages` (the stage contract and the
//! built-in kinds). Above it: the triggers and the CLI.

mod commit;
mod ctx;
pub mod executor;
pub mod freshness;
mod launch;
pub mod map;
mod outcome;
mod process;
pub mod registry;
pub mod remote_cache;
mod slots;
mod slurm;
mod status;
mod ui;
