//! Content hashes: SHA-256 of files (streamed), of directories (a sorted manifest of
//! relative path + hash + exec bit, itself hashed), and of SQLite query results (the rows,
//! canonically encoded, not the file). Directory members are hashed on all cores (rayon).
//!
//! A [`StatCache`] remembers the hash of a file under its (device, inode, size, mtime,
//! ctime), so an unchanged file is never read twice. It lives in `cache/statcache.bin` and
//! is written atomically.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tsumugi_base::project::Project;

/// Read buffer for file hashing: large enough that syscalls don't dominate.
const BUF_SIZE: usize = 1 << 20;

/// Hex-encoded SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file's bytes, streamed.
pub fn hash_file_uncached(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// One file in a directory manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the directory, `/`-separated.
    pub path: String,
    pub hash: String,
    pub size: u64,
    pub exec: bool,
}

/// A directory's content: its files sorted by relative path. Empty directories are not
/// recorded (as in git and DVC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The canonical bytes: one line per file, `hash size exec path\n`. Paths cannot contain
    /// a newline here (rejected when walking), so the encoding is unambiguous.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 100 + 32);
        out.extend_from_slice(MANIFEST_HEADER);
        for e in &self.entries {
            out.extend_from_slice(e.hash.as_bytes());
            out.push(b' ');
            out.extend_from_slice(e.size.to_string().as_bytes());
            out.push(b' ');
            out.push(if e.exec { b'x' } else { b'-' });
            out.push(b' ');
            out.extend_from_slice(e.path.as_bytes());
            out.push(b'\n');
        }
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let text = std::str::from_utf8(bytes).context("manifest is not UTF-8")?;
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some("tsumugi-manifest-v1") {
            bail!("not a tsumugi manifest (bad header)");
        }
        let mut entries = Vec::new();
        for line in lines {
            let mut it = line.splitn(4, ' ');
            let (Some(hash), Some(size), Some(exec), Some(path)) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                bail!("malformed manifest line {line:?}");
            };
            entries.push(ManifestEntry {
                path: path.to_string(),
                hash: hash.to_string(),
                size: size
                    .parse()
                    .with_context(|| format!("bad size in manifest line {line:?}"))?,
                exec: exec == "x",
            });
        }
        Ok(Manifest { entries })
    }

    /// The directory's hash: SHA-256 of the canonical bytes.
    pub fn hash(&self) -> String {
        sha256_hex(&self.canonical_bytes())
    }
}

/// What a path held when hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathHash {
    File { hash: String, size: u64, exec: bool },
    Dir { hash: String, manifest: Manifest },
}

