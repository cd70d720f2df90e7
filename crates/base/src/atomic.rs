//! Durable, atomic file writes: the one way tsumugi writes a file that matters.
//!
//! A write goes to a temporary file beside its destination (named by [`tmp_path`], so
//! watchers and `gc` can recognise it with [`is_tmp_name`]), is synced, renamed over the
//! destination, and the directory is synced so the rename itself survives a power cut. A
//! reader sees the whole old file or the whole new one; a crash leaves at most a temporary
//! file. [`write_atomic`] for bytes in memory; [`AtomicFile`] to stream output that can be
//! far larger than memory.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("sub/metrics.json");
//! tsumugi_base::atomic::write_atomic(&p, b"{}").unwrap();
//! assert_eq!(std::fs::read(&p).unwrap(), b"{}");
//! ```

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The prefix of every temporary file tsumugi writes (`.tmp.<pid>.<n>.<name>`).
pub const TMP_PREFIX: &str = ".tmp.";

/// A fresh temporary path beside `dest`: `.tmp.<pid>.<n>.<name>`, unique in this process.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!("{TMP_PREFIX}{}.{}.{}", std::process::id(), n, name))
}

/// Whether a file name is one of tsumugi's temporary files (see [`tmp_path`]): `watch`
/// ignores them, `gc` removes them.
pub fn is_tmp_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix(TMP_PREFIX))
        .is_some_and(|rest| {
            let mut parts = rest.splitn(3, '.');
            let pid = parts.next().unwrap_or("");
            let n = parts.next().unwrap_or("");
            parts.next().is_some()
                && !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Syncs a directory, making the renames and creations inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dest` atomically and durably.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_io(dest, bytes).with_context(|| format!("cannot write {}", dest.display()))
}

/// [`write_atomic`] with the bare I/O error, for callers with their own error type.
pub fn write_atomic_io(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::open(dest)?;
    file.writer().write_all(bytes)?;
    file.commit_io()
}

/// A file being written atomically: dropped without [`AtomicFile::commit`], it leaves
/// nothing behind.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path` (its directory is created if needed).
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path).with_context(|| format!("cannot create {}", path.display()))
    }

    fn open(path: &Path) -> io::Result<Self> {
        let dir = parent_dir(path);
        fs::create_dir_all(dir)?;
        let tmp = tmp_path(path);
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("AtomicFile used after commit")
    }

    /// Syncs the data, renames it into place and syncs the directory.
    pub fn commit(self) -> Result<()> {
        let path = self.path.clone();
        self.commit_io()
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn commit_io(mut self) -> io::Result<()> {
        let out = self.out.take().expect("AtomicFile committed twice");
        let result = (|| -> io::Result<()> {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            fs::rename(&self.tmp, &self.path)?;
            fsync_dir(parent_dir(&self.path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Copy-on-write clone (FICLONE); fails on filesystems without reflinks.
pub fn reflink(src: &File, dst: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source fd as its argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes a file, symlink or directory tree if present (a symlink itself, never its target).
pub fn remove_path(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))
        }
        Ok(_) => fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_names_are_recognised_and_others_are_not() {
        let p = tmp_path(Path::new("/x/data.csv"));
        assert!(is_tmp_name(p.file_name().unwrap()), "{}", p.display());
        let p = tmp_path(Path::new("/p/.tmp.1.2.x"));
        assert!(is_tmp_name(p.file_name().unwrap()), "{}", p.display());
        for not in [
            "data.csv",
            ".tmp.notes",
            ".tmp.12.x",
            ".tmp.",
            ".tmp.1.2",
            ".tmp.a.2.x",
            "tmp.1.2.x",
        ] {
            assert!(!is_tmp_name(std::ffi::OsStr::new(not)), "{not}");
        }
    }

    #[test]
    fn a_dropped_file_leaves_nothing_and_a_committed_one_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        fs::write(&p, "old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.writer().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut f = AtomicFile::create(&p).unwrap();
        f.writer().write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
