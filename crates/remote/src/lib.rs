//! tsumugi's remote cache: the local store (`cache/objects/`, `cache/actions/`) mirrored on
//! object storage, so a second machine or a teammate restores what one machine computed
//! instead of computing it again. Built on the `object_store` crate: `s3://` (and any
//! S3-compatible server) and local or NFS directories.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tsumugi_remote::{Config, Remote};
//! use tsumugi_store::cache::Cache;
//! let root = std::path::Path::new(".");
//! let spec = Config::load(root)?.resolve(None)?.expect("a default remote");
//! let remote = Remote::open(&spec.name, &spec.url, root)?;
//! let cache = Cache::new(root.join("cache"));
//! // Fetch a stage's result (verified) into the local cache; a run then restores it.
//! if let Some((entry, moved)) = remote.fetch(&cache, "3f2a…", &|_| {}).await? {
//!     println!("{}: {} objects, {} bytes", entry.stage, moved.objects, moved.bytes);
//! }
//! # Ok(()) }
//! ```
//!
//! [`config`] reads and writes the project's remotes (`.tsumugi/config.toml`); [`remote`]
//! holds the layout on the store and the guarantees (verified downloads, entries after
//! their objects, safe concurrent pushes). When to read through and write through during a
//! run is the executor's (`tsumugi_exec::remote_cache`).

pub mod config;
pub mod remote;

pub use config::{CONFIG_FILE, Config, RemoteSpec};
pub use remote::{Remote, RemoteError, Transfer, VerifyReport};
