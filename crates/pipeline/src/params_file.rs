//! Params files, as in DVC: a stage lists keys of a YAML, JSON or TOML file
//! (`params: [train.seed, params.yaml:train.n_est, {other.toml: [a.b]}]`) and each listed
//! key is its own fingerprint input, keyed `FILE:KEY` (`params.yaml:train.n_est`). The file
//! itself is not a dependency: changing one key re-runs only the stages that list it.
//!
//! Overrides (`tsumugi exp run -S KEY=V`) replace values while the files are read; no file
//! is ever edited by a run. [`write_back`] is the one place that edits a params file
//! (`tsumugi exp apply`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::yaml::{self, Kind, Node, Plain};

/// DVC's default params file, at the project root: where a key without `FILE:` is looked up
/// when it is not an inline param.
pub const DEFAULT_FILE: &str = "params.yaml";

/// One `-S KEY=VALUE` as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// `FILE:` if given; `None` means "an inline param if KEY's first segment is one, else
    /// params.yaml".
    pub file: Option<PathBuf>,
    /// Dotted key (`train.lr`).
    pub key: String,
    pub value: Value,
}

impl Override {
    /// Parses `KEY=V` or `FILE:KEY=V`; V is a YAML scalar (`3e-4` is a number, `x` a
    /// string, `'"16"'` the string 16).
    pub fn parse(s: &str) -> Result<Override, String> {
        let (lhs, rhs) = s.split_once('=').ok_or_else(|| {
            format!("invalid override '{s}' (expected KEY=VALUE or FILE:KEY=VALUE)")
        })?;
        let (file, key) = match lhs.rsplit_once(':') {
            Some((f, k)) => (Some(PathBuf::from(f)), k),
            None => (None, lhs),
        };
        let key = key.trim_start_matches("params.");
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(format!("invalid key '{lhs}' in override '{s}'"));
        }
        Ok(Override {
            file,
            key: key.to_owned(),
            value: scalar_value(rhs),
        })
    }

    /// The override as written back: `KEY` or `FILE:KEY`.
    pub fn target(&self) -> String {
        match &self.file {
            Some(f) => format!("{}:{}", f.display(), self.key),
            None => self.key.clone(),
        }
    }
}

/// A YAML scalar's value, as a params file would hold it.
pub fn scalar_value(s: &str) -> Value {
    let t = s.trim();
    if t.len() >= 2
        && ((t.starts_with('"') && t.ends_with('"')) || (t.starts_with('\'') && t.ends_with('\'')))
    {
        return Value::String(t[1..t.len() - 1].to_owned());
    }
    plain_value(t)
}

fn plain_value(t: &str) -> Value {
    match yaml::resolve_plain(t) {
        Plain::Null => Value::Null,
        Plain::Bool(b) => Value::Bool(b),
        Plain::Int(i) => Value::from(i),
        Plain::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(t.to_owned())),
        Plain::Str => Value::String(t.to_owned()),
    }
}

/// A parsed YAML node as JSON (params files have no `${…}`).
fn node_value(n: &Node) -> Value {
    match &n.kind {
        Kind::Scalar { text, plain: true } => plain_value(text),
        Kind::Scalar { text, plain: false } => Value::String(text.clone()),
        Kind::Seq(items) => Value::Array(items.iter().map(node_value).collect()),
        Kind::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.scalar_text().unwrap_or_default().to_owned(),
                        node_value(v),
                    )
                })
                .collect(),
        ),
    }
}

/// Reads a params file (YAML, JSON or TOML by extension) into a JSON object.
pub fn read(root: &Path, file: &Path) -> Result<Value, String> {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("params file '{}' does not exist", file.display())
        } else {
            format!("cannot read params file '{}': {e}", file.display())
        }
    })?;
    parse(file, &text)
}

fn parse(file: &Path, text: &str) -> Result<Value, String> {
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let v = match ext {
        "json" => serde_json::from_str::<Value>(text)
            .map_err(|e| format!("params file '{}' is not valid JSON: {e}", file.display()))?,
        "toml" => {
            let t: toml::Table = text
                .parse()
                .map_err(|e| format!("params file '{}' is not valid TOML: {e}", file.display()))?;
            serde_json::to_value(t).map_err(|e| format!("params file '{}': {e}", file.display()))?
        }
        "yaml" | "yml" => {
            let (root, errors) = yaml::parse(text);
            if let Some(e) = errors.first() {
                return Err(format!(
                    "params file '{}' is not valid YAML: {}:{}: {}",
                    file.display(),
                    e.pos.line,
                    e.pos.col,
                    e.message
                ));
            }
            root.as_ref()
                .map(node_value)
                .unwrap_or(Value::Object(Map::new()))
        }
        _ => {
            return Err(format!(
                "params file '{}' has an unknown format (expected .yaml, .yml, .json or .toml)",
                file.display()
            ));
        }
    };
    if !v.is_object() {
        return Err(format!(
            "params file '{}' does not hold a mapping at the top",
            file.display()
        ));
    }
    Ok(v)
}

