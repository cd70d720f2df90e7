//! Paths as tsumugi shows and stores them: relative to the project root, `/`-separated.

use std::path::Path;

/// `p` as a `/`-separated string (lossy for names that are not UTF-8).
pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/")
}
