//! The content-addressed store and the action (stage) cache, both under `cache/`.
//!
//! - `cache/objects/ab/cdef…`: file contents by SHA-256, read-only (0444). A directory
//!   output is stored as its files' objects plus a manifest object (the manifest's
//!   canonical bytes, whose SHA-256 is the directory's hash).
//! - `cache/actions/<fingerprint>`: JSON [`ActionEntry`]: the output records and the
//!   fingerprint components they were made from.
//!
//! Every write is atomic: a temporary file in the destination directory, fsync, rename,
//! fsync of the directory. A reader therefore sees a whole object or none; a crash leaves at
//! most a `.tmp.*` file that `gc` removes.
//!
//! Restore makes each output file a copy-on-write clone of its object (reflink, FICLONE)
//! where the file system can, and a plain copy where it cannot (ext4, tmpfs) — never a hard
//! link: a restored output is an ordinary writable file, and a later command that appends
//! to it (`>>`, an editor, `sqlite3`) changes the output only, never the shared object.
//! Read-only hard links were the alternative; they break ordinary tools and root writes
//! through them anyway. The copy's price, measured on ext4 (no reflinks) for a 100 MB
//! output: `cp --reflink=never` 0.11–0.22 s against 0.01 s for a hard link, and a whole
//! `tsumugi run` restoring it 0.39–0.46 s (debug build; most of it is re-hashing the
//! object, which restores did before too) against 0.03–0.06 s for the same run with the
//! output in place. It is paid only when an output is missing or was edited. Restores
//! verify every object's hash and refuse an object that is not a regular file (a symlink
//! planted in the store reads as corrupt, is discarded and re-made).
//!
//! Every output path is resolved with [`tsumugi_base::safepath`] when it is removed, restored or
//! committed, so no symlink made at run time can lead these writes out of the project.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use tsumugi_base::atomic::{
    fsync_dir, is_tmp_name, reflink, remove_path, tmp_path as tmp_name, write_atomic,
};

use crate::fingerprint::Components;
use crate::hash::Manifest;
use tsumugi_base::safepath;

/// What one declared output held when it was committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutRecord {
    /// Relative to the project root, `/`-separated.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: OutKind,
    pub hash: String,
    /// Bytes (a directory: the sum of its files).
    pub size: u64,
    #[serde(default)]
    pub exec: bool,
    /// Files in a directory output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfiles: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutKind {
    File,
    Dir,
}

/// `cache/actions/<fingerprint>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionEntry {
    pub format: u32,
    pub fingerprint: String,
    pub pipeline: String,
    pub stage: String,
    pub created_at: String,
    pub components: Components,
    /// Cached outputs by key (`cache: false` outputs are not here).
    pub outs: BTreeMap<String, OutRecord>,
}

/// Why a restore could not use the store.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cache object {object} is missing")]
    Missing { object: String },
    #[error("cache object {object} is corrupt (its content hashes to {actual})")]
    Corrupt { object: String, actual: String },
    /// A symlink, FIFO, directory… where a read-only regular file should be.
    #[error("cache object {object} is corrupt (it is a {kind}, not a regular file)")]
    NotAFile { object: String, kind: &'static str },
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// How an output came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMethod {
    Reflink,
    Copy,
}

