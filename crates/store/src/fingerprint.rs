//! A stage's identity. The fingerprint is SHA-256 over a canonical, versioned encoding of
//! [`Components`]: the action (command string, or kind + kind version + canonical `with`),
//! the stage's resolved params, its declared env, the content hash of every input, and the
//! declared outputs. Nothing else goes in — no mtimes, cache paths or run ids — so the same
//! work on the same bytes has the same fingerprint on any machine.
//!
//! Declared outputs (key → path) are part of the action's interface: a cache entry says
//! "these outputs, at these paths"; restoring an entry to paths the stage no longer declares
//! would be wrong, so moving an output is a change of the stage.
//!
//! The components are kept in each action cache entry so [`diff`] can say exactly what
//! changed since the last run: `dep data/x.csv changed: 3f2a1b0c… → 91bc77d2…`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::canonical::write_canonical;
use crate::hash::{Hasher, hash_sqlite_query, sha256_hex};
use tsumugi_base::paths::path_str;
use tsumugi_base::project::Project;
use tsumugi_pipeline::{Action, Dep, Stage};

/// Bumped whenever the encoding or the set of components changes: every stage then re-runs.
pub const FINGERPRINT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionComponent {
    Cmd {
        cmd: String,
    },
    Builtin {
        kind: String,
        version: u32,
        with: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutDecl {
    pub path: String,
    pub cache: bool,
}

/// Everything a fingerprint is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Components {
    pub version: u32,
    pub action: ActionComponent,
    pub params: BTreeMap<String, Value>,
    pub env: BTreeMap<String, String>,
    /// Input key (the path as declared, or `sqlite:DB?QUERY`) → content hash.
    pub deps: BTreeMap<String, String>,
    pub outs: BTreeMap<String, OutDecl>,
}

impl Components {
    /// The fingerprint: SHA-256 (hex) of the canonical encoding.
    pub fn fingerprint(&self) -> String {
        let v = serde_json::to_value(self).expect("components serialize");
        let mut buf = b"tsumugi-fingerprint\n".to_vec();
        write_canonical(&v, &mut buf);
        sha256_hex(&buf)
    }
}

/// The key a dependency is known by in components and messages.
pub fn dep_key(dep: &Dep) -> String {
    match dep {
        Dep::Path(p) => path_str(p),
        Dep::Sqlite { db, query } => format!("sqlite:{}?{}", path_str(db), query),
    }
}

/// A dependency's content hash now.
pub fn hash_dep(project: &Project, hasher: &Hasher<'_>, dep: &Dep) -> Result<String> {
    match dep {
        Dep::Path(p) => {
            let abs = project.root().join(p);
            hasher
                .hash(&abs)
                .with_context(|| format!("dependency {}", path_str(p)))
        }
        Dep::Sqlite { db, query } => hash_sqlite_query(&project.root().join(db), query),
    }
}

/// The action part of a stage's components.
pub fn action_component(stage: &Stage) -> ActionComponent {
    match &stage.action {
        Action::Cmd { cmd } => ActionComponent::Cmd { cmd: cmd.clone() },
        Action::Builtin {
            kind,
            version,
            with,
        } => ActionComponent::Builtin {
            kind: kind.clone(),
            version: *version,
            with: with.clone(),
        },
    }
}

/// Components of `stage` given its inputs' hashes (`dep_key` → hash).
pub fn components(stage: &Stage, dep_hashes: BTreeMap<String, String>) -> Components {
    Components {
        version: FINGERPRINT_VERSION,
        action: action_component(stage),
        params: stage.params.clone(),
        env: stage.env.clone(),
        deps: dep_hashes,
        outs: stage
            .outs
            .iter()
            .map(|(k, o)| {
                (
                    k.clone(),
                    OutDecl {
                        path: path_str(&o.path),
                        cache: o.cache,
                    },
                )
            })
            .collect(),
    }
}

/// Hashes every input of `stage` and returns its components. Errors name the stage and input.
pub fn compute(project: &Project, hasher: &Hasher<'_>, stage: &Stage) -> Result<Components> {
    let mut deps = BTreeMap::new();
    for d in &stage.deps {
        let h = match &stage.map {
            // A mapped stage's source counts by its items (key + content), not as raw bytes
            // of a directory that may hold other files.
            Some(m) if matches!(d, Dep::Path(p) if p == m.source.path()) => {
                crate::items::source_hash(project, hasher, m)
            }
            _ => hash_dep(project, hasher, d),
        }
        .with_context(|| format!("stage {}", stage.name))?;
        deps.insert(dep_key(d), h);
    }
    Ok(components(stage, deps))
}

fn short(h: &str) -> String {
    if h.len() > 8 {
        format!("{}…", &h[..8])
    } else {
        h.to_string()
    }
}

fn show_value(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn diff_maps<V: PartialEq>(
    what: &str,
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    show: impl Fn(&V) -> String,
    out: &mut Vec<String>,
) {
    for (k, nv) in new {
        match old.get(k) {
            None => out.push(format!("{what} {k} added: {}", show(nv))),
            Some(ov) if ov != nv => out.push(format!("{what} {k}: {} → {}", show(ov), show(nv))),
            _ => {}
        }
    }
    for (k, ov) in old {
        if !new.contains_key(k) {
            out.push(format!("{what} {k} removed (was {})", show(ov)));
        }
    }
}

/// Human-readable differences from `old` to `new`, one line each.
pub fn diff(old: &Components, new: &Components) -> Vec<String> {
    let mut out = Vec::new();
    if old.version != new.version {
        out.push(format!(
            "fingerprint format changed (v{} → v{})",
            old.version, new.version
        ));
    }
    match (&old.action, &new.action) {
        (ActionComponent::Cmd { cmd: a }, ActionComponent::Cmd { cmd: b }) if a != b => {
            out.push(format!(
                "command changed: `{}` → `{}`",
                show_value(&Value::from(a.as_str())),
                show_value(&Value::from(b.as_str()))
            ));
        }
        (
            ActionComponent::Builtin {
                kind: ka,
                version: va,
                with: wa,
            },
            ActionComponent::Builtin {
                kind: kb,
                version: vb,
                with: wb,
            },
        ) => {
            if ka != kb {
                out.push(format!("kind changed: {ka} → {kb}"));
            } else if va != vb {
                out.push(format!("kind {ka} version {va} → {vb}"));
            }
            let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
            flatten("", wa, &mut fa);
            flatten("", wb, &mut fb);
            diff_maps("with", &fa, &fb, show_value, &mut out);
        }
        (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
            out.push("action changed (command ↔ built-in kind)".to_string());
        }
        _ => {}
    }
    diff_maps("param", &old.params, &new.params, show_value, &mut out);
    diff_maps("env", &old.env, &new.env, |s| s.clone(), &mut out);
    for (k, nh) in &new.deps {
        match old.deps.get(k) {
            None => out.push(format!("new dep {k} ({})", short(nh))),
            Some(oh) if oh != nh => {
                out.push(format!("dep {k} changed: {} → {}", short(oh), short(nh)))
            }
            _ => {}
        }
    }
    for k in old.deps.keys() {
        if !new.deps.contains_key(k) {
            out.push(format!("dep {k} removed"));
        }
    }
    diff_maps("output", &old.outs, &new.outs, |o| o.path.clone(), &mut out);
    if out.is_empty() && old != new {
        out.push("fingerprint changed".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn comps() -> Components {
        Components {
            version: FINGERPRINT_VERSION,
            action: ActionComponent::Cmd {
                cmd: "cp a b".into(),
            },
            params: [("lr".to_string(), json!(0.0005))].into(),
            env: BTreeMap::new(),
            deps: [("data/x.csv".to_string(), "3f2a1b0c99".to_string())].into(),
            outs: [(
                "b".to_string(),
                OutDecl {
                    path: "b".into(),
                    cache: true,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn fingerprint_is_stable_and_key_order_independent() {
        let mut a = comps();
        a.action = ActionComponent::Builtin {
            kind: "k".into(),
            version: 1,
            with: json!({"x": 1, "y": {"b": 2, "a": 3}}),
        };
        let mut b = a.clone();
        b.action = ActionComponent::Builtin {
            kind: "k".into(),
            version: 1,
            with: json!({"y": {"a": 3, "b": 2}, "x": 1}),
        };
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }

    #[test]
    fn every_component_changes_the_fingerprint_and_diff_names_it() {
        let base = comps();
        let f0 = base.fingerprint();
        let mut c = base.clone();
        c.deps.insert("data/x.csv".into(), "91bc77d2aa".into());
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(
            diff(&base, &c),
            ["dep data/x.csv changed: 3f2a1b0c… → 91bc77d2…"]
        );

        let mut c = base.clone();
        c.params.insert("lr".into(), json!(0.001));
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(diff(&base, &c), ["param lr: 0.0005 → 0.001"]);

        let mut c = base.clone();
        c.action = ActionComponent::Cmd {
            cmd: "cp a c".into(),
        };
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(diff(&base, &c), ["command changed: `cp a b` → `cp a c`"]);

        let mut c = base.clone();
        c.env.insert("SEED".into(), "1".into());
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(diff(&base, &c), ["env SEED added: 1"]);

        let mut c = base.clone();
        c.outs.insert(
            "b".into(),
            OutDecl {
                path: "c".into(),
                cache: true,
            },
        );
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(diff(&base, &c), ["output b: b → c"]);
    }
}
