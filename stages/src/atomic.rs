//! Atomic output files: written to a temporary file beside the target, synced and renamed
//! into place, removed if never committed (an error or a cancellation), so a reader never
//! sees half a file. [`write_atomic`] for bytes in memory; [`AtomicFile`] to stream output
//! that can be far larger than memory (mined negatives for many queries × epochs).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_io(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// [`write_atomic`] with the bare I/O error, for callers with their own error type.
pub fn write_atomic_io(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::open(path)?;
    file.writer().write_all(bytes)?;
    file.commit_io()
}

pub(crate) struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        Self::open(path).with_context(|| format!("creating {}", path.display()))
    }

    fn open(path: &Path) -> std::io::Result<Self> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub(crate) fn writer(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("AtomicFile used after commit")
    }

    pub(crate) fn commit(self) -> Result<()> {
        let path = self.path.clone();
        self.commit_io()
            .with_context(|| format!("writing {}", path.display()))
    }

    fn commit_io(mut self) -> std::io::Result<()> {
        let out = self.out.take().expect("AtomicFile committed twice");
        let result = (|| -> std::io::Result<()> {
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
