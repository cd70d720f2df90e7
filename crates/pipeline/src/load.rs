//! YAML nodes → validated [`Pipeline`]. Collects every error it can instead of stopping at
//! the first; a part that failed is left out so later checks do not pile up echoes of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};
use tsumugi_stages::KindInfo;

use super::error::{Diagnostic, SpecError, did_you_mean};
use super::format::{self, Keys};
use super::interp::{self, Ref, Seg};
use super::model::*;
use super::params_file::{self, Override, ParamFiles};
use super::yaml::{self, Kind, Node, Plain, Pos};
use tsumugi_base::project::Project;

/// Reads and validates a pipeline file. A relative `file` is taken relative to the project
/// root (as `-C DIR` means "run in DIR"); messages name `file` as given.
pub fn load(file: &Path, project: &Project) -> Result<Pipeline, SpecError> {
    load_with_overrides(file, project, &[])
}

/// [`load`] on text already in memory; `file` is used for messages and the default name.
pub fn load_str(file: &Path, text: &str, project: &Project) -> Result<Pipeline, SpecError> {
    load_str_with_kinds(file, text, project, tsumugi_stages::kinds())
}

/// [`load_str`] against a given list of built-in kinds instead of this build's, so that
/// the `uses:` path can be tested before (and independently of) the real kinds.
pub fn load_str_with_kinds(
    file: &Path,
    text: &str,
    project: &Project,
    kinds: &'static [KindInfo],
) -> Result<Pipeline, SpecError> {
    load_inner(file, text, project, kinds, &[])
}

/// [`load`] with `-S KEY=VALUE` overrides (`tsumugi exp run`): each replaces a value as the
/// pipeline and its params files are read; no file is edited. A `KEY` whose first segment
/// is an inline param overrides that param, any other `KEY` a key of `params.yaml`, and
/// `FILE:KEY` a key of `FILE`. An override of a key that does not exist is an error.
pub fn load_with_overrides(
    file: &Path,
    project: &Project,
    overrides: &[Override],
) -> Result<Pipeline, SpecError> {
    let text = std::fs::read_to_string(project.root().join(file)).map_err(|e| {
        SpecError::single(
            Span {
                file: file.to_path_buf(),
                line: 0,
                col: 0,
            },
            format!("cannot read pipeline file: {e}"),
        )
    })?;
    load_inner(file, &text, project, tsumugi_stages::kinds(), overrides)
}

fn load_inner(
    file: &Path,
    text: &str,
    project: &Project,
    kinds: &'static [KindInfo],
    overrides: &[Override],
) -> Result<Pipeline, SpecError> {
    let files = ParamFiles::new(project.root());
    let mut cx = Cx::new(file, text, project.root(), kinds, &files);
    cx.overrides = overrides.to_vec();
    let (root, yaml_errors) = yaml::parse(text);
    for e in yaml_errors {
        cx.err(e.pos, e.message);
    }
    let pipeline = match &root {
        Some(root) if cx.errors.is_empty() => cx.pipeline(root, project),
        Some(_) => None,
        None => {
            if cx.errors.is_empty() {
                cx.err(
                    Pos {
                        line: 1,
                        col: 1,
                        index: 0,
                    },
                    "empty pipeline file (expected a mapping with 'stages')",
                );
            }
            None
        }
    };
    match pipeline {
        Some(p) if cx.errors.is_empty() => Ok(p),
        _ => Err(SpecError::new(cx.errors)),
    }
}

/// Outputs of a built-in kind placed in `dir`: (outs by key, metrics as (key, path)).
/// The kind's metrics output goes to `metrics`, not `outs`: each path is listed once.
pub fn builtin_outputs(
    kind: &KindInfo,
    dir: &Path,
) -> (BTreeMap<String, Out>, Vec<(String, PathBuf)>) {
    let mut outs = BTreeMap::new();
    let mut metrics = Vec::new();
    for (key, file) in kind.outputs {
        let path = dir.join(file);
        if kind.metrics == Some(*key) {
            metrics.push((key.to_string(), path));
        } else {
            outs.insert(
                key.to_string(),
                Out {
                    path,
                    cache: true,
                    persist: false,
                },
            );
        }
    }
    (outs, metrics)
}

/// The input paths named by a built-in kind's `with:` (its `input_fields`), after
/// interpolation: a field holds a path or a list of paths. Err: (field, what was found).
pub fn builtin_inputs(
    kind: &KindInfo,
    with: &Value,
) -> Result<Vec<(String, BuiltinInput)>, (String, String)> {
    let mut found = Vec::new();
    let Some(obj) = with.as_object() else {
        return Ok(found);
    };
    for field in kind.input_fields {
        match obj.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                found.push((field.to_string(), BuiltinInput::Path(s.clone())))
            }
            Some(Value::Array(items)) => {
                for it in items {
                    match it {
                        Value::String(s) => {
                            found.push((field.to_string(), BuiltinInput::Path(s.clone())))
                        }
                        other => return Err((field.to_string(), json_type(other).to_string())),
                    }
                }
            }
            Some(v @ Value::Object(_)) => match sqlite_input(v) {
                Some(input) => found.push((field.to_string(), input)),
                None => return Err((field.to_string(), json_type(v).to_string())),
            },
            Some(other) => return Err((field.to_string(), json_type(other).to_string())),
        }
    }
    Ok(found)
}

/// An input named in a built-in stage's `with:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltinInput {
    /// A file or directory.
    Path(String),
    /// `{sqlite: {db: PATH, query: SELECT …}}`: hashed by the rows the query returns, so
    /// the stage re-runs when those rows change and not when other tables do.
    Sqlite { db: String, query: String },
}

fn sqlite_input(v: &Value) -> Option<BuiltinInput> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    let inner = obj.get("sqlite")?.as_object()?;
    if inner.keys().any(|k| k != "db" && k != "query") {
        return None;
    }
    let db = inner.get("db")?.as_str()?.to_owned();
    let query = inner.get("query")?.as_str()?.to_owned();
    (!query.trim().is_empty()).then_some(BuiltinInput::Sqlite { db, query })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

use tsumugi_base::duration::{HINT as DURATION_HINT, parse as parse_duration};

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !s.starts_with('.')
        && !s.starts_with('-')
}

/// A stage after `foreach`/`matrix` expansion, before resolution.
struct Inst<'n> {
    name: String,
    pos: Pos,
    fields: HashMap<String, (&'n Node, &'n Node)>,
    item: Option<Value>,
    key: Option<Value>,
}

impl<'n> Inst<'n> {
    fn get(&self, k: &str) -> Option<&'n Node> {
        self.fields.get(k).map(|(_, v)| *v)
    }
    fn key_pos(&self, k: &str) -> Option<Pos> {
        self.fields.get(k).map(|(k, _)| k.pos)
    }
}

/// A stage's outputs, known before anything refers to them.
#[derive(Default)]
struct Outputs {
    /// Params referenced in `outs`/`metrics`: they are params of the stage too.
    used_params: BTreeSet<String>,
    outs: BTreeMap<String, (Out, Pos)>,
    metrics: Vec<(String, PathBuf, Pos)>,
    kind: Option<&'static KindInfo>,
}

impl Outputs {
    fn lookup(&self, key: &str) -> Option<&Path> {
        self.outs
            .get(key)
            .map(|(o, _)| o.path.as_path())
            .or_else(|| {
                self.metrics
                    .iter()
                    .find(|(k, _, _)| k == key)
                    .map(|(_, p, _)| p.as_path())
            })
            .or_else(|| {
                // A list-form output keyed `./out/a.txt` is also found as `out/a.txt`.
                let want = norm_path(key).ok()?;
                self.outs
                    .values()
                    .map(|(o, _)| o.path.as_path())
                    .chain(self.metrics.iter().map(|(_, p, _)| p.as_path()))
                    .find(|p| *p == want)
            })
    }
    fn keys(&self) -> Vec<&str> {
        self.outs
            .keys()
            .map(String::as_str)
            .chain(self.metrics.iter().map(|(k, _, _)| k.as_str()))
            .collect()
    }
}

/// Where `${…}` look things up, and what they used.
struct Scope<'a> {
    params: &'a Map<String, Value>,
    item: Option<&'a Value>,
    key: Option<&'a Value>,
    /// None where stage outputs cannot be referenced (params, outs, foreach, triggers).
    outputs: Option<&'a HashMap<String, Outputs>>,
    bases: Option<&'a BTreeMap<String, Vec<String>>>,
    /// Why `outputs` is None, for the message.
    no_outputs_reason: &'a str,
    used_params: BTreeSet<String>,
    stage_refs: Vec<(String, PathBuf)>,
    /// In a `map:` stage: `${item.*}` stays as written (filled per item at run time); the
    /// fields allowed, or an empty list for any field (JSONL rows).
    map_item: Option<&'static [&'static str]>,
    /// Params files, where `${params.…}` looks after the inline params (None where only
    /// inline params may be used: `params:` itself, foreach, matrix, triggers).
    files: Option<&'a ParamFiles>,
}

impl<'a> Scope<'a> {
    fn params_only(params: &'a Map<String, Value>, reason: &'a str) -> Self {
        Scope {
            params,
            item: None,
            key: None,
            outputs: None,
            bases: None,
            no_outputs_reason: reason,
            used_params: BTreeSet::new(),
            stage_refs: Vec::new(),
            map_item: None,
            files: None,
        }
    }

    /// `FILE:KEY` of a stage's `params:` list.
    fn lookup_file(&mut self, file: &Path, key: &str) -> Result<Value, String> {
        let Some(files) = self.files else {
            return Err(format!(
                "params files cannot be used in {}",
                self.no_outputs_reason
            ));
        };
        let v = files.lookup(file, key)?;
        self.used_params.insert(params_file::param_key(file, key));
        Ok(v)
    }

    fn lookup(&mut self, r: &Ref) -> Result<Value, String> {
        match r {
            Ref::Param(path) => {
                if let Some(v) = index_path(self.params, path) {
                    self.used_params.insert(path.join("."));
                    return Ok(v.clone());
                }
                // Not an inline param: DVC's default params file, if the name is not
                // an inline param's (a missing field of one is not looked up elsewhere).
                // Without a params.yaml the message is about inline params only.
                match self.files {
                    Some(f)
                        if !self.params.contains_key(&path[0])
                            && f.exists(Path::new(params_file::DEFAULT_FILE)) =>
                    {
                        let file = Path::new(params_file::DEFAULT_FILE);
                        self.lookup_file(file, &path.join("."))
                            .map_err(|e| format!("{}; {e}", unknown_param(self.params, path)))
                    }
                    _ => Err(unknown_param(self.params, path)),
                }
            }
            Ref::Item(path) if self.map_item.is_some() => {
                let allowed = self.map_item.unwrap_or_default();
                match path.first() {
                    None => Err(format!(
                        "use a field of the item in a 'map' stage: ${{item.FIELD}} ({})",
                        allowed.join(", ")
                    )),
                    Some(f) if !allowed.is_empty() && !allowed.contains(&f.as_str()) => Err(
                        format!("item has no field '{f}' (fields: {})", allowed.join(", ")),
                    ),
                    Some(_) => Ok(Value::String(format!("${{item.{}}}", path.join(".")))),
                }
            }
            Ref::Item(path) => {
                let Some(item) = self.item else {
                    return Err(
                        "${item} is only defined in stages with 'foreach' or 'matrix'".into(),
                    );
                };
                let mut v = item;
                for (i, p) in path.iter().enumerate() {
                    v = v.as_object().and_then(|o| o.get(p)).ok_or_else(|| {
                        let have = v
                            .as_object()
                            .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "));
                        match have {
                            Some(h) => format!(
                                "item has no field '{}' (fields: {h})",
                                path[..=i].join(".")
                            ),
                            None => format!(
                                "item is {}, it has no field '{}'",
                                json_type(v),
                                path[..=i].join(".")
                            ),
                        }
                    })?;
                }
                Ok(v.clone())
            }
            Ref::Key => self
                .key
                .cloned()
                .ok_or_else(|| "${key} is only defined in stages with 'foreach'".to_string()),
            Ref::StageOut { stage, key } => {
                let Some(outputs) = self.outputs else {
                    return Err(format!(
                        "${{stages.…}} cannot be used in {}",
                        self.no_outputs_reason
                    ));
                };
                let Some(o) = outputs.get(stage) else {
                    if let Some(exp) = self.bases.and_then(|b| b.get(stage)) {
                        return Err(format!(
                            "stage '{stage}' is expanded by foreach/matrix; refer to one of: {}",
                            exp.join(", ")
                        ));
                    }
                    let mut names: Vec<&str> = outputs.keys().map(String::as_str).collect();
                    names.sort();
                    let hint = did_you_mean(stage, names.iter().copied())
                        .map(|s| format!("; did you mean '{s}'?"))
                        .unwrap_or_default();
                    return Err(format!(
                        "unknown stage '{stage}' in '${{{}}}' (stages: {}{hint})",
                        r.display(),
                        names.join(", ")
                    ));
                };
                let Some(p) = o.lookup(key) else {
                    let keys = o.keys();
                    let hint = did_you_mean(key, keys.iter().copied())
                        .map(|s| format!("; did you mean '{s}'?"))
                        .unwrap_or_default();
                    return Err(format!(
                        "stage '{stage}' has no output '{key}' (outputs: {}{hint})",
                        keys.join(", ")
                    ));
                };
                self.stage_refs.push((stage.clone(), p.to_path_buf()));
                Ok(Value::String(path_str(p)))
            }
        }
    }
}

