//! One remote: the local cache's layout on an object store.
//!
//! ```text
//! <prefix>/objects/ab/cdef…          file contents and directory manifests, by SHA-256
//! <prefix>/actions/<fingerprint>     action entries (the same JSON as cache/actions/)
//! <prefix>/map/<pipeline>/<stage>.json   per-item manifests of `map:` stages
//! ```
//!
//! The guarantees, and how they are kept:
//! - **Nothing unverified is restored.** A downloaded object goes to a temporary file in
//!   `cache/objects/` while it is hashed; only if its SHA-256 is its name is it renamed into
//!   place. A mismatch is [`RemoteError::Corrupt`]: the object is dropped, the entry is not
//!   written locally (so the stage runs), and the object is remembered as suspect so that the
//!   next upload of that content overwrites it.
//! - **An entry is never visible before its objects.** Pushing writes every object first and
//!   the action entry last; fetching writes the local entry last. A reader (another machine
//!   mid-push) finds either no entry or one whose objects are all there.
//! - **Concurrent pushes are safe.** Objects are content-addressed: two writers of one key
//!   write the same bytes, and each PUT replaces the key whole (S3 semantics; the local
//!   store writes a temporary file and renames). Two entries for one fingerprint are two
//!   valid descriptions of one result.
//! - **Uploads skip what is there.** A HEAD per object; an object of the wrong size is
//!   uploaded again.
//!
//! Credentials are never stored: each store reads its standard environment. An `s3://` remote reads `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`/`AWS_REGION`,
//! `AWS_ENDPOINT_URL` (and the other `AWS_*` variables `object_store` knows) from the
//! environment, or instance/web-identity credentials; `gs://` reads
//! `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS` (or the metadata server);
//! `az://` reads `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY`, a SAS or
//! service-principal variables.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ClientOptions, GetResultPayload, ObjectStore, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use tsumugi_base::atomic::{tmp_path, write_atomic};
use tsumugi_store::cache::{ActionEntry, Cache, OutKind};
use tsumugi_store::hash::{Manifest, sha256_hex};

/// Objects transferred at once.
const PARALLEL: usize = 16;
/// Objects above this go up in parts (S3 caps one PUT at 5 GB; parts also retry alone);
/// below it an object is read whole, so `PARALLEL` uploads hold at most 256 MiB.
const MULTIPART_ABOVE: u64 = 16 << 20;

