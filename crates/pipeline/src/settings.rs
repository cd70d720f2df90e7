//! The load-time check of a built-in stage's `with:`: the kind's settings type (see
//! `tsumugi_stages::kinds::settings`) deserializes the interpolated value, and the path of
//! the offending key or value is walked back through the YAML nodes to its `file:line:col`.
//!
//! An unknown key is reported at the key, with a did-you-mean; a missing key at the mapping
//! that lacks it (`with:` itself, or the key holding a nested mapping); a wrong type or value
//! at the value. Where the path leaves the file (a whole `${params.x}` standing for a
//! mapping), the deepest node written in the file is named.

use tsumugi_stages::KindInfo;
use tsumugi_stages::kinds::{PathSeg, Problem, SettingsError};

use super::error::did_you_mean;
use super::yaml::{Kind, Node, Pos};

/// Checks `with` (interpolated) against `kind`'s settings: `Err((pos, message))` when it
/// does not fit. `with_node` is the `with:` value as written (None when absent) and
/// `with_pos` where `with:` (or, without it, `uses:`) is.
pub(super) fn check(
    kind: &KindInfo,
    with: &serde_json::Value,
    with_node: Option<&Node>,
    with_pos: Pos,
    stage: &str,
) -> Result<(), (Pos, String)> {
    (kind.settings.validate)(with).map_err(|e| diagnostic(&e, with_node, with_pos, stage, kind))
}

fn diagnostic(
    e: &SettingsError,
    with_node: Option<&Node>,
    with_pos: Pos,
    stage: &str,
    kind: &KindInfo,
) -> (Pos, String) {
    // Walk the path through the nodes: `node` is the deepest one found, `key_pos` the key
    // that holds it (where a nested mapping is named).
    let mut node = with_node;
    let mut key_pos = with_pos;
    let mut walked = 0;
    for seg in &e.path {
        let next = match (seg, node.map(|n| &n.kind)) {
            (PathSeg::Key(k), Some(Kind::Map(entries))) => entries
                .iter()
                .find(|(key, _)| key.scalar_text() == Some(k.as_str()))
                .map(|(key, v)| (key.pos, v)),
            (PathSeg::Index(i), Some(Kind::Seq(items))) => items.get(*i).map(|v| (v.pos, v)),
            _ => None,
        };
        match next {
            Some((kp, v)) => {
                key_pos = kp;
                node = Some(v);
                walked += 1;
            }
            None => break,
        }
    }
    let inside = walked == e.path.len();
    let mut at = String::from("with");
    for seg in &e.path {
        match seg {
            PathSeg::Key(k) => at.push_str(&format!(".{k}")),
            PathSeg::Index(i) => at.push_str(&format!("[{i}]")),
        }
    }
    let what = format!("'{at}' of stage '{stage}'");
    let value_pos = node.map(|n| n.pos).unwrap_or(key_pos);
    match &e.problem {
        Problem::UnknownField { field, expected } => {
            let pos = node
                .filter(|_| inside)
                .and_then(|n| match &n.kind {
                    Kind::Map(entries) => entries
                        .iter()
                        .find(|(k, _)| k.scalar_text() == Some(field.as_str()))
                        .map(|(k, _)| k.pos),
                    _ => None,
                })
                .unwrap_or(value_pos);
            let hint = did_you_mean(field, expected.iter().map(String::as_str))
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            (
                pos,
                format!(
                    "unknown key '{field}' in {what} (expected one of: {}{hint})",
                    expected.join(", ")
                ),
            )
        }
        Problem::MissingField(field) => (
            key_pos,
            format!(
                "missing key '{field}' in {what} (required by {})",
                kind.name
            ),
        ),
        Problem::UnknownVariant { found, expected } => {
            let hint = did_you_mean(found, expected.iter().map(String::as_str))
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            (
                value_pos,
                format!(
                    "expected one of {} for {what}, found '{found}'{hint}",
                    expected.join(", ")
                ),
            )
        }
        Problem::Invalid {
            expected,
            found: Some(found),
        } => (
            value_pos,
            format!("expected {expected} for {what}, found {found}"),
        ),
        Problem::Invalid {
            expected,
            found: None,
        } => (value_pos, format!("{expected} in {what}")),
    }
}
