//! tsumugi's store: what a stage's inputs are worth, what a stage is, and what it made.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`hash`] | content hashes of files and directory trees, with a stat cache keyed on (device, inode, size, mtime, ctime) |
//! | [`fsmonitor`] | a file-system monitor daemon that lets a no-op `status` skip the stat pass |
//! | [`canonical`] | the canonical JSON encoding fingerprints hash |
//! | [`items`] | the items of a per-item (`map:`) stage and their one input hash |
//! | [`dirty_reason`] | why a stage is stale, typed, with old and new values, and the one sentence for each |
//! | [`fingerprint`] | a stage's identity: action, params, env, input hashes, declared outputs |
//! | [`cache`] | the content-addressed object store and the action cache (fingerprint → outputs) |
//!
//! As in Bazel: an action digest keys the action cache, the bytes live in a
//! content-addressed store, and a corrupt object is noticed on restore and healed by
//! re-running. Nothing here runs a stage; that is `tsumugi-exec`.
//!
//! ```
//! let stat = tsumugi_store::hash::StatCache::in_memory();
//! let hasher = tsumugi_store::hash::Hasher::new(&stat);
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("a.txt"), "hello").unwrap();
//! let h = hasher.hash(&dir.path().join("a.txt")).unwrap();
//! assert_eq!(h, tsumugi_store::hash::sha256_hex(b"hello"));
//! ```

pub mod cache;
pub mod canonical;
pub mod dirty_reason;
pub mod fingerprint;
pub mod fsmonitor;
pub mod hash;
pub mod items;
