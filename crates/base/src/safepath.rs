//! Output paths resolved without following a symlink out of the project.
//!
//! The loader refuses an output whose path goes through a symlink that leaves the project,
//! but a stage can make such a link at run time (`ln -s /some/dir o/sub`), after the check.
//! So every removal, restore and commit of an output first resolves its path here, at that
//! moment, one component at a time from the project root:
//!
//! - each directory is opened relative to its parent with `openat(O_NOFOLLOW|O_DIRECTORY)`,
//!   so the kernel never follows a link on our behalf;
//! - a symlink met on the way is read with `readlinkat` and followed only if its target stays
//!   inside the project (a relative target is resolved lexically against the link's real
//!   directory, an absolute one must lie under the root); its target is then walked the same
//!   way, so a chain of links is checked link by link (at most [`MAX_LINKS`]);
//! - a link that leads out of the project, dangles outside it, or loops is an error that
//!   names the output, the link and its target ([`PathError`]).
//!
//! [`resolve`] returns the output's real path (root + components without any symlink); the
//! caller operates on it right away. What is left is the window between the walk and that
//! system call, in which a process running at the same time would have to replace a checked
//! directory by a link: a stage made before the operation cannot do it.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before it counts as a loop (Linux's own limit).
pub const MAX_LINKS: usize = 40;

/// What the caller is about to do with the path (for the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Removing a stale output before a run, or writing (restoring) one.
    RemoveOrWrite,
    /// Storing an output in the cache after a run.
    Commit,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::RemoveOrWrite => "remove/write",
            Op::Commit => "commit",
        })
    }
}

