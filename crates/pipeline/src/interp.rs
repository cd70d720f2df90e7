//! `${…}` references in pipeline strings.
//!
//! Grammar: `${params.NAME[.FIELD…]}`, `${stages.STAGE.outs.KEY}` (KEY is the rest, so an
//! output keyed by its path, `out/prep.txt`, works), `${item[.FIELD…]}`, `${key}`. `$${`
//! writes a literal `${`. Whitespace just inside the braces is ignored.
//!
//! What references expand to is limited (see "Limits" in docs/pipeline-format.md), so that
//! params that double each other cannot make the loader allocate without bound:
//! [`MAX_VALUE_BYTES`] per value, [`MAX_TOTAL_BYTES`] for a whole file, and values nest at
//! most [`MAX_DEPTH`] levels, as the YAML itself does.

pub use super::yaml::MAX_DEPTH;

/// What a `${…}` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Param(Vec<String>),
    StageOut { stage: String, key: String },
    Item(Vec<String>),
    Key,
}

impl Ref {
    /// The reference as the user would write it inside `${}`.
    pub fn display(&self) -> String {
        match self {
            Ref::Param(p) => format!("params.{}", p.join(".")),
            Ref::StageOut { stage, key } => format!("stages.{stage}.outs.{key}"),
            Ref::Item(p) if p.is_empty() => "item".into(),
            Ref::Item(p) => format!("item.{}", p.join(".")),
            Ref::Key => "key".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Lit(String),
    /// `offset`: character offset of the `$` in the text, for error positions.
    Ref {
        r: Ref,
        offset: usize,
    },
}

/// A syntax error at a character offset of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

pub const EXPECTED: &str =
    "expected ${params.NAME}, ${stages.STAGE.outs.KEY}, ${item}, ${item.FIELD} or ${key}";

/// Splits `text` into literal text and references.
pub fn parse(text: &str) -> Result<Vec<Seg>, SyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut segs = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && chars.get(i + 1) == Some(&'$') && chars.get(i + 2) == Some(&'{') {
            lit.push_str("${");
            i += 3;
            continue;
        }
        if chars[i] == '$' && chars.get(i + 1) == Some(&'{') {
            let start = i;
            let Some(close) = (i + 2..chars.len()).find(|&j| chars[j] == '}') else {
                return Err(SyntaxError {
                    offset: start,
                    message: "unterminated '${' (expected '}'; write '$${' for a literal '${')"
                        .into(),
                });
            };
            let inner: String = chars[i + 2..close].iter().collect();
            if inner.contains("${") {
                return Err(SyntaxError {
                    offset: start,
                    message: "nested '${' inside a reference (references cannot be nested)".into(),
                });
            }
            let r = parse_ref(inner.trim()).map_err(|message| SyntaxError {
                offset: start,
                message,
            })?;
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(&mut lit)));
            }
            segs.push(Seg::Ref { r, offset: start });
            i = close + 1;
            continue;
        }
        lit.push(chars[i]);
        i += 1;
    }
    if !lit.is_empty() {
        segs.push(Seg::Lit(lit));
    }
    Ok(segs)
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

fn parse_ref(inner: &str) -> Result<Ref, String> {
    if inner.is_empty() {
        return Err(format!("empty reference '${{}}' ({EXPECTED})"));
    }
    let bad = || format!("invalid reference '${{{inner}}}' ({EXPECTED})");
    if inner == "key" {
        return Ok(Ref::Key);
    }
    if inner == "item" {
        return Ok(Ref::Item(Vec::new()));
    }
    if let Some(rest) = inner.strip_prefix("item.") {
        let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if path.iter().all(|p| ident_ok(p)) {
            return Ok(Ref::Item(path));
        }
        return Err(bad());
    }
    if let Some(rest) = inner.strip_prefix("params.") {
        let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if path.iter().all(|p| ident_ok(p)) {
            return Ok(Ref::Param(path));
        }
        return Err(bad());
    }
    if let Some(rest) = inner.strip_prefix("stages.") {
        // Split at the first ".outs.": keys often hold dots (out/prep.txt), stage names rarely.
        let Some((stage, key)) = rest.split_once(".outs.") else {
            return Err(format!(
                "invalid reference '${{{inner}}}' (expected ${{stages.STAGE.outs.KEY}})"
            ));
        };
        if stage.is_empty() || key.is_empty() {
            return Err(format!(
                "invalid reference '${{{inner}}}' (expected ${{stages.STAGE.outs.KEY}})"
            ));
        }
        return Ok(Ref::StageOut {
            stage: stage.to_owned(),
            key: key.to_owned(),
        });
    }
    if inner == "params" || inner == "stages" {
        return Err(bad());
    }
    Err(format!("unknown reference '${{{inner}}}' ({EXPECTED})"))
}

/// The most one value (a string, or a list or mapping with everything in it) may take up
/// through references, counted as in [`json_size`].
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// The most all references of one pipeline file may expand to together (every stage that a
/// `foreach` or `matrix` makes counts its own).
pub const MAX_TOTAL_BYTES: usize = 64 << 20;

/// The size a value counts for: the length of its compact JSON text, escapes aside.
pub fn json_size(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null => 4,
        Value::Bool(b) => 4 + usize::from(!b),
        Value::Number(n) => n.to_string().len(),
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 1 + a.iter().map(|x| json_size(x) + 1).sum::<usize>().max(1),
        Value::Object(o) => {
            1 + o
                .iter()
                .map(|(k, x)| k.len() + 3 + json_size(x) + 1)
                .sum::<usize>()
                .max(1)
        }
    }
}

/// Levels of lists and mappings in a value: 0 for a scalar.
pub fn json_height(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Array(a) => 1 + a.iter().map(json_height).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_height).max().unwrap_or(0),
        _ => 0,
    }
}

