//! tsumugi's lowest layer: the project on disk and the primitives every other layer writes
//! and reads it with. Nothing here knows about pipelines or fingerprints.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`project`] | where a project keeps things (`cache/`, `runs/`, `out/`) |
//! | [`atomic`] | durable atomic writes (temp file, fsync, rename, directory fsync) |
//! | [`safepath`] | output paths resolved from the project root without following a symlink out of it |
//! | [`lock`] | the project lock: one `run` or `gc` at a time per project |
//! | [`supervise`] | stage processes recorded, and what a killed run left alive ended by the next invocation |
//! | [`duration`] | the one duration grammar (`1h30m`, `500ms`) |
//! | [`metrics_file`] | the one reader of metrics files (JSON/YAML) |
//! | [`time`] | timestamps as tsumugi writes them |
//!
//! ```
//! let p = tsumugi_base::project::Project::new("/srv/proj");
//! assert_eq!(p.db_path(), std::path::Path::new("/srv/proj/runs/tsumugi.db"));
//! ```

pub mod atomic;
pub mod duration;
pub mod lock;
pub mod metrics_file;
pub mod paths;
pub mod project;
pub mod safepath;
pub mod supervise;
pub mod time;
