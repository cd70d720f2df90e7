//! A kind's `with:` settings as a type: one `#[derive(Deserialize, JsonSchema)]` struct per
//! kind gives the run-time parsing, the engine's load-time check and the JSON Schema that
//! editors complete `with:` fields from.
//!
//! ```
//! use tsumugi_stages::kind;
//! use serde_json::json;
//!
//! let pairs = kind("build-pairs").unwrap();
//! let err = (pairs.settings.validate)(&json!({"input": "a.csv", "text_a": 0, "text_b": 1, "lable": 2}))
//!     .unwrap_err();
//! assert_eq!(err.path_string(), "lable");
//! assert!(err.to_string().contains("unknown field `lable`"));
//! ```
//!
//! The check needs no `ml` feature: the types are compiled in every build.

use std::fmt;

use schemars::{JsonSchema, Schema};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How a kind's `with:` is checked and described.
#[derive(Debug, Clone, Copy)]
pub struct SettingsInfo {
    /// Deserializes `with:` (after `${…}` interpolation) into the kind's settings type.
    pub validate: fn(&Value) -> Result<(), SettingsError>,
    /// The JSON Schema (draft 2020-12) of `with:`.
    pub schema: fn() -> Schema,
}

impl SettingsInfo {
    /// The settings of type `T`.
    pub const fn of<T: DeserializeOwned + JsonSchema>() -> Self {
        SettingsInfo {
            validate: validate_as::<T>,
            schema: schema_of::<T>,
        }
    }

    /// Any mapping is accepted (stand-in kinds in tests).
    pub const ANY: SettingsInfo = SettingsInfo {
        validate: |_| Ok(()),
        schema: || schemars::json_schema!({"type": "object"}),
    };
}

/// One step of the path from `with:` to the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// What is wrong with a `with:` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A key the settings type does not have; `expected` lists the keys it has.
    UnknownField {
        field: String,
        expected: Vec<String>,
    },
    /// A required key is absent from the mapping at the path.
    MissingField(String),
    /// A string that is none of the names the field takes.
    UnknownVariant {
        found: String,
        expected: Vec<String>,
    },
    /// Wrong type or value: what was expected, and what was found when serde says it.
    Invalid {
        expected: String,
        found: Option<String>,
    },
}

/// A `with:` that does not deserialize: where (the path of keys and indices from `with:`;
/// for an unknown or missing field, the mapping that holds it) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub path: Vec<PathSeg>,
    pub problem: Problem,
}

impl SettingsError {
    /// The path as `optim.lr`, `fail_if[1].metric`; empty for `with:` itself.
    pub fn path_string(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                PathSeg::Key(k) if s.is_empty() => s.push_str(k),
                PathSeg::Key(k) => {
                    s.push('.');
                    s.push_str(k)
                }
                PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        if let Problem::UnknownField { field, .. } = &self.problem {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(field);
        }
        s
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.path_string();
        let at = if at.is_empty() {
            String::new()
        } else {
            format!("{at}: ")
        };
        match &self.problem {
            Problem::UnknownField { field, expected } => write!(
                f,
                "{at}unknown field `{field}` (expected one of: {})",
                expected.join(", ")
            ),
            Problem::MissingField(field) => write!(f, "{at}missing field `{field}`"),
            Problem::UnknownVariant { found, expected } => write!(
                f,
                "{at}expected one of: {}, found {found:?}",
                expected.join(", ")
            ),
            Problem::Invalid {
                expected,
                found: Some(found),
            } => write!(f, "{at}expected {expected}, found {found}"),
            Problem::Invalid {
                expected,
                found: None,
            } => write!(f, "{at}{expected}"),
        }
    }
}

impl std::error::Error for SettingsError {}

/// Deserializes `with` as `T`, the error carrying the path of the offending value.
pub fn parse<T: DeserializeOwned>(with: &Value) -> Result<T, SettingsError> {
    serde_path_to_error::deserialize::<_, T>(with).map_err(|e| {
        let mut path: Vec<PathSeg> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                _ => None,
            })
            .collect();
        let problem = problem(&e.into_inner().to_string());
        // The path of an unknown field ends with the field itself: keep its mapping.
        if let Problem::UnknownField { field, .. } = &problem
            && path.last() == Some(&PathSeg::Key(field.clone()))
        {
            path.pop();
        }
        SettingsError { path, problem }
    })
}