/// Why a remote operation did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Network down, server stopped, credentials refused, bucket missing…: the caller
    /// carries on without the remote.
    #[error("remote {remote} is unavailable: {message}")]
    Unavailable { remote: String, message: String },
    /// An object whose bytes do not hash to its name. Never restored.
    #[error("remote {remote}: object {object} is corrupt (its content hashes to {actual})")]
    Corrupt {
        remote: String,
        object: String,
        actual: String,
    },
    /// An entry names an object the remote does not have (a damaged or half-cleaned remote).
    #[error("remote {remote}: object {object} is missing")]
    Missing { remote: String, object: String },
    #[error("remote {remote}: action entry {fingerprint} is damaged: {why}")]
    BadEntry {
        remote: String,
        fingerprint: String,
        why: String,
    },
    /// The local side: a full disk, an unreadable or corrupt local object.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl RemoteError {
    /// A problem of the remote's content (as opposed to reaching it).
    pub fn is_content(&self) -> bool {
        matches!(
            self,
            RemoteError::Corrupt { .. }
                | RemoteError::Missing { .. }
                | RemoteError::BadEntry { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// What a push or a fetch moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub objects: u64,
    pub bytes: u64,
    /// Objects already at the destination.
    pub skipped: u64,
}

impl Transfer {
    pub fn add(&mut self, o: Transfer) {
        self.objects += o.objects;
        self.bytes += o.bytes;
        self.skipped += o.skipped;
    }
}

/// Called once per object moved or found present, with its size (for progress bars).
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// A remote cache.
pub struct Remote {
    name: String,
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    /// Set after the first [`RemoteError::Unavailable`] of a run: later stages do not wait
    /// for a dead server again, and the warning is said once.
    offline: AtomicBool,
    /// Objects found corrupt: uploaded again even though the remote has the key.
    suspect: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

impl Remote {
    /// Like [`Remote::open`], creating a directory remote's directory first (`remote add`).
    pub fn create(name: &str, url: &str, root: &Path) -> anyhow::Result<Remote> {
        if let Some(dir) = local_dir(url, root) {
            fs::create_dir_all(&dir)
                .with_context(|| format!("remote {name}: cannot create {}", dir.display()))?;
        }
        Remote::open(name, url, root)
    }

    /// Opens the remote `name` at `url`: `s3://bucket[/prefix]`, `gs://…`, `az://…`,
    /// `file:///dir`, or a directory path (relative to the project `root`). Nothing is
    /// contacted yet. A directory remote must exist: a missing one is more likely an
    /// unmounted share than a place to fill on the local disk.
    pub fn open(name: &str, url: &str, root: &Path) -> anyhow::Result<Remote> {
        let (store, prefix): (Arc<dyn ObjectStore>, Key) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = split_bucket(name, url, rest)?;
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client_options())
                .with_retry(retry_config());
            // The AWS CLI's spelling; object_store reads AWS_ENDPOINT.
            let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok();
            if let Some(ep) = endpoint {
                // A plain-http endpoint is a local server (MinIO, moto): allow it, and use
                // path-style requests, which those serve.
                b = b
                    .with_allow_http(ep.starts_with("http://"))
                    .with_endpoint(ep);
            }
            if std::env::var("AWS_DEFAULT_REGION").is_err() && std::env::var("AWS_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            }
            let s = b
                .build()
                .with_context(|| format!("remote {name}: cannot set up S3 client for {url}"))?;
            (Arc::new(s), prefix)
        } else if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = split_bucket(name, url, rest)?;
            let s = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client_options())
                .with_retry(retry_config())
                .build()
                .with_context(|| format!("remote {name}: cannot set up GCS client for {url}"))?;
            (Arc::new(s), prefix)
        } else if let Some(rest) = url.strip_prefix("az://") {
            let (container, prefix) = split_bucket(name, url, rest)?;
            let s = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_client_options(client_options())
                .with_retry(retry_config())
                .build()
                .with_context(|| {
                    format!("remote {name}: cannot set up Azure client for {url} (AZURE_STORAGE_ACCOUNT_NAME set?)")
                })?;
            (Arc::new(s), prefix)
        } else if url.contains("://") && !url.starts_with("file://") {
            let scheme = url.split("://").next().unwrap_or_default();
            anyhow::bail!(
                "remote {name}: {scheme}:// is not a supported store (use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, file:///DIR or a directory path)"
            );
        } else {
            let dir = local_dir(url, root).expect("a directory URL");
            if !dir.is_dir() {
                anyhow::bail!(
                    "remote {name}: directory {} does not exist (a share not mounted? `tsumugi remote add` creates it)",
                    dir.display()
                );
            }
            let s = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .with_context(|| format!("remote {name}: cannot open {}", dir.display()))?;
            (Arc::new(s), Key::default())
        };
        Ok(Remote {
            name: name.to_string(),
            url: url.to_string(),
            store,
            prefix,
            offline: AtomicBool::new(false),
            suspect: Mutex::new(HashSet::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether an earlier operation found the remote unreachable.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    /// Marks the remote unreachable; true the first time (say the warning then).
    pub fn go_offline(&self) -> bool {
        !self.offline.swap(true, Ordering::SeqCst)
    }

    fn key(&self, parts: &[&str]) -> Key {
        let mut k = self.prefix.clone();
        for p in parts {
            k = k.child(*p);
        }
        k
    }

    fn object_key(&self, hash: &str) -> Key {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.key(&["objects", a, b])
    }

    fn action_key(&self, fingerprint: &str) -> Key {
        self.key(&["actions", fingerprint])
    }

    fn map_key(&self, pipeline: &str, stage: &str) -> Key {
        self.key(&["map", pipeline, &format!("{stage}.json")])
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Unavailable {
            remote: self.name.clone(),
            message: e.to_string(),
        }
    }

    /// Bytes at `key`, or `None` where there are none.
    async fn get_bytes(&self, key: &Key) -> Result<Option<bytes::Bytes>> {
        match self.store.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.unavailable(e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// The remote's entry for `fingerprint`, if it has one.
    pub async fn get_action(&self, fingerprint: &str) -> Result<Option<ActionEntry>> {
        let Some(bytes) = self.get_bytes(&self.action_key(fingerprint)).await? else {
            return Ok(None);
        };
        let bad = |why: String| RemoteError::BadEntry {
            remote: self.name.clone(),
            fingerprint: fingerprint.to_string(),
            why,
        };
        let entry: ActionEntry =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not an entry: {e}")))?;
        if entry.fingerprint != fingerprint {
            return Err(bad(format!("it is the entry of {}", entry.fingerprint)));
        }
        Ok(Some(entry))
    }

    /// Fetches `fingerprint`'s entry and every object it needs into `cache`, verified; the
    /// local entry is written last. `Ok(None)`: the remote has no such entry.
    pub async fn fetch(
        &self,
        cache: &Cache,
        fingerprint: &str,
        progress: Progress<'_>,
    ) -> Result<Option<(ActionEntry, Transfer)>> {
        let Some(entry) = self.get_action(fingerprint).await? else {
            return Ok(None);
        };
        let mut t = Transfer::default();
        // Manifests first: they say which file objects a directory needs.
        let mut files = Vec::new();
        for rec in entry.outs.values() {
            t.add(self.download(cache, &rec.hash, progress).await?);
            if rec.kind == OutKind::Dir {
                let m = cache.manifest(&rec.hash).map_err(|e| {
                    RemoteError::Local(anyhow::anyhow!("manifest {}: {e}", rec.hash))
                })?;
                files.extend(m.entries.into_iter().map(|e| e.hash));
            }
        }
        t.add(self.download_all(cache, files, progress).await?);
        let bytes = serde_json::to_vec_pretty(&entry).map_err(anyhow::Error::from)?;
        write_atomic(&cache.action_path(fingerprint), &bytes)?;
        Ok(Some((entry, t)))
    }

    async fn download_all(
        &self,
        cache: &Cache,
        hashes: Vec<String>,
        progress: Progress<'_>,
    ) -> Result<Transfer> {
        each_object(hashes, |h| async move {
            self.download(cache, &h, progress).await
        })
        .await
    }

    /// One object into the local store, through a temporary file, hashed on the way.
    async fn download(
        &self,
        cache: &Cache,
        hash: &str,
        progress: Progress<'_>,
    ) -> Result<Transfer> {
        // A local object is verified when it is restored, as any other.
        if cache.has_object(hash) {
            progress(0);
            return Ok(Transfer {
                skipped: 1,
                ..Transfer::default()
            });
        }
        let key = self.object_key(hash);
        let got = match self.store.get(&key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::Missing {
                    remote: self.name.clone(),
                    object: hash.to_string(),
                });
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        let dest = cache.object_path(hash);
        let dir = dest
            .parent()
            .expect("object path has a parent")
            .to_path_buf();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = tmp_path(&dest);
        let res: Result<u64> = async {
            let (actual, size) = match got.payload {
                // A directory remote hands over an open file: one blocking copy with a large
                // buffer instead of object_store's 8 KiB async chunks.
                GetResultPayload::File(src, _) => {
                    let t = tmp.clone();
                    let len = got.meta.size;
                    tokio::task::spawn_blocking(move || copy_hashed(src, len, &t))
                        .await
                        .map_err(anyhow::Error::from)??
                }
                GetResultPayload::Stream(mut stream) => {
                    let mut f = tokio::fs::File::create(&tmp)
                        .await
                        .with_context(|| format!("cannot create {}", tmp.display()))?;
                    let mut h = Sha256::new();
                    let mut size = 0u64;
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map_err(|e| self.unavailable(e))?;
                        h.update(&chunk);
                        size += chunk.len() as u64;
                        f.write_all(&chunk)
                            .await
                            .with_context(|| format!("cannot write {}", tmp.display()))?;
                    }
                    f.flush().await.map_err(anyhow::Error::from)?;
                    (hex::encode(h.finalize()), size)
                }
            };
            if actual != hash {
                self.suspect
                    .lock()
                    .expect("suspect")
                    .insert(hash.to_string());
                return Err(RemoteError::Corrupt {
                    remote: self.name.clone(),
                    object: hash.to_string(),
                    actual,
                });
            }
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444))
                .map_err(anyhow::Error::from)?;
            // Renamed without an fsync: after a crash an object may hold other bytes than its
            // name says, and every restore hashes every object, so that object is found,
            // discarded and its stage re-run. An fsync per object made pulling 2,000 small
            // objects several times slower (BENCHMARKS.md, "Remote cache").
            fs::rename(&tmp, &dest).with_context(|| format!("cannot store object {hash}"))?;
            Ok(size)
        }
        .await;
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let size = res?;
        progress(size);
        Ok(Transfer {
            objects: 1,
            bytes: size,
            skipped: 0,
        })
    }

    /// Uploads `entry`'s objects from `cache` (those the remote lacks), then the entry.
    pub async fn push(
        &self,
        cache: &Cache,
        entry: &ActionEntry,
        progress: Progress<'_>,
    ) -> Result<Transfer> {
        let mut hashes = Vec::new();
        for rec in entry.outs.values() {
            hashes.push(rec.hash.clone());
            if rec.kind == OutKind::Dir {
                let m = cache.manifest(&rec.hash).map_err(|e| {
                    RemoteError::Local(anyhow::anyhow!(
                        "cannot push {}: its manifest: {e}",
                        rec.path
                    ))
                })?;
                hashes.extend(m.entries.into_iter().map(|e| e.hash));
            }
        }
        let t = self.upload_all(cache, hashes, progress).await?;
        let bytes = serde_json::to_vec_pretty(entry).map_err(anyhow::Error::from)?;
        self.store
            .put(
                &self.action_key(&entry.fingerprint),
                PutPayload::from(bytes),
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(t)
    }

    /// Uploads a `map:` stage's item manifest (after the item objects it names).
    pub async fn push_map_manifest(
        &self,
        cache: &Cache,
        pipeline: &str,
        stage: &str,
        manifest: &Path,
        progress: Progress<'_>,
    ) -> Result<Transfer> {
        let Ok(bytes) = fs::read(manifest) else {
            return Ok(Transfer::default());
        };
        let hashes = item_manifest_objects(cache, &bytes);
        let t = self.upload_all(cache, hashes, progress).await?;
        self.store
            .put(&self.map_key(pipeline, stage), PutPayload::from(bytes))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(t)
    }

    /// Fetches a `map:` stage's item manifest to `dest` and the objects it names, unless
    /// `dest` exists (the local one describes this workspace's items).
    pub async fn fetch_map_manifest(
        &self,
        cache: &Cache,
        pipeline: &str,
        stage: &str,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<Transfer> {
        if dest.exists() {
            return Ok(Transfer::default());
        }
        let Some(bytes) = self.get_bytes(&self.map_key(pipeline, stage)).await? else {
            return Ok(Transfer::default());
        };
        // The manifest's own item outputs: each verified; a directory's manifest first.
        let mut t = Transfer::default();
        let recs = item_manifest_records(&bytes);
        let mut files = Vec::new();
        for (hash, dir) in recs {
            t.add(self.download(cache, &hash, progress).await?);
            if dir && let Ok(m) = cache.manifest(&hash) {
                files.extend(m.entries.into_iter().map(|e| e.hash));
            }
        }
        t.add(self.download_all(cache, files, progress).await?);
        write_atomic(dest, &bytes)?;
        Ok(t)
    }

    async fn upload_all(
        &self,
        cache: &Cache,
        hashes: Vec<String>,
        progress: Progress<'_>,
    ) -> Result<Transfer> {
        each_object(
            hashes,
            |h| async move { self.upload(cache, &h, progress).await },
        )
        .await
    }

    async fn upload(&self, cache: &Cache, hash: &str, progress: Progress<'_>) -> Result<Transfer> {
        let path = cache.object_path(hash);
        let size = fs::metadata(&path)
            .with_context(|| format!("cache object {hash} is missing locally"))?
            .len();
        let key = self.object_key(hash);
        let suspect = self.suspect.lock().expect("suspect").contains(hash);
        if !suspect {
            match self.store.head(&key).await {
                Ok(meta) if meta.size == size => {
                    progress(0);
                    return Ok(Transfer {
                        skipped: 1,
                        ..Transfer::default()
                    });
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        // The local object is checked on the way out: a corrupt one is never pushed.
        if size <= MULTIPART_ABOVE {
            let bytes = fs::read(&path).with_context(|| format!("cannot read object {hash}"))?;
            check_local(hash, &sha256_hex(&bytes))?;
            self.store
                .put(&key, PutPayload::from(bytes))
                .await
                .map_err(|e| self.unavailable(e))?;
        } else {
            self.upload_parts(hash, &path, &key).await?;
        }
        self.suspect.lock().expect("suspect").remove(hash);
        progress(size);
        Ok(Transfer {
            objects: 1,
            bytes: size,
            skipped: 0,
        })
    }

    async fn upload_parts(&self, hash: &str, path: &Path, key: &Key) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 16 << 20);
        let mut f = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot read object {hash}"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .with_context(|| format!("cannot read object {hash}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            w.wait_for_capacity(4)
                .await
                .map_err(|e| self.unavailable(e))?;
            w.write(&buf[..n]);
        }
        if let Err(e) = check_local(hash, &hex::encode(h.finalize())) {
            w.abort().await.ok();
            return Err(e);
        }
        w.finish().await.map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    /// Every action entry on the remote, checked: each object it needs is there and hashes
    /// to its name. Downloads everything the entries reference (streamed and hashed).
    pub async fn verify(&self, progress: Progress<'_>) -> Result<VerifyReport> {
        let actions: Vec<_> = self
            .store
            .list(Some(&self.key(&["actions"])))
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut report = VerifyReport::default();
        let mut checked: std::collections::HashMap<String, Option<String>> = Default::default();
        for meta in actions {
            let Some(fp) = meta.location.filename().map(str::to_string) else {
                continue;
            };
            report.entries += 1;
            let entry = match self.get_action(&fp).await {
                Ok(Some(e)) => e,
                Ok(None) => continue, // removed since the listing
                Err(e @ RemoteError::BadEntry { .. }) => {
                    report.problems.push(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut need = Vec::new();
            for rec in entry.outs.values() {
                need.push(rec.hash.clone());
                if rec.kind == OutKind::Dir {
                    match self.verified_bytes(&rec.hash, &mut checked).await? {
                        Ok(bytes) => match Manifest::parse(&bytes) {
                            Ok(m) => need.extend(m.entries.into_iter().map(|e| e.hash)),
                            Err(e) => report
                                .problems
                                .push(format!("entry {fp}: manifest {}: {e:#}", rec.hash)),
                        },
                        Err(problem) => report.problems.push(format!("entry {fp}: {problem}")),
                    }
                }
            }
            need.sort();
            need.dedup();
            let todo: Vec<String> = need
                .iter()
                .filter(|h| !checked.contains_key(*h))
                .cloned()
                .collect();
            let results: Vec<(String, Option<String>)> = futures::stream::iter(todo)
                .map(|h| async move {
                    let r = self.check_object(&h).await;
                    r.map(|problem| (h, problem))
                })
                .buffer_unordered(PARALLEL)
                .try_collect()
                .await?;
            for (h, problem) in results {
                progress(0);
                checked.insert(h, problem);
            }
            for h in &need {
                if let Some(Some(problem)) = checked.get(h) {
                    report.problems.push(format!("entry {fp}: {problem}"));
                }
            }
        }
        report.objects = checked.len();
        Ok(report)
    }

    /// `Ok(None)` when the object is there and sound, else what is wrong with it. Streamed:
    /// a large object is hashed chunk by chunk, never held whole.
    async fn check_object(&self, hash: &str) -> Result<Option<String>> {
        let got = match self.store.get(&self.object_key(hash)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Some(format!("object {hash} is missing")));
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        let mut h = Sha256::new();
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            h.update(&chunk.map_err(|e| self.unavailable(e))?);
        }
        let actual = hex::encode(h.finalize());
        Ok((actual != hash)
            .then(|| format!("object {hash} is corrupt (its content hashes to {actual})")))
    }

    async fn verified_bytes(
        &self,
        hash: &str,
        checked: &mut std::collections::HashMap<String, Option<String>>,
    ) -> Result<std::result::Result<bytes::Bytes, String>> {
        let r = match self.get_bytes(&self.object_key(hash)).await? {
            None => Err(format!("object {hash} is missing")),
            Some(b) => {
                let actual = sha256_hex(&b);
                if actual == hash {
                    Ok(b)
                } else {
                    Err(format!(
                        "object {hash} is corrupt (its content hashes to {actual})"
                    ))
                }
            }
        };
        checked.insert(hash.to_string(), r.as_ref().err().cloned());
        Ok(r)
    }
}

/// What `verify` found.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub entries: usize,
    pub objects: usize,
    /// One sentence per problem; empty: the remote is consistent.
    pub problems: Vec<String>,
}

/// Copies `src` (`len` bytes, as listed) to a new file `dest`, hashing on the way: (SHA-256,
/// bytes copied).
fn copy_hashed(mut src: fs::File, len: u64, dest: &Path) -> anyhow::Result<(String, u64)> {
    use std::io::{Read, Write};
    let mut out =
        fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut h = Sha256::new();
    // Sized to the object: a 1 MiB buffer zeroed for each 4 KiB object cost more than the copy.
    let mut buf = vec![0u8; len.clamp(4096, 1 << 20) as usize + 1];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("cannot read the remote object"),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", dest.display()))?;
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

fn check_local(hash: &str, actual: &str) -> Result<()> {
    if actual == hash {
        Ok(())
    } else {
        Err(RemoteError::Local(anyhow::anyhow!(
            "local cache object {hash} is corrupt (its content hashes to {actual}); not pushed"
        )))
    }
}

/// The output objects an item manifest (`cache/map/…json`) names, with whether each is a
/// directory's manifest. Read loosely: the format belongs to the executor.
fn item_manifest_records(bytes: &[u8]) -> Vec<(String, bool)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(items) = v.get("items").and_then(|i| i.as_object()) {
        for rec in items.values() {
            for o in rec
                .get("outs")
                .and_then(|o| o.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(h) = o.get("hash").and_then(|h| h.as_str()) {
                    let dir = o.get("type").and_then(|t| t.as_str()) == Some("dir");
                    out.push((h.to_string(), dir));
                }
            }
        }
    }
    out
}

fn item_manifest_objects(cache: &Cache, bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (h, dir) in item_manifest_records(bytes) {
        if dir && let Ok(m) = cache.manifest(&h) {
            out.extend(m.entries.into_iter().map(|e| e.hash));
        }
        out.push(h);
    }
    out
}

/// The directory of a `file://` or plain-path remote (relative to the project `root`).
fn local_dir(url: &str, root: &Path) -> Option<PathBuf> {
    if url.contains("://") && !url.starts_with("file://") {
        return None;
    }
    let p = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
    Some(if p.is_absolute() { p } else { root.join(p) })
}

/// `BUCKET/PREFIX` → (bucket, prefix key).
fn split_bucket<'a>(name: &str, url: &str, rest: &'a str) -> anyhow::Result<(&'a str, Key)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        anyhow::bail!("remote {name}: {url} names no bucket or container");
    }
    Ok((bucket, Key::from(prefix.trim_matches('/'))))
}

fn client_options() -> ClientOptions {
    // A stopped server must cost seconds, not the defaults' minutes: a run then carries on
    // locally.
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(120))
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..RetryConfig::default()
    }
}

/// Runs `one` on each distinct object hash, `PARALLEL` at a time, and adds up the transfers.
async fn each_object<F, Fut>(mut hashes: Vec<String>, one: F) -> Result<Transfer>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<Transfer>>,
{
    hashes.sort();
    hashes.dedup();
    let ts: Vec<Transfer> = futures::stream::iter(hashes)
        .map(one)
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await?;
    let mut t = Transfer::default();
    ts.into_iter().for_each(|x| t.add(x));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tsumugi_store::fingerprint::{ActionComponent, Components};

    fn entry(cache: &Cache, ws: &Path, fp: &str) -> ActionEntry {
        let rf = cache.store_output(ws, "f.txt").unwrap();
        let rd = cache.store_output(ws, "dir").unwrap();
        ActionEntry {
            format: 1,
            fingerprint: fp.into(),
            pipeline: "p".into(),
            stage: "s".into(),
            created_at: String::new(),
            components: Components {
                version: 1,
                action: ActionComponent::Cmd { cmd: "x".into() },
                params: BTreeMap::new(),
                env: BTreeMap::new(),
                deps: BTreeMap::new(),
                outs: BTreeMap::new(),
            },
            outs: [("f".to_string(), rf), ("d".to_string(), rd)].into(),
        }
    }

    #[tokio::test]
    async fn push_then_fetch_into_an_empty_cache_and_detect_corruption() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        fs::create_dir_all(ws.join("dir/sub")).unwrap();
        fs::write(ws.join("f.txt"), "hello").unwrap();
        fs::write(ws.join("dir/a"), "A").unwrap();
        fs::write(ws.join("dir/sub/b"), "B").unwrap();
        let a = Cache::new(d.path().join("a"));
        let e = entry(&a, &ws, "fp1");
        assert!(
            Remote::open("t", "rem", d.path()).is_err(),
            "a missing directory"
        );
        let r = Remote::create("t", "rem", d.path()).unwrap();
        let nop = |_: u64| {};
        let t = r.push(&a, &e, &nop).await.unwrap();
        assert_eq!((t.objects, t.skipped), (4, 0));
        let t = r.push(&a, &e, &nop).await.unwrap();
        assert_eq!((t.objects, t.skipped), (0, 4));

        let b = Cache::new(d.path().join("b"));
        let (_, t) = r.fetch(&b, "fp1", &nop).await.unwrap().unwrap();
        assert_eq!(t.objects, 4);
        assert!(b.get_action("fp1").is_some());
        assert!(r.fetch(&b, "nope", &nop).await.unwrap().is_none());
        let rep = r.verify(&nop).await.unwrap();
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);

        // Corrupt the remote copy of f.txt: never stored locally, entry not written.
        let h = sha256_hex(b"hello");
        let obj = d.path().join("rem/objects").join(&h[..2]).join(&h[2..]);
        fs::write(&obj, "HELLO").unwrap();
        let c = Cache::new(d.path().join("c"));
        match r.fetch(&c, "fp1", &nop).await {
            Err(RemoteError::Corrupt { object, .. }) => assert_eq!(object, h),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(!c.has_object(&h) && c.get_action("fp1").is_none());
        let rep = r.verify(&nop).await.unwrap();
        assert_eq!(rep.problems.len(), 1, "{:?}", rep.problems);
        // The next push of that content heals the remote.
        let t = r.push(&a, &e, &nop).await.unwrap();
        assert_eq!(t.objects, 1);
        assert!(r.verify(&nop).await.unwrap().problems.is_empty());
    }

    #[tokio::test]
    async fn a_stopped_server_is_unavailable_not_an_error_of_content() {
        // SAFETY: set before any client is made; this test binary's other tests do not read it.
        unsafe {
            std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
            std::env::set_var("AWS_ACCESS_KEY_ID", "x");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "x");
        }
        let d = tempfile::tempdir().unwrap();
        let r = Remote::open("s", "s3://bucket/p", d.path()).unwrap();
        let c = Cache::new(d.path().join("c"));
        match r.fetch(&c, "fp", &|_| {}).await {
            Err(RemoteError::Unavailable { remote, .. }) => assert_eq!(remote, "s"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}
