//! Data conditions under a cron trigger's `when:`, evaluated at each tick.
//!
//! ```yaml
//! when:
//!   all:                                   # or any: [...]; a plain list means all
//!     - sql: SELECT count(*) FROM nli_corrections WHERE used_for_training = 0
//!       db: data/lyra.db
//!       min: 100                           # without min: the value must be true (non-zero)
//!     - since_last_success: {stage: train, at_least: 7d}
//!     - changed: [data/corrections/*.jsonl]
//! ```
//!
//! Every clause is evaluated, even when the outcome is already decided: the decision's log
//! line then explains all of them, and every `changed:` clause gets the snapshot it needs
//! to be answered correctly next time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rusqlite::OpenFlags;
use rusqlite::types::ValueRef;
use serde_json::Value;

use tsumugi_store::hash::{Hasher, StatCache, sha256_hex};

/// A parsed condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The first column of the first row of `query` on the SQLite file `db`: true when it
    /// is non-zero, or, with `min`, when it is at least `min`.
    Sql {
        db: PathBuf,
        query: String,
        min: Option<f64>,
    },
    /// `stage` last succeeded at least `at_least` ago (or never).
    SinceLastSuccess {
        stage: String,
        at_least: Duration,
    },
    /// A file matching one of `globs` was added, removed or changed since the last
    /// successful run this trigger started.
    Changed {
        globs: Vec<String>,
        set: GlobSet,
    },
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

/// The outcome of evaluating a condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    /// One line saying why, clause by clause.
    pub reason: String,
    /// `changed:` snapshots (clause key → digest of the matched files) taken now; the
    /// scheduler stores them once a run it starts succeeds.
    pub snapshots: BTreeMap<String, String>,
}

/// What evaluating needs from outside.
pub trait EvalEnv {
    fn project_root(&self) -> &Path;
    fn now(&self) -> DateTime<Utc>;
    /// When `stage` of this pipeline last succeeded.
    fn last_success(&self, stage: &str) -> Result<Option<DateTime<Utc>>>;
    /// The snapshot stored for a `changed:` clause, if any.
    fn previous_snapshot(&self, key: &str) -> Option<String>;
    /// The stat cache used to hash `changed:` files without re-reading unchanged ones.
    fn stat_cache(&self) -> &StatCache;
}

const CONDITION_KEYS: &[&str] = &["sql", "since_last_success", "changed", "all", "any"];

impl Condition {
    /// Parses `when:`. `where_` names the place for messages (e.g. `when.all[1]`);
    /// `stages` are the pipeline's stage names, to check `since_last_success.stage`.
    pub fn parse(v: &Value, where_: &str, stages: &[&str]) -> Result<Condition, String> {
        match v {
            Value::Array(items) => Ok(Condition::All(parse_list(items, where_, stages)?)),
            Value::Object(m) => {
                let kinds: Vec<&str> = m
                    .keys()
                    .map(String::as_str)
                    .filter(|k| CONDITION_KEYS.contains(k))
                    .collect();
                let kind = match kinds.as_slice() {
                    [k] => *k,
                    [] => {
                        let unknown = m.keys().next().map(String::as_str).unwrap_or("");
                        let hint =
                            tsumugi_pipeline::did_you_mean(unknown, CONDITION_KEYS.iter().copied())
                                .map(|s| format!(" (did you mean '{s}'?)"))
                                .unwrap_or_default();
                        return Err(format!(
                            "{where_}: expected one of sql, since_last_success, changed, all, any; found '{unknown}'{hint}"
                        ));
                    }
                    many => {
                        return Err(format!(
                            "{where_}: one condition per mapping, found {}; combine them with all: [...] or any: [...]",
                            many.join(" and ")
                        ));
                    }
                };
                match kind {
                    "sql" => parse_sql(m, where_),
                    "since_last_success" => {
                        only_keys(m, &["since_last_success"], where_)?;
                        parse_since(
                            &m["since_last_success"],
                            &format!("{where_}.since_last_success"),
                            stages,
                        )
                    }
                    "changed" => {
                        only_keys(m, &["changed"], where_)?;
                        parse_changed(&m["changed"], &format!("{where_}.changed"))
                    }
                    "all" | "any" => {
                        only_keys(m, &[kind], where_)?;
                        let w = format!("{where_}.{kind}");
                        let Value::Array(items) = &m[kind] else {
                            return Err(format!(
                                "{w}: expected a list of conditions, found {}",
                                type_name(&m[kind])
                            ));
                        };
                        if items.is_empty() {
                            return Err(format!("{w}: expected at least one condition"));
                        }
                        let list = parse_list(items, &w, stages)?;
                        Ok(if kind == "all" {
                            Condition::All(list)
                        } else {
                            Condition::Any(list)
                        })
                    }
                    _ => unreachable!("kind is one of CONDITION_KEYS"),
                }
            }
            other => Err(format!(
                "{where_}: expected a condition (a mapping such as {{sql: ..., db: ...}}, or a list of them), found {}",
                type_name(other)
            )),
        }
    }

