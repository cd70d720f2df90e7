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
use crate::dirty_reason::DirtyReason;
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

/// Keys added, changed and removed from `old` to `new`, each as `reason(key, old, new)`.
fn diff_maps<V: PartialEq + Clone>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    reason: impl Fn(String, Option<V>, Option<V>) -> DirtyReason,
    out: &mut Vec<DirtyReason>,
) {
    for (k, nv) in new {
        match old.get(k) {
            None => out.push(reason(k.clone(), None, Some(nv.clone()))),
            Some(ov) if ov != nv => out.push(reason(k.clone(), Some(ov.clone()), Some(nv.clone()))),
            _ => {}
        }
    }
    for (k, ov) in old {
        if !new.contains_key(k) {
            out.push(reason(k.clone(), Some(ov.clone()), None));
        }
    }
}

/// What differs from `old` to `new`, one typed reason per change (its `Display` is the
/// line `status` shows).
pub fn diff(old: &Components, new: &Components) -> Vec<DirtyReason> {
    let mut out = Vec::new();
    if old.version != new.version {
        out.push(DirtyReason::FormatChanged {
            old: old.version,
            new: new.version,
        });
    }
    match (&old.action, &new.action) {
        (ActionComponent::Cmd { cmd: a }, ActionComponent::Cmd { cmd: b }) if a != b => {
            out.push(DirtyReason::CommandChanged {
                old: a.clone(),
                new: b.clone(),
            });
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
                out.push(DirtyReason::KindChanged {
                    old: ka.clone(),
                    new: kb.clone(),
                });
            } else if va != vb {
                out.push(DirtyReason::KindVersionChanged {
                    kind: ka.clone(),
                    old: *va,
                    new: *vb,
                });
            }
            let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
            flatten("", wa, &mut fa);
            flatten("", wb, &mut fb);
            diff_maps(
                &fa,
                &fb,
                |key, old, new| DirtyReason::WithChanged { key, old, new },
                &mut out,
            );
        }
        (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
            let show = |a: &ActionComponent| match a {
                ActionComponent::Cmd { cmd } => format!("cmd: {cmd}"),
                ActionComponent::Builtin { kind, .. } => format!("uses: {kind}"),
            };
            out.push(DirtyReason::ActionChanged {
                old: show(a),
                new: show(b),
            });
        }
        _ => {}
    }
    diff_maps(
        &old.params,
        &new.params,
        |key, old, new| DirtyReason::ParamChanged { key, old, new },
        &mut out,
    );
    diff_maps(
        &old.env,
        &new.env,
        |key, old, new| DirtyReason::EnvChanged { key, old, new },
        &mut out,
    );
    // New and changed inputs, then removed ones: the order `status` has always shown.
    diff_maps(
        &old.deps,
        &new.deps,
        |dep, old, new| DirtyReason::DepChanged { dep, old, new },
        &mut out,
    );
    diff_maps(
        &old.outs,
        &new.outs,
        |key, old, new| DirtyReason::OutputDeclChanged {
            key,
            old: old.map(|o| o.path),
            new: new.map(|o| o.path),
        },
        &mut out,
    );
    if out.is_empty() && old != new {
        out.push(DirtyReason::FingerprintChanged {
            old: old.fingerprint(),
            new: new.fingerprint(),
        });
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

    fn shown(a: &Components, b: &Components) -> Vec<String> {
        diff(a, b).iter().map(|r| r.to_string()).collect()
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
            shown(&base, &c),
            ["dep data/x.csv changed: 3f2a1b0c… → 91bc77d2…"]
        );

        let mut c = base.clone();
        c.params.insert("lr".into(), json!(0.001));
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(shown(&base, &c), ["param lr: 0.0005 → 0.001"]);

        let mut c = base.clone();
        c.action = ActionComponent::Cmd {
            cmd: "cp a c".into(),
        };
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(shown(&base, &c), ["command changed: `cp a b` → `cp a c`"]);

        let mut c = base.clone();
        c.env.insert("SEED".into(), "1".into());
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(shown(&base, &c), ["env SEED added: 1"]);

        let mut c = base.clone();
        c.outs.insert(
            "b".into(),
            OutDecl {
                path: "c".into(),
                cache: true,
            },
        );
        assert_ne!(c.fingerprint(), f0);
        assert_eq!(shown(&base, &c), ["output b: b → c"]);
    }
}
