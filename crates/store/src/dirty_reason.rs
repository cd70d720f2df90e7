//! Why a stage is not fresh, as data. Each [`DirtyReason`] carries the old and the new value
//! of what changed (cargo's `DirtyReason` is the model); turning one into the sentence that
//! `status`, `run --dry-run` and `docs/json-output.md` show happens in one place, its
//! [`Display`](std::fmt::Display) impl.
//!
//! [`crate::fingerprint::diff`] produces the reasons that come from comparing two
//! fingerprints' components; `tsumugi_exec::freshness` adds those that come from the cache and
//! the workspace (no entry, an output missing or modified, forced, upstream stale). This
//! module imports neither: it is plain data and its sentences.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum DirtyReason {
    /// No run of this stage is recorded and there is no cache entry.
    NeverRun,
    /// No cache entry for the current fingerprint, and no earlier one to compare with.
    NoCacheEntry,
    /// The previous fingerprint's entry was garbage-collected: the change is unknown.
    EntryGone {
        old: String,
        new: String,
    },
    /// The fingerprint encoding itself changed ([`crate::fingerprint::FINGERPRINT_VERSION`]).
    FormatChanged {
        old: u32,
        new: u32,
    },
    CommandChanged {
        old: String,
        new: String,
    },
    /// A command became a built-in kind or back: each side is the command (`cmd: …`) or
    /// the kind (`uses: NAME`).
    ActionChanged {
        old: String,
        new: String,
    },
    KindChanged {
        old: String,
        new: String,
    },
    KindVersionChanged {
        kind: String,
        old: u32,
        new: u32,
    },
    /// A (flattened, `a.b`) key of a built-in kind's `with:`; `None` is absent.
    WithChanged {
        key: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    ParamChanged {
        key: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    EnvChanged {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// An input's content hash; `None` is an input added to or removed from the list.
    DepChanged {
        dep: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// A declared output's path (key → path); `None` is an output added or removed.
    OutputDeclChanged {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// The components differ in a way none of the above names.
    FingerprintChanged {
        old: String,
        new: String,
    },
    /// An input does not exist (yet), so the fingerprint cannot be computed.
    DepMissing {
        dep: String,
    },
    /// Hashing the inputs failed for another reason.
    InputError {
        message: String,
    },
    Forced,
    /// An output (or metrics file) is not in the workspace. `restorable`: the cache has it.
    OutputMissing {
        path: String,
        restorable: bool,
    },
    /// An output's content is not what the cache entry recorded; it will be restored.
    OutputModified {
        path: String,
        old: String,
        new: String,
    },
    /// A stage this one depends on is stale, so this one will run after it.
    UpstreamStale {
        stage: String,
    },
    /// A `map:` stage's items: the per-item summary of `tsumugi_exec::map::ItemCounts::describe`.
    Items {
        summary: String,
    },
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

/// `WHAT KEY added: V` / `WHAT KEY: OLD → NEW` / `WHAT KEY removed (was V)`.
fn change<T>(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    key: &str,
    old: &Option<T>,
    new: &Option<T>,
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    match (old, new) {
        (None, Some(n)) => write!(f, "{what} {key} added: {}", show(n)),
        (Some(o), Some(n)) => write!(f, "{what} {key}: {} → {}", show(o), show(n)),
        (Some(o), None) => write!(f, "{what} {key} removed (was {})", show(o)),
        (None, None) => write!(f, "{what} {key} changed"),
    }
}

impl fmt::Display for DirtyReason {
    /// The one sentence per reason (see the table in docs/json-output.md).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DirtyReason::*;
        match self {
            NeverRun => write!(f, "never run"),
            NoCacheEntry => write!(f, "no cache entry for the current fingerprint"),
            EntryGone { old, new } => write!(
                f,
                "fingerprint changed ({} → {}; the previous cache entry is gone)",
                &old[..8.min(old.len())],
                &new[..8.min(new.len())]
            ),
            FormatChanged { old, new } => {
                write!(f, "fingerprint format changed (v{old} → v{new})")
            }
            CommandChanged { old, new } => write!(
                f,
                "command changed: `{}` → `{}`",
                show_value(&Value::from(old.as_str())),
                show_value(&Value::from(new.as_str()))
            ),
            // The sentence predates the typed reason; both sides are always the two kinds.
            ActionChanged { .. } => write!(f, "action changed (command ↔ built-in kind)"),
            KindChanged { old, new } => write!(f, "kind changed: {old} → {new}"),
            KindVersionChanged { kind, old, new } => {
                write!(f, "kind {kind} version {old} → {new}")
            }
            WithChanged { key, old, new } => change(f, "with", key, old, new, show_value),
            ParamChanged { key, old, new } => change(f, "param", key, old, new, show_value),
            EnvChanged { key, old, new } => change(f, "env", key, old, new, |s| s.clone()),
            DepChanged { dep, old, new } => match (old, new) {
                (None, Some(n)) => write!(f, "new dep {dep} ({})", short(n)),
                (Some(o), Some(n)) => {
                    write!(f, "dep {dep} changed: {} → {}", short(o), short(n))
                }
                (_, None) => write!(f, "dep {dep} removed"),
            },
            OutputDeclChanged { key, old, new } => {
                change(f, "output", key, old, new, |s| s.clone())
            }
            FingerprintChanged { .. } => write!(f, "fingerprint changed"),
            DepMissing { dep } => write!(f, "dep {dep} missing"),
            InputError { message } => write!(f, "{message}"),
            Forced => write!(f, "forced"),
            OutputMissing { path, restorable } => write!(
                f,
                "output {path} missing ({})",
                if *restorable {
                    "restorable from cache"
                } else {
                    "not cached"
                }
            ),
            OutputModified { path, .. } => {
                write!(f, "output {path} modified (restorable from cache)")
            }
            UpstreamStale { stage } => write!(f, "upstream stage {stage} is stale"),
            Items { summary } => write!(f, "{summary}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One example of each variant, with the words its sentence must contain: what changed
    /// and, where the variant carries them, the old and the new value.
    fn examples() -> Vec<(DirtyReason, Vec<&'static str>)> {
        use DirtyReason::*;
        let all = vec![
            NeverRun,
            NoCacheEntry,
            EntryGone {
                old: "aaaaaaaa11".into(),
                new: "bbbbbbbb22".into(),
            },
            FormatChanged { old: 1, new: 2 },
            CommandChanged {
                old: "cp a b".into(),
                new: "cp a c".into(),
            },
            ActionChanged {
                old: "cmd: x".into(),
                new: "uses: k".into(),
            },
            KindChanged {
                old: "tokenize".into(),
                new: "embed".into(),
            },
            KindVersionChanged {
                kind: "tokenize".into(),
                old: 3,
                new: 4,
            },
            WithChanged {
                key: "optim.lr".into(),
                old: Some(json!(0.1)),
                new: Some(json!(0.2)),
            },
            ParamChanged {
                key: "lr".into(),
                old: Some(json!(0.0005)),
                new: None,
            },
            EnvChanged {
                key: "SEED".into(),
                old: None,
                new: Some("7".into()),
            },
            DepChanged {
                dep: "data/x.csv".into(),
                old: Some("3f2a1b0c99".into()),
                new: Some("91bc77d2aa".into()),
            },
            OutputDeclChanged {
                key: "model".into(),
                old: Some("out/a".into()),
                new: Some("out/b".into()),
            },
            FingerprintChanged {
                old: "aaaaaaaa".into(),
                new: "bbbbbbbb".into(),
            },
            DepMissing {
                dep: "data/x.csv".into(),
            },
            InputError {
                message: "cannot read data/x.csv: permission denied".into(),
            },
            Forced,
            OutputMissing {
                path: "out/m.json".into(),
                restorable: true,
            },
            OutputModified {
                path: "out/m.json".into(),
                old: "1111".into(),
                new: "2222".into(),
            },
            UpstreamStale {
                stage: "prepare".into(),
            },
            Items {
                summary: "caption: 1 of 3 items stale (added: b.png)".into(),
            },
        ];
        all.into_iter()
            .map(|r| {
                // Exhaustive: a new variant does not compile until it has its expectation.
                let words: Vec<&'static str> = match &r {
                    NeverRun => vec!["never run"],
                    NoCacheEntry => vec!["no cache entry"],
                    EntryGone { .. } => vec!["aaaaaaaa", "bbbbbbbb", "gone"],
                    FormatChanged { .. } => vec!["format", "v1", "v2"],
                    CommandChanged { .. } => vec!["command", "cp a b", "cp a c"],
                    ActionChanged { .. } => vec!["action", "command", "built-in kind"],
                    KindChanged { .. } => vec!["kind", "tokenize", "embed"],
                    KindVersionChanged { .. } => vec!["tokenize", "version", "3", "4"],
                    WithChanged { .. } => vec!["with optim.lr", "0.1", "0.2"],
                    ParamChanged { .. } => vec!["param lr", "removed", "0.0005"],
                    EnvChanged { .. } => vec!["env SEED", "added", "7"],
                    DepChanged { .. } => vec!["dep data/x.csv", "3f2a1b0c", "91bc77d2"],
                    OutputDeclChanged { .. } => vec!["output model", "out/a", "out/b"],
                    FingerprintChanged { .. } => vec!["fingerprint changed"],
                    DepMissing { .. } => vec!["dep data/x.csv", "missing"],
                    InputError { .. } => vec!["data/x.csv", "permission denied"],
                    Forced => vec!["forced"],
                    OutputMissing { .. } => vec!["output out/m.json", "missing", "restorable"],
                    OutputModified { .. } => vec!["output out/m.json", "modified"],
                    UpstreamStale { .. } => vec!["upstream stage prepare", "stale"],
                    Items { .. } => vec!["caption", "1 of 3"],
                };
                (r, words)
            })
            .collect()
    }

    #[test]
    fn every_reason_presents_a_sentence_naming_what_changed() {
        for (r, words) in examples() {
            let s = r.to_string();
            for w in words {
                assert!(s.contains(w), "{r:?} presents {s:?}, which lacks {w:?}");
            }
        }
    }

    #[test]
    fn sentences_users_see_are_unchanged() {
        let r = DirtyReason::DepChanged {
            dep: "data/x.csv".into(),
            old: Some("3f2a1b0c99".into()),
            new: Some("91bc77d2aa".into()),
        };
        assert_eq!(
            r.to_string(),
            "dep data/x.csv changed: 3f2a1b0c… → 91bc77d2…"
        );
        let r = DirtyReason::OutputMissing {
            path: "b".into(),
            restorable: false,
        };
        assert_eq!(r.to_string(), "output b missing (not cached)");
        let r = DirtyReason::DepChanged {
            dep: "d".into(),
            old: None,
            new: Some("91bc77d2aa".into()),
        };
        assert_eq!(r.to_string(), "new dep d (91bc77d2…)");
    }
}