    /// Evaluates every clause (see the module doc for why nothing is short-circuited).
    pub fn eval(&self, env: &dyn EvalEnv) -> Result<Verdict> {
        let mut snapshots = BTreeMap::new();
        let (ok, reason) = self.eval_into(env, &mut snapshots)?;
        Ok(Verdict {
            ok,
            reason,
            snapshots,
        })
    }

    fn eval_into(
        &self,
        env: &dyn EvalEnv,
        snaps: &mut BTreeMap<String, String>,
    ) -> Result<(bool, String)> {
        match self {
            Condition::Sql { db, query, min } => eval_sql(env.project_root(), db, query, *min),
            Condition::SinceLastSuccess { stage, at_least } => {
                let last = env
                    .last_success(stage)
                    .with_context(|| format!("cannot read when '{stage}' last succeeded"))?;
                let want = humantime::format_duration(*at_least);
                Ok(match last {
                    None => (
                        true,
                        format!("since_last_success: '{stage}' never succeeded (wanted ≥ {want})"),
                    ),
                    Some(t) => {
                        // A success in the future (clock skew) counts as just now.
                        let ago = (env.now() - t).to_std().unwrap_or(Duration::ZERO);
                        let ago_s = humantime::format_duration(Duration::from_secs(ago.as_secs()));
                        let ok = ago >= *at_least;
                        (
                            ok,
                            format!(
                                "since_last_success: '{stage}' succeeded {ago_s} ago, {} {want}",
                                if ok { "≥" } else { "<" }
                            ),
                        )
                    }
                })
            }
            Condition::Changed { globs, set } => {
                let key = changed_key(globs);
                let (digest, files) = snapshot(env.project_root(), globs, set, env.stat_cache())?;
                let prev = env.previous_snapshot(&key);
                snaps.insert(key, digest.clone());
                let list = globs.join(", ");
                Ok(match prev {
                    None => (
                        true,
                        format!("changed [{list}]: no earlier run to compare with ({files} files)"),
                    ),
                    Some(p) if p != digest => {
                        (true, format!("changed [{list}]: yes ({files} files now)"))
                    }
                    Some(_) => (
                        false,
                        format!("changed [{list}]: nothing changed since the last run"),
                    ),
                })
            }
            Condition::All(list) | Condition::Any(list) => {
                let is_all = matches!(self, Condition::All(_));
                let mut oks = Vec::with_capacity(list.len());
                let mut reasons = Vec::with_capacity(list.len());
                for c in list {
                    let (ok, r) = c.eval_into(env, snaps)?;
                    oks.push(ok);
                    reasons.push(format!("{} {r}", if ok { "✓" } else { "✗" }));
                }
                let ok = if is_all {
                    oks.iter().all(|&b| b)
                } else {
                    oks.iter().any(|&b| b)
                };
                Ok((
                    ok,
                    format!(
                        "{}({})",
                        if is_all { "all" } else { "any" },
                        reasons.join("; ")
                    ),
                ))
            }
        }
    }
}

fn parse_list(items: &[Value], where_: &str, stages: &[&str]) -> Result<Vec<Condition>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| Condition::parse(v, &format!("{where_}[{i}]"), stages))
        .collect()
}

