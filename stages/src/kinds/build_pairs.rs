//! `build-pairs`: text pairs with labels from CSV / TSV / JSONL, split into train / dev /
//! test JSONL files.
//!
//! ```yaml
//! pairs:
//!   uses: build-pairs
//!   with:
//!     input: data/sts/sts-train.csv   # one file, split here by group
//!     format: tsv                     # csv | tsv | jsonl (default: from the extension)
//!     quoting: none                   # tsv default; csv default is `standard` ("…")
//!     text_a: 5                       # column: 0-based index or header name / JSON key
//!     text_b: 6
//!     label: 4
//!     scale: 0.2                      # regression labels times 0.2 (computed as / 5)
//!     split: {dev: 0.1, test: 0.1}    # train gets the rest
//!     seed: 13
//! ```
//! Or an existing split passed through: `train: a.tsv`, `dev: b.tsv`, `test: c.tsv` instead
//! of `input` + `split`. Any of these sources may be the rows of a SQLite query instead of
//! a file: `input: {sqlite: {db: data/app.db, query: "SELECT premise, hypothesis, label
//! FROM corrections"}}` (read-only; columns by name or position; NULL is an error). Classification: `labels: [entailment, neutral, contradiction]`
//! turns each label into its index (`unknown_labels: skip` drops rows with other labels,
//! such as SNLI's `-`). `group` names the column that keeps rows together in one split
//! (default: text_a, so one query's pairs never straddle train and test). `header`
//! defaults to true exactly when some column is given by name.
//!
//! Image prompts: `captions: ${stages.caption.outs.captions}` (the rows of a
//! `caption-images` stage) turns every text_a that is an image reference (a value ending in
//! .png/.jpg/.jpeg/.webp/.tif/.tiff: the image's path from the project root, or a unique tail
//! of it such as `0001.png`) into that image's caption; other text passes through.
//! `caption_for: text_b` joins on text_b instead. A reference with no caption, or with a
//! skipped one, is an error naming the row, or with `missing_captions: drop` the row is
//! dropped and counted in `stats.json` (`dropped_no_caption`).
//!
//! Output: one JSON object per line, fields in this order:
//! `{"text_a": …, "text_b": …, "label": …, "group": …}` (label a number; an integer class
//! index with `labels`), rows of each split in input order, plus `stats.json` with the
//! row and group counts. The same input and seed give the same bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::contract::{Reporter, Stage, StageInput};
use crate::kinds::{KindInfo, SettingsInfo, settings};

/// The `build-pairs` kind.
pub struct BuildPairs;

/// Its descriptor. Bump `version` whenever the output bytes for the same input may change
/// (the split hash, the JSON layout, label parsing).
pub const INFO: KindInfo = KindInfo {
    name: "build-pairs",
    // 2: `captions` (image references become their captions).
    version: 2,
    summary: "text pairs + labels from CSV/TSV/JSONL/SQLite, split by group into train/dev/test JSONL",
    input_fields: &["input", "train", "dev", "test", "captions"],
    outputs: &[
        ("train", "train.jsonl"),
        ("dev", "dev.jsonl"),
        ("test", "test.jsonl"),
        ("stats", "stats.json"),
    ],
    metrics: Some("stats"),
    per_item: false,
    settings: SettingsInfo::of::<Config>(),
};

pub(crate) const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// How often (in rows) progress is reported and cancellation checked.
const REPORT_EVERY: u64 = 5_000;