/// The value at dotted `key` of `doc`.
pub fn get<'v>(doc: &'v Value, key: &str) -> Option<&'v Value> {
    key.split('.').try_fold(doc, |v, k| v.as_object()?.get(k))
}

/// Sets dotted `key` of `doc` to `value`, creating mappings on the way.
pub fn set(doc: &mut Value, key: &str, value: Value) {
    let mut v = doc;
    for k in key.split('.') {
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
        v = v
            .as_object_mut()
            .expect("made an object above")
            .entry(k.to_owned())
            .or_insert(Value::Null);
    }
    *v = value;
}

/// Params files of one load: each read once, with the overrides that target it applied.
pub(crate) struct ParamFiles {
    root: PathBuf,
    /// Overrides by file (already decided: inline ones are not here).
    overrides: RefCell<BTreeMap<PathBuf, Vec<(String, Value)>>>,
    files: RefCell<BTreeMap<PathBuf, Result<Value, String>>>,
    /// Overrides of keys their file does not have.
    override_errors: RefCell<Vec<String>>,
    /// Every `(file, key)` a stage used, with its effective value.
    used: RefCell<BTreeMap<(PathBuf, String), Value>>,
}

impl ParamFiles {
    pub(crate) fn new(root: &Path) -> Self {
        ParamFiles {
            root: root.to_path_buf(),
            overrides: RefCell::new(BTreeMap::new()),
            files: RefCell::new(BTreeMap::new()),
            override_errors: RefCell::new(Vec::new()),
            used: RefCell::new(BTreeMap::new()),
        }
    }

    /// Before any lookup: a file already read would not see it.
    pub(crate) fn add_override(&self, file: PathBuf, key: String, value: Value) {
        self.overrides
            .borrow_mut()
            .entry(file)
            .or_default()
            .push((key, value));
    }

    pub(crate) fn overridden_files(&self) -> Vec<PathBuf> {
        self.overrides.borrow().keys().cloned().collect()
    }

