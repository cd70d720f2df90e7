//! Reranker training data in seed 003's JSONL shape, one query per line:
//!
//! ```json
//! {"query_text": "…", "positives": [{"doc_id": "p1", "text": "…"}],
//!  "negatives": [{"doc_id": "n1", "text": "…"}], "source_chunk": "chunk_id", "meta": {…}}
//! ```
//!
//! `query_text` and at least one positive are required; `negatives` may be missing or
//! empty (they are what `sample-negatives` draws); `doc_id` is a string or an integer;
//! `source_chunk` is a chunk id (a string) or a passage object `{doc_id, text}`; `meta` is
//! any JSON value and passes through untouched. Other keys are ignored. Errors name the
//! file, the line and the field (`positives[1].text`).
//!
//! Lines whose query texts are equal after [`normalize`] are one query: their positives
//! (and given negatives) are merged in order of appearance, without duplicates, so that a
//! query listed twice cannot find its other line's positive among its negatives, and so
//! that the split keeps it on one side.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use super::normalize;
use crate::rng::stable_hash;

/// A passage: an id and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub doc_id: String,
    pub text: String,
}

/// `source_chunk`: an id, or a passage.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceChunk {
    Id(String),
    Passage(Passage),
}

/// One line of a reranker JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankerRecord {
    pub query_text: String,
    pub positives: Vec<Passage>,
    pub negatives: Vec<Passage>,
    pub source_chunk: Option<SourceChunk>,
    pub meta: Option<Value>,
    /// 1-based line number in its file.
    pub line: usize,
}

/// All lines of one query (after [`normalize`]), merged.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryGroup {
    /// The query text as first written.
    pub query_text: String,
    /// Its normalised form: the query's identity.
    pub key: String,
    /// Positives of every line, first occurrence of each (doc_id, text) kept.
    pub positives: Vec<Passage>,
    /// Given negatives of every line, likewise.
    pub negatives: Vec<Passage>,
    /// Line numbers the group was read from.
    pub lines: Vec<usize>,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn text_field(v: Option<&Value>, field: &str) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Err(format!("field `{field}` is missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("field `{field}` is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field `{field}`: expected a string, found {}",
            kind_of(other)
        )),
    }
}

fn id_field(v: Option<&Value>, field: &str) -> Result<String, String> {
    match v {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Some(Value::Number(n)) => Err(format!(
            "field `{field}`: expected a string or an integer, found the number {n}"
        )),
        Some(Value::String(s)) if s.is_empty() => Err(format!("field `{field}` is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(format!("field `{field}` is missing")),
        Some(other) => Err(format!(
            "field `{field}`: expected a string or an integer, found {}",
            kind_of(other)
        )),
    }
}

/// A `{doc_id, text}` object; `field` names it in errors (`positives[0]`).
pub fn parse_passage(v: &Value, field: &str) -> Result<Passage, String> {
    let obj = v.as_object().ok_or_else(|| {
        format!(
            "field `{field}`: expected an object {{\"doc_id\", \"text\"}}, found {}",
            kind_of(v)
        )
    })?;
    Ok(Passage {
        doc_id: id_field(obj.get("doc_id"), &format!("{field}.doc_id"))?,
        text: text_field(obj.get("text"), &format!("{field}.text"))?,
    })
}

fn passages(v: Option<&Value>, field: &str, required: bool) -> Result<Vec<Passage>, String> {
    let items = match v {
        None | Some(Value::Null) if !required => return Ok(Vec::new()),
        None | Some(Value::Null) => return Err(format!("field `{field}` is missing")),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "field `{field}`: expected an array of {{\"doc_id\", \"text\"}} objects, found {}",
                kind_of(other)
            ));
        }
    };
    if required && items.is_empty() {
        return Err(format!(
            "field `{field}`: expected at least one passage, found []"
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_passage(item, &format!("{field}[{i}]")))
        .collect()
}

/// One JSON line → a record; errors say which field and why (the caller adds file:line).
pub fn parse_record(v: &Value, line: usize) -> Result<RerankerRecord, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected a JSON object per line, found {}", kind_of(v)))?;
    let source_chunk = match obj.get("source_chunk") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(SourceChunk::Id(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(SourceChunk::Id(n.to_string())),
        Some(p @ Value::Object(_)) => Some(SourceChunk::Passage(parse_passage(p, "source_chunk")?)),
        Some(other) => {
            return Err(format!(
                "field `source_chunk`: expected a chunk id (string) or a {{\"doc_id\", \"text\"}} object, found {}",
                kind_of(other)
            ));
        }
    };
    Ok(RerankerRecord {
        query_text: text_field(obj.get("query_text"), "query_text")?,
        positives: passages(obj.get("positives"), "positives", true)?,
        negatives: passages(obj.get("negatives"), "negatives", false)?,
        source_chunk,
        meta: obj.get("meta").cloned(),
        line,
    })
}

/// Calls `each(line_number, value)` for every non-blank line of a JSONL file; errors name
/// file:line.
fn for_each_json_line(
    path: &Path,
    mut each: impl FnMut(usize, Value) -> Result<(), String>,
) -> Result<()> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| anyhow!("{shown}: cannot open: {e}"))?;
    for (n, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let lineno = n + 1;
        let line = line.map_err(|e| anyhow!("{shown}:{lineno}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{shown}:{lineno}: expected one JSON object per line: {e}"))?;
        each(lineno, value).map_err(|e| anyhow!("{shown}:{lineno}: {e}"))?;
    }
    Ok(())
}