impl PathHash {
    pub fn hash(&self) -> &str {
        match self {
            PathHash::File { hash, .. } | PathHash::Dir { hash, .. } => hash,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl StatKey {
    fn of(md: &fs::Metadata) -> StatKey {
        StatKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        }
    }
}

const STATCACHE_MAGIC: &[u8; 16] = b"tsumugi-stat-v1\n";

/// Bytes of one record after its path: five little-endian u64 (dev, ino, size, mtime,
/// ctime) and the 32-byte hash.
const RECORD_TAIL: usize = 5 * 8 + 32;

/// Remembers file hashes by (device, inode, size, mtime, ctime), keyed by absolute path.
///
/// Entries are only remembered for files whose mtime and ctime are at least
/// [`StatCache::RACY_WINDOW_NS`] older than the moment they were hashed: a file modified in
/// the same timestamp tick as our read could otherwise change without changing its key
/// (git's "racily clean" problem). Such files are simply hashed again next time.
///
/// The file on disk is kept as read: its records are sorted by path, so a lookup is a
/// binary search over an index of record offsets. Decoding 100,000 records into a hash map
/// of owned paths on every `status` cost more user time than the rest of a no-op status of
/// a 100,000-file directory, and the map was only ever read.
///
/// The file is read at the first lookup, not at `load`: when the file-system monitor
/// vouches for every input, a no-op `status` looks nothing up, and reading and indexing
/// 10 MB was two thirds of its time.
pub struct StatCache {
    path: Option<PathBuf>,
    disk: OnceLock<Disk>,
    added: Mutex<HashMap<PathBuf, (StatKey, [u8; 32])>>,
    /// Files stat'ed through this cache by [`Hasher`] (shown by `status --json`).
    files_statted: AtomicU64,
    /// The file-system monitor's answer for this process, if a daemon runs: lets
    /// [`Hasher::hash`] reuse a path's hash without stat-ing what it holds.
    fsmon: Option<crate::fsmonitor::Session>,
}

/// The stat cache file as read.
#[derive(Default)]
struct Disk {
    bytes: Vec<u8>,
    /// Offset in `bytes` of each record, in path order.
    index: Vec<usize>,
}

impl Disk {
    /// Reads `path` if it exists. A damaged file is ignored (it is only a cache).
    fn read(path: Option<&Path>) -> Disk {
        let Some(path) = path else {
            return Disk::default();
        };
        match fs::read(path) {
            Ok(bytes) => match index_statcache(&bytes) {
                Some(index) => Disk { bytes, index },
                None => {
                    tracing::warn!("ignoring damaged stat cache {}", path.display());
                    Disk::default()
                }
            },
            Err(_) => Disk::default(),
        }
    }
}

impl StatCache {
    pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

    /// An empty cache that is never saved (tests, one-off hashing).
    pub fn in_memory() -> StatCache {
        StatCache {
            path: None,
            disk: OnceLock::from(Disk::default()),
            added: Mutex::new(HashMap::new()),
            files_statted: AtomicU64::new(0),
            fsmon: None,
        }
    }

    /// The cache kept in `path` (read at the first lookup; a missing or damaged file is
    /// an empty cache).
    pub fn load(path: &Path) -> StatCache {
        StatCache {
            path: Some(path.to_path_buf()),
            disk: OnceLock::new(),
            added: Mutex::new(HashMap::new()),
            files_statted: AtomicU64::new(0),
            fsmon: None,
        }
    }

    /// Lets [`Hasher::hash`] trust the monitor's answer (see [`crate::fsmonitor`]).
    pub fn attach_fsmonitor(&mut self, session: crate::fsmonitor::Session) {
        self.fsmon = Some(session);
    }

    pub fn fsmonitor(&self) -> Option<&crate::fsmonitor::Session> {
        self.fsmon.as_ref()
    }

    /// How many files [`Hasher`] stat'ed through this cache so far.
    pub fn files_statted(&self) -> u64 {
        self.files_statted.load(Ordering::Relaxed)
    }

    fn disk(&self) -> &Disk {
        self.disk.get_or_init(|| Disk::read(self.path.as_deref()))
    }

    /// The record at `off`: its path bytes, key and hash (bounds checked by the indexer).
    fn record(&self, off: usize) -> (&[u8], StatKey, [u8; 32]) {
        let b = &self.disk().bytes[off..];
        let len = u32::from_le_bytes(b[..4].try_into().expect("4 bytes")) as usize;
        let path = &b[4..4 + len];
        let t = &b[4 + len..4 + len + RECORD_TAIL];
        let u = |i: usize| u64::from_le_bytes(t[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let key = StatKey {
            dev: u(0),
            ino: u(1),
            size: u(2),
            mtime_ns: u(3) as i64,
            ctime_ns: u(4) as i64,
        };
        (path, key, t[40..72].try_into().expect("32 bytes"))
    }

    /// The first record at or after `from` whose path is not below `want`. Callers that look
    /// up paths in sorted order pass the position after their last hit: the next record is
    /// then usually the one, and a lookup costs one comparison instead of a binary search.
    fn seek(&self, from: usize, want: &[u8]) -> usize {
        let index = &self.disk().index;
        let rest = &index[from.min(index.len())..];
        match rest.first() {
            Some(&off) if self.record(off).0 >= want => from,
            Some(_) => from + rest.partition_point(|&off| self.record(off).0 < want),
            None => index.len(),
        }
    }

    fn lookup_raw(&self, abs: &Path, key: &StatKey) -> Option<[u8; 32]> {
        let want = abs.as_os_str().as_bytes();
        let index = &self.disk().index;
        if let Ok(i) = index.binary_search_by(|&off| self.record(off).0.cmp(want)) {
            let (_, k, h) = self.record(index[i]);
            if k == *key {
                return Some(h);
            }
        }
        let added = self.added.lock().expect("stat cache poisoned");
        added.get(abs).filter(|(k, _)| k == key).map(|(_, h)| *h)
    }

    #[cfg(test)]
    fn lookup(&self, abs: &Path, key: &StatKey) -> Option<String> {
        self.lookup_raw(abs, key).map(hex::encode)
    }

    fn remember(&self, abs: &Path, key: StatKey, hash: &str, now_ns: i64) {
        if now_ns - key.mtime_ns < Self::RACY_WINDOW_NS
            || now_ns - key.ctime_ns < Self::RACY_WINDOW_NS
        {
            return;
        }
        let mut raw = [0u8; 32];
        if hex::decode_to_slice(hash, &mut raw).is_ok() {
            self.added
                .lock()
                .expect("stat cache poisoned")
                .insert(abs.to_path_buf(), (key, raw));
        }
    }

    /// Writes the cache back (atomically) if anything was added. Entries for files that no
    /// longer exist are kept until their path is hashed again; the file stays small because
    /// one path has one entry.
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let added = self.added.lock().expect("stat cache poisoned");
        if added.is_empty() {
            return Ok(());
        }
        let loaded = self
            .disk()
            .index
            .iter()
            .map(|&off| self.record(off))
            .filter(|(p, _, _)| !added.contains_key(Path::new(std::ffi::OsStr::from_bytes(p))));
        let mut all: Vec<(&[u8], StatKey, [u8; 32])> = loaded
            .chain(
                added
                    .iter()
                    .map(|(p, (k, h))| (p.as_os_str().as_bytes(), *k, *h)),
            )
            .collect();
        // Sorted by path bytes: `load` relies on it for binary search.
        all.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::with_capacity(all.len() * 120 + 24);
        out.extend_from_slice(STATCACHE_MAGIC);
        out.extend_from_slice(&(all.len() as u64).to_le_bytes());
        for (pb, k, h) in all {
            out.extend_from_slice(&(pb.len() as u32).to_le_bytes());
            out.extend_from_slice(pb);
            for v in [k.dev, k.ino, k.size, k.mtime_ns as u64, k.ctime_ns as u64] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&h);
        }
        tsumugi_base::atomic::write_atomic(path, &out)
    }
}

/// Offsets of the records of a stat cache file, or `None` if it is damaged: truncated, or
/// its paths not strictly increasing (binary search needs the order `save` writes).
fn index_statcache(bytes: &[u8]) -> Option<Vec<usize>> {
    let rest = bytes.strip_prefix(STATCACHE_MAGIC.as_slice())?;
    let (n, _) = rest.split_first_chunk::<8>()?;
    let n = u64::from_le_bytes(*n) as usize;
    let mut off = STATCACHE_MAGIC.len() + 8;
    let mut index = Vec::with_capacity(n.min(bytes.len() / (4 + RECORD_TAIL)));
    let mut prev: &[u8] = &[];
    for i in 0..n {
        let (len, r) = bytes.get(off..)?.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if r.len() < len + RECORD_TAIL {
            return None;
        }
        let path = &r[..len];
        if i > 0 && path <= prev {
            return None;
        }
        prev = path;
        index.push(off);
        off += 4 + len + RECORD_TAIL;
    }
    Some(index)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Hashes files and directories, reusing the stat cache.
pub struct Hasher<'a> {
    pub stat: &'a StatCache,
}

impl<'a> Hasher<'a> {
    pub fn new(stat: &'a StatCache) -> Self {
        Hasher { stat }
    }

    /// Hash of one regular file (following symlinks), through the stat cache.
    pub fn file(&self, abs: &Path) -> io::Result<(String, u64, bool)> {
        self.stat.files_statted.fetch_add(1, Ordering::Relaxed);
        let md = fs::metadata(abs)?;
        self.file_with_meta(abs, &md)
    }

    fn file_with_meta(&self, abs: &Path, md: &fs::Metadata) -> io::Result<(String, u64, bool)> {
        let exec = md.permissions().mode() & 0o111 != 0;
        let raw = self.file_raw(abs, StatKey::of(md))?;
        Ok((hex::encode(raw), md.size(), exec))
    }

    /// The raw hash of the file at `abs` whose stat key is `key`: from the stat cache, or
    /// read and remembered.
    fn file_raw(&self, abs: &Path, key: StatKey) -> io::Result<[u8; 32]> {
        if let Some(h) = self.stat.lookup_raw(abs, &key) {
            return Ok(h);
        }
        let start = now_ns();
        let h = hash_file_uncached(abs)?;
        // Re-stat: if the file changed while we read it, don't remember a hash of a mix.
        if let Ok(md2) = fs::metadata(abs)
            && StatKey::of(&md2) == key
        {
            self.stat.remember(abs, key, &h, start);
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(&h, &mut raw).expect("sha256 hex");
        Ok(raw)
    }

    /// Hash of a file or directory. Directory members are hashed in parallel.
    pub fn path(&self, abs: &Path) -> Result<PathHash> {
        self.stat.files_statted.fetch_add(1, Ordering::Relaxed);
        let md = fs::metadata(abs).with_context(|| format!("cannot read {}", abs.display()))?;
        if md.is_dir() {
            let manifest = self.manifest(abs)?;
            Ok(PathHash::Dir {
                hash: manifest.hash(),
                manifest,
            })
        } else if md.is_file() {
            let (hash, size, exec) = self
                .file_with_meta(abs, &md)
                .with_context(|| format!("cannot hash {}", abs.display()))?;
            Ok(PathHash::File { hash, size, exec })
        } else {
            bail!("{} is neither a file nor a directory", abs.display())
        }
    }

    /// Just the hash of a file or directory: the same value as `path(abs)?.hash()`, but a
    /// directory's manifest is streamed into SHA-256 instead of being built (100,000 entries
    /// of owned strings and a 7 MB buffer on a no-op `status` of a large tree).
    ///
    /// With a file-system monitor attached, a path that no event touched since its hash
    /// was remembered is not looked at at all.
    pub fn hash(&self, abs: &Path) -> Result<String> {
        let Some(fm) = &self.stat.fsmon else {
            return self.hash_now(abs).map(|(h, _)| h);
        };
        let key = fm.key(abs);
        if let Some(h) = key.as_deref().and_then(|k| fm.reuse(k)) {
            return Ok(h);
        }
        let (h, plain) = self.hash_now(abs)?;
        if let Some(k) = key {
            fm.record(&k, &h, plain);
        }
        Ok(h)
    }

    /// [`Hasher::hash`] by looking, and whether what was hashed is plain: no symlink and no
    /// file with other hard links in it (changes to those need not show as events on
    /// this path, so the monitor must not vouch for it).
    fn hash_now(&self, abs: &Path) -> Result<(String, bool)> {
        self.stat.files_statted.fetch_add(1, Ordering::Relaxed);
        let md = fs::metadata(abs).with_context(|| format!("cannot read {}", abs.display()))?;
        if md.is_dir() {
            let odd = AtomicBool::new(false);
            let files = self.walk_hashed(abs, &odd)?;
            let mut h = Sha256::new();
            h.update(MANIFEST_HEADER);
            let mut hexbuf = [0u8; 64];
            let mut num = [0u8; 20];
            for (f, raw) in &files {
                hex::encode_to_slice(raw, &mut hexbuf).expect("64 bytes");
                h.update(hexbuf);
                h.update(b" ");
                h.update(fmt_u64(&mut num, f.key.size));
                h.update(if f.exec { b" x " } else { b" - " });
                h.update(f.rel());
                h.update(b"\n");
            }
            Ok((hex::encode(h.finalize()), !odd.load(Ordering::Relaxed)))
        } else if md.is_file() {
            let (hash, _, _) = self
                .file_with_meta(abs, &md)
                .with_context(|| format!("cannot hash {}", abs.display()))?;
            Ok((hash, md.nlink() == 1))
        } else {
            bail!("{} is neither a file nor a directory", abs.display())
        }
    }

    /// Every file under `dir` in manifest order with its raw hash (hashed on all cores).
    /// `odd` is set if the tree holds a symlink or a multiply linked file.
    fn walk_hashed(&self, dir: &Path, odd: &AtomicBool) -> Result<Vec<(Walked, [u8; 32])>> {
        let mut files = walk_parallel(dir, dir.as_os_str().len() + 1, 0, odd)?;
        self.stat
            .files_statted
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        // The manifest sorts by relative path; every path shares `dir/`, so the byte order
        // of the absolute paths is the same. Paths are unique, so unstable is fine.
        files.sort_unstable_by(|a, b| {
            a.abs
                .as_os_str()
                .as_bytes()
                .cmp(b.abs.as_os_str().as_bytes())
        });
        // The stat cache is sorted the same way: look every file up in one merging pass.
        let mut cursor = 0;
        let known: Vec<Option<[u8; 32]>> = files
            .iter()
            .map(|f| {
                let want = f.abs.as_os_str().as_bytes();
                let i = self.stat.seek(cursor, want);
                cursor = i;
                let &off = self.stat.disk().index.get(i)?;
                let (path, key, hash) = self.stat.record(off);
                (path == want).then(|| cursor = i + 1)?;
                (key == f.key).then_some(hash)
            })
            .collect();
        files
            .into_par_iter()
            .zip(known)
            .map(|(f, known)| {
                let raw = match known {
                    Some(h) => h,
                    None => self
                        .file_raw(&f.abs, f.key)
                        .with_context(|| format!("cannot hash {}", f.abs.display()))?,
                };
                Ok((f, raw))
            })
            .collect()
    }

    /// The sorted manifest of every file under `dir` (symlinks followed).
    pub fn manifest(&self, dir: &Path) -> Result<Manifest> {
        let entries = self
            .walk_hashed(dir, &AtomicBool::new(false))?
            .into_iter()
            .map(|(f, raw)| ManifestEntry {
                path: String::from_utf8(f.rel().to_vec()).expect("checked UTF-8 in walk"),
                hash: hex::encode(raw),
                size: f.key.size,
                exec: f.exec,
            })
            .collect();
        Ok(Manifest { entries })
    }
}

const MANIFEST_HEADER: &[u8] = b"tsumugi-manifest-v1\n";

/// Decimal digits of `v` in `buf` (what `v.to_string()` would hold), without allocating.
fn fmt_u64(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// One regular file found by the walk: its path (the logical one, through any symlinked
/// directory) and what a manifest needs of its metadata. Kept small because 100,000 of
/// them are sorted on every `status` of a large tree.
struct Walked {
    abs: PathBuf,
    /// Where the path relative to the walked directory starts in `abs`.
    rel_start: usize,
    key: StatKey,
    exec: bool,
}

impl Walked {
    fn rel(&self) -> &[u8] {
        &self.abs.as_os_str().as_bytes()[self.rel_start..]
    }
}

/// Every regular file under `abs` (symlinks followed) with its metadata. Sub-directories are
/// read in parallel: on a tree of 100,000 files the stat calls are most of a no-op
/// `status`, and they spread over cores like the hashing does.
fn walk_parallel(
    abs: &Path,
    rel_start: usize,
    depth: usize,
    odd: &AtomicBool,
) -> Result<Vec<Walked>> {
    // Deeper than any real tree: a symlink loop.
    if depth > 64 {
        bail!("{} is nested too deep (a symlink loop?)", abs.display());
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let rd =
        fs::read_dir(abs).with_context(|| format!("cannot read directory {}", abs.display()))?;
    for e in rd {
        let e = e.with_context(|| format!("cannot read directory {}", abs.display()))?;
        let path = e.path();
        {
            let name = &path.as_os_str().as_bytes()[abs.as_os_str().len() + 1..];
            if std::str::from_utf8(name).is_err() {
                bail!(
                    "{} is not valid UTF-8; tsumugi needs UTF-8 paths",
                    path.display()
                );
            }
            if name.contains(&b'\n') {
                bail!("{} contains a newline in its name", path.display());
            }
        }
        let ft = e
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let md = if ft.is_symlink() {
            odd.store(true, Ordering::Relaxed);
            fs::metadata(&path).with_context(|| format!("broken symlink {}", path.display()))?
        } else if ft.is_dir() {
            dirs.push(path);
            continue;
        } else {
            e.metadata()
                .with_context(|| format!("cannot stat {}", path.display()))?
        };
        if md.is_dir() {
            dirs.push(path);
        } else if md.is_file() {
            if md.nlink() != 1 {
                odd.store(true, Ordering::Relaxed);
            }
            files.push(Walked {
                abs: path,
                rel_start,
                key: StatKey::of(&md),
                exec: md.permissions().mode() & 0o111 != 0,
            });
        } // sockets, fifos: not content
    }
    let nested = dirs
        .into_par_iter()
        .map(|p| walk_parallel(&p, rel_start, depth + 1, odd))
        .collect::<Result<Vec<_>>>()?;
    files.extend(nested.into_iter().flatten());
    Ok(files)
}

/// Hash of the rows `query` returns from the SQLite database `db` (opened read-only).
/// Column names, column count and each value with its storage class go into the hash, so
/// `1` (integer), `1.0` (real) and `'1'` (text) differ.
pub fn hash_sqlite_query(db: &Path, query: &str) -> Result<String> {
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open SQLite database {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let mut stmt = conn
        .prepare(query)
        .with_context(|| format!("bad query on {}: {query}", db.display()))?;
    let mut h = Sha256::new();
    h.update(b"tsumugi-sqlite-rows-v1\n");
    let ncols = stmt.column_count();
    h.update((ncols as u64).to_le_bytes());
    for name in stmt.column_names() {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    let mut rows = stmt
        .query([])
        .with_context(|| format!("query failed on {}: {query}", db.display()))?;
    while let Some(row) = rows
        .next()
        .with_context(|| format!("query failed on {}: {query}", db.display()))?
    {
        h.update(b"R");
        for i in 0..ncols {
            match row.get_ref(i)? {
                ValueRef::Null => h.update(b"n"),
                ValueRef::Integer(v) => {
                    h.update(b"i");
                    h.update(v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    h.update(b"r");
                    h.update(v.to_bits().to_le_bytes());
                }
                ValueRef::Text(t) => {
                    h.update(b"t");
                    h.update((t.len() as u64).to_le_bytes());
                    h.update(t);
                }
                ValueRef::Blob(b) => {
                    h.update(b"b");
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes `n` bytes of deterministic data (for benches and tests of throughput).
pub fn write_pattern(path: &Path, n: u64) -> io::Result<()> {
    let mut f = io::BufWriter::new(File::create(path)?);
    let mut block = vec![0u8; 1 << 16];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        f.write_all(&block[..k])?;
        left -= k as u64;
    }
    f.flush()
}

/// Asks the file-system monitor daemon (if one runs and clients may use it) what changed
/// since the remembered token and attaches the answer to `stat`. Returns why not when it is
/// not used, or why the answer is a full pass.
pub fn use_fsmonitor(project: &Project, stat: &mut StatCache) -> Option<String> {
    match crate::fsmonitor::Session::open(project) {
        Ok(s) => {
            let why = s.full_pass_reason();
            stat.attach_fsmonitor(s);
            why
        }
        Err(reason) => {
            tracing::debug!("fsmonitor not used: {reason}");
            Some(reason)
        }
    }
}

/// Saves what the fsmonitor session learnt (if one was attached) and records its report.
pub fn finish_fsmonitor(stat: &StatCache, reason: Option<String>) {
    crate::fsmonitor::finish(stat.fsmonitor(), reason, stat.files_statted());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_matches_known_vector() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file_uncached(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn dir_manifest_is_sorted_and_sensitive_to_content_path_and_exec() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("d");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("b.txt"), "b").unwrap();
        fs::write(root.join("sub/a.txt"), "a").unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        let sc = StatCache::in_memory();
        let h = Hasher::new(&sc);
        let m = h.manifest(&root).unwrap();
        let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b.txt", "sub/a.txt"]);
        let h0 = m.hash();
        assert_eq!(Manifest::parse(&m.canonical_bytes()).unwrap(), m);

        fs::write(root.join("b.txt"), "B").unwrap();
        let h1 = h.manifest(&root).unwrap().hash();
        assert_ne!(h0, h1);
        fs::rename(root.join("b.txt"), root.join("c.txt")).unwrap();
        let h2 = h.manifest(&root).unwrap().hash();
        assert_ne!(h1, h2);
        fs::set_permissions(root.join("c.txt"), fs::Permissions::from_mode(0o755)).unwrap();
        let h3 = h.manifest(&root).unwrap().hash();
        assert_ne!(h2, h3);
    }

    #[test]
    fn streamed_hash_equals_the_manifest_hash_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("d");
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(d.path().join("elsewhere")).unwrap();
        fs::write(d.path().join("elsewhere/e.txt"), "e").unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::write(root.join("a-b"), "dash sorts before dot and slash").unwrap();
        fs::write(root.join("sub/deeper/x"), vec![7u8; 12345]).unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("linked")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("sub/alias")).unwrap();
        let sc = StatCache::in_memory();
        let h = Hasher::new(&sc);
        let full = h.path(&root).unwrap();
        let PathHash::Dir { manifest, .. } = &full else {
            panic!("a directory")
        };
        let paths: Vec<_> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a-b",
                "a.txt",
                "linked/e.txt",
                "run.sh",
                "sub/alias",
                "sub/deeper/x"
            ]
        );
        assert_eq!(h.hash(&root).unwrap(), full.hash());
        assert_eq!(full.hash(), manifest.hash());
        let f = root.join("sub/deeper/x");
        assert_eq!(h.hash(&f).unwrap(), hash_file_uncached(&f).unwrap());
        assert!(h.hash(&root.join("missing")).is_err());
    }

    #[test]
    fn directory_lookups_merge_through_records_of_other_and_deleted_files() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("x");
        fs::create_dir_all(dir.join("sub")).unwrap();
        for f in ["a", "c", "sub/e"] {
            fs::write(dir.join(f), f).unwrap();
        }
        let cache_path = d.path().join("stat.bin");
        let sc = StatCache::load(&cache_path);
        let later = now_ns() + 10 * StatCache::RACY_WINDOW_NS;
        let key_of = |f: &str| StatKey::of(&fs::metadata(dir.join(f)).unwrap());
        let real = |f: &str| hash_file_uncached(&dir.join(f)).unwrap();
        let bogus = "ab".repeat(32);
        // Records before, between and after the directory's files, for paths that do not
        // exist (a deleted file, a sibling directory).
        sc.remember(&d.path().join("w"), key_of("a"), &real("a"), later);
        sc.remember(&dir.join("a"), key_of("a"), &real("a"), later);
        sc.remember(&dir.join("b"), key_of("a"), &real("a"), later);
        // A wrong hash under the right key: only a real cache hit can produce it.
        sc.remember(&dir.join("c"), key_of("c"), &bogus, later);
        sc.remember(&dir.join("sub/d"), key_of("a"), &real("a"), later);
        sc.remember(&dir.join("sub/e"), key_of("sub/e"), &real("sub/e"), later);
        sc.remember(&d.path().join("y"), key_of("a"), &real("a"), later);
        sc.save().unwrap();

        let sc = StatCache::load(&cache_path);
        let h = Hasher::new(&sc);
        let m = h.manifest(&dir).unwrap();
        let hashes: Vec<_> = m.entries.iter().map(|e| e.hash.clone()).collect();
        assert_eq!(hashes, [real("a"), bogus, real("sub/e")]);
        assert_eq!(h.hash(&dir).unwrap(), m.hash());
        assert!(sc.added.lock().unwrap().is_empty(), "every file was a hit");
    }

    #[test]
    fn damaged_or_unsorted_stat_cache_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "x").unwrap();
        let key = StatKey::of(&fs::metadata(&p).unwrap());
        let cache_path = d.path().join("stat.bin");
        let sc = StatCache::load(&cache_path);
        let h = hash_file_uncached(&p).unwrap();
        sc.remember(
            &d.path().join("b"),
            key,
            &h,
            key.ctime_ns + 10 * StatCache::RACY_WINDOW_NS,
        );
        sc.remember(&p, key, &h, key.ctime_ns + 10 * StatCache::RACY_WINDOW_NS);
        sc.save().unwrap();
        let good = fs::read(&cache_path).unwrap();
        assert_eq!(StatCache::load(&cache_path).lookup(&p, &key).unwrap(), h);
        // Truncated: ignored, not a panic.
        fs::write(&cache_path, &good[..good.len() - 3]).unwrap();
        assert!(StatCache::load(&cache_path).disk().index.is_empty());
        // Records out of order (paths "…/b" and "…/f" swapped): binary search would be
        // wrong, so the whole file is ignored.
        let rec = good.len() - 24;
        let half = 24 + rec / 2;
        let mut swapped = good[..24].to_vec();
        swapped.extend_from_slice(&good[half..]);
        swapped.extend_from_slice(&good[24..half]);
        fs::write(&cache_path, &swapped).unwrap();
        assert!(StatCache::load(&cache_path).disk().index.is_empty());
    }

    #[test]
    fn stat_cache_round_trips_and_skips_racy_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "old").unwrap();
        let cache_path = d.path().join("stat.bin");
        let sc = StatCache::load(&cache_path);
        Hasher::new(&sc).file(&p).unwrap();
        // Just written: inside the racy window, so not remembered.
        assert!(sc.added.lock().unwrap().is_empty());

        // Pretend the file is old by remembering with a later clock.
        let md = fs::metadata(&p).unwrap();
        let key = StatKey::of(&md);
        sc.remember(
            &p,
            key,
            &hash_file_uncached(&p).unwrap(),
            key.ctime_ns + 10 * StatCache::RACY_WINDOW_NS,
        );
        sc.save().unwrap();
        let sc2 = StatCache::load(&cache_path);
        assert_eq!(
            sc2.lookup(&p, &key).unwrap(),
            hash_file_uncached(&p).unwrap()
        );
        // A changed key misses.
        let mut k2 = key;
        k2.size += 1;
        assert!(sc2.lookup(&p, &k2).is_none());
    }

    #[test]
    fn sqlite_rows_hash_depends_on_rows_and_types_not_file_bytes() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("x.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'); CREATE TABLE other(z);",
        )
        .unwrap();
        let q = "SELECT a, b FROM t ORDER BY a";
        let h0 = hash_sqlite_query(&db, q).unwrap();
        // An unrelated table changes the file but not the rows.
        c.execute_batch("INSERT INTO other VALUES (42);").unwrap();
        assert_eq!(hash_sqlite_query(&db, q).unwrap(), h0);
        c.execute_batch("UPDATE t SET a = 1.0;").unwrap();
        assert_ne!(hash_sqlite_query(&db, q).unwrap(), h0);
        assert!(hash_sqlite_query(&db, "SELECT nope FROM t").is_err());
    }
}