    fn with_file<T>(&self, file: &Path, f: impl FnOnce(&Value) -> T) -> Result<T, String> {
        let mut files = self.files.borrow_mut();
        let entry = files.entry(file.to_path_buf()).or_insert_with(|| {
            let mut doc = read(&self.root, file)?;
            for (k, v) in self.overrides.borrow().get(file).into_iter().flatten() {
                if get(&doc, k).is_none() {
                    // Said once (by `check`); the file's other values still serve lookups.
                    self.override_errors.borrow_mut().push(format!(
                        "override '{}:{k}': params file '{}' has no key '{k}'",
                        file.display(),
                        file.display()
                    ));
                    continue;
                }
                set(&mut doc, k, v.clone());
            }
            Ok(doc)
        });
        match entry {
            Ok(doc) => Ok(f(doc)),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether `file` is there (a file, under the project root).
    pub(crate) fn exists(&self, file: &Path) -> bool {
        self.root.join(file).is_file()
    }

    /// Checks that the file reads and that its overrides apply.
    pub(crate) fn check(&self, file: &Path) -> Result<(), String> {
        self.with_file(file, |_| ())?;
        let errs = self.override_errors.borrow();
        match errs.is_empty() {
            true => Ok(()),
            false => Err(errs.join("; ")),
        }
    }

    pub(crate) fn clear_override_errors(&self) {
        self.override_errors.borrow_mut().clear();
    }

    /// The value of `key` in `file`, recorded as used.
    pub(crate) fn lookup(&self, file: &Path, key: &str) -> Result<Value, String> {
        let v = self.with_file(file, |d| get(d, key).cloned())?;
        match v {
            Some(v) => {
                self.used
                    .borrow_mut()
                    .insert((file.to_path_buf(), key.to_owned()), v.clone());
                Ok(v)
            }
            None => {
                // The deepest part of the key that exists, and what it holds instead.
                let segs: Vec<&str> = key.split('.').collect();
                let (have, missing, keys) = self
                    .with_file(file, |d| {
                        let mut v = d;
                        let mut i = 0;
                        while i < segs.len() {
                            match v.as_object().and_then(|o| o.get(segs[i])) {
                                Some(n) => v = n,
                                None => break,
                            }
                            i += 1;
                        }
                        let keys: Vec<String> = v
                            .as_object()
                            .map(|o| o.keys().cloned().collect())
                            .unwrap_or_default();
                        (
                            segs[..i].join("."),
                            segs.get(i).copied().unwrap_or(""),
                            keys,
                        )
                    })
                    .unwrap_or_default();
                let hint = super::error::did_you_mean(missing, keys.iter().map(String::as_str))
                    .map(|s| format!("; did you mean '{s}'?"))
                    .unwrap_or_default();
                let place = if have.is_empty() {
                    "top-level keys".to_owned()
                } else {
                    format!("keys of '{have}'")
                };
                Err(format!(
                    "params file '{}' has no key '{key}' ({place}: {}{hint})",
                    file.display(),
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    }
                ))
            }
        }
    }

    /// Every used key's effective value, merged into one document shaped like the params
    /// files (what `TSUMUGI_PARAMS` points to), and per file.
    pub(crate) fn used(&self) -> BTreeMap<PathBuf, Value> {
        let mut out: BTreeMap<PathBuf, Value> = BTreeMap::new();
        for ((file, key), v) in self.used.borrow().iter() {
            let doc = out
                .entry(file.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            set(doc, key, v.clone());
        }
        out
    }
}

/// Deep-merges `src` into `dst` (mappings merged key by key, anything else replaced).
pub fn merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                merge(d.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (d, s) => *d = s.clone(),
    }
}

/// A JSON value as block-style YAML.
pub fn to_yaml(v: &Value) -> String {
    emit_yaml(v, 0)
}

/// The fingerprint key of a file param: `params.yaml:train.n_est`.
pub fn param_key(file: &Path, key: &str) -> String {
    format!("{}:{key}", file.display())
}

/// Splits a stage's params key into (file, key); `None` for an inline param.
pub fn split_key(k: &str) -> Option<(PathBuf, &str)> {
    k.split_once(':').map(|(f, k)| (PathBuf::from(f), k))
}

/// Writes `values` (dotted key → value) into the params file `file`, atomically, keeping
/// its other keys. YAML files are edited in place where the old value is a scalar (so
/// comments and layout stay); otherwise (and for JSON and TOML) the file is written anew
/// from its parsed content, which loses YAML/TOML comments; with `rewrite` false (a
/// pipeline file) that is an error instead.
pub fn write_back(
    root: &Path,
    file: &Path,
    values: &[(String, Value)],
    rewrite: bool,
) -> anyhow::Result<()> {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read params file '{}': {e}", file.display()))?;
    let mut doc = parse(file, &text).map_err(anyhow::Error::msg)?;
    for (k, v) in values {
        set(&mut doc, k, v.clone());
    }
    let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
    let out = match ext {
        "json" => serde_json::to_string_pretty(&doc)? + "\n",
        "toml" => toml::to_string_pretty(&doc)?,
        _ => match splice_yaml(file, &text, values) {
            Some(t) => t,
            None if rewrite => emit_yaml(&doc, 0),
            None => anyhow::bail!(
                "cannot edit {} in place (a key is missing or not a plain value there)",
                file.display()
            ),
        },
    };
    tsumugi_base::atomic::write_atomic(&path, out.as_bytes())
}

/// Replaces the scalar text of each key in place; `None` if a key is not a scalar there
/// or the result would not read back as intended.
fn splice_yaml(file: &Path, text: &str, values: &[(String, Value)]) -> Option<String> {
    let (root, errors) = yaml::parse(text);
    if !errors.is_empty() {
        return None;
    }
    let root = root?;
    // (start, end) in characters, with the new text; applied from the back.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (k, v) in values {
        let mut n = &root;
        for seg in k.split('.') {
            let Kind::Map(entries) = &n.kind else {
                return None;
            };
            n = &entries
                .iter()
                .find(|(key, _)| key.scalar_text() == Some(seg))?
                .1;
        }
        if !matches!(n.kind, Kind::Scalar { .. }) || v.is_object() || v.is_array() {
            return None;
        }
        edits.push((n.pos.index, n.end, yaml_scalar(v)));
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut chars: Vec<char> = text.chars().collect();
    for (s, e, new) in edits {
        if s > e || e > chars.len() {
            return None;
        }
        chars.splice(s..e, new.chars());
    }
    let out: String = chars.into_iter().collect();
    // Proof that the edit did what was meant: the new text reads back as the intended doc.
    let mut want = parse(file, text).ok()?;
    for (k, v) in values {
        set(&mut want, k, v.clone());
    }
    (parse(file, &out).ok()? == want).then_some(out)
}

/// A JSON scalar as YAML text: plain where it reads back as itself, else double-quoted.
fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain_ok = !s.is_empty()
                && plain_value(s) == Value::String(s.clone())
                && !s.contains([
                    ':', '#', '\'', '"', '{', '}', '[', ']', ',', '&', '*', '!', '|', '>', '%',
                    '@', '`', '\n',
                ])
                && !s.starts_with(['-', '?', ' '])
                && !s.ends_with(' ');
            if plain_ok {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Block-style YAML of a JSON value (for files that cannot be edited in place).
fn emit_yaml(v: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = yaml_scalar(&Value::String(k.clone()));
                match v {
                    Value::Object(o) if !o.is_empty() => {
                        out += &format!("{pad}{key}:\n{}", emit_yaml(v, indent + 2))
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out += &format!("{pad}{key}:\n{}", emit_yaml(v, indent + 2))
                    }
                    _ => out += &format!("{pad}{key}: {}\n", inline_yaml(v)),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for it in a {
                out += &format!("{pad}- {}\n", inline_yaml(it));
            }
        }
        other => out += &format!("{pad}{}\n", inline_yaml(other)),
    }
    out
}

/// Flow-style YAML (JSON is valid flow YAML; scalars plain where possible).
fn inline_yaml(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => v.to_string(),
        s => yaml_scalar(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_parse_as_yaml_scalars() {
        let o = Override::parse("train.lr=3e-4").unwrap();
        assert_eq!(
            (o.file, o.key.as_str(), o.value),
            (None, "train.lr", json!(3e-4))
        );
        let o = Override::parse("other.toml:a.b=x").unwrap();
        assert_eq!(o.file, Some(PathBuf::from("other.toml")));
        assert_eq!(o.value, json!("x"));
        assert_eq!(Override::parse("n='16'").unwrap().value, json!("16"));
        assert_eq!(Override::parse("n=16").unwrap().value, json!(16));
        assert!(Override::parse("n").is_err());
        assert!(Override::parse("a..b=1").is_err());
    }

    #[test]
    fn yaml_write_back_keeps_comments_and_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let text = "# top\ntrain:\n  lr: 0.001  # the learning rate\n  seed: 13\nname: demo\n";
        std::fs::write(dir.path().join("params.yaml"), text).unwrap();
        write_back(
            dir.path(),
            Path::new("params.yaml"),
            &[
                ("train.lr".into(), json!(0.0003)),
                ("name".into(), json!("a: b")),
            ],
            true,
        )
        .unwrap();
        let out = std::fs::read_to_string(dir.path().join("params.yaml")).unwrap();
        assert_eq!(
            out,
            "# top\ntrain:\n  lr: 0.0003  # the learning rate\n  seed: 13\nname: \"a: b\"\n"
        );
    }

    #[test]
    fn json_and_toml_write_back_keep_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.json"), r#"{"a": {"b": 1, "c": 2}}"#).unwrap();
        std::fs::write(dir.path().join("p.toml"), "x = 1\n[t]\ny = \"s\"\n").unwrap();
        write_back(
            dir.path(),
            Path::new("p.json"),
            &[("a.b".into(), json!(5))],
            true,
        )
        .unwrap();
        write_back(
            dir.path(),
            Path::new("p.toml"),
            &[("t.y".into(), json!("z"))],
            true,
        )
        .unwrap();
        let j = read(dir.path(), Path::new("p.json")).unwrap();
        assert_eq!(j, json!({"a": {"b": 5, "c": 2}}));
        let t = read(dir.path(), Path::new("p.toml")).unwrap();
        assert_eq!(t, json!({"x": 1, "t": {"y": "z"}}));
    }

    #[test]
    fn a_yaml_file_that_cannot_be_spliced_is_rewritten_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("params.yaml"), "a: {b: [1, 2]}\nc: 3\n").unwrap();
        write_back(
            dir.path(),
            Path::new("params.yaml"),
            &[("a.b".into(), json!(7))],
            true,
        )
        .unwrap();
        let v = read(dir.path(), Path::new("params.yaml")).unwrap();
        assert_eq!(v, json!({"a": {"b": 7}, "c": 3}));
    }
}