/// What an interpolated value took up through references, and how deep it nests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measure {
    /// Bytes that came from references (literal text of the file is not counted).
    pub expanded: usize,
    pub height: usize,
}

impl Measure {
    /// A value that a whole-value reference stands for.
    pub fn of_ref(v: &serde_json::Value) -> Self {
        Measure {
            expanded: json_size(v),
            height: json_height(v),
        }
    }

    /// Adds a member of a list or mapping (this measure is the collection's).
    pub fn add_member(&mut self, m: Measure) {
        self.expanded = self.expanded.saturating_add(m.expanded);
        self.height = self.height.max(m.height + 1);
    }

    /// Why a list or mapping (`what`) measured so is over a limit, if it is.
    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.expanded > MAX_VALUE_BYTES {
            return Err(format!(
                "{what} expands to more than {} through its references (the limit for one interpolated value)",
                mib(MAX_VALUE_BYTES)
            ));
        }
        if self.height > MAX_DEPTH {
            return Err(format!(
                "{what} nests lists and mappings more than {MAX_DEPTH} levels deep once its references are filled in (the limit for a pipeline file)"
            ));
        }
        Ok(())
    }
}

/// `'${params.x}' expands …` for a string or value over [`MAX_VALUE_BYTES`].
pub fn too_big(r: &Ref) -> String {
    format!(
        "'${{{}}}' makes this value larger than {} (the limit for one interpolated value)",
        r.display(),
        mib(MAX_VALUE_BYTES)
    )
}

/// The bytes all references of one file have expanded to, against [`MAX_TOTAL_BYTES`].
#[derive(Debug, Default)]
pub struct Budget {
    spent: usize,
    overrun: bool,
}

/// A charge that did not fit in the [`Budget`].
#[derive(Debug, PartialEq, Eq)]
pub enum Overrun {
    /// The first one: report it.
    First(String),
    /// Reported already; the value is dropped without another message.
    Again,
}

impl Budget {
    /// Charges `bytes` that reference `r` expanded to.
    pub fn charge(&mut self, r: &Ref, bytes: usize) -> Result<(), Overrun> {
        if self.overrun {
            return Err(Overrun::Again);
        }
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > MAX_TOTAL_BYTES {
            self.overrun = true;
            return Err(Overrun::First(format!(
                "'${{{}}}' takes what the references of this file expand to past {} in all (the limit for one pipeline file)",
                r.display(),
                mib(MAX_TOTAL_BYTES)
            )));
        }
        Ok(())
    }
}

fn mib(bytes: usize) -> String {
    format!("{} MiB", bytes >> 20)
}

/// `${…}` text made from a JSON value inside a longer string.
pub fn stringify(v: &serde_json::Value) -> Result<String, &'static str> {
    use serde_json::Value;
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        Value::Array(_) => Err("a list"),
        Value::Object(_) => Err("a mapping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_refs() {
        let s = parse("python x.py --lr ${params.lr} > ${stages.prep.outs.out/prep.txt}").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[1],
            Seg::Ref {
                r: Ref::Param(vec!["lr".into()]),
                offset: 17
            }
        );
        assert_eq!(
            s[3],
            Seg::Ref {
                r: Ref::StageOut {
                    stage: "prep".into(),
                    key: "out/prep.txt".into()
                },
                offset: 32
            }
        );
        assert_eq!(
            parse("${ item.model }").unwrap(),
            vec![Seg::Ref {
                r: Ref::Item(vec!["model".into()]),
                offset: 0
            }]
        );
        assert_eq!(
            parse("a $${x} b").unwrap(),
            vec![Seg::Lit("a ${x} b".into())]
        );
        assert_eq!(
            parse("$5 and $HOME").unwrap(),
            vec![Seg::Lit("$5 and $HOME".into())]
        );
    }

    #[test]
    fn sizes_heights_and_budget() {
        use serde_json::json;
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(12.5),
            json!("ab"),
            json!([]),
            json!({}),
            json!([1, "x", {"k": [true, null]}]),
        ] {
            assert_eq!(json_size(&v), v.to_string().len(), "{v}");
        }
        assert_eq!(json_height(&json!("x")), 0);
        assert_eq!(json_height(&json!([[1], {"a": [[]]}])), 4);
        let mut list = Measure::default();
        list.add_member(Measure::of_ref(&json!([[1]])));
        assert_eq!(
            list,
            Measure {
                expanded: 5,
                height: 3
            }
        );
        assert!(list.check("this list").is_ok());
        list.add_member(Measure {
            expanded: MAX_VALUE_BYTES,
            height: 0,
        });
        assert!(
            list.check("this list")
                .unwrap_err()
                .contains("more than 1 MiB")
        );
        let r = Ref::Param(vec!["p".into()]);
        let mut b = Budget::default();
        assert_eq!(b.charge(&r, MAX_TOTAL_BYTES), Ok(()));
        assert!(matches!(b.charge(&r, 1), Err(Overrun::First(m)) if m.contains("'${params.p}'")));
        assert_eq!(b.charge(&r, 0), Err(Overrun::Again));
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(parse("ab ${params.lr").unwrap_err().offset, 3);
        assert!(
            parse("${}")
                .unwrap_err()
                .message
                .contains("empty reference")
        );
        assert!(
            parse("${foo.bar}")
                .unwrap_err()
                .message
                .contains("unknown reference '${foo.bar}'")
        );
        assert!(
            parse("${stages.a.b}")
                .unwrap_err()
                .message
                .contains("expected ${stages.STAGE.outs.KEY}")
        );
        assert!(parse("${params.}").is_err());
        assert!(parse("${params.a ${b}}").is_err());
    }
}