fn only_keys(
    m: &serde_json::Map<String, Value>,
    allowed: &[&str],
    where_: &str,
) -> Result<(), String> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            let hint = tsumugi_pipeline::did_you_mean(k, allowed.iter().copied())
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Err(format!(
                "{where_}: unknown key '{k}'{hint}; expected {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn parse_sql(m: &serde_json::Map<String, Value>, where_: &str) -> Result<Condition, String> {
    only_keys(m, &["sql", "db", "min"], where_)?;
    let Some(Value::String(query)) = m.get("sql") else {
        return Err(format!(
            "{where_}.sql: expected a query string, found {}",
            type_name(&m["sql"])
        ));
    };
    if query.trim().is_empty() {
        return Err(format!("{where_}.sql: the query is empty"));
    }
    let db = match m.get("db") {
        Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
        Some(other) => {
            return Err(format!(
                "{where_}.db: expected a path to a SQLite file, found {}",
                type_name(other)
            ));
        }
        None => {
            return Err(format!(
                "{where_}: 'sql' needs 'db: PATH' (the SQLite file to query)"
            ));
        }
    };
    let min = match m.get("min") {
        None => None,
        Some(Value::Number(n)) => n.as_f64(),
        // Interpolated params arrive as strings (`min: ${params.min_new}`).
        Some(Value::String(s)) => Some(
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("{where_}.min: expected a number, found the string {s:?}"))?,
        ),
        Some(other) => {
            return Err(format!(
                "{where_}.min: expected a number, found {}",
                type_name(other)
            ));
        }
    };
    Ok(Condition::Sql {
        db,
        query: query.clone(),
        min,
    })
}

fn parse_since(v: &Value, where_: &str, stages: &[&str]) -> Result<Condition, String> {
    let Value::Object(m) = v else {
        return Err(format!(
            "{where_}: expected {{stage: NAME, at_least: DURATION}}, found {}",
            type_name(v)
        ));
    };
    only_keys(m, &["stage", "at_least"], where_)?;
    let stage = match m.get("stage") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "{where_}.stage: expected a stage name, found {}",
                type_name(other)
            ));
        }
        None => {
            return Err(format!(
                "{where_}: missing 'stage' (the stage whose last success counts)"
            ));
        }
    };
    if !stages.contains(&stage.as_str()) {
        let hint = tsumugi_pipeline::did_you_mean(&stage, stages.iter().copied())
            .map(|s| format!(" (did you mean '{s}'?)"))
            .unwrap_or_default();
        return Err(format!(
            "{where_}.stage: no stage named '{stage}' in this pipeline{hint}"
        ));
    }
    let at_least = match m.get("at_least") {
        Some(Value::String(s)) => tsumugi_base::duration::parse(s).ok_or_else(|| {
            format!(
                "{where_}.at_least: {s:?} is not a duration ({})",
                tsumugi_base::duration::HINT
            )
        })?,
        Some(other) => {
            return Err(format!(
                "{where_}.at_least: expected a duration such as 7d, found {}",
                type_name(other)
            ));
        }
        None => return Err(format!("{where_}: missing 'at_least' (e.g. 7d)")),
    };
    Ok(Condition::SinceLastSuccess { stage, at_least })
}

fn parse_changed(v: &Value, where_: &str) -> Result<Condition, String> {
    let globs: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, g)| match g {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "{where_}[{i}]: expected a glob string, found {}",
                    type_name(other)
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "{where_}: expected a list of globs, found {}",
                type_name(other)
            ));
        }
    };
    if globs.is_empty() {
        return Err(format!("{where_}: expected at least one glob"));
    }
    let mut b = GlobSetBuilder::new();
    for (i, g) in globs.iter().enumerate() {
        if Path::new(g).is_absolute() || g.split('/').any(|c| c == "..") {
            return Err(format!(
                "{where_}[{i}]: {g:?} must stay inside the project (relative, no '..')"
            ));
        }
        let glob = Glob::new(g).map_err(|e| format!("{where_}[{i}]: invalid glob {g:?}: {e}"))?;
        b.add(glob);
    }
    let set = b.build().map_err(|e| format!("{where_}: {e}"))?;
    Ok(Condition::Changed { globs, set })
}

/// The key a `changed:` clause's snapshot is stored under.
pub fn changed_key(globs: &[String]) -> String {
    globs.join("\n")
}

