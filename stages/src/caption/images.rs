//! Which files are images, in which order, and their pixels the right way up.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, ImageDecoder, ImageReader};

/// Extensions listed from a directory (compared case-insensitively).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "tif", "tiff"];

/// The images under `path`: every file with one of [`EXTENSIONS`] below a directory
/// (recursively, symlinked directories not followed), or `path` itself when it is a file
/// (whatever its name: a mapped item is named by the user). Sorted by [`display_path`], the
/// order of the rows.
pub fn list(project_root: &Path, path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("images: cannot read {}", path.display()))?;
    let mut found = Vec::new();
    if meta.is_file() {
        found.push(path.to_path_buf());
    } else if meta.is_dir() {
        walk(path, &mut found)?;
    } else {
        bail!(
            "images: {} is neither a file nor a directory",
            path.display()
        );
    }
    found.sort_by_cached_key(|p| display_path(project_root, p));
    Ok(found)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("images: cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("images: cannot list {}", dir.display()))?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            walk(&path, found)?;
        } else if is_image_name(&path) && (ty.is_file() || path.is_file()) {
            found.push(path);
        }
    }
    Ok(())
}

/// Whether the file name ends in one of [`EXTENSIONS`].
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// `path` relative to the project root with `/` separators (the rows' `image` key); an
/// image outside the project keeps its full path.
pub fn display_path(project_root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(project_root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if rel.is_absolute() {
        rel.to_string_lossy().replace('\\', "/")
    } else {
        parts.join("/")
    }
}

/// Decodes an image from its bytes (format guessed from the content, not the name) and turns
/// it the way its EXIF orientation says, as a viewer shows it.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read the image header")?;
    if reader.format().is_none() {
        bail!("not an image this build decodes (PNG, JPEG, WebP, TIFF)");
    }
    let mut decoder = reader.into_decoder().context("cannot decode the image")?;
    // A broken EXIF block is not worth losing the picture for: read it as "no rotation".
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).context("cannot decode the image")?;
    img.apply_orientation(orientation);
    Ok(img)
}