fn index_path<'v>(params: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let mut v = params.get(&path[0])?;
    for p in &path[1..] {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn unknown_param(params: &Map<String, Value>, path: &[String]) -> String {
    let full = path.join(".");
    if params.contains_key(&path[0]) {
        return format!(
            "unknown parameter 'params.{full}' ('{}' has no field '{}')",
            path[0],
            path[1..].join(".")
        );
    }
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    let hint = did_you_mean(&path[0], names.iter().copied())
        .map(|s| format!("; did you mean '{s}'?"))
        .unwrap_or_default();
    if names.is_empty() {
        format!("unknown parameter 'params.{full}' (the pipeline has no params)")
    } else {
        format!(
            "unknown parameter 'params.{full}' (params: {}{hint})",
            names.join(", ")
        )
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A path as written → normalised, relative to the root. Err: why not.
fn norm_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    let p = Path::new(s);
    if p.is_absolute() {
        return Err(format!(
            "absolute path '{s}' (paths are relative to the project root)"
        ));
    }
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(format!("path '{s}' leads outside the project root"));
                }
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "absolute path '{s}' (paths are relative to the project root)"
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("path '{s}' is the project root itself"));
    }
    Ok(out.iter().collect())
}

struct Cx<'a> {
    file: &'a Path,
    src: Vec<char>,
    line_starts: Vec<usize>,
    root: &'a Path,
    kinds: &'static [KindInfo],
    errors: Vec<Diagnostic>,
    /// `register:` names seen so far: (registry name, stage, where), for duplicates.
    registered: Vec<(String, String, Pos)>,
    /// What `${…}` references have expanded to so far, against the file's limit.
    expansion: interp::Budget,
    /// A value went over a limit of `interp` (reported once: the values made from it would
    /// each go over again).
    over_limit: bool,
    /// The pipeline's `executor:` and `slurm:`, which every stage starts from.
    pipeline_exec: StageExecutor,
    /// Params files read by this load (each once), with their overrides.
    files: &'a ParamFiles,
    /// `-S` overrides as given; the inline ones apply while `params:` resolves.
    overrides: Vec<Override>,
}

impl<'a> Cx<'a> {
    fn new(
        file: &'a Path,
        text: &str,
        root: &'a Path,
        kinds: &'static [KindInfo],
        files: &'a ParamFiles,
    ) -> Self {
        let src: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        line_starts.extend(
            src.iter()
                .enumerate()
                .filter(|(_, c)| **c == '\n')
                .map(|(i, _)| i + 1),
        );
        Cx {
            file,
            src,
            line_starts,
            root,
            kinds,
            errors: Vec::new(),
            registered: Vec::new(),
            expansion: interp::Budget::default(),
            over_limit: false,
            pipeline_exec: StageExecutor::default(),
            files,
            overrides: Vec::new(),
        }
    }

    /// `executor: local|slurm`.
    fn executor_kind(&mut self, node: &Node, what: &str) -> Option<ExecutorKind> {
        match node.as_str() {
            Some(s) => match ExecutorKind::parse(s) {
                Some(k) => Some(k),
                None => {
                    self.err(
                        node.pos,
                        format!("invalid executor '{s}' for {what} (expected local or slurm)"),
                    );
                    None
                }
            },
            None => {
                self.err(
                    node.pos,
                    format!(
                        "expected a string (local or slurm) for {what}, found {}",
                        node.type_name()
                    ),
                );
                None
            }
        }
    }

    /// `slurm: {partition, account, qos, extra}` over `base`, key by key.
    fn slurm_settings(&mut self, node: &Node, base: &SlurmSettings, what: &str) -> SlurmSettings {
        let mut out = base.clone();
        let block = format!("'slurm' of {what}");
        let Some(entries) = self.expect_map(node, &block) else {
            return out;
        };
        self.check_keys(entries, format::SLURM, &block);
        for (k, v) in entries {
            let key = k.scalar_text().unwrap_or_default();
            let item = format!("'slurm.{key}' of {what}");
            let slot = match key {
                "partition" => &mut out.partition,
                "account" => &mut out.account,
                "qos" => &mut out.qos,
                "extra" => {
                    if let Some(items) = self.expect_list(v, &item) {
                        let mut extra = Vec::new();
                        for it in items {
                            match it.as_str() {
                                Some(s) => extra.push(s.to_owned()),
                                None => self.err(
                                    it.pos,
                                    format!(
                                        "expected a string in {item}, found {}",
                                        it.type_name()
                                    ),
                                ),
                            }
                        }
                        out.extra = extra;
                    }
                    continue;
                }
                _ => continue,
            };
            match v.as_str() {
                Some(s) if !s.is_empty() => *slot = Some(s.to_owned()),
                _ => self.err(
                    v.pos,
                    format!(
                        "expected a non-empty string for {item}, found {}",
                        v.type_name()
                    ),
                ),
            }
        }
        out
    }

    fn span(&self, pos: Pos) -> Span {
        Span {
            file: self.file.to_path_buf(),
            line: pos.line,
            col: pos.col,
        }
    }

    fn err(&mut self, pos: Pos, msg: impl Into<String>) {
        let span = self.span(pos);
        self.errors.push(Diagnostic {
            span,
            message: msg.into(),
        });
    }

