//! `${…}` references in pipeline strings.
//!
//! Grammar: `${params.NAME[.FIELD…]}`, `${stages.STAGE.outs.KEY}` (KEY is the rest, so an
//! output keyed by its path, `out/prep.txt`, works), `${item[.FIELD…]}`, `${key}`. `$${`
//! writes a literal `${`. Whitespace just inside the braces is ignored.

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