/// Reads a reranker JSONL file. An empty file is an error (nothing to train on).
pub fn read_records(path: &Path) -> Result<Vec<RerankerRecord>> {
    let mut out = Vec::new();
    for_each_json_line(path, |line, v| {
        out.push(parse_record(&v, line)?);
        Ok(())
    })?;
    if out.is_empty() {
        bail!(
            "{}: no records (expected one JSON object per line)",
            path.display()
        );
    }
    Ok(out)
}

/// Reads a corpus JSONL file, one `{doc_id, text}` per line (other keys ignored). A
/// doc_id must not repeat: the error names both lines.
pub fn read_corpus(path: &Path) -> Result<Vec<Passage>> {
    let mut out = Vec::new();
    for_each_passage(path, |p| out.push(p))?;
    Ok(out)
}

/// [`read_corpus`] streamed: `each` gets every passage in file order, so a caller can
/// store a large corpus compactly instead of as a `Vec` of `String`s. Returns the count.
pub fn for_each_passage(path: &Path, mut each: impl FnMut(Passage)) -> Result<usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for_each_json_line(path, |line, v| {
        let obj = v.as_object().ok_or_else(|| {
            format!(
                "expected a {{\"doc_id\", \"text\"}} object per line, found {}",
                kind_of(&v)
            )
        })?;
        let doc_id = id_field(obj.get("doc_id"), "doc_id")?;
        let text = text_field(obj.get("text"), "text")?;
        if let Some(first) = seen.insert(doc_id.clone(), line) {
            return Err(format!("doc_id `{doc_id}` repeats (first on line {first})"));
        }
        each(Passage { doc_id, text });
        Ok(())
    })?;
    if seen.is_empty() {
        bail!("{}: the corpus has no passages", path.display());
    }
    Ok(seen.len())
}

/// Merges records of the same query (after [`normalize`]) into groups, in order of first
/// appearance.
pub fn group_by_query(records: Vec<RerankerRecord>) -> Vec<QueryGroup> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<QueryGroup> = Vec::new();
    // Per group: (doc_id, text) pairs already taken as positives, and as negatives.
    type Seen = HashSet<(String, String)>;
    let mut seen: Vec<(Seen, Seen)> = Vec::new();
    for r in records {
        let key = normalize(&r.query_text);
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push(QueryGroup {
                query_text: r.query_text.clone(),
                key,
                positives: Vec::new(),
                negatives: Vec::new(),
                lines: Vec::new(),
            });
            seen.push(Default::default());
            groups.len() - 1
        });
        let group = &mut groups[g];
        group.lines.push(r.line);
        for p in r.positives {
            if seen[g].0.insert((p.doc_id.clone(), p.text.clone())) {
                group.positives.push(p);
            }
        }
        for p in r.negatives {
            if seen[g].1.insert((p.doc_id.clone(), p.text.clone())) {
                group.negatives.push(p);
            }
        }
    }
    groups
}

/// Fractions of queries held out for validation and test; train gets the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    pub valid: f64,
    pub test: f64,
}

impl SplitFractions {
    /// Both in [0, 1], summing to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, x) in [("valid", self.valid), ("test", self.test)] {
            if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
                return Err(format!("split.{name} must lie in [0, 1], got {x}"));
            }
        }
        if self.valid + self.test > 1.0 + 1e-12 {
            return Err(format!(
                "split.valid + split.test must be at most 1, got {} + {}",
                self.valid, self.test
            ));
        }
        Ok(())
    }
}

/// Splits items by query: queries are ordered by a seeded hash of their key (the
/// normalised query text), the first `round(n·test)` go to test, the next `round(n·valid)`
/// to validation, the rest to train. Fractions are of queries. Items keep their input
/// order inside a side. Whether a query lands in test depends only on (seed, query, n),
/// not on the order of the file.
pub fn split_by_query<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    fractions: SplitFractions,
    seed: u64,
) -> [Vec<T>; 3] {
    let mut keys: Vec<(u64, String)> = {
        let distinct: HashSet<&str> = items.iter().map(&key).collect();
        distinct
            .into_iter()
            .map(|k| (stable_hash(seed, &[b"split", k.as_bytes()]), k.to_string()))
            .collect()
    };
    keys.sort();
    let n = keys.len();
    let n_test = ((n as f64 * fractions.test).round() as usize).min(n);
    let n_valid = ((n as f64 * fractions.valid).round() as usize).min(n - n_test);
    let side: HashMap<String, usize> = keys
        .into_iter()
        .enumerate()
        .map(|(i, (_, k))| {
            let s = if i < n_test {
                2
            } else if i < n_test + n_valid {
                1
            } else {
                0
            };
            (k, s)
        })
        .collect();
    let mut out: [Vec<T>; 3] = Default::default();
    for item in items {
        let s = side[key(&item)];
        out[s].push(item);
    }
    out
}
