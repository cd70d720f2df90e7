//! The items of a per-item (`map:`) stage: a glob's files, a file's lines or a JSONL file's
//! rows, each with a key (its sort order in the merged output) and the hash of what it
//! reads. [`source_hash`] is the map source's single input hash in the stage fingerprint;
//! running the items is the executor's (`tsumugi_exec::map`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use tsumugi_base::paths::path_str;
use tsumugi_base::project::Project;
use tsumugi_pipeline::{MapSource, MapSpec};

use crate::canonical::write_canonical;
use crate::hash::{Hasher, sha256_hex};

/// One item of a mapped stage.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique, and the sort order of the merged output.
    pub key: String,
    /// Content hash of what the item reads (the file, the line, the row).
    pub input: String,
    /// `${item.NAME}` values.
    pub vars: BTreeMap<String, String>,
}

impl Item {
    /// How the item is listed in `TSUMUGI_ADDED`/`CHANGED`/`REMOVED`: a glob item by its
    /// path, a line by its text, a row by its JSON.
    pub fn entry(&self) -> &str {
        self.vars
            .get("path")
            .or_else(|| self.vars.get("line"))
            .map(String::as_str)
            .unwrap_or(&self.key)
    }
}

/// The items of `spec`, sorted by key. Glob inputs are hashed in parallel through the stat
/// cache, so unchanged files cost one `stat` each.
pub fn items(project: &Project, hasher: &Hasher<'_>, spec: &MapSpec) -> Result<Vec<Item>> {
    let root = project.root();
    let mut items = match &spec.source {
        MapSource::Glob { pattern, base } => {
            let matcher = globset::Glob::new(pattern)
                .with_context(|| format!("invalid glob {pattern}"))?
                .compile_matcher();
            let abs_base = root.join(base);
            if !abs_base.is_dir() {
                bail!("map source directory {} does not exist", path_str(base));
            }
            let mut files = Vec::new();
            for e in walkdir::WalkDir::new(&abs_base).sort_by_file_name() {
                let e = e.with_context(|| format!("cannot walk {}", path_str(base)))?;
                if !e.file_type().is_file() {
                    continue;
                }
                let rel = path_str(e.path().strip_prefix(root).expect("under the root"));
                if matcher.is_match(&rel) {
                    files.push(rel);
                }
            }
            files
                .into_par_iter()
                .map(|rel| {
                    let (input, _, _) = hasher
                        .file(&root.join(&rel))
                        .with_context(|| format!("cannot hash map item {rel}"))?;
                    let p = Path::new(&rel);
                    let key = path_str(p.strip_prefix(base).expect("under the base"));
                    let mut vars = BTreeMap::new();
                    let os = |o: Option<&std::ffi::OsStr>| {
                        o.map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    };
                    vars.insert("stem".into(), os(p.file_stem()));
                    vars.insert("name".into(), os(p.file_name()));
                    vars.insert("dir".into(), p.parent().map(path_str).unwrap_or_default());
                    vars.insert("key".into(), key.clone());
                    vars.insert("path".into(), rel);
                    Ok(Item { key, input, vars })
                })
                .collect::<Result<Vec<_>>>()?
        }
        MapSource::Lines { path } | MapSource::Rows { path, .. } => {
            let text = fs::read_to_string(root.join(path))
                .with_context(|| format!("cannot read map source {}", path_str(path)))?;
            let rows_key = match &spec.source {
                MapSource::Rows { key, .. } => Some(key.as_deref()),
                _ => None,
            };
            let mut items = Vec::new();
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (i, line) in text.lines().enumerate() {
                let lineno = i + 1;
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.trim().is_empty() {
                    continue;
                }
                let mut vars = BTreeMap::new();
                vars.insert("line".into(), line.to_string());
                let (key, input) = match rows_key {
                    None => {
                        let h = sha256_hex(line.as_bytes());
                        (h[..16].to_string(), h)
                    }
                    Some(field) => {
                        let v: serde_json::Value =
                            serde_json::from_str(line).with_context(|| {
                                format!("{}:{lineno}: not a JSON row", path_str(path))
                            })?;
                        let Some(obj) = v.as_object() else {
                            bail!("{}:{lineno}: a row must be a JSON object", path_str(path));
                        };
                        for (k, x) in obj {
                            let s = match x {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            vars.insert(k.clone(), s);
                        }
                        let mut canon = Vec::new();
                        write_canonical(&v, &mut canon);
                        let h = sha256_hex(&canon);
                        let key = match field {
                            None => h[..16].to_string(),
                            Some(f) => match obj.get(f) {
                                Some(serde_json::Value::String(s)) => s.clone(),
                                Some(x @ serde_json::Value::Number(_)) => x.to_string(),
                                _ => bail!(
                                    "{}:{lineno}: row has no string or number field '{f}' (the map key)",
                                    path_str(path)
                                ),
                            },
                        };
                        (key, h)
                    }
                };
                if let Some(first) = seen.insert(key.clone(), lineno) {
                    bail!(
                        "{}:{lineno}: item key {key} repeats line {first} (items must be unique{})",
                        path_str(path),
                        if rows_key.is_some() {
                            ""
                        } else {
                            "; identical lines are one item"
                        }
                    );
                }
                vars.insert("key".into(), key.clone());
                items.push(Item { key, input, vars });
            }
            items
        }
    };
    items.par_sort_by(|a, b| a.key.cmp(&b.key));
    Ok(items)
}

pub fn spec_bytes(spec: &MapSpec) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(
        &serde_json::to_value(spec).expect("map spec serializes"),
        &mut out,
    );
    out
}

/// The map source's hash in the stage fingerprint: the spec and every (key, input hash).
pub fn source_hash(project: &Project, hasher: &Hasher<'_>, spec: &MapSpec) -> Result<String> {
    let items = items(project, hasher, spec)?;
    Ok(items_hash(spec, &items))
}

fn items_hash(spec: &MapSpec, items: &[Item]) -> String {
    let mut buf = b"tsumugi-map\n".to_vec();
    buf.extend(spec_bytes(spec));
    buf.push(b'\n');
    for it in items {
        buf.extend_from_slice(it.key.as_bytes());
        buf.push(0);
        buf.extend_from_slice(it.input.as_bytes());
        buf.push(b'\n');
    }
    sha256_hex(&buf)
}