fn validate_as<T: DeserializeOwned>(with: &Value) -> Result<(), SettingsError> {
    parse::<T>(with).map(drop)
}

fn schema_of<T: JsonSchema>() -> Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// serde's messages → a [`Problem`], Rust type names in them said in words.
fn problem(msg: &str) -> Problem {
    let ticked =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, tail)) = rest.split_once('`')
    {
        return Problem::UnknownField {
            field: field.to_owned(),
            expected: ticked(tail),
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        return Problem::MissingField(field.to_owned());
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `")
        && let Some((found, tail)) = rest.split_once('`')
    {
        return Problem::UnknownVariant {
            found: found.to_owned(),
            expected: ticked(tail),
        };
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return Problem::Invalid {
                expected: type_words(expected),
                found: Some(found_words(found)),
            };
        }
    }
    Problem::Invalid {
        expected: msg.to_owned(),
        found: None,
    }
}

/// serde's `expected …` with Rust type names said in words.
fn type_words(t: &str) -> String {
    match t {
        "f64" | "f32" => "a number".into(),
        "usize" | "u64" | "u32" | "u16" | "u8" => "a non-negative integer".into(),
        "i64" | "i32" => "an integer".into(),
        "a nonzero usize" | "a nonzero u64" | "a nonzero u32" => "a positive integer".into(),
        "path string" => "a path (a string)".into(),
        "a sequence" => "a list".into(),
        t if t == "struct" || t.starts_with("struct ") => "a mapping".into(),
        t => t.into(),
    }
}

/// serde's `invalid type: string "fast"` → `the string "fast"`, `map` → `a mapping`.
fn found_words(found: &str) -> String {
    let unticked = |s: &str| s.trim_matches('`').to_owned();
    if let Some(s) = found.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(s) = found.strip_prefix("integer ") {
        unticked(s)
    } else if let Some(s) = found.strip_prefix("floating point ") {
        unticked(s)
    } else if let Some(s) = found.strip_prefix("boolean ") {
        unticked(s)
    } else {
        match found {
            "map" => "a mapping".into(),
            "sequence" => "a list".into(),
            "unit value" | "null" => "null".into(),
            f => f.into(),
        }
    }
}

/// Deserializes `T` where the value must be present and not null, as `Some(T)`: with
/// `#[serde(default)]`, absent is `None` and null is an error (unlike `Option<T>`).
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// With `#[serde(default)]`: absent is `None`, null is `Some(None)`.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        lr: Option<f64>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        label: usize,
        optim: Option<Inner>,
        list: Option<Vec<Inner>>,
    }

    #[test]
    fn errors_carry_the_path_and_a_plain_message() {
        let e = parse::<Outer>(&json!({"lable": 1})).unwrap_err();
        assert_eq!(
            e.problem,
            Problem::UnknownField {
                field: "lable".into(),
                expected: vec!["label".into(), "optim".into(), "list".into()]
            }
        );
        assert_eq!((e.path.clone(), e.path_string()), (vec![], "lable".into()));

        let e = parse::<Outer>(&json!({"label": 1, "optim": {"lr": "fast"}})).unwrap_err();
        assert_eq!(e.path_string(), "optim.lr");
        assert_eq!(
            e.to_string(),
            "optim.lr: expected a number, found the string \"fast\""
        );

        let e = parse::<Outer>(&json!({"label": 1, "list": [{}, {"lr": 1, "x": 2}]})).unwrap_err();
        assert_eq!(e.path, vec![PathSeg::Key("list".into()), PathSeg::Index(1)]);
        assert_eq!(e.path_string(), "list[1].x");

        let e = parse::<Outer>(&json!({"optim": {}})).unwrap_err();
        assert_eq!(e.problem, Problem::MissingField("label".into()));
        assert!(e.path.is_empty());

        let e = parse::<Outer>(&json!({"label": -1})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "label: expected a non-negative integer, found -1"
        );
    }
}