/// What a file type is, in words, for messages.
pub(crate) fn kind_name(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub actions_kept: usize,
    pub actions_removed: usize,
    pub objects_kept: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub temps_removed: usize,
}

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: cache_dir.into(),
        }
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    pub fn actions_dir(&self) -> PathBuf {
        self.dir.join("actions")
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.objects_dir().join(a).join(b)
    }

    pub fn has_object(&self, hash: &str) -> bool {
        self.object_path(hash).is_file()
    }

    /// Copies `src` into the store while hashing it (one read), returns (hash, size).
    /// If the object already exists the copy is dropped.
    pub fn store_file(&self, src: &Path) -> Result<(String, u64)> {
        let tmp_dir = self.objects_dir();
        fs::create_dir_all(&tmp_dir)?;
        let tmp = tmp_name(&tmp_dir.join("incoming"));
        let res = (|| -> Result<(String, u64)> {
            let mut input =
                File::open(src).with_context(|| format!("cannot read output {}", src.display()))?;
            let mut out = File::create(&tmp)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", src.display()));
                    }
                };
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                size += n as u64;
            }
            let hash = hex::encode(h.finalize());
            let dest = self.object_path(&hash);
            if dest.is_file() {
                fs::remove_file(&tmp)?;
                return Ok((hash, size));
            }
            out.set_permissions(fs::Permissions::from_mode(0o444))?;
            out.sync_all()?;
            drop(out);
            let dir = dest.parent().expect("object path has a parent");
            fs::create_dir_all(dir)?;
            fs::rename(&tmp, &dest)?;
            fsync_dir(dir)?;
            Ok((hash, size))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res.with_context(|| format!("cannot store {} in the cache", src.display()))
    }

    /// Stores raw bytes (a manifest) under their hash.
    pub fn store_bytes(&self, bytes: &[u8]) -> Result<String> {
        let hash = crate::hash::sha256_hex(bytes);
        let dest = self.object_path(&hash);
        if !dest.is_file() {
            write_atomic(&dest, bytes)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o444))?;
        }
        Ok(hash)
    }

    /// Stores an output (file or directory) and returns its record. `rel` is the path as
    /// declared, relative to the project `root`; it must not lead out of the project
    /// through a symlink (see [`tsumugi_base::safepath`]).
    pub fn store_output(&self, root: &Path, rel: &str) -> Result<OutRecord> {
        let abs = &safepath::resolve(root, Path::new(rel), true, safepath::Op::Commit)?;
        let md = fs::metadata(abs).with_context(|| format!("output {rel} was not written"))?;
        if md.is_file() {
            let (hash, size) = self.store_file(abs)?;
            return Ok(OutRecord {
                path: rel.to_string(),
                kind: OutKind::File,
                hash,
                size,
                exec: md.permissions().mode() & 0o111 != 0,
                nfiles: None,
            });
        }
        if !md.is_dir() {
            bail!("output {rel} is neither a file nor a directory");
        }
        // Hash-and-store each file; the manifest is built from what was stored.
        let mut files = Vec::new();
        for e in walkdir::WalkDir::new(abs).follow_links(true) {
            let e = e.with_context(|| format!("cannot walk output {rel}"))?;
            let ft = e.file_type();
            if !ft.is_file() && !ft.is_dir() {
                // A FIFO or socket has no content to store; dropping it would restore a
                // different directory than the stage made.
                let inner = e.path().strip_prefix(abs).unwrap_or(e.path());
                bail!(
                    "output {rel}: {rel}/{} is a {}; a directory output may hold only files and directories (and symlinks to them)",
                    inner.display(),
                    kind_name(&ft)
                );
            }
            if ft.is_file() {
                let relp = e
                    .path()
                    .strip_prefix(abs)
                    .expect("under root")
                    .to_str()
                    .with_context(|| {
                        format!(
                            "{} is not valid UTF-8; tsumugi needs UTF-8 paths",
                            e.path().display()
                        )
                    })?;
                if relp.contains('\n') {
                    bail!("{} contains a newline in its name", e.path().display());
                }
                files.push((relp.replace(std::path::MAIN_SEPARATOR, "/"), e.into_path()));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = files
            .into_par_iter()
            .map(|(relp, p)| {
                let exec = fs::metadata(&p)?.permissions().mode() & 0o111 != 0;
                let (hash, size) = self.store_file(&p)?;
                Ok(crate::hash::ManifestEntry {
                    path: relp,
                    hash,
                    size,
                    exec,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let manifest = Manifest { entries };
        let size = manifest.entries.iter().map(|e| e.size).sum();
        let nfiles = manifest.entries.len() as u64;
        let hash = self.store_bytes(&manifest.canonical_bytes())?;
        Ok(OutRecord {
            path: rel.to_string(),
            kind: OutKind::Dir,
            hash,
            size,
            exec: false,
            nfiles: Some(nfiles),
        })
    }

    /// Reads a manifest object, verifying it.
    pub fn manifest(&self, hash: &str) -> std::result::Result<Manifest, RestoreError> {
        let mut bytes = Vec::new();
        self.open_object(hash)?
            .read_to_end(&mut bytes)
            .map_err(|e| {
                RestoreError::Io(
                    anyhow::Error::from(e).context(format!("cannot read object {hash}")),
                )
            })?;
        let actual = crate::hash::sha256_hex(&bytes);
        if actual != hash {
            return Err(RestoreError::Corrupt {
                object: hash.to_string(),
                actual,
            });
        }
        Manifest::parse(&bytes)
            .map_err(|e| RestoreError::Io(e.context(format!("manifest object {hash}"))))
    }

    /// Opens an object for reading, without following a symlink: anything but a regular
    /// file there is [`RestoreError::NotAFile`].
    fn open_object(&self, hash: &str) -> std::result::Result<File, RestoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.object_path(hash);
        let io_err = |e: io::Error| {
            RestoreError::Io(anyhow::Error::from(e).context(format!("cannot read object {hash}")))
        };
        let not_a_file = || match fs::symlink_metadata(&p) {
            Ok(md) => RestoreError::NotAFile {
                object: hash.to_string(),
                kind: kind_name(&md.file_type()),
            },
            Err(e) => io_err(e),
        };
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RestoreError::Missing {
                    object: hash.to_string(),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(not_a_file()),
            Err(e) => return Err(io_err(e)),
        };
        if !f.metadata().map_err(io_err)?.is_file() {
            return Err(not_a_file());
        }
        Ok(f)
    }

    /// Checks an object's bytes against its name (a regular file, not followed through a
    /// symlink).
    pub fn verify_object(&self, hash: &str) -> std::result::Result<(), RestoreError> {
        let mut f = self.open_object(hash)?;
        let mut h = Sha256::new();
        io::copy(&mut f, &mut h).map_err(|e| {
            RestoreError::Io(anyhow::Error::from(e).context(format!("cannot read object {hash}")))
        })?;
        let actual = hex::encode(h.finalize());
        if actual == hash {
            Ok(())
        } else {
            Err(RestoreError::Corrupt {
                object: hash.to_string(),
                actual,
            })
        }
    }

    /// Removes a bad object so the next commit of the same content writes it afresh.
    pub fn discard_object(&self, hash: &str) {
        let _ = fs::remove_file(self.object_path(hash));
    }

    /// Verifies every object an output record needs, without touching the workspace.
    pub fn verify_record(&self, rec: &OutRecord) -> std::result::Result<(), RestoreError> {
        match rec.kind {
            OutKind::File => self.verify_object(&rec.hash),
            OutKind::Dir => {
                let m = self.manifest(&rec.hash)?;
                m.entries
                    .par_iter()
                    .try_for_each(|e| self.verify_object(&e.hash))
            }
        }
    }

    /// Puts an output back at its path under the project `root` (replacing whatever is
    /// there) after verifying its objects. The path must not lead out of the project
    /// through a symlink (see [`tsumugi_base::safepath`]).
    pub fn restore(
        &self,
        root: &Path,
        rec: &OutRecord,
    ) -> std::result::Result<LinkMethod, RestoreError> {
        self.verify_record(rec)?;
        let abs = &safepath::resolve(
            root,
            Path::new(&rec.path),
            false,
            safepath::Op::RemoveOrWrite,
        )
        .map_err(anyhow::Error::from)?;
        let parent = abs.parent().context("output has no parent directory")?;
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        match rec.kind {
            OutKind::File => {
                let tmp = tmp_name(abs);
                let method = self.materialize(&rec.hash, rec.exec, &tmp)?;
                remove_path(abs)?;
                fs::rename(&tmp, abs)
                    .with_context(|| format!("cannot restore {}", abs.display()))?;
                Ok(method)
            }
            OutKind::Dir => {
                let m = self.manifest(&rec.hash)?;
                let tmp = tmp_name(abs);
                let _ = remove_path(&tmp);
                fs::create_dir_all(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                let methods = m
                    .entries
                    .par_iter()
                    .map(|e| {
                        let dest = tmp.join(&e.path);
                        if let Some(p) = dest.parent() {
                            fs::create_dir_all(p)?;
                        }
                        self.materialize(&e.hash, e.exec, &dest)
                    })
                    .collect::<Result<Vec<_>>>()
                    .inspect_err(|_| {
                        let _ = fs::remove_dir_all(&tmp);
                    })?;
                remove_path(abs)?;
                fs::rename(&tmp, abs)
                    .with_context(|| format!("cannot restore {}", abs.display()))?;
                Ok(methods
                    .into_iter()
                    .max_by_key(|m| *m as u8)
                    .unwrap_or(LinkMethod::Reflink))
            }
        }
    }

    /// Makes `dest` (which must not exist) an independent file holding the object's
    /// bytes: a reflink where the file system has them, else a copy (never a hard link, so
    /// writing to the output cannot change the object).
    fn materialize(&self, hash: &str, exec: bool, dest: &Path) -> Result<LinkMethod> {
        let mode = if exec { 0o755 } else { 0o644 };
        let mut src = self
            .open_object(hash)
            .map_err(|e| anyhow::anyhow!("cannot open object {hash}: {e}"))?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .with_context(|| format!("cannot create {}", dest.display()))?;
        dst.set_permissions(fs::Permissions::from_mode(mode))?;
        if reflink(&src, &dst).is_ok() {
            return Ok(LinkMethod::Reflink);
        }
        io::copy(&mut src, &mut dst)
            .with_context(|| format!("cannot copy object {hash} to {}", dest.display()))?;
        Ok(LinkMethod::Copy)
    }

    pub fn action_path(&self, fingerprint: &str) -> PathBuf {
        self.actions_dir().join(fingerprint)
    }

    /// The entry for `fingerprint`; a damaged entry reads as absent (with a warning).
    pub fn get_action(&self, fingerprint: &str) -> Option<ActionEntry> {
        let p = self.action_path(fingerprint);
        let bytes = fs::read(&p).ok()?;
        match serde_json::from_slice::<ActionEntry>(&bytes) {
            Ok(e) if e.fingerprint == fingerprint => Some(e),
            Ok(_) | Err(_) => {
                tracing::warn!("ignoring damaged cache entry {}", p.display());
                None
            }
        }
    }

    pub fn has_action(&self, fingerprint: &str) -> bool {
        self.action_path(fingerprint).is_file()
    }

    pub fn put_action(&self, entry: &ActionEntry) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(entry)?;
        write_atomic(&self.action_path(&entry.fingerprint), &bytes)
    }

    pub fn remove_action(&self, fingerprint: &str) {
        let _ = fs::remove_file(self.action_path(fingerprint));
    }

    /// Removes action entries not in `keep` and objects neither a kept entry nor
    /// `also_live` (objects the layers above hold, such as per-item outputs of `map:`
    /// stages) references, plus temporary files left by interrupted writes. With `dry_run`
    /// only counts.
    pub fn gc(
        &self,
        keep: &HashSet<String>,
        also_live: Vec<String>,
        dry_run: bool,
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut live: HashSet<String> = also_live.into_iter().collect();
        if let Ok(rd) = fs::read_dir(self.actions_dir()) {
            for e in rd {
                let e = e?;
                if remove_temp(&e, &mut report, dry_run) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name)
                    && let Some(entry) = self.get_action(&name)
                {
                    {
                        report.actions_kept += 1;
                        for rec in entry.outs.values() {
                            live.insert(rec.hash.clone());
                            if rec.kind == OutKind::Dir {
                                // A manifest we cannot read keeps only itself; its files go.
                                if let Ok(m) = self.manifest(&rec.hash) {
                                    live.extend(m.entries.into_iter().map(|x| x.hash));
                                }
                            }
                        }
                        continue;
                    }
                }
                report.actions_removed += 1;
                if !dry_run {
                    fs::remove_file(e.path())?;
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.objects_dir()) {
            for sub in rd {
                let sub = sub?;
                if !sub.file_type()?.is_dir() {
                    remove_temp(&sub, &mut report, dry_run);
                    continue;
                }
                let prefix = sub.file_name().to_string_lossy().into_owned();
                for e in fs::read_dir(sub.path())? {
                    let e = e?;
                    if remove_temp(&e, &mut report, dry_run) {
                        continue;
                    }
                    let name = e.file_name().to_string_lossy().into_owned();
                    let hash = format!("{prefix}{name}");
                    if live.contains(&hash) {
                        report.objects_kept += 1;
                    } else {
                        report.objects_removed += 1;
                        report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                        if !dry_run {
                            fs::remove_file(e.path())?;
                        }
                    }
                }
            }
        }
        Ok(report)
    }
}

/// A temporary file left by an interrupted write ([`is_tmp_name`]) is counted and, unless
/// `dry_run`, removed; says whether `e` was one.
fn remove_temp(e: &fs::DirEntry, report: &mut GcReport, dry_run: bool) -> bool {
    if !is_tmp_name(&e.file_name()) {
        return false;
    }
    report.temps_removed += 1;
    if !dry_run {
        let _ = fs::remove_file(e.path());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_restore_file_and_dir_with_verification() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let ws = d.path().join("ws");
        fs::create_dir_all(ws.join("dir/sub")).unwrap();
        fs::write(ws.join("f.txt"), "hello").unwrap();
        fs::write(ws.join("dir/a"), "A").unwrap();
        fs::write(ws.join("dir/sub/b"), "B").unwrap();
        fs::set_permissions(ws.join("dir/sub/b"), fs::Permissions::from_mode(0o755)).unwrap();

        let rf = cache.store_output(&ws, "f.txt").unwrap();
        assert_eq!(rf.hash, crate::hash::sha256_hex(b"hello"));
        let rd = cache.store_output(&ws, "dir").unwrap();
        assert_eq!(rd.nfiles, Some(2));
        let sc = crate::hash::StatCache::in_memory();
        assert_eq!(
            crate::hash::Hasher::new(&sc)
                .path(&ws.join("dir"))
                .unwrap()
                .hash(),
            rd.hash
        );

        fs::remove_file(ws.join("f.txt")).unwrap();
        fs::remove_dir_all(ws.join("dir")).unwrap();
        cache.restore(&ws, &rf).unwrap();
        cache.restore(&ws, &rd).unwrap();
        assert_eq!(fs::read_to_string(ws.join("f.txt")).unwrap(), "hello");
        assert_eq!(fs::read_to_string(ws.join("dir/sub/b")).unwrap(), "B");
        assert!(
            fs::metadata(ws.join("dir/sub/b"))
                .unwrap()
                .permissions()
                .mode()
                & 0o100
                != 0
        );

        // Corrupt the object behind f.txt: restore refuses and names it.
        let obj = cache.object_path(&rf.hash);
        fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
        // Break the hardlink first so the workspace copy is untouched by our corruption.
        fs::remove_file(ws.join("f.txt")).unwrap();
        fs::write(&obj, "HELLO").unwrap();
        match cache.restore(&ws, &rf) {
            Err(RestoreError::Corrupt { object, .. }) => assert_eq!(object, rf.hash),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(!ws.join("f.txt").exists());
    }

    #[test]
    fn restore_refuses_a_path_through_a_symlink_out_of_the_project() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("cache"));
        let ws = d.path().join("ws");
        fs::create_dir_all(ws.join("o/sub")).unwrap();
        fs::write(ws.join("o/sub/file.txt"), "ours").unwrap();
        let rec = cache.store_output(&ws, "o/sub/file.txt").unwrap();
        fs::remove_dir_all(ws.join("o/sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), ws.join("o/sub")).unwrap();
        fs::write(outside.path().join("file.txt"), "theirs").unwrap();
        let e = cache.restore(&ws, &rec).unwrap_err().to_string();
        assert!(e.contains("o/sub is a symlink to"), "{e}");
        assert!(cache.store_output(&ws, "o/sub/file.txt").is_err());
        assert_eq!(
            fs::read_to_string(outside.path().join("file.txt")).unwrap(),
            "theirs"
        );
    }

    #[test]
    fn gc_keeps_only_referenced_objects() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("cache"));
        fs::write(d.path().join("a"), "a").unwrap();
        fs::write(d.path().join("b"), "b").unwrap();
        let ra = cache.store_output(d.path(), "a").unwrap();
        let rb = cache.store_output(d.path(), "b").unwrap();
        let comps = Components {
            version: 1,
            action: crate::fingerprint::ActionComponent::Cmd { cmd: "x".into() },
            params: BTreeMap::new(),
            env: BTreeMap::new(),
            deps: BTreeMap::new(),
            outs: BTreeMap::new(),
        };
        for (fp, rec) in [("f1", &ra), ("f2", &rb)] {
            cache
                .put_action(&ActionEntry {
                    format: 1,
                    fingerprint: fp.into(),
                    pipeline: "p".into(),
                    stage: "s".into(),
                    created_at: String::new(),
                    components: comps.clone(),
                    outs: [("o".to_string(), rec.clone())].into(),
                })
                .unwrap();
        }
        let keep: HashSet<String> = ["f1".to_string()].into();
        let dry = cache.gc(&keep, Vec::new(), true).unwrap();
        assert_eq!((dry.actions_removed, dry.objects_removed), (1, 1));
        assert!(cache.has_object(&rb.hash));
        let r = cache.gc(&keep, Vec::new(), false).unwrap();
        assert_eq!(
            (r.actions_kept, r.objects_kept, r.objects_removed),
            (1, 1, 1)
        );
        assert!(cache.has_object(&ra.hash) && !cache.has_object(&rb.hash));
        assert!(cache.get_action("f1").is_some() && cache.get_action("f2").is_none());
    }
}
