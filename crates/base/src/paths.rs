//! Paths as tsumugi shows and stores them: relative to the project root, `/`-separated.

use std::path::{Component, Path, PathBuf};

/// `p` as a `/`-separated string (lossy for names that are not UTF-8).
pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/")
}

/// `a/./b/../c` → `a/c`, lexically: the file system is not asked (the paths may not
/// exist, and a symlink on the way is not followed).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_drops_dots_and_climbs() {
        assert_eq!(normalize(Path::new("a/./b/../c")), Path::new("a/c"));
        assert_eq!(normalize(Path::new("/a/b/../../c")), Path::new("/c"));
    }
}
