//! An experiment's copy of the project (`tsumugi exp run -j N`).
//!
//! Everything but `cache/`, `runs/`, `.tsumugi/` and `.git/` is copied: a command may read
//! any file (a script, a config) without declaring it, and a copy — unlike a hard link or
//! a symlink — cannot be changed through by a command that writes a file in place. Files
//! are reflinked where the file system can (copy-on-write: no data copied), else copied.

use std::fs::File;
use std::path::Path;

use anyhow::Context;

/// What making a workspace copied.
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
}

/// Top-level entries that are not part of a workspace.
const SKIP: &[&str] = &["cache", "runs", ".tsumugi", ".git"];

/// Makes `dir` a fresh copy of the project at `root`.
pub fn populate(root: &Path, dir: &Path) -> anyhow::Result<Copied> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the old workspace {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut c = Copied { files: 0, bytes: 0 };
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            e.depth() != 1
                || !SKIP
                    .iter()
                    .any(|s| e.file_name() == std::ffi::OsStr::new(s))
        });
    for e in walk {
        let e = e.with_context(|| format!("cannot read {}", root.display()))?;
        let rel = e.path().strip_prefix(root).expect("under the root");
        let to = dir.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &to)?;
        } else if ft.is_file() {
            c.bytes += copy_file(e.path(), &to)
                .with_context(|| format!("cannot copy {} into the workspace", rel.display()))?;
            c.files += 1;
        }
    }
    Ok(c)
}

fn copy_file(from: &Path, to: &Path) -> std::io::Result<u64> {
    let src = File::open(from)?;
    let dst = File::create(to)?;
    let len = src.metadata()?.len();
    if tsumugi_base::atomic::reflink(&src, &dst).is_ok() {
        dst.set_permissions(src.metadata()?.permissions())?;
        return Ok(len);
    }
    drop(dst);
    std::fs::copy(from, to)
}
