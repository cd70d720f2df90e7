//! Tesseract, found at run time: the `tesseract` program on `PATH` (or the one named by
//! `TSUMUGI_TESSERACT`), fed a PNG on its standard input. No Tesseract headers or library are
//! linked, so the default build needs nothing installed; a missing engine or language pack
//! fails the stage with the Debian packages to install.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use image::DynamicImage;

use super::Captioner;
use super::preprocess::Preprocess;

/// The environment variable naming the `tesseract` program to use instead of `PATH`'s.
pub const ENV: &str = "TSUMUGI_TESSERACT";

/// A Tesseract program checked to run, with the languages it will read.
#[derive(Debug, Clone)]
pub struct Tesseract {
    program: PathBuf,
    /// The version line's number, `5.3.0`.
    pub version: String,
    /// `jpn+eng`: Tesseract's `-l`.
    pub languages: String,
}

/// The Debian package of a Tesseract language pack (`jpn` → `tesseract-ocr-jpn`,
/// `chi_sim` → `tesseract-ocr-chi-sim`).
pub fn language_package(lang: &str) -> String {
    format!("tesseract-ocr-{}", lang.to_lowercase().replace('_', "-"))
}

fn install_line(langs: &[&str]) -> String {
    let mut pkgs = vec!["tesseract-ocr".to_string()];
    pkgs.extend(langs.iter().map(|l| language_package(l)));
    format!("apt-get install {}", pkgs.join(" "))
}

/// What `--version` and `--list-langs` said for one Tesseract program file, kept for the
/// process: a mapped stage runs the kind once per image, and asking again for every image
/// cost two more processes each (1.3× the whole stage's time on 200 images).
#[derive(Default, Clone)]
struct Probe {
    version: String,
    languages: Vec<String>,
}

/// The program file as found (on `PATH` for a bare name) with its size and modification
/// time, and the tessdata location: a reinstalled or other Tesseract is probed afresh.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    file: PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
    tessdata: Option<std::ffi::OsString>,
}

impl ProbeKey {
    /// `None` when the program is not found as a file (then nothing is remembered and the
    /// run's own error says why).
    fn of(program: &Path) -> Option<ProbeKey> {
        let file = if program.components().count() > 1 {
            program.to_path_buf()
        } else {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join(program))
                .find(|c| c.is_file())?
        };
        let meta = std::fs::metadata(&file).ok()?;
        Some(ProbeKey {
            file,
            len: meta.len(),
            modified: meta.modified().ok(),
            tessdata: std::env::var_os("TESSDATA_PREFIX"),
        })
    }
}

static PROBES: std::sync::Mutex<Option<std::collections::HashMap<ProbeKey, Probe>>> =
    std::sync::Mutex::new(None);

/// `get` of the remembered probe of `key`, if any (and non-empty).
fn probed<T>(key: &ProbeKey, get: impl Fn(&Probe) -> T) -> Option<T> {
    let probes = PROBES.lock().unwrap_or_else(|p| p.into_inner());
    probes
        .as_ref()?
        .get(key)
        .filter(|p| !p.version.is_empty())
        .map(get)
}

fn remember(key: ProbeKey, set: impl FnOnce(&mut Probe)) {
    let mut probes = PROBES.lock().unwrap_or_else(|p| p.into_inner());
    set(probes
        .get_or_insert_with(Default::default)
        .entry(key)
        .or_default());
}