    fn pos_at(&self, index: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= index).max(1);
        Pos {
            line,
            col: index - self.line_starts[line - 1] + 1,
            index,
        }
    }

    /// Position of the `${` at `offset` (in characters) of a scalar's value, found in the
    /// source text of the node; the node's own position if it cannot be found.
    fn ref_pos(&self, node: &Node, text: &str, offset: usize) -> Pos {
        let nth = text
            .chars()
            .take(offset)
            .collect::<String>()
            .matches("${")
            .count();
        let end = node.end.min(self.src.len());
        let start = node.pos.index.min(end);
        let slice = &self.src[start..end];
        let mut seen = 0;
        for i in 0..slice.len().saturating_sub(1) {
            if slice[i] == '$' && slice[i + 1] == '{' {
                if seen == nth {
                    return self.pos_at(start + i);
                }
                seen += 1;
            }
        }
        node.pos
    }

    fn expect_map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
        match &node.kind {
            Kind::Map(e) => Some(e),
            _ => {
                self.err(
                    node.pos,
                    format!("expected a mapping for {what}, found {}", node.type_name()),
                );
                None
            }
        }
    }

    fn expect_list<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Seq(v) => Some(v),
            _ if node.is_null() => Some(&[]),
            _ => {
                let hint = match node.scalar_text() {
                    Some(t) => format!(" (write a list: [{t}])"),
                    None => String::new(),
                };
                self.err(
                    node.pos,
                    format!(
                        "expected a list for {what}, found {}{hint}",
                        node.type_name()
                    ),
                );
                None
            }
        }
    }

    fn check_keys(&mut self, entries: &[(Node, Node)], keys: Keys, what: &str) {
        self.check_keys_except(entries, keys, what, |_| false);
    }

    /// [`Self::check_keys`], leaving alone the keys `free` accepts.
    fn check_keys_except(
        &mut self,
        entries: &[(Node, Node)],
        keys: Keys,
        what: &str,
        free: impl Fn(&str) -> bool,
    ) {
        for (k, _) in entries {
            let Some(name) = k.scalar_text() else {
                continue;
            };
            if format::names(keys).any(|n| n == name) || free(name) {
                continue;
            }
            let hint = did_you_mean(name, format::names(keys))
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            self.err(
                k.pos,
                format!(
                    "unknown key '{name}' in {what} (expected one of: {}{hint})",
                    format::list(keys)
                ),
            );
        }
    }

    /// A plain YAML node → JSON (no interpolation).
    fn to_json(&self, node: &Node) -> Value {
        match &node.kind {
            Kind::Scalar { text, plain: false } => Value::String(text.clone()),
            Kind::Scalar { text, plain: true } => match yaml::resolve_plain(text) {
                Plain::Null => Value::Null,
                Plain::Bool(b) => Value::Bool(b),
                Plain::Int(i) => Value::from(i),
                Plain::Float(f) => serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Plain::Str => Value::String(text.clone()),
            },
            Kind::Seq(items) => Value::Array(items.iter().map(|n| self.to_json(n)).collect()),
            Kind::Map(e) => Value::Object(
                e.iter()
                    .map(|(k, v)| {
                        (
                            k.scalar_text().unwrap_or_default().to_owned(),
                            self.to_json(v),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// A node → JSON with every `${…}` in its strings interpolated. None after an error.
    fn interp(&mut self, node: &Node, scope: &mut Scope<'_>) -> Option<Value> {
        self.interp_measured(node, scope).map(|(v, _)| v)
    }

    /// [`Self::interp`], and what the value took up through references. A list or mapping
    /// stops at the first member that takes it over a limit of [`interp::Measure`].
    fn interp_measured(
        &mut self,
        node: &Node,
        scope: &mut Scope<'_>,
    ) -> Option<(Value, interp::Measure)> {
        let mut m = interp::Measure::default();
        match &node.kind {
            Kind::Scalar { text, .. } => self.interp_scalar(node, text, scope),
            Kind::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for it in items {
                    match self.interp_measured(it, scope) {
                        Some((v, mv)) => {
                            m.add_member(mv);
                            out.push(v);
                        }
                        None => ok = false,
                    }
                    if let Err(e) = m.check("this list") {
                        self.over_limit(node.pos, e);
                        return None;
                    }
                }
                ok.then_some((Value::Array(out), m))
            }
            Kind::Map(e) => {
                let mut out = Map::new();
                let mut ok = true;
                for (k, v) in e {
                    match self.interp_measured(v, scope) {
                        Some((val, mv)) => {
                            m.add_member(mv);
                            out.insert(k.scalar_text().unwrap_or_default().to_owned(), val);
                        }
                        None => ok = false,
                    }
                    if let Err(e) = m.check("this mapping") {
                        self.over_limit(node.pos, e);
                        return None;
                    }
                }
                ok.then_some((Value::Object(out), m))
            }
        }
    }

    /// Reports the first value over a limit of `interp`; later ones fail silently.
    fn over_limit(&mut self, pos: Pos, message: String) {
        if !std::mem::replace(&mut self.over_limit, true) {
            self.err(pos, message);
        }
    }

    /// Charges what reference `r` expanded to against the file's budget; false (and one
    /// error, the first time) when the budget is spent.
    fn charge(&mut self, node: &Node, text: &str, offset: usize, r: &Ref, bytes: usize) -> bool {
        match self.expansion.charge(r, bytes) {
            Ok(()) => true,
            Err(interp::Overrun::First(m)) => {
                let pos = self.ref_pos(node, text, offset);
                self.over_limit(pos, m);
                false
            }
            Err(interp::Overrun::Again) => false,
        }
    }

    fn interp_scalar(
        &mut self,
        node: &Node,
        text: &str,
        scope: &mut Scope<'_>,
    ) -> Option<(Value, interp::Measure)> {
        if !text.contains("${") {
            return Some((self.to_json(node), interp::Measure::default()));
        }
        let segs = match interp::parse(text) {
            Ok(s) => s,
            Err(e) => {
                let pos = self.ref_pos(node, text, e.offset);
                self.err(pos, e.message);
                return None;
            }
        };
        // A scalar that is exactly one reference keeps the referenced value's JSON type.
        if let [Seg::Ref { r, offset }] = segs.as_slice() {
            return match scope.lookup(r) {
                Ok(v) => {
                    let m = interp::Measure::of_ref(&v);
                    if !self.charge(node, text, *offset, r, m.expanded) {
                        return None;
                    }
                    if m.expanded > interp::MAX_VALUE_BYTES {
                        let pos = self.ref_pos(node, text, *offset);
                        self.over_limit(pos, interp::too_big(r));
                        return None;
                    }
                    Some((v, m))
                }
                Err(m) => {
                    let pos = self.ref_pos(node, text, *offset);
                    self.err(pos, m);
                    None
                }
            };
        }
        let mut out = String::new();
        let mut ok = true;
        for s in &segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Ref { r, offset } => match scope.lookup(r).map(|v| interp::stringify(&v)) {
                    Ok(Ok(s)) => {
                        if !self.charge(node, text, *offset, r, s.len()) {
                            return None;
                        }
                        out.push_str(&s);
                        // Checked piece by piece: a string of many large references stops
                        // at the first one past the limit, before it grows any further.
                        if out.len() > interp::MAX_VALUE_BYTES {
                            let pos = self.ref_pos(node, text, *offset);
                            self.over_limit(pos, interp::too_big(r));
                            return None;
                        }
                    }
                    Ok(Err(ty)) => {
                        let pos = self.ref_pos(node, text, *offset);
                        self.err(
                            pos,
                            format!(
                                "'${{{}}}' is {ty}; only a reference that is the whole value can stand for a list or mapping",
                                r.display()
                            ),
                        );
                        ok = false;
                    }
                    Err(m) => {
                        let pos = self.ref_pos(node, text, *offset);
                        self.err(pos, m);
                        ok = false;
                    }
                },
            }
        }
        let m = interp::Measure {
            expanded: out.len(),
            height: 0,
        };
        ok.then_some((Value::String(out), m))
    }

    /// Interpolates a node that must be a string (numbers are accepted as their text).
    fn interp_string(&mut self, node: &Node, what: &str, scope: &mut Scope<'_>) -> Option<String> {
        if !matches!(node.kind, Kind::Scalar { .. }) || node.is_null() {
            self.err(
                node.pos,
                format!("expected a string for {what}, found {}", node.type_name()),
            );
            return None;
        }
        match self.interp(node, scope)? {
            Value::String(s) => Some(s),
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            v => {
                self.err(
                    node.pos,
                    format!("expected a string for {what}, found {}", json_type(&v)),
                );
                None
            }
        }
    }

    fn interp_path(
        &mut self,
        node: &Node,
        what: &str,
        scope: &mut Scope<'_>,
    ) -> Option<(String, PathBuf)> {
        let s = self.interp_string(node, what, scope)?;
        match norm_path(&s) {
            Ok(p) => Some((s, p)),
            Err(m) => {
                self.err(node.pos, format!("{m} in {what}"));
                None
            }
        }
    }

    fn pipeline(&mut self, root: &Node, project: &Project) -> Option<Pipeline> {
        let top = self.expect_map(root, "the pipeline (keys: name, params, stages, triggers)")?;
        // `x-…` keys are free for the user: a place for YAML anchors shared by stages.
        self.check_keys_except(top, format::TOP, "the pipeline", |k| k.starts_with("x-"));
        let get = |k: &str| top.iter().find(|(key, _)| key.scalar_text() == Some(k));

        let stem = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into());
        let name = match get("name") {
            None => stem,
            Some((_, n)) => match n.as_str() {
                Some(s) if name_ok(s) => s.to_owned(),
                Some(s) => {
                    self.err(n.pos, format!("invalid pipeline name '{s}' (expected letters, digits, '_', '-' or '.')"));
                    stem
                }
                None => {
                    self.err(
                        n.pos,
                        format!("expected a string for 'name', found {}", n.type_name()),
                    );
                    stem
                }
            },
        };

        let inline_names: BTreeSet<String> = match get("params") {
            Some((_, p)) => match &p.kind {
                Kind::Map(e) => e
                    .iter()
                    .filter_map(|(k, _)| k.scalar_text().map(str::to_owned))
                    .collect(),
                _ => BTreeSet::new(),
            },
            None => BTreeSet::new(),
        };
        self.route_overrides(root.pos, &inline_names);
        let params = match get("params") {
            None => Map::new(),
            Some((_, p)) => self.params(p),
        };

        if let Some((_, e)) = get("executor") {
            self.pipeline_exec.pipeline = self.executor_kind(e, "the pipeline's 'executor'");
        }
        if let Some((_, sl)) = get("slurm") {
            self.pipeline_exec.slurm =
                self.slurm_settings(sl, &SlurmSettings::default(), "the pipeline");
        }

        let stages = match get("stages") {
            Some((_, s)) => self.stages(s, &params, &name, project),
            None => {
                self.err(root.pos, "missing key 'stages' in the pipeline (expected a mapping of stage names to stages)");
                Vec::new()
            }
        };

        let triggers = match get("triggers") {
            None => Vec::new(),
            Some((_, t)) => self.triggers(t, &params),
        };

        Some(Pipeline {
            name,
            file: self.file.to_path_buf(),
            params: params.into_iter().collect(),
            param_files: self.files.used(),
            stages,
            triggers,
        })
    }

    /// Sends each file override to its params file (read and checked now, so that a typo
    /// is an error even when no stage lists the key); inline ones stay for [`Self::params`].
    fn route_overrides(&mut self, pos: Pos, inline: &BTreeSet<String>) {
        let mut keep = Vec::new();
        for o in std::mem::take(&mut self.overrides) {
            let first = o.key.split('.').next().unwrap_or_default();
            match &o.file {
                None if inline.contains(first) => keep.push(o),
                f => {
                    let file = f
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(params_file::DEFAULT_FILE));
                    self.files
                        .add_override(file, o.key.clone(), o.value.clone());
                }
            }
        }
        for f in self.files.overridden_files() {
            if let Err(e) = self.files.check(&f) {
                self.err(pos, format!("cannot apply -S: {e}"));
                // Errors of the next file's overrides are new ones only.
                self.files.clear_override_errors();
            }
        }
        self.overrides = keep;
    }

    /// Applies the inline overrides of param `name` to its resolved value.
    fn override_param(&mut self, pos: Pos, name: &str, value: &mut Value) {
        let mine: Vec<Override> = self
            .overrides
            .iter()
            .filter(|o| o.key.split('.').next() == Some(name))
            .cloned()
            .collect();
        for o in mine {
            match o.key.split_once('.') {
                None => *value = o.value.clone(),
                Some((_, rest)) => {
                    if params_file::get(value, rest).is_none() {
                        self.err(
                            pos,
                            format!(
                                "cannot apply -S {}: param '{name}' has no field '{rest}'",
                                o.key
                            ),
                        );
                        continue;
                    }
                    params_file::set(value, rest, o.value.clone());
                }
            }
        }
    }

    /// Params may refer to other params; they are resolved in dependency order.
    fn params(&mut self, node: &Node) -> Map<String, Value> {
        let mut resolved = Map::new();
        let Some(entries) = self.expect_map(node, "'params'") else {
            return resolved;
        };
        let mut pending: Vec<(&Node, &Node)> = entries.iter().map(|(k, v)| (k, v)).collect();
        loop {
            let before = pending.len();
            let mut still = Vec::new();
            for (k, v) in pending {
                let name = k.scalar_text().unwrap_or_default().to_owned();
                let needs = param_refs(v);
                if needs.iter().all(|n| {
                    resolved.contains_key(n)
                        || !entries.iter().any(|(k2, _)| k2.scalar_text() == Some(n))
                }) {
                    let mut scope = Scope::params_only(&resolved, "params");
                    if let Some(mut val) = self.interp(v, &mut scope) {
                        self.override_param(k.pos, &name, &mut val);
                        resolved.insert(name, val);
                    } else {
                        // Mark as resolved so dependants report their own problems only.
                        resolved.insert(name, Value::Null);
                    }
                } else {
                    still.push((k, v));
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if pending.len() == before {
                let names: Vec<&str> = pending
                    .iter()
                    .filter_map(|(k, _)| k.scalar_text())
                    .collect();
                let first = pending[0].0.pos;
                self.err(
                    first,
                    format!(
                        "params refer to each other in a cycle: {}",
                        names.join(", ")
                    ),
                );
                // Known but unresolved: references to them must not add "unknown" errors.
                for n in names {
                    resolved.insert(n.to_owned(), Value::Null);
                }
                break;
            }
        }
        // Keep file order.
        let mut ordered = Map::new();
        for (k, _) in entries {
            if let Some(name) = k.scalar_text()
                && let Some(v) = resolved.remove(name)
            {
                ordered.insert(name.to_owned(), v);
            }
        }
        ordered
    }

    fn stages(
        &mut self,
        node: &Node,
        params: &Map<String, Value>,
        pipeline: &str,
        project: &Project,
    ) -> Vec<Stage> {
        let Some(entries) = self.expect_map(node, "'stages' (a mapping of stage names to stages)")
        else {
            return Vec::new();
        };
        if entries.is_empty() {
            self.err(node.pos, "'stages' is empty (expected at least one stage)");
        }
        // 1. Expand foreach/matrix.
        let mut insts: Vec<Inst> = Vec::new();
        let mut bases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in entries {
            let Some(name) = k.scalar_text() else {
                continue;
            };
            if !name_ok(name) {
                self.err(k.pos, format!("invalid stage name '{name}' (expected letters, digits, '_', '-' or '.'; '@' is reserved for foreach)"));
                continue;
            }
            let what = format!("stage '{name}'");
            let Some(fields) = self.expect_map(v, &what) else {
                continue;
            };
            self.check_keys(fields, format::STAGE, &what);
            let fields: HashMap<String, (&Node, &Node)> = fields
                .iter()
                .filter_map(|(k, v)| Some((k.scalar_text()?.to_owned(), (k, v))))
                .collect();
            let expanded = self.expand(name, k.pos, fields, params);
            if fields_expanded(&expanded, name) {
                bases.insert(
                    name.to_owned(),
                    expanded.iter().map(|i| i.name.clone()).collect(),
                );
            }
            insts.extend(expanded);
        }
        let mut seen: HashMap<String, Pos> = HashMap::new();
        insts.retain(|i| {
            if let Some(first) = seen.get(&i.name) {
                let first = *first;
                let msg = if first == i.pos {
                    format!("'foreach'/'matrix' makes two stages named '{}' (items must give distinct names)", i.name)
                } else {
                    format!("two stages are named '{}' (the other is at line {})", i.name, first.line)
                };
                self.err(i.pos, msg);
                false
            } else {
                seen.insert(i.name.clone(), i.pos);
                true
            }
        });

        // 2. Outputs of every stage, so that references can be resolved in any order.
        let mut outputs: HashMap<String, Outputs> = HashMap::new();
        let mut reported = HashMap::new();
        for inst in &insts {
            let before = self.errors.len();
            let o = self.outputs(inst, params, pipeline, project);
            self.once_per_template(&inst.name, before, &mut reported);
            outputs.insert(inst.name.clone(), o);
        }

        // 3. Everything else.
        let mut stages = Vec::new();
        let mut entries: Vec<Linkable> = Vec::new();
        for inst in &insts {
            let before = self.errors.len();
            let (st, deps, needs) = self.stage(inst, params, &outputs, &bases);
            self.once_per_template(&inst.name, before, &mut reported);
            entries.push((inst.name.clone(), deps, needs));
            stages.extend(st);
        }

        let registered = std::mem::take(&mut self.registered);
        for (i, (reg, stage, pos)) in registered.iter().enumerate() {
            if let Some((_, first, _)) = registered[..i].iter().find(|(r, _, _)| r == reg) {
                self.err(
                    *pos,
                    format!("stage '{stage}' registers as '{reg}', as stage '{first}' does (expected one stage per registry name; set 'register.name')"),
                );
            }
        }

        let order: Vec<&str> = insts.iter().map(|i| i.name.as_str()).collect();
        self.check_outputs(&order, &outputs);
        let mut linked = self.link(&entries, &bases, &outputs);
        for st in &mut stages {
            if let Some((deps, needs)) = linked.remove(&st.name) {
                st.deps = deps;
                st.needs = needs;
            }
        }
        stages
    }

    /// An error in a `foreach`/`matrix` stage is usually the same in every expansion: keep
    /// only the first one at each place, not one per item.
    fn once_per_template(
        &mut self,
        name: &str,
        before: usize,
        reported: &mut HashMap<String, BTreeSet<(usize, usize)>>,
    ) {
        let Some((base, _)) = name.split_once('@') else {
            return;
        };
        let seen = reported.entry(base.to_owned()).or_default();
        let mut i = before;
        while i < self.errors.len() {
            let at = (self.errors[i].span.line, self.errors[i].span.col);
            if seen.contains(&at) {
                self.errors.remove(i);
            } else {
                i += 1;
            }
        }
        seen.extend(
            self.errors[before..]
                .iter()
                .map(|e| (e.span.line, e.span.col)),
        );
    }

    fn expand<'n>(
        &mut self,
        name: &str,
        pos: Pos,
        fields: HashMap<String, (&'n Node, &'n Node)>,
        params: &Map<String, Value>,
    ) -> Vec<Inst<'n>> {
        let single = |fields| {
            vec![Inst {
                name: name.to_owned(),
                pos,
                fields,
                item: None,
                key: None,
            }]
        };
        let foreach = fields.get("foreach").map(|(_, v)| *v);
        let matrix = fields.get("matrix").map(|(_, v)| *v);
        match (foreach, matrix) {
            (None, None) => single(fields),
            (Some(_), Some(m)) => {
                let kp = fields.get("matrix").map(|(k, _)| k.pos).unwrap_or(m.pos);
                self.err(
                    kp,
                    format!(
                        "stage '{name}' has both 'foreach' and 'matrix' (expected one of them)"
                    ),
                );
                Vec::new()
            }
            (Some(f), None) => {
                let mut scope = Scope::params_only(params, "'foreach'");
                let Some(v) = self.interp(f, &mut scope) else {
                    return Vec::new();
                };
                let mut items: Vec<(String, Value, Value)> = Vec::new();
                match v {
                    Value::Array(list) => {
                        for (i, it) in list.into_iter().enumerate() {
                            let suffix = match &it {
                                Value::String(s) if name_ok(s) => s.clone(),
                                Value::Number(n) => n.to_string(),
                                Value::Bool(b) => b.to_string(),
                                _ => i.to_string(),
                            };
                            items.push((suffix, it, Value::from(i)));
                        }
                    }
                    Value::Object(map) => {
                        for (k, it) in map {
                            if !name_ok(&k) {
                                self.err(f.pos, format!("foreach key '{k}' cannot be part of a stage name (expected letters, digits, '_', '-' or '.')"));
                                return Vec::new();
                            }
                            items.push((k.clone(), it, Value::String(k)));
                        }
                    }
                    other => {
                        self.err(f.pos, format!("expected a list or a mapping for 'foreach' of stage '{name}', found {}", json_type(&other)));
                        return Vec::new();
                    }
                }
                if items.is_empty() {
                    self.err(
                        f.pos,
                        format!("'foreach' of stage '{name}' is empty (it would make no stages)"),
                    );
                }
                self.make_insts(name, pos, &fields, items)
            }
            (None, Some(m)) => {
                let mut scope = Scope::params_only(params, "'matrix'");
                let Some(v) = self.interp(m, &mut scope) else {
                    return Vec::new();
                };
                let Value::Object(axes) = v else {
                    self.err(m.pos, format!("expected a mapping of axis names to lists for 'matrix' of stage '{name}', found {}", json_type(&v)));
                    return Vec::new();
                };
                if axes.is_empty() {
                    self.err(
                        m.pos,
                        format!(
                            "'matrix' of stage '{name}' is empty (expected {{AXIS: [values], …}})"
                        ),
                    );
                    return Vec::new();
                }
                let mut combos: Vec<(Vec<String>, Map<String, Value>)> =
                    vec![(Vec::new(), Map::new())];
                for (axis, values) in &axes {
                    let Value::Array(values) = values else {
                        let p = axis_pos(m, axis).unwrap_or(m.pos);
                        self.err(p, format!("expected a list for matrix axis '{axis}' of stage '{name}', found {}", json_type(values)));
                        return Vec::new();
                    };
                    if values.is_empty() {
                        let p = axis_pos(m, axis).unwrap_or(m.pos);
                        self.err(p, format!("matrix axis '{axis}' of stage '{name}' is empty (it would make no stages)"));
                        return Vec::new();
                    }
                    let mut next = Vec::new();
                    for (suffix, item) in &combos {
                        for (i, val) in values.iter().enumerate() {
                            let part = match val {
                                Value::String(s) if name_ok(s) => s.clone(),
                                Value::Number(n) => n.to_string(),
                                Value::Bool(b) => b.to_string(),
                                _ => i.to_string(),
                            };
                            let mut s = suffix.clone();
                            s.push(part);
                            let mut it = item.clone();
                            it.insert(axis.clone(), val.clone());
                            next.push((s, it));
                        }
                    }
                    combos = next;
                    if combos.len() > 100_000 {
                        self.err(
                            m.pos,
                            format!("'matrix' of stage '{name}' makes more than 100000 stages"),
                        );
                        return Vec::new();
                    }
                }
                let items = combos
                    .into_iter()
                    .map(|(s, it)| {
                        let suffix = s.join("-");
                        (suffix.clone(), Value::Object(it), Value::String(suffix))
                    })
                    .collect();
                self.make_insts(name, pos, &fields, items)
            }
        }
    }

    fn make_insts<'n>(
        &mut self,
        name: &str,
        pos: Pos,
        fields: &HashMap<String, (&'n Node, &'n Node)>,
        items: Vec<(String, Value, Value)>,
    ) -> Vec<Inst<'n>> {
        items
            .into_iter()
            .map(|(suffix, item, key)| Inst {
                name: format!("{name}@{suffix}"),
                pos,
                fields: fields.clone(),
                item: Some(item),
                key: Some(key),
            })
            .collect()
    }

    fn scope<'s>(
        &self,
        inst: &'s Inst<'_>,
        params: &'s Map<String, Value>,
        reason: &'s str,
    ) -> Scope<'s>
    where
        'a: 's,
    {
        Scope {
            params,
            item: inst.item.as_ref(),
            key: inst.key.as_ref(),
            outputs: None,
            bases: None,
            no_outputs_reason: reason,
            used_params: BTreeSet::new(),
            stage_refs: Vec::new(),
            map_item: None,
            files: Some(self.files),
        }
    }

    fn outputs(
        &mut self,
        inst: &Inst,
        params: &Map<String, Value>,
        pipeline: &str,
        project: &Project,
    ) -> Outputs {
        let mut o = Outputs::default();
        let name = &inst.name;
        if let Some(uses) = inst.get("uses") {
            for k in ["outs", "metrics"] {
                if let Some(p) = inst.key_pos(k) {
                    self.err(p, format!("'{k}' is not allowed in stage '{name}' with 'uses' (a built-in kind declares its own outputs)"));
                }
            }
            let Some(kname) = uses.as_str() else {
                self.err(uses.pos, format!("expected a string (a built-in kind) for 'uses' of stage '{name}', found {}", uses.type_name()));
                return o;
            };
            let Some(kind) = self.kinds.iter().find(|k| k.name == kname) else {
                let known: Vec<&str> = self.kinds.iter().map(|k| k.name).collect();
                let hint = did_you_mean(kname, known.iter().copied())
                    .map(|s| format!("; did you mean '{s}'?"))
                    .unwrap_or_default();
                let list = if known.is_empty() {
                    "none in this build".to_string()
                } else {
                    known.join(", ")
                };
                self.err(
                    uses.pos,
                    format!("unknown stage kind '{kname}' (known: {list}{hint})"),
                );
                return o;
            };
            if let Some(p) = inst.key_pos("merge") {
                let keys: Vec<&str> = kind.outputs.iter().map(|(k, _)| *k).collect();
                let m = if inst.get("map").is_some() {
                    format!(
                        "'merge' is not allowed in stage '{name}' with 'uses': a mapped built-in kind's outputs ({}) are already every item's outputs in key order",
                        keys.join(", ")
                    )
                } else {
                    format!(
                        "'merge' needs 'map' in stage '{name}' (and a built-in kind merges its own outputs)"
                    )
                };
                self.err(p, m);
            }
            let dir = project.builtin_out_dir(pipeline, name);
            let (outs, metrics) = builtin_outputs(kind, &dir);
            o.outs = outs.into_iter().map(|(k, v)| (k, (v, uses.pos))).collect();
            o.metrics = metrics.into_iter().map(|(k, p)| (k, p, uses.pos)).collect();
            o.kind = Some(kind);
            return o;
        }
        let reason = "'outs' (outputs cannot depend on other stages' outputs)";
        if inst.get("map").is_some() {
            // Per-item `outs` are templates (read in `stage`); the stage's one output, for
            // references and the graph, is the merged file.
            if let Some(p) = inst.key_pos("metrics") {
                self.err(
                    p,
                    format!("'metrics' is not allowed in stage '{name}' with 'map'"),
                );
            }
            if let Some(m) = inst.get("merge") {
                let what = format!("'merge' of stage '{name}'");
                if let Some(e) = self.expect_map(m, &format!("{what} (expected {{out: PATH}})")) {
                    self.check_keys(e, format::MERGE, &what);
                    match e.iter().find(|(k, _)| k.scalar_text() == Some("out")) {
                        None => self.err(m.pos, format!("missing key 'out' in {what}")),
                        Some((_, v)) => {
                            let mut scope = self.scope(inst, params, reason);
                            if let Some((_, path)) = self.interp_path(v, &what, &mut scope) {
                                o.outs.insert(
                                    "merged".into(),
                                    (
                                        Out {
                                            path,
                                            cache: true,
                                            persist: false,
                                        },
                                        v.pos,
                                    ),
                                );
                            }
                            o.used_params.append(&mut scope.used_params);
                        }
                    }
                }
            }
            return o;
        }
        if let Some(p) = inst.key_pos("merge") {
            self.err(p, format!("'merge' needs 'map' in stage '{name}'"));
        }
        if let Some(outs) = inst.get("outs") {
            let what = format!("'outs' of stage '{name}'");
            match &outs.kind {
                Kind::Map(entries) => {
                    for (k, v) in entries {
                        let key = k.scalar_text().unwrap_or_default().to_owned();
                        let mut scope = self.scope(inst, params, reason);
                        let out = self.out_item(v, &what, &mut scope);
                        o.used_params.append(&mut scope.used_params);
                        if let Some(out) = out {
                            o.outs.insert(key, (out.1, v.pos));
                        }
                    }
                }
                _ => {
                    let Some(items) = self.expect_list(outs, &what) else {
                        return o;
                    };
                    for v in items {
                        let mut scope = self.scope(inst, params, reason);
                        let out = self.out_item(v, &what, &mut scope);
                        o.used_params.append(&mut scope.used_params);
                        if let Some((written, out)) = out {
                            if o.outs.contains_key(&written) {
                                self.err(
                                    v.pos,
                                    format!("output '{written}' is listed twice in stage '{name}'"),
                                );
                                continue;
                            }
                            o.outs.insert(written, (out, v.pos));
                        }
                    }
                }
            }
        }
        if let Some(m) = inst.get("metrics") {
            let what = format!("'metrics' of stage '{name}'");
            if let Some(items) = self.expect_list(m, &what) {
                for v in items {
                    let mut scope = self.scope(
                        inst,
                        params,
                        "'metrics' (outputs cannot depend on other stages' outputs)",
                    );
                    let path = self.interp_path(v, &what, &mut scope);
                    o.used_params.append(&mut scope.used_params);
                    if let Some((written, p)) = path {
                        o.metrics.push((written, p, v.pos));
                    }
                }
            }
        }
        o
    }

    /// A plain `true`/`false` for key `key`; anything else is an error at its position.
    fn bool_value(&mut self, c: &Node, key: &str) -> Option<bool> {
        match &c.kind {
            Kind::Scalar { text, plain: true }
                if matches!(yaml::resolve_plain(text), Plain::Bool(_)) =>
            {
                Some(yaml::resolve_plain(text) == Plain::Bool(true))
            }
            _ => {
                self.err(
                    c.pos,
                    format!(
                        "expected true or false for '{key}', found {}",
                        c.type_name()
                    ),
                );
                None
            }
        }
    }

    /// One `outs` item: a path or {path, cache, persist}. Returns (path as written, Out).
    fn out_item(&mut self, v: &Node, what: &str, scope: &mut Scope<'_>) -> Option<(String, Out)> {
        if let Kind::Map(e) = &v.kind {
            self.check_keys(
                e,
                format::OUT_ITEM,
                &format!("an output of {}", what.trim_start_matches("'outs' of ")),
            );
            let path = e.iter().find(|(k, _)| k.scalar_text() == Some("path"));
            let cache = e.iter().find(|(k, _)| k.scalar_text() == Some("cache"));
            let persist = e.iter().find(|(k, _)| k.scalar_text() == Some("persist"));
            let Some((_, pnode)) = path else {
                self.err(v.pos, format!("missing key 'path' in an output of {} (expected {{path: PATH, cache: BOOL}})", what.trim_start_matches("'outs' of ")));
                return None;
            };
            let cache = match cache {
                None => true,
                Some((_, c)) => self.bool_value(c, "cache")?,
            };
            let persist = match persist {
                None => false,
                Some((_, p)) => self.bool_value(p, "persist")?,
            };
            if persist && cache {
                self.err(
                    v.pos,
                    "an output with 'persist: true' needs 'cache: false' (a persistent output belongs to its command and is never restored from the cache)".to_string(),
                );
                return None;
            }
            let (written, path) = self.interp_path(pnode, what, scope)?;
            return Some((
                written,
                Out {
                    path,
                    cache,
                    persist,
                },
            ));
        }
        let (written, path) = self.interp_path(v, what, scope)?;
        Some((
            written,
            Out {
                path,
                cache: true,
                persist: false,
            },
        ))
    }

    #[allow(clippy::type_complexity)]
    fn stage(
        &mut self,
        inst: &Inst,
        params: &Map<String, Value>,
        outputs: &HashMap<String, Outputs>,
        bases: &BTreeMap<String, Vec<String>>,
    ) -> (Option<Stage>, Vec<(Dep, Pos)>, Vec<(String, Pos)>) {
        let name = inst.name.as_str();
        let before = self.errors.len();
        let mut scope = Scope {
            params,
            item: inst.item.as_ref(),
            key: inst.key.as_ref(),
            outputs: Some(outputs),
            bases: Some(bases),
            no_outputs_reason: "",
            used_params: BTreeSet::new(),
            stage_refs: Vec::new(),
            map_item: None,
            files: Some(self.files),
        };
        let mine = outputs.get(name);
        if let Some(o) = mine {
            scope.used_params.extend(o.used_params.iter().cloned());
        }
        let map_source = inst.get("map").and_then(|m| self.map_source(inst, m));
        if let Some(src) = &map_source {
            scope.map_item = Some(match src {
                MapSource::Glob { .. } => &["path", "key", "stem", "name", "dir"],
                MapSource::Lines { .. } => &["line", "key"],
                MapSource::Rows { .. } => &[],
            });
        }

        // A `with:` that does not fit its kind's settings is reported once, by that check.
        let mut settings_failed = false;
        let action = match (inst.get("cmd"), inst.get("uses")) {
            (None, None) => {
                self.err(
                    inst.pos,
                    format!("stage '{name}' has neither 'cmd' nor 'uses' (expected one of them)"),
                );
                None
            }
            (Some(_), Some(_)) => {
                let p = inst.key_pos("uses").unwrap_or(inst.pos);
                self.err(
                    p,
                    format!("stage '{name}' has both 'cmd' and 'uses' (expected one of them)"),
                );
                None
            }
            (Some(c), None) => {
                if let Some(p) = inst.key_pos("with") {
                    self.err(p, format!("'with' needs 'uses' in stage '{name}' (a command stage takes its inputs from 'deps')"));
                }
                let cmd = self.interp_string(c, &format!("'cmd' of stage '{name}'"), &mut scope);
                if let Some(cmd) = &cmd
                    && cmd.trim().is_empty()
                {
                    self.err(
                        c.pos,
                        format!("'cmd' of stage '{name}' is empty (expected a shell command)"),
                    );
                }
                cmd.map(|cmd| Action::Cmd { cmd })
            }
            (None, Some(_)) => {
                let kind = mine.and_then(|o| o.kind);
                let with = match inst.get("with") {
                    None => Some(Value::Object(Map::new())),
                    Some(w) => {
                        if !matches!(w.kind, Kind::Map(_)) && !w.is_null() {
                            self.err(
                                w.pos,
                                format!(
                                    "expected a mapping for 'with' of stage '{name}', found {}",
                                    w.type_name()
                                ),
                            );
                            None
                        } else {
                            self.interp(w, &mut scope).map(|v| {
                                if v.is_null() {
                                    Value::Object(Map::new())
                                } else {
                                    v
                                }
                            })
                        }
                    }
                };
                // The kind's settings type: unknown keys, wrong types, missing keys.
                if let (Some(kind), Some(with)) = (kind, &with) {
                    let with_pos = inst
                        .key_pos("with")
                        .or_else(|| inst.key_pos("uses"))
                        .unwrap_or(inst.pos);
                    if let Err((pos, m)) =
                        super::settings::check(kind, with, inst.get("with"), with_pos, name)
                    {
                        self.err(pos, m);
                        settings_failed = true;
                    }
                }
                match (kind, with) {
                    (Some(kind), Some(with)) => Some(Action::Builtin {
                        kind: kind.name.to_owned(),
                        version: kind.version,
                        with,
                    }),
                    _ => None,
                }
            }
        };

        let mut deps: Vec<(Dep, Pos)> = Vec::new();
        let map = match (map_source, inst.get("map")) {
            (Some(source), Some(m)) => {
                deps.push((Dep::Path(source.path().to_path_buf()), m.pos));
                let merge = mine.and_then(|o| o.lookup("merged")).map(Path::to_path_buf);
                self.map_spec(inst, m, source, merge, &mut scope)
            }
            _ => None,
        };
        // A kind runs per item only when its outputs are JSONL files whose per-item parts
        // concatenate into the whole (`KindInfo::per_item`).
        if let (Some(p), Some(kind)) = (
            inst.get("uses")
                .filter(|_| inst.get("map").is_some())
                .map(|u| u.pos),
            mine.and_then(|o| o.kind),
        ) && !kind.per_item
        {
            let mappable: Vec<&str> = self
                .kinds
                .iter()
                .filter(|k| k.per_item)
                .map(|k| k.name)
                .collect();
            let list = if mappable.is_empty() {
                "none in this build".to_string()
            } else {
                mappable.join(", ")
            };
            self.err(
                p,
                format!(
                    "stage '{name}': kind '{}' cannot run per item under 'map' (its outputs are not per-item JSONL files; kinds that can: {list})",
                    kind.name
                ),
            );
        }
        if let (Some(Action::Builtin { with, .. }), Some(kind)) =
            (&action, mine.and_then(|o| o.kind))
        {
            let wnode = inst.get("with");
            match builtin_inputs(kind, with) {
                Ok(inputs) => {
                    for (field, input) in inputs {
                        // A per-item input (`${item.path}`): the item's own content hash
                        // is part of its fingerprint, and the map source is the stage's dep.
                        if inst.get("map").is_some()
                            && matches!(&input, BuiltinInput::Path(p) if p.contains("${item."))
                        {
                            continue;
                        }
                        let pos = wnode.and_then(|w| axis_pos(w, &field)).unwrap_or(inst.pos);
                        let (path, query) = match input {
                            BuiltinInput::Path(p) => (p, None),
                            BuiltinInput::Sqlite { db, query } => (db, Some(query)),
                        };
                        match norm_path(&path) {
                            Ok(p) => {
                                let dep = match query {
                                    None => Dep::Path(p),
                                    Some(query) => Dep::Sqlite { db: p, query },
                                };
                                deps.push((dep, pos))
                            }
                            Err(m) => {
                                self.err(pos, format!("{m} in 'with.{field}' of stage '{name}'"))
                            }
                        }
                    }
                }
                Err(_) if settings_failed => {}
                Err((field, found)) => {
                    let pos = wnode.and_then(|w| axis_pos(w, &field)).unwrap_or(inst.pos);
                    self.err(pos, format!("expected a path, a list of paths or {{sqlite: {{db, query}}}} for 'with.{field}' of stage '{name}', found {found}"));
                }
            }
        }

        if let Some(d) = inst.get("deps") {
            let what = format!("'deps' of stage '{name}'");
            if let Some(items) = self.expect_list(d, &what) {
                for it in items {
                    if let Some(dep) = self.dep(it, &what, &mut scope) {
                        deps.push((dep, it.pos));
                    }
                }
            }
        }

        if let Some(p) = inst.get("params") {
            self.stage_params_list(p, name, &mut scope);
        }

        let mut env = BTreeMap::new();
        if let Some(e) = inst.get("env") {
            let what = format!("'env' of stage '{name}'");
            if let Some(entries) = self.expect_map(e, &what) {
                for (k, v) in entries {
                    let key = k.scalar_text().unwrap_or_default();
                    let valid = key
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        self.err(k.pos, format!("invalid environment variable name '{key}' (expected letters, digits and '_')"));
                        continue;
                    }
                    if let Some(val) =
                        self.interp_string(v, &format!("env '{key}' of stage '{name}'"), &mut scope)
                    {
                        env.insert(key.to_owned(), val);
                    }
                }
            }
        }

        let mut needs: Vec<(String, Pos)> = Vec::new();
        if let Some(n) = inst.get("needs") {
            let what = format!("'needs' of stage '{name}'");
            if let Some(items) = self.expect_list(n, &what) {
                for it in items {
                    if let Some(s) = self.interp_string(it, &what, &mut scope) {
                        needs.push((s, it.pos));
                    }
                }
            }
        }

        let resources = inst
            .get("resources")
            .map(|r| self.resources(r, name))
            .unwrap_or_default();
        let retry = inst
            .get("retry")
            .map(|r| self.retry(r, name))
            .unwrap_or_default();
        let timeout = inst
            .get("timeout")
            .and_then(|t| self.duration(t, &format!("'timeout' of stage '{name}'")));

        let mut exec = self.pipeline_exec.clone();
        if let Some(e) = inst.get("executor") {
            exec.stage = self.executor_kind(e, &format!("'executor' of stage '{name}'"));
        }
        if let Some(sl) = inst.get("slurm") {
            let base = exec.slurm.clone();
            exec.slurm = self.slurm_settings(sl, &base, &format!("stage '{name}'"));
        }

        let (outs, metrics) = match mine {
            Some(o) => (
                o.outs
                    .iter()
                    .map(|(k, (out, _))| (k.clone(), out.clone()))
                    .collect(),
                o.metrics.iter().map(|(_, p, _)| p.clone()).collect(),
            ),
            None => (BTreeMap::new(), Vec::new()),
        };

        // References to other stages' outputs: an edge, and the path is an input.
        for (stage, path) in std::mem::take(&mut scope.stage_refs) {
            if stage != name {
                deps.push((Dep::Path(path), inst.pos));
                needs.push((stage, Pos::default()));
            } else {
                self.err(
                    inst.pos,
                    format!(
                        "stage '{name}' refers to its own output '{}'",
                        path.display()
                    ),
                );
            }
        }

        let register = match inst.get("register") {
            Some(r) => self.register(inst, r, &outs, params, outputs, bases, &mut needs),
            None => None,
        };

        let stage_params: BTreeMap<String, Value> = scope
            .used_params
            .iter()
            .filter_map(|p| match params_file::split_key(p) {
                Some((file, key)) => self.files.lookup(&file, key).ok().map(|v| (p.clone(), v)),
                None => {
                    let path: Vec<String> = p.split('.').map(str::to_owned).collect();
                    index_path(params, &path).map(|v| (p.clone(), v.clone()))
                }
            })
            .collect();

        let plots = match inst.get("plots") {
            Some(node) => self.plots(inst, node, params, &outs, &metrics),
            None => Vec::new(),
        };

        let action = match action {
            Some(a) if self.errors.len() == before => a,
            _ => return (None, deps, needs),
        };
        let stage = Stage {
            name: name.to_owned(),
            action,
            deps: Vec::new(),
            outs,
            metrics,
            plots,
            params: stage_params,
            env,
            needs: Vec::new(),
            resources,
            retry,
            timeout,
            map,
            register,
            exec,
            span: self.span(inst.pos),
        };
        (Some(stage), deps, needs)
    }

    /// `plots:` of stage `inst` (parsed in `plots.rs`); every file must be one of the
    /// stage's outputs or inside one, so that a run's plots come from its cached results.
    fn plots(
        &mut self,
        inst: &Inst,
        node: &Node,
        params: &Map<String, Value>,
        outs: &BTreeMap<String, Out>,
        metrics: &[PathBuf],
    ) -> Vec<crate::Plot> {
        let name = inst.name.as_str();
        let what = format!("'plots' of stage '{name}'");
        let (plots, problems) = crate::plots::parse(node, name, &mut |n| {
            let mut scope = self.scope(
                inst,
                params,
                "'plots' (plot files are the stage's own outputs)",
            );
            self.interp_path(n, &what, &mut scope).map(|(_, p)| p)
        });
        for (pos, msg) in problems {
            self.err(pos, msg);
        }
        let mut ok = Vec::new();
        for (plot, positions) in plots {
            let mut fine = true;
            for (s, pos) in plot.series.iter().zip(positions) {
                let owned = outs
                    .values()
                    .any(|o| s.file == o.path || s.file.starts_with(&o.path))
                    || metrics.contains(&s.file);
                if !owned {
                    fine = false;
                    let listed: Vec<String> = outs
                        .values()
                        .map(|o| o.path.display().to_string())
                        .collect();
                    self.err(
                        pos,
                        format!(
                            "plot file '{}' of stage '{name}' is not one of its outputs (outs: [{}]); declare it, or the directory it is in, in 'outs'",
                            s.file.display(),
                            listed.join(", ")
                        ),
                    );
                }
            }
            if fine {
                ok.push(plot);
            }
        }
        ok
    }

    /// A stage's `params:` list: inline param names, keys of params.yaml, `FILE:KEY`, and
    /// DVC's mapping form `FILE: [KEYS]`. Each becomes a fingerprint input of its own.
    fn stage_params_list(&mut self, node: &Node, stage: &str, scope: &mut Scope<'_>) {
        let what = format!("'params' of stage '{stage}'");
        let Some(items) = self.expect_list(node, &what) else {
            return;
        };
        let bad_key = |k: &str| k.is_empty() || k.split('.').any(str::is_empty);
        for it in items {
            if let Kind::Map(entries) = &it.kind {
                for (f, keys) in entries {
                    let file = f.scalar_text().unwrap_or_default();
                    let file = match norm_path(file) {
                        Ok(p) => p,
                        Err(m) => {
                            self.err(f.pos, format!("{m} in {what}"));
                            continue;
                        }
                    };
                    let list: Vec<&Node> = match &keys.kind {
                        Kind::Seq(ks) => ks.iter().collect(),
                        Kind::Scalar { .. } => vec![keys],
                        Kind::Map(_) => {
                            self.err(
                                keys.pos,
                                format!(
                                    "expected a list of keys of '{}' in {what}, found a mapping",
                                    file.display()
                                ),
                            );
                            continue;
                        }
                    };
                    for k in list {
                        match k.scalar_text() {
                            Some(key) if !bad_key(key) => {
                                if let Err(m) = scope.lookup_file(&file, key) {
                                    self.err(k.pos, m);
                                }
                            }
                            _ => self.err(
                                k.pos,
                                format!(
                                    "expected a key of '{}' (like train.lr) in {what}",
                                    file.display()
                                ),
                            ),
                        }
                    }
                }
                continue;
            }
            let Some(s) = it.as_str() else {
                self.err(
                    it.pos,
                    format!(
                        "expected a parameter name, FILE:KEY or {{FILE: [KEYS]}} for {what}, found {}",
                        it.type_name()
                    ),
                );
                continue;
            };
            if let Some((file, key)) = s.rsplit_once(':') {
                let file = match norm_path(file.trim()) {
                    Ok(p) => p,
                    Err(m) => {
                        self.err(it.pos, format!("{m} in {what}"));
                        continue;
                    }
                };
                let key = key.trim();
                if bad_key(key) {
                    self.err(it.pos, format!("invalid key '{key}' in '{s}' of {what}"));
                } else if let Err(m) = scope.lookup_file(&file, key) {
                    self.err(it.pos, m);
                }
                continue;
            }
            let path: Vec<String> = s
                .trim_start_matches("params.")
                .split('.')
                .map(str::to_owned)
                .collect();
            if path.iter().any(|p| p.is_empty()) {
                self.err(it.pos, format!("invalid parameter name '{s}' in {what}"));
                continue;
            }
            if let Err(m) = scope.lookup(&Ref::Param(path)) {
                self.err(it.pos, m);
            }
        }
    }

    /// `register: {name, out, metrics, promote_if}` of stage `inst`, whose outputs are
    /// `outs`. A reference in `metrics` to another stage's output orders the stages (it is
    /// pushed to `needs`) but is not an input: registering is not part of the stage's work,
    /// so nothing here enters the fingerprint.
    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        inst: &Inst,
        node: &Node,
        outs: &BTreeMap<String, Out>,
        params: &Map<String, Value>,
        outputs: &HashMap<String, Outputs>,
        bases: &BTreeMap<String, Vec<String>>,
        needs: &mut Vec<(String, Pos)>,
    ) -> Option<Register> {
        let stage = inst.name.as_str();
        let what = format!("'register' of stage '{stage}'");
        let entries = self.expect_map(node, &what)?;
        self.check_keys(entries, format::REGISTER, &what);
        let before = self.errors.len();
        let get = |k: &str| {
            entries
                .iter()
                .find(|(key, _)| key.scalar_text() == Some(k))
                .map(|(_, v)| v)
        };
        let mut scope = Scope {
            params,
            item: inst.item.as_ref(),
            key: inst.key.as_ref(),
            outputs: Some(outputs),
            bases: Some(bases),
            no_outputs_reason: "",
            used_params: BTreeSet::new(),
            stage_refs: Vec::new(),
            map_item: None,
            files: Some(self.files),
        };

        let name = match get("name") {
            None => Some(stage.to_owned()),
            Some(n) => {
                let w = format!("'register.name' of stage '{stage}'");
                match self.interp_string(n, &w, &mut scope) {
                    Some(s) if name_ok(&s) => Some(s),
                    Some(s) => {
                        self.err(n.pos, format!("invalid registry name '{s}' in {w} (expected letters, digits, '_', '-' or '.')"));
                        None
                    }
                    None => None,
                }
            }
        };

        let keys: Vec<&str> = outs.keys().map(String::as_str).collect();
        let out = match get("out") {
            Some(o) => {
                let w = format!("'register.out' of stage '{stage}'");
                let written = self.interp_string(o, &w, &mut scope);
                written.and_then(|k| {
                    if outs.contains_key(&k) {
                        return Some(k);
                    }
                    // An out path as written elsewhere (`./out/m.bin`, or the path of a keyed out).
                    let want = norm_path(&k).ok();
                    let by_path = outs
                        .iter()
                        .find(|(_, o)| Some(&o.path) == want.as_ref())
                        .map(|(key, _)| key.clone());
                    if by_path.is_none() {
                        let hint = did_you_mean(&k, keys.iter().copied())
                            .map(|s| format!("; did you mean '{s}'?"))
                            .unwrap_or_default();
                        let list = if keys.is_empty() {
                            "it has none".to_string()
                        } else {
                            format!("outputs: {}", keys.join(", "))
                        };
                        self.err(
                            o.pos,
                            format!("'{k}' in {w} is not an output of the stage ({list}{hint})"),
                        );
                    }
                    by_path
                })
            }
            None => match keys.as_slice() {
                [one] => Some((*one).to_owned()),
                [] => {
                    self.err(node.pos, format!("{what}: the stage has no output to register (expected a stage with 'outs', or a built-in kind with an output)"));
                    None
                }
                several => {
                    self.err(
                        node.pos,
                        format!(
                            "{what} needs 'out': the stage has several outputs ({})",
                            several.join(", ")
                        ),
                    );
                    None
                }
            },
        };

        let metrics = match get("metrics") {
            None => None,
            Some(m) => {
                let w = format!("'register.metrics' of stage '{stage}'");
                let path = self.interp_path(m, &w, &mut scope).map(|(_, p)| p);
                // Another stage's output: that stage runs first. A plain path that some stage
                // writes counts the same.
                let mut from: Vec<String> = std::mem::take(&mut scope.stage_refs)
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect();
                if let Some(p) = &path {
                    for (s, o) in outputs {
                        let writes = o.outs.values().any(|(out, _)| p.starts_with(&out.path))
                            || o.metrics.iter().any(|(_, mp, _)| p == mp);
                        if writes {
                            from.push(s.clone());
                        }
                    }
                }
                for s in from {
                    if s != stage && !needs.iter().any(|(n, _)| *n == s) {
                        needs.push((s, m.pos));
                    }
                }
                path
            }
        };

        let promote_if = match get("promote_if") {
            None => None,
            Some(g) => self.gate(g, stage, &mut scope),
        };
        if let (Some(g), None) = (get("promote_if"), get("metrics")) {
            self.err(
                g.pos,
                format!("'promote_if' of stage '{stage}' needs 'register.metrics' (the metrics file the gate reads)"),
            );
        }

        if self.errors.len() != before {
            return None;
        }
        let (name, out) = (name?, out?);
        let pos = inst.key_pos("register").unwrap_or(node.pos);
        self.registered.push((name.clone(), stage.to_owned(), pos));
        Some(Register {
            name,
            out,
            metrics,
            promote_if,
        })
    }

    /// `promote_if: {metric, min | max, not_worse}`.
    fn gate(&mut self, g: &Node, stage: &str, scope: &mut Scope<'_>) -> Option<Gate> {
        let what = format!("'register.promote_if' of stage '{stage}'");
        let entries = self.expect_map(g, &what)?;
        self.check_keys(entries, format::PROMOTE_IF, &what);
        let get = |k: &str| {
            entries
                .iter()
                .find(|(key, _)| key.scalar_text() == Some(k))
                .map(|(_, v)| v)
        };
        let metric = match get("metric") {
            None => {
                self.err(
                    g.pos,
                    format!("missing key 'metric' in {what} (the metric the gate compares)"),
                );
                None
            }
            Some(m) => self.interp_string(m, &format!("'metric' of {what}"), scope),
        };
        let mut number = |cx: &mut Self, k: &str| -> Option<f64> {
            let n = get(k)?;
            match cx.interp(n, scope)? {
                Value::Number(x) => x.as_f64(),
                v => {
                    cx.err(
                        n.pos,
                        format!(
                            "expected a number for '{k}' of {what}, found {}",
                            json_type(&v)
                        ),
                    );
                    None
                }
            }
        };
        let min = number(self, "min");
        let max = number(self, "max");
        let bound = match (get("min"), get("max")) {
            (Some(_), Some(n)) => {
                self.err(n.pos, format!("{what} has both 'min' and 'max' (expected one: 'min' when higher is better, 'max' when lower is better)"));
                None
            }
            (None, None) => {
                self.err(g.pos, format!("{what} needs 'min' or 'max' (expected 'min' when higher is better, 'max' when lower is better)"));
                None
            }
            (Some(_), None) => min.map(Bound::Min),
            (None, Some(_)) => max.map(Bound::Max),
        };
        let not_worse = match get("not_worse") {
            None => Some(true),
            Some(n) => match self.interp(n, scope)? {
                Value::Bool(b) => Some(b),
                v => {
                    self.err(
                        n.pos,
                        format!(
                            "expected true or false for 'not_worse' of {what}, found {}",
                            json_type(&v)
                        ),
                    );
                    None
                }
            },
        };
        Some(Gate {
            metric: metric?,
            bound: bound?,
            not_worse: not_worse?,
        })
    }

    /// `map: {glob: PATTERN}` / `{lines: PATH}` / `{rows: PATH, key: FIELD}` → where the
    /// items come from. `batch` is read by [`Self::map_spec`].
    fn map_source(&mut self, inst: &Inst, m: &Node) -> Option<MapSource> {
        let name = inst.name.as_str();
        let what = format!("'map' of stage '{name}'");
        let e = self.expect_map(
            m,
            &format!("{what} (expected {{glob: PATTERN}}, {{lines: PATH}} or {{rows: PATH}})"),
        )?;
        self.check_keys(e, format::MAP, &what);
        for k in ["foreach", "matrix"] {
            if let Some(p) = inst.key_pos(k) {
                self.err(
                    p,
                    format!("'{k}' cannot be combined with 'map' in stage '{name}'"),
                );
                return None;
            }
        }
        let get = |k: &str| {
            e.iter()
                .find(|(n, _)| n.scalar_text() == Some(k))
                .map(|(_, v)| v)
        };
        let sources: Vec<&str> = ["glob", "lines", "rows"]
            .into_iter()
            .filter(|k| get(k).is_some())
            .collect();
        if sources.len() != 1 {
            self.err(
                m.pos,
                format!(
                    "{what} needs exactly one of 'glob', 'lines', 'rows' (found {})",
                    if sources.is_empty() {
                        "none".to_string()
                    } else {
                        sources.join(", ")
                    }
                ),
            );
            return None;
        }
        let node = get(sources[0]).expect("present");
        let empty = Map::new();
        let mut scope = Scope::params_only(&empty, "'map'");
        let text = self.interp_string(node, &format!("'{}' in {what}", sources[0]), &mut scope)?;
        if let Some(k) = get("key").filter(|_| sources[0] != "rows") {
            self.err(k.pos, format!("'key' applies to 'rows' only in {what} (glob items are keyed by path, lines by content)"));
        }
        match sources[0] {
            "glob" => {
                if let Err(err) = globset::Glob::new(&text) {
                    self.err(
                        node.pos,
                        format!("invalid glob '{text}' in {what}: {}", err.kind()),
                    );
                    return None;
                }
                // The literal directories before the first wildcard: walked, and the dependency.
                let mut base = Vec::new();
                for c in text.split('/') {
                    if c.contains(['*', '?', '[', '{']) {
                        break;
                    }
                    base.push(c);
                }
                if base.len() == text.split('/').count() {
                    self.err(
                        node.pos,
                        format!("'glob' in {what} has no wildcard ('{text}'); use e.g. '{text}/*'"),
                    );
                    return None;
                }
                match norm_path(&base.join("/")) {
                    Ok(b) => Some(MapSource::Glob {
                        pattern: text,
                        base: b,
                    }),
                    Err(msg) => {
                        self.err(node.pos, format!("{msg} in {what} (a glob needs a directory before its first wildcard, e.g. data/*.png)"));
                        None
                    }
                }
            }
            kind => {
                let path = match norm_path(&text) {
                    Ok(p) => p,
                    Err(msg) => {
                        self.err(node.pos, format!("{msg} in {what}"));
                        return None;
                    }
                };
                if kind == "lines" {
                    return Some(MapSource::Lines { path });
                }
                let key = match get("key") {
                    None => None,
                    Some(k) => {
                        Some(self.interp_string(k, &format!("'key' in {what}"), &mut scope)?)
                    }
                };
                Some(MapSource::Rows { path, key })
            }
        }
    }

    /// The rest of a `map:` stage: `batch` and the per-item `outs` templates.
    fn map_spec(
        &mut self,
        inst: &Inst,
        m: &Node,
        source: MapSource,
        merge: Option<PathBuf>,
        scope: &mut Scope<'_>,
    ) -> Option<MapSpec> {
        let name = inst.name.as_str();
        let Kind::Map(e) = &m.kind else {
            return None;
        };
        let batch = match e.iter().find(|(k, _)| k.scalar_text() == Some("batch")) {
            None => false,
            Some((_, b)) => match &b.kind {
                Kind::Scalar { text, plain: true }
                    if matches!(yaml::resolve_plain(text), Plain::Bool(_)) =>
                {
                    yaml::resolve_plain(text) == Plain::Bool(true)
                }
                _ => {
                    self.err(
                        b.pos,
                        format!(
                            "expected true or false for 'batch' of stage '{name}', found {}",
                            b.type_name()
                        ),
                    );
                    return None;
                }
            },
        };
        if inst.get("uses").is_some() {
            // A built-in kind's per-item outputs are placed by the runtime, under the
            // stage's output directory; there is no command to give lists to.
            if batch {
                let p = e
                    .iter()
                    .find(|(k, _)| k.scalar_text() == Some("batch"))
                    .map_or(m.pos, |(k, _)| k.pos);
                self.err(p, format!("'batch: true' needs 'cmd' in stage '{name}' (a built-in kind runs once per item)"));
                return None;
            }
            return Some(MapSpec {
                source,
                item_outs: Vec::new(),
                batch,
                merge,
            });
        }
        let what = format!("'outs' of stage '{name}'");
        let Some(outs) = inst.get("outs") else {
            self.err(m.pos, format!("stage '{name}' with 'map' needs 'outs': the per-item output paths, e.g. out/${{item.key}}.txt"));
            return None;
        };
        let nodes: Vec<&Node> = match &outs.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![outs],
        };
        let mut item_outs = Vec::new();
        for n in nodes {
            let t = self.interp_string(n, &what, scope)?;
            if !t.contains("${item.") {
                self.err(n.pos, format!("per-item output '{t}' of stage '{name}' does not use ${{item.…}} (every item would write the same file)"));
                return None;
            }
            if let Err(msg) = norm_path(&t) {
                self.err(n.pos, format!("{msg} in {what}"));
                return None;
            }
            item_outs.push(t);
        }
        Some(MapSpec {
            source,
            item_outs,
            batch,
            merge,
        })
    }

    fn dep(&mut self, it: &Node, what: &str, scope: &mut Scope<'_>) -> Option<Dep> {
        if let Kind::Map(e) = &it.kind {
            self.check_keys(e, format::SQLITE_DEP, &format!("an item of {what}"));
            let (_, body) = e.iter().find(|(k, _)| k.scalar_text() == Some("sqlite"))?;
            let fields = self.expect_map(
                body,
                &format!("'sqlite' in {what} (expected {{db: PATH, query: SQL}})"),
            )?;
            self.check_keys(
                fields,
                format::SQLITE_FIELDS,
                &format!(
                    "a sqlite dependency of {}",
                    what.trim_start_matches("'deps' of ")
                ),
            );
            let db = fields.iter().find(|(k, _)| k.scalar_text() == Some("db"));
            let query = fields
                .iter()
                .find(|(k, _)| k.scalar_text() == Some("query"));
            let (Some((_, db)), Some((_, query))) = (db, query) else {
                self.err(
                    body.pos,
                    format!("a sqlite dependency needs both 'db' and 'query' in {what}"),
                );
                return None;
            };
            let (_, db) = self.interp_path(db, what, scope)?;
            let query = self.interp_string(query, &format!("'query' in {what}"), scope)?;
            if query.trim().is_empty() {
                self.err(it.pos, format!("empty 'query' in {what}"));
                return None;
            }
            return Some(Dep::Sqlite { db, query });
        }
        let (_, p) = self.interp_path(it, what, scope)?;
        Some(Dep::Path(p))
    }

    fn resources(&mut self, node: &Node, name: &str) -> Resources {
        let mut r = Resources::default();
        let what = format!("'resources' of stage '{name}'");
        let Some(entries) = self.expect_map(node, &what) else {
            return r;
        };
        self.check_keys(entries, format::RESOURCES, &what);
        for (k, v) in entries {
            if k.scalar_text() == Some("mem") {
                let text = match &v.kind {
                    Kind::Scalar { text, .. } => Some(text.as_str()),
                    _ => None,
                };
                match text.and_then(parse_mem_mb) {
                    Some(mb) => r.mem_mb = mb,
                    None => self.err(
                        v.pos,
                        format!(
                            "expected a memory size for 'resources.mem' of stage '{name}' (MiB as a number, or 512M, 16G, 1T), found {}",
                            text.map_or_else(|| v.type_name().to_string(), |t| format!("'{t}'"))
                        ),
                    ),
                }
                continue;
            }
            let slot = match k.scalar_text() {
                Some("gpu") => &mut r.gpu,
                Some("cpu") => &mut r.cpu,
                _ => continue,
            };
            match self.count(
                v,
                &format!(
                    "'resources.{}' of stage '{name}'",
                    k.scalar_text().unwrap_or_default()
                ),
            ) {
                Some(n) => *slot = n,
                None => continue,
            }
        }
        r
    }

    fn count(&mut self, v: &Node, what: &str) -> Option<u32> {
        if let Kind::Scalar { text, plain: true } = &v.kind
            && let Plain::Int(i) = yaml::resolve_plain(text)
        {
            if let Ok(n) = u32::try_from(i) {
                return Some(n);
            }
            self.err(
                v.pos,
                format!("expected a non-negative integer for {what}, found {i}"),
            );
            return None;
        }
        self.err(
            v.pos,
            format!(
                "expected a non-negative integer for {what}, found {}",
                v.type_name()
            ),
        );
        None
    }

    fn retry(&mut self, node: &Node, name: &str) -> Retry {
        let mut r = Retry::default();
        let what = format!("'retry' of stage '{name}'");
        match &node.kind {
            Kind::Map(entries) => {
                self.check_keys(entries, format::RETRY, &what);
                for (k, v) in entries {
                    match k.scalar_text() {
                        Some("attempts") => {
                            if let Some(n) = self.count(v, &format!("'retry.attempts' of stage '{name}'")) {
                                r.attempts = n;
                            }
                        }
                        Some("backoff") => {
                            if let Some(d) = self.duration(v, &format!("'retry.backoff' of stage '{name}'")) {
                                r.backoff = d;
                            }
                        }
                        _ => {}
                    }
                }
            }
            Kind::Scalar { .. } => {
                match &node.kind {
                    Kind::Scalar { text, plain: true } if matches!(yaml::resolve_plain(text), Plain::Int(_)) => {
                        if let Some(n) = self.count(node, &what) {
                            r.attempts = n;
                        }
                    }
                    _ => self.err(
                        node.pos,
                        format!("expected a number of retries or {{attempts: N, backoff: DURATION}} for {what}, found {}", node.type_name()),
                    ),
                }
            }
            Kind::Seq(_) => {
                self.err(node.pos, format!("expected an integer or {{attempts: N, backoff: DURATION}} for {what}, found a list"));
            }
        }
        r
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<std::time::Duration> {
        let text = match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => text,
            _ => {
                self.err(
                    node.pos,
                    format!(
                        "expected a duration for {what}, found {} ({DURATION_HINT})",
                        node.type_name()
                    ),
                );
                return None;
            }
        };
        if node.as_str().is_none() {
            self.err(
                node.pos,
                format!(
                    "invalid duration '{text}' for {what}: a unit is missing ({DURATION_HINT})"
                ),
            );
            return None;
        }
        match parse_duration(text) {
            Some(d) => Some(d),
            None => {
                self.err(
                    node.pos,
                    format!("invalid duration '{text}' for {what} ({DURATION_HINT})"),
                );
                None
            }
        }
    }

    /// Two stages writing one output, or one writing inside another's output directory.
    fn check_outputs(&mut self, order: &[&str], outputs: &HashMap<String, Outputs>) {
        // Resolved once: symlinked outputs are compared against the real root.
        let root = self.root.canonicalize().ok();
        let mut all: Vec<(PathBuf, &str, Pos)> = Vec::new();
        // A stage's metrics file inside one of its own output directories is part of that
        // output (`outs: [eval]`, `metrics: [eval/metrics.json]`): not an overlap.
        let mut own_metrics: BTreeSet<(PathBuf, &str)> = BTreeSet::new();
        for name in order {
            let Some(o) = outputs.get(*name) else {
                continue;
            };
            for (out, pos) in o.outs.values() {
                all.push((out.path.clone(), name, *pos));
            }
            for (_, p, pos) in &o.metrics {
                all.push((p.clone(), name, *pos));
                if o.outs
                    .values()
                    .any(|(out, _)| p.starts_with(&out.path) && *p != out.path)
                {
                    own_metrics.insert((p.clone(), name));
                }
            }
        }
        let mut by_path: HashMap<&Path, (&str, Pos)> = HashMap::new();
        for (p, s, pos) in &all {
            if let Some((other, opos)) = by_path.get(p.as_path()) {
                let where_ = if *other == *s {
                    "also".to_string()
                } else {
                    format!("also an output of stage '{other}'")
                };
                let msg = if *other == *s {
                    format!(
                        "output '{}' is listed twice in stage '{s}' ({where_} at line {})",
                        p.display(),
                        opos.line
                    )
                } else {
                    format!(
                        "output '{}' of stage '{s}' is {where_} (line {}): two stages cannot write one output",
                        p.display(),
                        opos.line
                    )
                };
                self.err(*pos, msg);
            } else {
                by_path.insert(p, (s, *pos));
            }
        }
        for (p, s, pos) in &all {
            for anc in p.ancestors().skip(1) {
                if let Some((other, _)) = by_path.get(anc) {
                    if *other == *s && own_metrics.contains(&(p.clone(), *s)) {
                        continue;
                    }
                    self.err(
                        *pos,
                        format!(
                            "output '{}' of stage '{s}' is inside '{}', an output of stage '{other}' (outputs cannot overlap)",
                            p.display(),
                            anc.display()
                        ),
                    );
                }
            }
            if let Some(root) = &root {
                self.check_symlinks(p, *pos, s, root);
            }
        }
    }

    /// An output must not lead out of the project through a symlink in its path.
    fn check_symlinks(&mut self, p: &Path, pos: Pos, stage: &str, root: &Path) {
        let mut cur = self.root.to_path_buf();
        for c in p.components() {
            cur.push(c);
            let Ok(meta) = std::fs::symlink_metadata(&cur) else {
                return;
            };
            if meta.file_type().is_symlink() {
                let rel = cur
                    .strip_prefix(self.root)
                    .unwrap_or(&cur)
                    .display()
                    .to_string();
                match cur.canonicalize() {
                    Ok(t) if t.starts_with(root) => {}
                    Ok(_) => {
                        self.err(
                            pos,
                            format!("output '{}' of stage '{stage}' leads outside the project root through the symlink '{rel}'", p.display()),
                        );
                        return;
                    }
                    Err(_) => {
                        self.err(pos, format!("output '{}' of stage '{stage}' goes through the dangling symlink '{rel}'", p.display()));
                        return;
                    }
                }
            }
        }
    }

    /// Edges: `needs`, references (already in needs), deps on other stages' outputs; and
    /// the "missing deps" check.
    /// Every stage is linked, those with errors too, so that their bad `needs` and
    /// missing deps are reported in the same pass. Returns (deps, needs) by stage.
    fn link(
        &mut self,
        entries: &[Linkable],
        bases: &BTreeMap<String, Vec<String>>,
        outputs: &HashMap<String, Outputs>,
    ) -> HashMap<String, (Vec<Dep>, Vec<String>)> {
        let mut linked = HashMap::new();
        // Every output path → its stage, for deps equal to, inside, or above an output.
        let mut producer: HashMap<PathBuf, String> = HashMap::new();
        for (name, o) in outputs {
            for (out, _) in o.outs.values() {
                producer.insert(out.path.clone(), name.clone());
            }
            for (_, p, _) in &o.metrics {
                producer.insert(p.clone(), name.clone());
            }
        }
        // Every directory above an output → the stages whose outputs it holds.
        let mut holders: HashMap<&Path, BTreeSet<String>> = HashMap::new();
        for (out, s) in &producer {
            for anc in out
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
            {
                holders.entry(anc).or_default().insert(s.clone());
            }
        }
        let names: BTreeSet<String> = outputs.keys().cloned().collect();
        for (name, dep_pos, needs_pos) in entries {
            let mut needs: BTreeSet<String> = BTreeSet::new();
            for (n, pos) in needs_pos {
                if names.contains(n) {
                    needs.insert(n.clone());
                } else if let Some(exp) = bases.get(n) {
                    needs.extend(exp.iter().cloned());
                } else {
                    let all: Vec<&str> = names
                        .iter()
                        .map(String::as_str)
                        .chain(bases.keys().map(String::as_str))
                        .collect();
                    let hint = did_you_mean(n, all.iter().copied())
                        .map(|s| format!("; did you mean '{s}'?"))
                        .unwrap_or_default();
                    let list: Vec<&str> = names.iter().map(String::as_str).collect();
                    self.err(
                        *pos,
                        format!(
                            "unknown stage '{n}' in 'needs' of stage '{}' (stages: {}{hint})",
                            *name,
                            list.join(", ")
                        ),
                    );
                }
            }
            let mut deps: BTreeSet<DepKey> = BTreeSet::new();
            for (dep, pos) in dep_pos {
                let path = match dep {
                    Dep::Path(p) => p,
                    Dep::Sqlite { db, .. } => db,
                };
                let mut produced = false;
                // Equal to or inside an output.
                for anc in path.ancestors() {
                    if let Some(s) = producer.get(anc) {
                        produced = true;
                        if s != name {
                            needs.insert(s.clone());
                        } else {
                            self.err(
                                *pos,
                                format!(
                                    "stage '{}' depends on its own output '{}'",
                                    *name,
                                    path.display()
                                ),
                            );
                        }
                    }
                }
                // A directory above outputs of other stages: it holds them, so it follows them.
                for s in holders.get(path.as_path()).into_iter().flatten() {
                    produced = true;
                    if s != name {
                        needs.insert(s.clone());
                    } else {
                        // Its own output would change its input: stale forever.
                        self.err(
                            *pos,
                            format!(
                                "stage '{}' depends on '{}', which holds its own outputs",
                                *name,
                                path.display()
                            ),
                        );
                    }
                }
                if !produced && !self.root.join(path).exists() {
                    self.err(*pos, format!("missing dependency '{}' of stage '{}': no such file or directory, and no stage outputs it", path.display(), *name));
                }
                deps.insert(DepKey(dep.clone()));
            }
            linked.insert(
                name.clone(),
                (
                    deps.into_iter().map(|d| d.0).collect(),
                    needs.into_iter().collect(),
                ),
            );
        }
        linked
    }

    fn triggers(&mut self, node: &Node, params: &Map<String, Value>) -> Vec<Trigger> {
        let mut out = Vec::new();
        let Some(items) = self.expect_list(node, "'triggers'") else {
            return out;
        };
        for it in items {
            let Some(entries) = self.expect_map(it, "a trigger ({cron: …} or {watch: […]})")
            else {
                continue;
            };
            let has = |k: &str| {
                entries
                    .iter()
                    .find(|(key, _)| key.scalar_text() == Some(k))
                    .map(|(_, v)| v)
            };
            let span = self.span(it.pos);
            if let Some(c) = has("cron") {
                self.check_keys(entries, format::CRON_TRIGGER, "a cron trigger");
                let Some(expr) = c.as_str() else {
                    self.err(
                        c.pos,
                        format!("expected a string for 'cron', found {}", c.type_name()),
                    );
                    continue;
                };
                let fields = expr.split_whitespace().count();
                if !(5..=6).contains(&fields) && !expr.trim().starts_with('@') {
                    self.err(c.pos, format!("invalid cron expression '{expr}' (expected 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\")"));
                    continue;
                }
                let when = match has("when") {
                    None => None,
                    Some(w) if !matches!(w.kind, Kind::Map(_)) => {
                        self.err(
                            w.pos,
                            format!(
                                "expected a mapping for 'when' (e.g. {{sql: \"SELECT …\", db: PATH}}), found {}",
                                w.type_name()
                            ),
                        );
                        continue;
                    }
                    Some(w) => {
                        let mut scope = Scope::params_only(params, "triggers");
                        match self.interp(w, &mut scope) {
                            Some(v) => Some(v),
                            None => continue,
                        }
                    }
                };
                let mut opt = |k: &str| -> Option<String> {
                    let v = has(k)?;
                    match v.as_str() {
                        Some(s) => Some(s.to_owned()),
                        None => {
                            self.err(
                                v.pos,
                                format!("expected a string for '{k}', found {}", v.type_name()),
                            );
                            None
                        }
                    }
                };
                let (tz, catchup, grace) = (opt("tz"), opt("catchup"), opt("grace"));
                out.push(Trigger::Cron {
                    cron: expr.to_owned(),
                    when,
                    tz,
                    catchup,
                    grace,
                    span,
                });
            } else if let Some(w) = has("watch") {
                self.check_keys(entries, format::WATCH_TRIGGER, "a watch trigger");
                let list: Vec<&Node> = match &w.kind {
                    Kind::Seq(v) => v.iter().collect(),
                    Kind::Scalar { .. } if w.as_str().is_some() => vec![w],
                    _ => {
                        self.err(
                            w.pos,
                            format!(
                                "expected a list of paths for 'watch', found {}",
                                w.type_name()
                            ),
                        );
                        continue;
                    }
                };
                let mut paths = Vec::new();
                for p in list {
                    let mut scope = Scope::params_only(params, "triggers");
                    if let Some((_, p)) = self.interp_path(p, "'watch'", &mut scope) {
                        paths.push(p);
                    }
                }
                out.push(Trigger::Watch { paths, span });
            } else {
                self.err(it.pos, "a trigger needs 'cron' or 'watch' (expected {cron: \"0 3 * * *\"} or {watch: [PATH, …]})");
            }
        }
        out
    }
}