fn eval_sql(root: &Path, db: &Path, query: &str, min: Option<f64>) -> Result<(bool, String)> {
    let path = root.join(db);
    if !path.is_file() {
        bail!("sql: the database {} does not exist", db.display());
    }
    // Read-only: a condition can never change the data it looks at, even if the query
    // tries to. The busy timeout rides out the application's own writes.
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("sql: cannot open {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut stmt = conn
        .prepare(query)
        .with_context(|| format!("sql on {}: cannot prepare {query:?}", db.display()))?;
    let mut rows = stmt
        .query([])
        .with_context(|| format!("sql on {}: {query:?} failed", db.display()))?;
    let row = rows
        .next()
        .with_context(|| format!("sql on {}: {query:?} failed", db.display()))?;
    let shown = short(query);
    let Some(row) = row else {
        return Ok((false, format!("sql {shown}: no rows")));
    };
    let value = match row
        .get_ref(0)
        .with_context(|| format!("sql on {}: {query:?} returned no columns", db.display()))?
    {
        ValueRef::Null => return Ok((false, format!("sql {shown}: NULL"))),
        ValueRef::Integer(i) => i as f64,
        ValueRef::Real(r) => r,
        ValueRef::Text(t) => bail!(
            "sql on {}: {query:?} returned the text {:?}; expected a number or a boolean",
            db.display(),
            String::from_utf8_lossy(t)
        ),
        ValueRef::Blob(_) => bail!(
            "sql on {}: {query:?} returned a blob; expected a number or a boolean",
            db.display()
        ),
    };
    Ok(match min {
        None => (value != 0.0, format!("sql {shown} = {}", fmt_num(value))),
        Some(min) => {
            let ok = value >= min;
            (
                ok,
                format!(
                    "sql {shown} = {} {} min {}",
                    fmt_num(value),
                    if ok { "≥" } else { "<" },
                    fmt_num(min)
                ),
            )
        }
    })
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn short(q: &str) -> String {
    let one_line: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 60 {
        format!("\"{}…\"", one_line.chars().take(59).collect::<String>())
    } else {
        format!("\"{one_line}\"")
    }
}

/// A digest of the files the globs match (relative path + content hash, sorted) and how
/// many there are. Only the literal directory prefix of each glob is walked, and the
/// project's own `cache/`, `runs/` and `.git/` are never looked into.
fn snapshot(
    root: &Path,
    globs: &[String],
    set: &GlobSet,
    stat: &StatCache,
) -> Result<(String, usize)> {
    let hasher = Hasher::new(stat);
    let mut bases: Vec<PathBuf> = globs.iter().map(|g| literal_prefix(g)).collect();
    bases.sort();
    bases.dedup();
    // Drop bases inside other bases so nothing is walked twice.
    let bases: Vec<PathBuf> = bases
        .iter()
        .filter(|b| !bases.iter().any(|o| o != *b && b.starts_with(o)))
        .cloned()
        .collect();
    let mut entries = BTreeMap::new();
    for base in bases {
        let start = root.join(&base);
        if !start.exists() {
            continue;
        }
        let walk = walkdir::WalkDir::new(&start)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                let rel = e.path().strip_prefix(root).unwrap_or(e.path());
                !matches!(
                    rel.components().next().and_then(|c| c.as_os_str().to_str()),
                    Some("cache" | "runs" | ".git")
                )
            });
        for e in walk {
            let e = e.with_context(|| format!("changed: cannot walk {}", start.display()))?;
            if !e.file_type().is_file() {
                continue;
            }
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            if set.is_match(rel) {
                let (h, _, _) = hasher
                    .file(e.path())
                    .with_context(|| format!("changed: cannot hash {}", e.path().display()))?;
                entries.insert(rel.to_string_lossy().into_owned(), h);
            }
        }
    }
    let mut canon = String::new();
    for (p, h) in &entries {
        canon.push_str(p);
        canon.push('\0');
        canon.push_str(h);
        canon.push('\n');
    }
    Ok((sha256_hex(canon.as_bytes()), entries.len()))
}

/// `data/in/*.csv` → `data/in`; `**/*.rs` → ``; `a/b.txt` → `a/b.txt`.
fn literal_prefix(glob: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in glob.split('/') {
        if comp.contains(['*', '?', '[', '{']) {
            break;
        }
        out.push(comp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("data/in/*.csv"), PathBuf::from("data/in"));
        assert_eq!(literal_prefix("**/*.rs"), PathBuf::new());
        assert_eq!(literal_prefix("a/b.txt"), PathBuf::from("a/b.txt"));
    }
}