impl Tesseract {
    /// The program named by `explicit`, else `$TSUMUGI_TESSERACT`, else `tesseract` on
    /// `PATH`; runs `--version` to check it. The stage passes its own `env:`'s
    /// `TSUMUGI_TESSERACT` as `explicit`, so it wins over the process's.
    pub fn find(explicit: Option<&Path>) -> Result<Tesseract> {
        let program = match explicit {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os(ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("tesseract")),
        };
        let key = ProbeKey::of(&program);
        if let Some(version) = key.as_ref().and_then(|k| probed(k, |p| p.version.clone())) {
            return Ok(Tesseract {
                program,
                version,
                languages: String::new(),
            });
        }
        let out = Command::new(&program)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                anyhow!(
                    "OCR needs the Tesseract program, and `{}` could not be run ({e}): install it with `{}` (or set {ENV} to its path)",
                    program.display(),
                    install_line(&["jpn", "eng"])
                )
            })?;
        // Tesseract 4/5 print the version on stdout, 3.x on stderr.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let version = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("tesseract "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| {
                anyhow!(
                    "`{} --version` did not print a Tesseract version (got {:?})",
                    program.display(),
                    text.lines().next().unwrap_or("")
                )
            })?;
        if let Some(k) = key {
            remember(k, |p| p.version = version.clone());
        }
        Ok(Tesseract {
            program,
            version,
            languages: String::new(),
        })
    }

    /// Checks every language of `languages` (`jpn+eng`) against `--list-langs`; the error for
    /// missing packs is the `apt-get install` line that brings them.
    pub fn with_languages(mut self, languages: &str) -> Result<Tesseract> {
        let wanted: Vec<&str> = languages.split('+').map(str::trim).collect();
        if wanted.iter().any(|l| l.is_empty()) {
            bail!(
                "language {languages:?}: expected Tesseract language codes joined by `+`, such as `jpn+eng`"
            );
        }
        let key = ProbeKey::of(&self.program);
        let lacks = |have: &[String]| -> Vec<&str> {
            wanted
                .iter()
                .copied()
                .filter(|l| !have.iter().any(|h| h == l))
                .collect()
        };
        // A remembered list is trusted only when it has every pack asked for: a pack
        // installed since (a long-running `tsumugi watch`) is found by asking again.
        let remembered = key
            .as_ref()
            .and_then(|k| probed(k, |p| p.languages.clone()));
        let have = match remembered.filter(|h| !h.is_empty() && lacks(h).is_empty()) {
            Some(h) => h,
            None => {
                let h = self.list_languages()?;
                if let Some(k) = key {
                    remember(k, |p| p.languages = h.clone());
                }
                h
            }
        };
        let missing = lacks(&have);
        if !missing.is_empty() {
            bail!(
                "Tesseract {} has no language pack for {} (it has: {}): install it with `{}`",
                self.version,
                missing.join(", "),
                have.join(", "),
                install_line(&missing)
            );
        }
        self.languages = wanted.join("+");
        Ok(self)
    }

    /// The languages this Tesseract has packs for.
    pub fn list_languages(&self) -> Result<Vec<String>> {
        let out = Command::new(&self.program)
            .arg("--list-langs")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{} --list-langs`", self.program.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The first line is `List of available languages in "…" (N):`.
        Ok(text
            .lines()
            .filter(|l| !l.is_empty() && !l.contains(' ') && !l.contains(':'))
            .map(str::to_string)
            .collect())
    }

    /// `tesseract 5.3.0 jpn+eng`, the rows' `model`.
    pub fn name(&self) -> String {
        format!("tesseract {} {}", self.version, self.languages)
    }

    /// The text Tesseract reads in `page` (as it printed it), with page segmentation mode
    /// `psm` (Tesseract's default, 3, when `None`).
    pub fn read(&self, page: &DynamicImage, psm: Option<u8>) -> Result<String> {
        let mut png = Vec::new();
        page.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .context("encoding the page for Tesseract")?;
        let mut cmd = Command::new(&self.program);
        cmd.args(["stdin", "stdout", "-l", &self.languages]);
        if let Some(psm) = psm {
            cmd.args(["--psm", &psm.to_string()]);
        }
        // Tesseract's OpenMP threads fight each other when several pages run at once
        // (`batch_size`) on few cores; one thread per page is faster overall.
        cmd.env("OMP_THREAD_LIMIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", self.program.display()))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || stdin.write_all(&png));
        let out = child.wait_with_output()?;
        // A write error (broken pipe) only matters if Tesseract failed too: its stderr says why.
        let _ = writer.join();
        if !out.status.success() {
            bail!(
                "tesseract failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(tidy(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// Tesseract's text as a caption: lines trimmed, blank lines and the form feed dropped, and
/// the spaces its Japanese model puts between CJK characters removed (`日 本 語` → `日本語`).
pub fn tidy(raw: &str) -> String {
    let mut lines = Vec::new();
    for line in raw.lines() {
        let line = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{c}');
        if line.is_empty() {
            continue;
        }
        let chars: Vec<char> = line.chars().collect();
        let mut out = String::with_capacity(line.len());
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                let prev = out.chars().last();
                let next = chars[i + 1..].iter().find(|c| **c != ' ').copied();
                // A space next to a CJK character (or a run of spaces) is Tesseract's, not the
                // text's; `!`/`?` after Japanese count as Japanese punctuation.
                let joined = (prev.is_some_and(is_cjk) && next.is_some_and(is_cjk_or_punct))
                    || (prev.is_some_and(is_cjk_or_punct) && next.is_some_and(is_cjk));
                if joined || prev == Some(' ') {
                    continue;
                }
            }
            out.push(c);
        }
        lines.push(out);
    }
    lines.join("\n")
}

/// Kana, CJK ideographs, full-width forms and CJK punctuation: the scripts written without
/// spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3040..=0x30FF | 0x31F0..=0x31FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF)
}

fn is_cjk_or_punct(c: char) -> bool {
    is_cjk(c) || matches!(c, '!' | '?')
}

/// OCR as a [`Captioner`]: preprocessing, then Tesseract.
#[derive(Debug, Clone)]
pub struct OcrCaptioner {
    pub engine: Tesseract,
    pub preprocess: Preprocess,
    /// Tesseract's page segmentation mode (`None`: its default).
    pub psm: Option<u8>,
}

impl Captioner for OcrCaptioner {
    fn name(&self) -> String {
        self.engine.name()
    }
    fn caption(&self, image: &image::RgbImage, _ocr_text: Option<&str>) -> Result<String> {
        let (page, _) = self
            .preprocess
            .apply(&DynamicImage::ImageRgb8(image.clone()));
        self.engine.read(&page, self.psm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_spacing_is_removed_and_latin_kept() {
        assert_eq!(
            tidy("日 本 語 の 文\n\n Hello  world \u{c}"),
            "日本語の文\nHello world"
        );
        assert_eq!(tidy("猫 が 好 き 。 Cats"), "猫が好き。 Cats");
        assert_eq!(language_package("chi_sim"), "tesseract-ocr-chi-sim");
    }
}