/// A stage's name, its deps and its `needs` (with positions), before linking.
type Linkable = (String, Vec<(Dep, Pos)>, Vec<(String, Pos)>);

/// Orders deps by path for a stable, deduplicated list.
#[derive(PartialEq, Eq)]
struct DepKey(Dep);

impl PartialOrd for DepKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DepKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn key(d: &Dep) -> (u8, &Path, &str) {
            match d {
                Dep::Path(p) => (0, p, ""),
                Dep::Sqlite { db, query } => (1, db, query),
            }
        }
        key(&self.0).cmp(&key(&other.0))
    }
}

fn fields_expanded(insts: &[Inst], base: &str) -> bool {
    insts.first().is_some_and(|i| i.name != base)
}

/// The position of a key's value inside a mapping node.
fn axis_pos(map: &Node, key: &str) -> Option<Pos> {
    match &map.kind {
        Kind::Map(e) => e
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(_, v)| v.pos),
        _ => None,
    }
}

/// Top-level param names a params node refers to.
fn param_refs(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(n: &Node, out: &mut Vec<String>) {
        match &n.kind {
            Kind::Scalar { text, .. } => {
                if let Ok(segs) = interp::parse(text) {
                    for s in segs {
                        if let Seg::Ref {
                            r: Ref::Param(p), ..
                        } = s
                        {
                            out.push(p[0].clone());
                        }
                    }
                }
            }
            Kind::Seq(v) => v.iter().for_each(|x| walk(x, out)),
            Kind::Map(e) => e.iter().for_each(|(_, x)| walk(x, out)),
        }
    }
    walk(node, &mut out);
    out
}

/// `resources.mem`: MiB as a plain number, or a number with K, M, G or T (binary units).
fn parse_mem_mb(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mul_kb) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 1u64),
        'M' => (&t[..t.len() - 1], 1 << 10),
        'G' => (&t[..t.len() - 1], 1 << 20),
        'T' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1 << 10),
    };
    let n: u64 = num.parse().ok()?;
    Some(n.checked_mul(mul_kb)?.div_ceil(1024))
}