/// `with:` of `build-pairs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// One source, split here by group (with `split`, `seed`).
    input: Option<Source>,
    /// An existing split's train rows (instead of `input`).
    train: Option<Source>,
    /// An existing split's dev rows (instead of `input`).
    dev: Option<Source>,
    /// An existing split's test rows (instead of `input`).
    test: Option<Source>,
    /// Default: from the file's extension.
    format: Option<Format>,
    /// One ASCII character, or `\\t` (default: tab for tsv, comma for csv).
    delimiter: Option<String>,
    /// Default: `none` for tsv, `standard` for csv.
    quoting: Option<Quoting>,
    /// Whether the first row names the columns (default: true exactly when a column is given by name).
    header: Option<bool>,
    /// The first text: a 0-based column index or a header name / JSON key.
    text_a: Column,
    /// The second text.
    text_b: Column,
    /// The label column: a number, or a class name with `labels`.
    label: Column,
    /// The column that keeps rows together in one split (default: text_a).
    group: Option<Column>,
    /// Numeric labels times this factor (0.2: divided by 5).
    scale: Option<f64>,
    /// Class names (strings or numbers): each label becomes its index here.
    labels: Option<Vec<serde_json::Value>>,
    /// What to do with a label not in `labels` (default: error).
    unknown_labels: Option<OnUnknown>,
    /// Fractions of groups for dev and test (default 0.1 each); train gets the rest.
    split: Option<SplitSpec>,
    /// Seed of the split by group (default 0).
    seed: Option<u64>,
    /// A `caption-images` captions file: an image reference in `caption_for` becomes its caption.
    captions: Option<PathBuf>,
    /// Which text may be an image reference: `text_a` (default) or `text_b`.
    caption_for: Option<CaptionFor>,
    /// A reference with no caption (or a skipped one): `error` (default) or `drop` the row.
    missing_captions: Option<OnMissing>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum CaptionFor {
    TextA,
    TextB,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnMissing {
    Error,
    Drop,
}

/// A file path, or the rows of a read-only SQLite query.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
enum Source {
    Path(PathBuf),
    Sqlite { sqlite: SqliteSource },
}

/// `{sqlite: …}`, with a did-you-mean for other keys (an untagged enum would only say
/// that nothing matched).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteWrapper {
    sqlite: SqliteSource,
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Source;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a file path, or {sqlite: {db: path, query: \"SELECT …\"}}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Source, E> {
                Ok(Source::Path(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Source, A::Error> {
                let w =
                    SqliteWrapper::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Source::Sqlite { sqlite: w.sqlite })
            }
        }
        d.deserialize_any(V)
    }
}

/// Rows of a read-only query over a SQLite file; columns by name or 0-based position.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SqliteSource {
    /// The database file.
    db: PathBuf,
    /// A read-only query; its columns are named by `text_a`, `text_b`, `label`, `group`.
    query: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    Csv,
    Tsv,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Quoting {
    Standard,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum OnUnknown {
    Error,
    Skip,
}

/// A 0-based column index, or a header name / JSON key.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
enum Column {
    Index(usize),
    Name(String),
}

impl<'de> Deserialize<'de> for Column {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Column;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column: a 0-based index or a header name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Column, E> {
                usize::try_from(v)
                    .map(Column::Index)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Column, E> {
                Ok(Column::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Index(i) => write!(f, "column {i}"),
            Column::Name(n) => write!(f, "column `{n}`"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SplitSpec {
    /// Default: the rest.
    train: Option<f64>,
    #[serde(default)]
    dev: f64,
    #[serde(default)]
    test: f64,
}

/// A cell as read: text (CSV, JSON strings), a number (JSON), or missing.
#[derive(Debug, Clone)]
enum Cell {
    Text(String),
    Number(f64),
    Missing,
}

#[derive(Debug, Clone, PartialEq)]
enum Label {
    Score(f64),
    Class(u64),
}

#[derive(Debug, Clone)]
struct Pair {
    text_a: String,
    text_b: String,
    label: Label,
    group: String,
}

/// What a source gave: its pairs and how many rows were dropped as unknown labels.
struct Read {
    pairs: Vec<Pair>,
    skipped: u64,
}

/// Settings shared by every source of one stage.
struct Reading<'a> {
    cfg: &'a Config,
    label_index: Option<HashMap<String, u64>>,
    captions: Option<Captions>,
    report: &'a dyn Reporter,
}

/// A captions file by image: `None` for an image whose caption was skipped.
struct Captions {
    path: PathBuf,
    by_image: BTreeMap<String, Option<String>>,
    /// Rows whose text came from a caption, and rows dropped for want of one.
    captioned: std::cell::Cell<u64>,
    dropped: std::cell::Cell<u64>,
}

impl Captions {
    fn read(path: &Path) -> Result<Captions> {
        let shown = path.display();
        let file = File::open(path)
            .with_context(|| format!("build-pairs: cannot open captions {shown}"))?;
        let mut by_image = BTreeMap::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let lineno = n + 1;
            let line = line.map_err(|e| anyhow!("{shown}:{lineno}: {e}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| anyhow!("{shown}:{lineno}: expected one JSON object per line: {e}"))?;
            let image = v.get("image").and_then(|x| x.as_str()).ok_or_else(|| {
                anyhow!("{shown}:{lineno}: expected a caption row with a string `image` (a caption-images output)")
            })?;
            let caption = match v.get("caption") {
                Some(serde_json::Value::String(c)) => Some(c.clone()),
                Some(serde_json::Value::Null) => None,
                _ => bail!("{shown}:{lineno}: `caption` must be a string or null"),
            };
            by_image.insert(normalize_ref(image), caption);
        }
        Ok(Captions {
            path: path.to_path_buf(),
            by_image,
            captioned: Default::default(),
            dropped: Default::default(),
        })
    }

    /// The caption of `reference` (exact path, else the one image whose path ends in
    /// `/reference`): `Ok(None)` when there is none or it was skipped.
    fn lookup(&self, reference: &str, at: &dyn Fn() -> String) -> Result<Option<&str>> {
        let key = normalize_ref(reference);
        if let Some(c) = self.by_image.get(&key) {
            return Ok(c.as_deref());
        }
        let tail = format!("/{key}");
        let hits: Vec<(&String, &Option<String>)> = self
            .by_image
            .iter()
            .filter(|(k, _)| k.ends_with(&tail))
            .collect();
        match hits.as_slice() {
            [] => Ok(None),
            [(_, c)] => Ok(c.as_deref()),
            many => bail!(
                "{}: image reference {reference:?} matches {} captioned images ({}): give more of its path",
                at(),
                many.len(),
                many.iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// An image reference as caption-images writes it: `/` separators, no leading `./`.
fn normalize_ref(s: &str) -> String {
    let s = s.trim().replace('\\', "/");
    s.strip_prefix("./").unwrap_or(&s).to_string()
}

impl Stage for BuildPairs {
    fn run(&self, input: &StageInput<'_>, report: &dyn Reporter) -> Result<()> {
        let cfg: Config = settings::parse(input.with)
            .map_err(|e| anyhow!("build-pairs `with:` of stage `{}`: {e}", input.name))?;
        let outs = output_paths(input)?;
        let reading = Reading::new(&cfg, input.project_root, report)?;
        let read = |s: &Source| match s {
            Source::Path(p) => reading.read(&input.project_root.join(p)),
            Source::Sqlite { sqlite } => {
                reading.read_sqlite(&input.project_root.join(&sqlite.db), &sqlite.query)
            }
        };

        let passthrough = cfg.train.is_some() || cfg.dev.is_some() || cfg.test.is_some();
        let (splits, skipped, seed_used) = match (&cfg.input, passthrough) {
            (Some(_), true) => {
                bail!(
                    "build-pairs: give either `input` (split here) or `train`/`dev`/`test` (an existing split), not both"
                )
            }
            (None, false) => {
                bail!("build-pairs: no data: expected `input` or `train`/`dev`/`test`")
            }
            (None, true) => {
                if cfg.split.is_some() {
                    bail!(
                        "build-pairs: `split` applies to `input`; `train`/`dev`/`test` are already split"
                    );
                }
                let mut splits: [Vec<Pair>; 3] = Default::default();
                let mut skipped = 0;
                for (slot, src) in [&cfg.train, &cfg.dev, &cfg.test].into_iter().enumerate() {
                    if let Some(src) = src {
                        let read = read(src)?;
                        splits[slot] = read.pairs;
                        skipped += read.skipped;
                    }
                }
                (splits, skipped, false)
            }
            (Some(src), false) => {
                let spec = cfg.split.clone().unwrap_or(SplitSpec {
                    train: None,
                    dev: 0.1,
                    test: 0.1,
                });
                let fractions = split_fractions(&spec)?;
                let read = read(src)?;
                (
                    split_by_group(read.pairs, fractions, cfg.seed.unwrap_or(0)),
                    read.skipped,
                    true,
                )
            }
        };

        // Groups found on more than one side: impossible when split here, a warning when
        // an existing split leaks (STS-B repeats some sentences across its files).
        let group_sets: Vec<HashSet<&str>> = splits
            .iter()
            .map(|s| s.iter().map(|p| p.group.as_str()).collect())
            .collect();
        let shared = group_sets[0]
            .iter()
            .chain(group_sets[1].iter())
            .chain(group_sets[2].iter())
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|g| group_sets.iter().filter(|s| s.contains(**g)).count() > 1)
            .count();
        if shared > 0 {
            report.log(&format!(
                "warning: {shared} group(s) appear in more than one split of the given train/dev/test files"
            ));
        }

        let mut stats = serde_json::Map::new();
        let total: usize = splits.iter().map(Vec::len).sum();
        stats.insert("rows".into(), total.into());
        // Rows dropped for want of a caption come back as skipped too; counted on their own.
        let dropped = reading.captions.as_ref().map_or(0, |c| c.dropped.get());
        let skipped = skipped - dropped;
        stats.insert("skipped".into(), skipped.into());
        for (name, (split, groups)) in SPLITS.iter().zip(splits.iter().zip(&group_sets)) {
            stats.insert(format!("rows_{name}"), split.len().into());
            stats.insert(format!("groups_{name}"), groups.len().into());
        }
        stats.insert("groups_shared".into(), shared.into());
        if let Some(caps) = &reading.captions {
            stats.insert("captioned".into(), caps.captioned.get().into());
            stats.insert("dropped_no_caption".into(), caps.dropped.get().into());
        }
        if seed_used {
            stats.insert("seed".into(), cfg.seed.unwrap_or(0).into());
        }

        for (name, split) in SPLITS.iter().zip(&splits) {
            let mut buf = Vec::with_capacity(split.len() * 128);
            for p in split {
                write_pair(&mut buf, p)?;
            }
            write_atomic(&outs[*name], &buf)?;
        }
        let mut stats_bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(stats.clone()))?;
        stats_bytes.push(b'\n');
        write_atomic(&outs["stats"], &stats_bytes)?;

        for (k, v) in &stats {
            if let Some(x) = v.as_f64() {
                report.metric(k, None, x);
            }
        }
        report.progress(total as u64, Some(total as u64), "pairs written");
        report.log(&format!(
            "build-pairs: {} train / {} dev / {} test rows, {skipped} skipped",
            splits[0].len(),
            splits[1].len(),
            splits[2].len()
        ));
        Ok(())
    }
}

fn output_paths(input: &StageInput<'_>) -> Result<BTreeMap<&'static str, PathBuf>> {
    let mut out = BTreeMap::new();
    for key in SPLITS.iter().chain(&["stats"]) {
        let path = input
            .outs
            .get(*key)
            .ok_or_else(|| anyhow!("build-pairs: the engine gave no path for output `{key}`"))?;
        out.insert(*key, path.clone());
    }
    Ok(out)
}

fn split_fractions(spec: &SplitSpec) -> Result<[f64; 3]> {
    let train = spec.train.unwrap_or(1.0 - spec.dev - spec.test);
    let f = [train, spec.dev, spec.test];
    if f.iter().any(|x| !(0.0..=1.0).contains(x) || !x.is_finite()) {
        bail!(
            "build-pairs: `split` fractions must lie in [0, 1], got train {train}, dev {}, test {}",
            spec.dev,
            spec.test
        );
    }
    if (f.iter().sum::<f64>() - 1.0).abs() > 1e-9 {
        bail!(
            "build-pairs: `split` fractions must sum to 1, got train {train} + dev {} + test {}",
            spec.dev,
            spec.test
        );
    }
    Ok(f)
}

/// A 64-bit hash of `seed` and `key` that never changes across platforms or releases (FNV-1a
/// then a splitmix64 finaliser): the split must not move when std's hasher does.
pub(crate) fn stable_hash(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Assigns whole groups to splits: groups ordered by a seeded hash of their key, the first
/// `round(n·test)` to test, the next `round(n·dev)` to dev, the rest to train. Fractions are
/// of groups, not rows. Rows keep their input order inside a split.
fn split_by_group(pairs: Vec<Pair>, fractions: [f64; 3], seed: u64) -> [Vec<Pair>; 3] {
    let mut keys: Vec<&str> = pairs
        .iter()
        .map(|p| p.group.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    keys.sort_by_key(|k| (stable_hash(seed, k), *k));
    let n = keys.len();
    let n_test = ((n as f64) * fractions[2]).round() as usize;
    let n_dev = (((n as f64) * fractions[1]).round() as usize).min(n - n_test.min(n));
    let side: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.to_string(),
                if i < n_test {
                    2
                } else if i < n_test + n_dev {
                    1
                } else {
                    0
                },
            )
        })
        .collect();
    let mut out: [Vec<Pair>; 3] = Default::default();
    for p in pairs {
        let s = side[&p.group];
        out[s].push(p);
    }
    out
}

fn write_pair(buf: &mut Vec<u8>, p: &Pair) -> Result<()> {
    // Written field by field so the order is fixed whatever serde_json's map features are.
    buf.extend_from_slice(b"{\"text_a\":");
    serde_json::to_writer(&mut *buf, &p.text_a)?;
    buf.extend_from_slice(b",\"text_b\":");
    serde_json::to_writer(&mut *buf, &p.text_b)?;
    buf.extend_from_slice(b",\"label\":");
    match p.label {
        Label::Score(x) => serde_json::to_writer(&mut *buf, &x)?,
        Label::Class(c) => serde_json::to_writer(&mut *buf, &c)?,
    }
    buf.extend_from_slice(b",\"group\":");
    serde_json::to_writer(&mut *buf, &p.group)?;
    buf.extend_from_slice(b"}\n");
    Ok(())
}

use tsumugi_base::atomic::write_atomic;

impl<'a> Reading<'a> {
    fn new(cfg: &'a Config, project_root: &Path, report: &'a dyn Reporter) -> Result<Self> {
        if let Some(s) = cfg.scale {
            if !s.is_finite() {
                bail!("build-pairs: `scale` must be a finite number, got {s}");
            }
            if cfg.labels.is_some() {
                bail!(
                    "build-pairs: `scale` applies to numeric labels; it cannot be combined with `labels` (classes)"
                );
            }
        }
        let label_index = match &cfg.labels {
            None => None,
            Some(list) => {
                let mut map = HashMap::new();
                for (i, v) in list.iter().enumerate() {
                    let name = match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        other => bail!(
                            "build-pairs: `labels[{i}]` must be a string or a number, got {other}"
                        ),
                    };
                    if map.insert(name.clone(), i as u64).is_some() {
                        bail!("build-pairs: label `{name}` is listed twice in `labels`");
                    }
                }
                if map.is_empty() {
                    bail!("build-pairs: `labels` is empty");
                }
                Some(map)
            }
        };
        let captions = match &cfg.captions {
            Some(p) => Some(Captions::read(&project_root.join(p))?),
            None => {
                if cfg.caption_for.is_some() || cfg.missing_captions.is_some() {
                    bail!(
                        "build-pairs: `caption_for` and `missing_captions` apply to `captions:` (a caption-images output), which is not given"
                    );
                }
                None
            }
        };
        Ok(Reading {
            cfg,
            label_index,
            captions,
            report,
        })
    }

    fn format_of(&self, path: &Path) -> Result<Format> {
        if let Some(f) = self.cfg.format {
            return Ok(f);
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(Format::Csv),
            Some("tsv") | Some("tab") => Ok(Format::Tsv),
            Some("jsonl") | Some("ndjson") => Ok(Format::Jsonl),
            _ => bail!(
                "build-pairs: cannot tell the format of {} from its extension: set `format: csv | tsv | jsonl`",
                path.display()
            ),
        }
    }

    fn columns(&self) -> Vec<(&'static str, &Column)> {
        let c = self.cfg;
        let mut v = vec![
            ("text_a", &c.text_a),
            ("text_b", &c.text_b),
            ("label", &c.label),
        ];
        if let Some(g) = &c.group {
            v.push(("group", g));
        }
        v
    }

    fn read(&self, path: &Path) -> Result<Read> {
        let file = File::open(path)
            .with_context(|| format!("build-pairs: cannot open {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).ok();
        match self.format_of(path)? {
            Format::Jsonl => self.read_jsonl(path, file, size),
            f => self.read_delimited(path, file, size, f),
        }
    }

    fn read_delimited(
        &self,
        path: &Path,
        file: File,
        size: Option<u64>,
        format: Format,
    ) -> Result<Read> {
        let shown = path.display();
        let delimiter = match &self.cfg.delimiter {
            Some(d) if d.len() == 1 => d.as_bytes()[0],
            Some(d) if d == "\\t" => b'\t',
            Some(d) => bail!("build-pairs: `delimiter` must be one ASCII character, got {d:?}"),
            None if format == Format::Tsv => b'\t',
            None => b',',
        };
        // TSV has no quoting (IANA text/tab-separated-values); STS-B's stray quotes would
        // otherwise swallow tabs and whole lines.
        let quoting = self.cfg.quoting.unwrap_or(if format == Format::Tsv {
            Quoting::None
        } else {
            Quoting::Standard
        });
        let by_name = self
            .columns()
            .iter()
            .any(|(_, c)| matches!(c, Column::Name(_)));
        let header = self.cfg.header.unwrap_or(by_name);
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .quoting(quoting == Quoting::Standard)
            .has_headers(header)
            .flexible(true)
            .from_reader(BufReader::new(file));

        let mut index = Vec::new();
        let headers = if header {
            Some(
                rdr.headers()
                    .map_err(|e| anyhow!("{shown}:1: cannot read the header row: {e}"))?
                    .clone(),
            )
        } else {
            None
        };
        for (role, col) in self.columns() {
            let i = match (col, &headers) {
                (Column::Index(i), _) => *i,
                (Column::Name(n), Some(h)) => h.iter().position(|x| x == n).ok_or_else(|| {
                    anyhow!(
                        "{shown}:1: no column named `{n}` for {role} (the header has: {})",
                        h.iter().collect::<Vec<_>>().join(", ")
                    )
                })?,
                (Column::Name(n), None) => {
                    bail!(
                        "build-pairs: {role} names column `{n}` but `header: false`: use a 0-based index or set `header: true`"
                    )
                }
            };
            index.push(i);
        }

        let mut pairs = Vec::new();
        let mut skipped = 0;
        let mut record = csv::StringRecord::new();
        let mut rows = 0u64;
        loop {
            let more = rdr.read_record(&mut record).map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                anyhow!("{shown}:{line}: {e}")
            })?;
            if !more {
                break;
            }
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            // A trailing empty line reads as one empty field.
            if record.len() == 1 && record[0].is_empty() {
                continue;
            }
            let cells: Vec<Cell> = index
                .iter()
                .map(|&i| {
                    record
                        .get(i)
                        .map_or(Cell::Missing, |s| Cell::Text(s.to_string()))
                })
                .collect();
            let at = || format!("{shown}:{line}");
            let width = record.len();
            match self.pair(cells, &at, &|role: &str, col: &Column| {
                format!("{role} ({col}) is missing: the row has {width} field(s)")
            })? {
                Some(p) => pairs.push(p),
                None => skipped += 1,
            }
            rows += 1;
            if rows.is_multiple_of(REPORT_EVERY) {
                self.tick(rows, rdr.position().byte(), size, path)?;
            }
        }
        Ok(Read { pairs, skipped })
    }

    fn read_sqlite(&self, db: &Path, query: &str) -> Result<Read> {
        use rusqlite::types::ValueRef;
        let shown = db.display();
        if !db.is_file() {
            bail!("build-pairs: SQLite database {shown} does not exist");
        }
        // Read-only, and waiting out a writer rather than failing with "database is locked".
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("build-pairs: cannot open SQLite database {shown}"))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mut stmt = conn
            .prepare(query)
            .map_err(|e| anyhow!("{shown}: query {query:?}: {e}"))?;
        if !stmt.readonly() {
            bail!(
                "{shown}: query {query:?} would modify the database: expected a read-only SELECT"
            );
        }
        let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let mut index = Vec::new();
        for (role, col) in self.columns() {
            index.push(match col {
                Column::Index(i) if *i < names.len() => *i,
                Column::Index(i) => bail!(
                    "{shown}: {role} is column {i}, but the query returns {} column(s): {}",
                    names.len(),
                    names.join(", ")
                ),
                Column::Name(n) => names.iter().position(|x| x == n).ok_or_else(|| {
                    anyhow!(
                        "{shown}: {role}: the query returns no column named `{n}` (it has: {})",
                        names.join(", ")
                    )
                })?,
            });
        }
        let mut rows = stmt
            .query([])
            .map_err(|e| anyhow!("{shown}: query {query:?}: {e}"))?;
        let mut pairs = Vec::new();
        let mut skipped = 0;
        let mut n = 0u64;
        while let Some(row) = rows
            .next()
            .map_err(|e| anyhow!("{shown}: query row {}: {e}", n + 1))?
        {
            n += 1;
            let mut cells = Vec::with_capacity(index.len());
            for (&i, (role, _)) in index.iter().zip(self.columns()) {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Missing,
                    ValueRef::Integer(x) => Cell::Number(x as f64),
                    ValueRef::Real(x) => Cell::Number(x),
                    ValueRef::Text(t) => Cell::Text(
                        std::str::from_utf8(t)
                            .map_err(|_| {
                                anyhow!("{shown}: query row {n}: {role} is not valid UTF-8")
                            })?
                            .to_string(),
                    ),
                    ValueRef::Blob(_) => {
                        bail!("{shown}: query row {n}: {role} is a BLOB, expected text or a number")
                    }
                });
            }
            let at = || format!("{shown}: query row {n}");
            match self.pair(cells, &at, &|role: &str, col: &Column| {
                format!("{role} ({col}) is NULL")
            })? {
                Some(p) => pairs.push(p),
                None => skipped += 1,
            }
            if n.is_multiple_of(REPORT_EVERY) {
                self.report
                    .progress(n, None, &format!("reading {shown}: {n} rows"));
                if self.report.cancelled() {
                    bail!("build-pairs: cancelled");
                }
            }
        }
        Ok(Read { pairs, skipped })
    }

    fn read_jsonl(&self, path: &Path, file: File, size: Option<u64>) -> Result<Read> {
        let shown = path.display();
        let mut names = Vec::new();
        for (role, col) in self.columns() {
            match col {
                Column::Name(n) => names.push(n.clone()),
                Column::Index(i) => bail!(
                    "build-pairs: {role} is column {i}, but JSONL objects have no column order: name the key"
                ),
            }
        }
        let mut pairs = Vec::new();
        let mut skipped = 0;
        let mut bytes = 0u64;
        let mut rows = 0u64;
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let lineno = n + 1;
            let line = line.map_err(|e| anyhow!("{shown}:{lineno}: {e}"))?;
            // Editors on Windows start files with a byte-order mark; JSON does not allow it.
            let line = if lineno == 1 {
                line.trim_start_matches('\u{feff}').to_string()
            } else {
                line
            };
            bytes += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| anyhow!("{shown}:{lineno}: expected one JSON object per line: {e}"))?;
            let obj = value.as_object().ok_or_else(|| {
                anyhow!(
                    "{shown}:{lineno}: expected a JSON object, found {}",
                    kind_of(&value)
                )
            })?;
            let mut cells = Vec::with_capacity(names.len());
            for name in &names {
                cells.push(match obj.get(name) {
                    None | Some(serde_json::Value::Null) => Cell::Missing,
                    Some(serde_json::Value::String(s)) => Cell::Text(s.clone()),
                    Some(serde_json::Value::Number(x)) => {
                        Cell::Number(x.as_f64().unwrap_or(f64::NAN))
                    }
                    Some(serde_json::Value::Bool(b)) => Cell::Text(b.to_string()),
                    Some(other) => bail!(
                        "{shown}:{lineno}: key `{name}` holds {}, expected a string or a number",
                        kind_of(other)
                    ),
                });
            }
            let at = || format!("{shown}:{lineno}");
            match self.pair(cells, &at, &|role: &str, col: &Column| {
                format!("{role} ({col}) is missing or null")
            })? {
                Some(p) => pairs.push(p),
                None => skipped += 1,
            }
            rows += 1;
            if rows.is_multiple_of(REPORT_EVERY) {
                self.tick(rows, bytes, size, path)?;
            }
        }
        Ok(Read { pairs, skipped })
    }

    fn tick(&self, rows: u64, done: u64, total: Option<u64>, path: &Path) -> Result<()> {
        self.report.progress(
            done,
            total,
            &format!("reading {}: {rows} rows", path.display()),
        );
        if self.report.cancelled() {
            bail!("build-pairs: cancelled");
        }
        Ok(())
    }

    /// One row's cells (text_a, text_b, label[, group]) → a pair, or `None` for a row
    /// dropped by `unknown_labels: skip`.
    fn pair(
        &self,
        mut cells: Vec<Cell>,
        at: &dyn Fn() -> String,
        missing: &dyn Fn(&str, &Column) -> String,
    ) -> Result<Option<Pair>> {
        let cols = self.columns();
        let mut text = |i: usize| -> Result<String> {
            match std::mem::replace(&mut cells[i], Cell::Missing) {
                Cell::Text(s) => Ok(s),
                Cell::Number(x) => Ok(number_text(x)),
                Cell::Missing => bail!("{}: {}", at(), missing(cols[i].0, cols[i].1)),
            }
        };
        let mut text_a = text(0)?;
        let mut text_b = text(1)?;
        // The group is taken before captions replace a reference: one image's rows stay
        // together, and the split does not move when a caption changes.
        let group = if cols.len() > 3 {
            text(3)?
        } else {
            text_a.clone()
        };
        if let Some(caps) = &self.captions {
            let (side, name) = match self.cfg.caption_for.unwrap_or(CaptionFor::TextA) {
                CaptionFor::TextA => (&mut text_a, "text_a"),
                CaptionFor::TextB => (&mut text_b, "text_b"),
            };
            if !side.contains('\n') && crate::caption::images::is_image_name(Path::new(side.trim()))
            {
                match caps.lookup(side, at)? {
                    Some(c) => {
                        *side = c.to_string();
                        caps.captioned.set(caps.captioned.get() + 1);
                    }
                    None if self.cfg.missing_captions == Some(OnMissing::Drop) => {
                        caps.dropped.set(caps.dropped.get() + 1);
                        return Ok(None);
                    }
                    None => bail!(
                        "{}: {name} is the image {:?}, which has no caption in {} (absent or skipped; `missing_captions: drop` drops such rows)",
                        at(),
                        side.as_str(),
                        caps.path.display()
                    ),
                }
            }
        }
        let label = match (&self.label_index, &cells[2]) {
            (_, Cell::Missing) => bail!("{}: {}", at(), missing("label", cols[2].1)),
            (None, Cell::Number(x)) => Label::Score(self.scaled(*x, at)?),
            (None, Cell::Text(s)) => {
                let x: f64 = s.trim().parse().map_err(|_| {
                    anyhow!("{}: label ({}): expected a number, found {s:?} (for classes, list them in `labels`)", at(), cols[2].1)
                })?;
                Label::Score(self.scaled(x, at)?)
            }
            (Some(map), cell) => {
                let key = match cell {
                    Cell::Text(s) => s.trim().to_string(),
                    Cell::Number(x) => number_text(*x),
                    Cell::Missing => unreachable!("handled above"),
                };
                match map.get(&key) {
                    Some(&c) => Label::Class(c),
                    None if self.cfg.unknown_labels == Some(OnUnknown::Skip) => return Ok(None),
                    None => {
                        let mut known: Vec<(&String, &u64)> = map.iter().collect();
                        known.sort_by_key(|(_, i)| **i);
                        bail!(
                            "{}: label {key:?} is not one of `labels` [{}] (set `unknown_labels: skip` to drop such rows)",
                            at(),
                            known
                                .iter()
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                }
            }
        };
        Ok(Some(Pair {
            text_a,
            text_b,
            label,
            group,
        }))
    }

    fn scaled(&self, x: f64, at: &dyn Fn() -> String) -> Result<f64> {
        let y = match self.cfg.scale {
            None => x,
            // `scale: 0.2` means "divide by 5": dividing gives the correctly rounded x / 5
            // (0.85 for 4.25, as Python's `score / 5`), multiplying by the inexact 0.2 gives
            // 0.8500000000000001.
            Some(s) if s != 0.0 && (1.0 / s).fract() == 0.0 => x / (1.0 / s),
            Some(s) => x * s,
        };
        if !y.is_finite() {
            bail!("{}: label {x} is not a finite number", at());
        }
        Ok(y)
    }
}

/// A JSON number as text: integers without a fraction (`2`, not `2.0`), so that a numeric
/// class label matches `labels: [0, 1, 2]`.
fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        lines: Mutex<Vec<String>>,
        metrics: Mutex<Vec<(String, f64)>>,
    }

    impl Reporter for Recorder {
        fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
        fn metric(&self, name: &str, _: Option<u64>, value: f64) {
            self.metrics.lock().unwrap().push((name.into(), value));
        }
        fn log(&self, line: &str) {
            self.lines.lock().unwrap().push(line.into());
        }
        fn cancelled(&self) -> bool {
            false
        }
    }

    fn run(dir: &Path, with: serde_json::Value) -> Result<BTreeMap<String, String>> {
        let out = dir.join("out");
        let outs: BTreeMap<String, PathBuf> = [
            ("train", "train.jsonl"),
            ("dev", "dev.jsonl"),
            ("test", "test.jsonl"),
            ("stats", "stats.json"),
        ]
        .into_iter()
        .map(|(k, f)| (k.to_string(), out.join(f)))
        .collect();
        let env = BTreeMap::new();
        let input = StageInput {
            name: "pairs",
            project_root: dir,
            with: &with,
            outs: &outs,
            env: &env,
            device: "cpu",
        };
        BuildPairs.run(&input, &Recorder::default())?;
        Ok(outs
            .iter()
            .map(|(k, p)| (k.clone(), std::fs::read_to_string(p).unwrap()))
            .collect())
    }

    fn lines(s: &str) -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn sts_style_tsv_with_quotes_extra_fields_and_scale() {
        let dir = tempfile::tempdir().unwrap();
        // Row 2 has an unbalanced quote and row 3 two extra trailing fields, as in STS-B.
        std::fs::write(
            dir.path().join("sts.csv"),
            "g\tMSRvid\t2012\t1\t5.000\tA plane is taking off.\tAn air plane is taking off.\n\
             g\tMSRvid\t2012\t4\t3.800\t\"A man is playing\ta flute.\n\
             g\tMSRvid\t2012\t5\t4.250\tA cat.\tA dog.\tsrc\textra\n",
        )
        .unwrap();
        let with = serde_json::json!({"train": "sts.csv", "format": "tsv", "text_a": 5, "text_b": 6, "label": 4, "scale": 0.2});
        let out = run(dir.path(), with).unwrap();
        assert_eq!(
            out["train"].lines().next().unwrap(),
            r#"{"text_a":"A plane is taking off.","text_b":"An air plane is taking off.","label":1.0,"group":"A plane is taking off."}"#
        );
        let rows = lines(&out["train"]);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1]["text_a"], "\"A man is playing");
        assert_eq!(rows[1]["text_b"], "a flute.");
        // Exactly 3.8 / 5 and 4.25 / 5 (not 3.8 * 0.2 = 0.76 + 1 ulp).
        assert_eq!(rows[1]["label"].as_f64().unwrap(), 3.8 / 5.0);
        assert!(
            out["train"].contains(r#""label":0.85,"#),
            "{}",
            out["train"]
        );
        assert_eq!(rows[2]["text_b"], "A dog.");
        assert_eq!(out["dev"], "");
        let stats: serde_json::Value = serde_json::from_str(&out["stats"]).unwrap();
        assert_eq!(stats["rows_train"], 3);
    }

    #[test]
    fn split_by_group_is_deterministic_and_leak_free() {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("query,doc,score\n");
        for q in 0..200 {
            for d in 0..3 {
                csv.push_str(&format!("q{q},d{d},{}\n", (q + d) % 5));
            }
        }
        std::fs::write(dir.path().join("p.csv"), csv).unwrap();
        let with = serde_json::json!({"input": "p.csv", "text_a": "query", "text_b": "doc", "label": "score",
                                      "split": {"dev": 0.1, "test": 0.2}, "seed": 7});
        let a = run(dir.path(), with.clone()).unwrap();
        let b = run(dir.path(), with.clone()).unwrap();
        assert_eq!(a, b, "same input and seed give the same bytes");

        let groups = |s: &str| {
            lines(s)
                .iter()
                .map(|r| r["group"].as_str().unwrap().to_string())
                .collect::<HashSet<_>>()
        };
        let (tr, dv, te) = (groups(&a["train"]), groups(&a["dev"]), groups(&a["test"]));
        assert_eq!((tr.len(), dv.len(), te.len()), (140, 20, 40));
        assert!(tr.is_disjoint(&dv) && tr.is_disjoint(&te) && dv.is_disjoint(&te));
        // Whole groups move: every query keeps its 3 rows.
        assert_eq!(lines(&a["test"]).len(), 120);

        let mut other = with.clone();
        other["seed"] = 8.into();
        let c = run(dir.path(), other).unwrap();
        assert_ne!(groups(&c["test"]), te, "another seed gives another split");
    }

    #[test]
    fn classification_labels_jsonl_and_skip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("snli.jsonl"),
            "\u{feff}{\"gold_label\":\"neutral\",\"sentence1\":\"a\",\"sentence2\":\"b\"}\n\n\
             {\"gold_label\":\"-\",\"sentence1\":\"c\",\"sentence2\":\"d\"}\n\
             {\"gold_label\":\"contradiction\",\"sentence1\":\"e\",\"sentence2\":\"f\"}\n",
        )
        .unwrap();
        let with = serde_json::json!({"test": "snli.jsonl", "text_a": "sentence1", "text_b": "sentence2",
            "label": "gold_label", "labels": ["entailment", "neutral", "contradiction"]});
        let err = run(dir.path(), with.clone()).unwrap_err().to_string();
        assert!(
            err.contains("snli.jsonl:3:") && err.contains("\"-\""),
            "{err}"
        );
        let mut skip = with;
        skip["unknown_labels"] = "skip".into();
        let out = run(dir.path(), skip).unwrap();
        let rows = lines(&out["test"]);
        assert_eq!(
            rows.iter()
                .map(|r| r["label"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        let stats: serde_json::Value = serde_json::from_str(&out["stats"]).unwrap();
        assert_eq!(stats["skipped"], 1);
    }

    #[test]
    fn errors_name_file_line_and_expectation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.csv"),
            "x,y,score\nhello,world,0.5\nfoo,bar,high\nshort\n",
        )
        .unwrap();
        let with =
            serde_json::json!({"train": "a.csv", "text_a": "x", "text_b": "y", "label": "score"});
        let err = run(dir.path(), with).unwrap_err().to_string();
        assert!(
            err.contains("a.csv:3:")
                && err.contains("expected a number")
                && err.contains("\"high\""),
            "{err}"
        );

        let with = serde_json::json!({"train": "a.csv", "text_a": "x", "text_b": "nope", "label": "score"});
        let err = run(dir.path(), with).unwrap_err().to_string();
        assert!(
            err.contains("a.csv:1:") && err.contains("no column named `nope`"),
            "{err}"
        );

        std::fs::write(dir.path().join("b.csv"), "hello,world,0.5\nshort\n").unwrap();
        let with = serde_json::json!({"train": "b.csv", "text_a": 0, "text_b": 1, "label": 2});
        let err = run(dir.path(), with).unwrap_err().to_string();
        assert!(
            err.contains("b.csv:2:") && err.contains("row has 1 field"),
            "{err}"
        );

        let with = serde_json::json!({"input": "b.csv", "train": "b.csv", "text_a": 0, "text_b": 1, "label": 2});
        assert!(
            run(dir.path(), with)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        let with = serde_json::json!({"input": 5, "text_a": 0, "text_b": 1, "label": 2});
        let err = run(dir.path(), with).unwrap_err().to_string();
        assert!(err.contains("a file path, or {sqlite: {db: path"), "{err}");
        let with = serde_json::json!({"input": "b.csv", "text_a": 0, "text_b": 1, "label": 2, "colour": 1});
        assert!(
            run(dir.path(), with)
                .unwrap_err()
                .to_string()
                .contains("unknown field `colour`")
        );
        let with = serde_json::json!({"input": "b.csv", "text_a": 0, "text_b": 1, "label": 2, "split": {"dev": 0.7, "test": 0.7}});
        assert!(
            run(dir.path(), with)
                .unwrap_err()
                .to_string()
                .contains("[0, 1]")
        );
    }

    #[test]
    fn sqlite_source_reads_query_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE corrections (premise TEXT, hypothesis TEXT, label TEXT, used INTEGER);
             INSERT INTO corrections VALUES ('a', 'b', 'supports', 0), ('c', 'd', 'refutes', 1),
                                            ('e', 'f', 'neutral', 0), ('g', NULL, 'neutral', 1);",
        )
        .unwrap();
        drop(conn);
        let query =
            "SELECT premise, hypothesis, label FROM corrections WHERE used = 0 ORDER BY rowid";
        let with = serde_json::json!({"train": {"sqlite": {"db": "app.db", "query": query}},
            "text_a": "premise", "text_b": 1, "label": "label", "labels": ["supports", "refutes", "neutral"]});
        let out = run(dir.path(), with.clone()).unwrap();
        assert_eq!(
            out["train"],
            "{\"text_a\":\"a\",\"text_b\":\"b\",\"label\":0,\"group\":\"a\"}\n\
             {\"text_a\":\"e\",\"text_b\":\"f\",\"label\":2,\"group\":\"e\"}\n"
        );

        let mut all = with.clone();
        all["train"]["sqlite"]["query"] =
            "SELECT premise, hypothesis, label FROM corrections".into();
        let err = run(dir.path(), all).unwrap_err().to_string();
        assert!(err.contains("query row 4") && err.contains("NULL"), "{err}");
        let mut write = with.clone();
        write["train"]["sqlite"]["query"] = "DELETE FROM corrections".into();
        assert!(
            run(dir.path(), write)
                .unwrap_err()
                .to_string()
                .contains("read-only")
        );
        let mut bad = with.clone();
        bad["text_a"] = "nope".into();
        let err = run(dir.path(), bad).unwrap_err().to_string();
        assert!(
            err.contains("no column named `nope`") && err.contains("premise, hypothesis, label"),
            "{err}"
        );
        let mut missing = with;
        missing["train"]["sqlite"]["db"] = "other.db".into();
        assert!(
            run(dir.path(), missing)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }

    #[test]
    fn image_prompts_take_their_captions_and_text_prompts_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("captions.jsonl"),
            concat!(
                r#"{"image":"data/img/a.png","sha256":"x","caption":"猫が寝ている","method":"ocr","model":"t","status":"ok","error":null}"#, "\n",
                r#"{"image":"data/img/b.jpg","sha256":"y","caption":null,"method":"ocr","model":"t","status":"skipped","error":"bad"}"#, "\n",
                r#"{"image":"data/other/c.png","sha256":"z","caption":"dog","method":"ocr","model":"t","status":"ok","error":null}"#, "\n",
                r#"{"image":"data/more/c.png","sha256":"w","caption":"cat","method":"ocr","model":"t","status":"ok","error":null}"#, "\n",
            ),
        )
        .unwrap();
        let rows = |extra: &str| {
            format!(
                "{{\"prompt\":\"data/img/a.png\",\"answer\":\"起きて\",\"score\":3}}\n\
                 {{\"prompt\":\"./a.png\",\"answer\":\"寝かせて\",\"score\":1}}\n\
                 {{\"prompt\":\"What is a duck?\",\"answer\":\"a bird\",\"score\":2}}\n{extra}"
            )
        };
        std::fs::write(dir.path().join("pairs.jsonl"), rows("")).unwrap();
        let with = |extra: serde_json::Value| {
            let mut w = serde_json::json!({"input": "pairs.jsonl", "text_a": "prompt", "text_b": "answer",
                "label": "score", "split": {"dev": 0.0, "test": 0.0}, "captions": "captions.jsonl"});
            w.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            w
        };
        let out = run(dir.path(), with(serde_json::json!({}))).unwrap();
        let train = lines(&out["train"]);
        let texts: Vec<&str> = train
            .iter()
            .map(|r| r["text_a"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["猫が寝ている", "猫が寝ている", "What is a duck?"]);
        // The group is the reference, not the caption.
        assert_eq!(train[0]["group"], "data/img/a.png");
        let stats: serde_json::Value = serde_json::from_str(&out["stats"]).unwrap();
        assert_eq!(
            (
                stats["captioned"].as_u64(),
                stats["dropped_no_caption"].as_u64()
            ),
            (Some(2), Some(0))
        );

        // A skipped caption: an error naming the row, or the row dropped and counted.
        std::fs::write(
            dir.path().join("pairs.jsonl"),
            rows("{\"prompt\":\"data/img/b.jpg\",\"answer\":\"x\",\"score\":0}\n"),
        )
        .unwrap();
        let err = run(dir.path(), with(serde_json::json!({})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pairs.jsonl:4") && err.contains("data/img/b.jpg"),
            "{err}"
        );
        assert!(err.contains("missing_captions: drop"), "{err}");
        let out = run(
            dir.path(),
            with(serde_json::json!({"missing_captions": "drop"})),
        )
        .unwrap();
        assert_eq!(lines(&out["train"]).len(), 3);
        let stats: serde_json::Value = serde_json::from_str(&out["stats"]).unwrap();
        assert_eq!(stats["dropped_no_caption"], 1);
        assert_eq!(stats["skipped"], 0);

        // A tail that names two images is refused rather than guessed.
        std::fs::write(
            dir.path().join("pairs.jsonl"),
            "{\"prompt\":\"c.png\",\"answer\":\"x\",\"score\":0}\n",
        )
        .unwrap();
        let err = run(dir.path(), with(serde_json::json!({})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches 2 captioned images"), "{err}");

        let err = run(
            dir.path(),
            serde_json::json!({"input": "pairs.jsonl", "text_a": "prompt", "text_b": "answer",
                "label": "score", "missing_captions": "drop"}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("apply to `captions:`"), "{err}");
    }

    #[test]
    fn stable_hash_is_pinned() {
        // The split depends on these values: changing them moves data between splits and
        // needs a kind version bump.
        assert_ne!(stable_hash(0, "a"), stable_hash(1, "a"));
        assert_eq!(stable_hash(13, "q1"), 0x5ed305dec84f276c);
    }
}