/// Why an output path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("out {out}: {link} is a symlink to {target} ({why}); refusing to {op} through it")]
    Symlink {
        out: String,
        /// The link, relative to the project root.
        link: String,
        /// Its target as written.
        target: String,
        why: &'static str,
        op: Op,
    },
    #[error("out {out}: cannot check {at}: {source}")]
    Io {
        out: String,
        at: String,
        source: io::Error,
    },
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(dir, name, O_DIRECTORY|O_NOFOLLOW)`.
fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid NUL-terminated string and `dir` an open descriptor.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: is `name` a symlink? `None`: it does not exist.
fn is_symlink_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<bool>> {
    let c = cstr(name)?;
    // SAFETY: all-zero is a valid `stat`; the call fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, string and out pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(st.st_mode & libc::S_IFMT == libc::S_IFLNK))
}

/// `readlinkat(dir, name)`.
fn read_link_at(dir: &OwnedFd, name: &OsStr) -> io::Result<PathBuf> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its length; the result is at most that many bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cstr(root.as_os_str())?;
    // SAFETY: valid string; the project root itself may be reached through links.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn join(parts: &[OsString]) -> String {
    let mut p = PathBuf::new();
    for c in parts {
        p.push(c);
    }
    p.display().to_string()
}

/// Resolves `rel` (relative to `root`) with no symlink followed out of the project, and
/// returns its real path: `root` joined with components that are no symlinks. With
/// `follow_last` the last component may itself be a symlink into the project (it is
/// resolved too); without, it is taken as it is (removing a link removes the link).
/// Components that do not exist yet end the walk: there is nothing to follow in them.
pub fn resolve(root: &Path, rel: &Path, follow_last: bool, op: Op) -> Result<PathBuf, PathError> {
    let out = rel.display().to_string();
    let io_err = |at: &[OsString], source: io::Error| PathError::Io {
        out: out.clone(),
        at: if at.is_empty() {
            root.display().to_string()
        } else {
            join(at)
        },
        source,
    };
    // Components still to walk, in order (front = next).
    let mut todo: Vec<OsString> = Vec::new();
    push_front(&mut todo, rel);
    // The real directories walked so far, with their descriptors (root: `fds[0]`).
    let mut real: Vec<OsString> = Vec::new();
    let mut fds = vec![open_root(root).map_err(|e| io_err(&[], e))?];
    let mut links = 0;
    let mut canonical_root: Option<PathBuf> = None;
    while !todo.is_empty() {
        let name = todo.remove(0);
        if name == ".." {
            if real.pop().is_none() {
                // Only a link's target can climb: relative paths were checked at load.
                return Err(io_err(
                    &real,
                    io::Error::other("a symlink's target climbs out of the project"),
                ));
            }
            fds.pop();
            continue;
        }
        let last = todo.is_empty();
        let dir = fds.last().expect("root is never popped");
        if last && !follow_last {
            real.push(name);
            break;
        }
        let mut at = real.clone();
        at.push(name.clone());
        match is_symlink_at(dir, &name).map_err(|e| io_err(&at, e))? {
            None => {
                // Not there (yet): the rest is taken as written.
                real.push(name);
                real.append(&mut todo);
                break;
            }
            Some(true) => {
                let target = read_link_at(dir, &name).map_err(|e| io_err(&at, e))?;
                links += 1;
                let refuse = |why| PathError::Symlink {
                    out: out.clone(),
                    link: join(&at),
                    target: target.display().to_string(),
                    why,
                    op,
                };
                if links > MAX_LINKS {
                    return Err(refuse("a loop"));
                }
                if target.is_absolute() {
                    let croot = match &canonical_root {
                        Some(c) => c.clone(),
                        None => {
                            let c = fs::canonicalize(root).map_err(|e| io_err(&[], e))?;
                            canonical_root = Some(c.clone());
                            c
                        }
                    };
                    let inside = crate::paths::normalize(&target)
                        .strip_prefix(&croot)
                        .ok()
                        .map(Path::to_path_buf)
                        .or_else(|| {
                            let t = fs::canonicalize(&target).ok()?;
                            t.strip_prefix(&croot).ok().map(Path::to_path_buf)
                        });
                    let Some(inside) = inside else {
                        return Err(refuse("outside the project"));
                    };
                    // Walk the target from the root.
                    real.clear();
                    fds.truncate(1);
                    push_front(&mut todo, &inside);
                } else {
                    // Relative to the link's directory, where the walk already is.
                    let before = todo.len();
                    push_front(&mut todo, &target);
                    if climbs_out(&todo[..todo.len() - before], real.len()) {
                        return Err(refuse("outside the project"));
                    }
                }
            }
            Some(false) => {
                if last {
                    real.push(name);
                    break;
                }
                match open_dir_at(dir, &name) {
                    Ok(fd) => {
                        fds.push(fd);
                        real.push(name);
                    }
                    // Replaced by a link since the stat: refuse rather than guess.
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                        return Err(io_err(&at, io::Error::other("changed while checking")));
                    }
                    // A file where a directory should be: nothing can be below it.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                        real.push(name);
                        real.append(&mut todo);
                        break;
                    }
                    Err(e) => return Err(io_err(&at, e)),
                }
            }
        }
    }
    let mut p = root.to_path_buf();
    for c in real {
        p.push(c);
    }
    Ok(p)
}

/// Puts `p`'s normal and `..` components in front of `todo`.
fn push_front(todo: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.splice(0..0, comps);
}

/// Whether a relative link target (its components) climbs above the root from `depth`.
fn climbs_out(target: &[OsString], depth: usize) -> bool {
    let mut d = depth as isize;
    for c in target {
        if c == ".." {
            d -= 1;
            if d < 0 {
                return true;
            }
        } else {
            d += 1;
        }
    }
    false
}

/// Removes the output `rel` under `root`, refusing to reach it through a symlink that
/// leaves the project (see [`resolve`]).
pub fn remove(root: &Path, rel: &Path) -> anyhow::Result<()> {
    let p = resolve(root, rel, false, Op::RemoveOrWrite)?;
    crate::atomic::remove_path(&p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
        let proj = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = proj.path().to_path_buf();
        fs::create_dir_all(root.join("o/real")).unwrap();
        fs::write(outside.path().join("file.txt"), "precious").unwrap();
        (proj, outside, root)
    }

    #[test]
    fn a_plain_path_resolves_to_itself() {
        let (_p, _o, root) = setup();
        let r = resolve(&root, Path::new("o/real/x.txt"), true, Op::Commit).unwrap();
        assert_eq!(r, root.join("o/real/x.txt"));
        let r = resolve(&root, Path::new("new/dir/x.txt"), true, Op::Commit).unwrap();
        assert_eq!(r, root.join("new/dir/x.txt"));
    }

    #[test]
    fn a_link_out_of_the_project_is_refused_and_nothing_is_removed() {
        let (_p, outside, root) = setup();
        symlink(outside.path(), root.join("o/sub")).unwrap();
        let e = remove(&root, Path::new("o/sub/file.txt")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "out o/sub/file.txt: o/sub is a symlink to {} (outside the project); refusing to remove/write through it",
                outside.path().display()
            )
        );
        assert!(outside.path().join("file.txt").exists());
        // A relative link that climbs out is refused the same way.
        symlink("../../..", root.join("o/up")).unwrap();
        let e = resolve(&root, Path::new("o/up/x"), false, Op::Commit).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("out o/up/x: o/up is a symlink to ../../.. (outside the project); refusing to commit"),
            "{e}"
        );
    }

    #[test]
    fn the_last_component_is_followed_only_when_asked() {
        let (_p, outside, root) = setup();
        symlink(outside.path().join("file.txt"), root.join("o/link.txt")).unwrap();
        // Removing the link itself touches nothing outside.
        assert!(resolve(&root, Path::new("o/link.txt"), true, Op::Commit).is_err());
        remove(&root, Path::new("o/link.txt")).unwrap();
        assert!(fs::symlink_metadata(root.join("o/link.txt")).is_err());
        assert!(outside.path().join("file.txt").exists());
    }

    #[test]
    fn links_inside_the_project_are_followed_to_their_real_path() {
        let (_p, _o, root) = setup();
        symlink("real", root.join("o/rel")).unwrap();
        symlink(root.join("o/real"), root.join("abs")).unwrap();
        symlink("../abs", root.join("o/chain")).unwrap();
        for via in ["o/rel/x", "abs/x", "o/chain/x"] {
            let r = resolve(&root, Path::new(via), false, Op::RemoveOrWrite).unwrap();
            assert_eq!(r, root.join("o/real/x"), "{via}");
        }
    }

    #[test]
    fn a_loop_is_refused() {
        let (_p, _o, root) = setup();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let e = resolve(&root, Path::new("a/x"), false, Op::RemoveOrWrite).unwrap_err();
        assert!(e.to_string().contains("(a loop)"), "{e}");
    }
}
