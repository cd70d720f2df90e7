//! Metrics files, the one reader: what command stages declare in `metrics:`, what built-in
//! kinds write, what registry gates read. JSON, or YAML by extension (`.yaml`/`.yml`); an
//! object whose numbers (and booleans, as 0/1) are metrics, nested keys joined with `.`,
//! and a list of numbers a per-step series (step = index).
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let p = dir.path().join("m.json");
//! std::fs::write(&p, r#"{"eval": {"acc": 0.9}, "loss": [1.0, 0.5]}"#).unwrap();
//! let rows = tsumugi_base::metrics_file::read(&p).unwrap();
//! assert_eq!(rows[0].name, "eval.acc");
//! assert_eq!(rows[2].step, Some(1));
//! assert_eq!(tsumugi_base::metrics_file::read_final(&p).unwrap()["eval.acc"], 0.9);
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// One value of a metrics file.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    /// `Some(i)` for the i-th value of a series, `None` for a final value.
    pub step: Option<i64>,
    pub value: f64,
}

/// A metric value as people read it: a whole number as an integer (`1379`, not
/// `1379.000000`), anything else with six decimals; `signed` adds `+` to non-negatives
/// (differences).
///
/// ```
/// use tsumugi_base::metrics_file::display;
/// assert_eq!(display(1379.0, false), "1379");
/// assert_eq!(display(0.5, false), "0.500000");
/// assert_eq!(display(3.0, true), "+3");
/// ```
pub fn display(v: f64, signed: bool) -> String {
    // Below 2^53 a whole f64 is an exact integer; beyond, or NaN/inf, fall back to floats.
    let whole = v.is_finite() && v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15;
    match (whole, signed) {
        (true, false) => format!("{}", v as i64),
        (true, true) => format!("{:+}", v as i64),
        (false, false) => format!("{v:.6}"),
        (false, true) => format!("{v:+.6}"),
    }
}

/// Every metric of a metrics file, in file order.
pub fn read(path: &Path) -> Result<Vec<Metric>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read metrics file {}", path.display()))?;
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let v: serde_json::Value = if is_yaml {
        yaml::parse(&text)
            .with_context(|| format!("metrics file {} is not valid YAML", path.display()))?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("metrics file {} is not valid JSON", path.display()))?
    };
    if !v.is_object() {
        bail!(
            "metrics file {} must hold an object of numbers",
            path.display()
        );
    }
    let mut rows = Vec::new();
    flatten("", &v, &mut rows);
    Ok(rows)
}

/// The final (non-series) values of a metrics file by name.
pub fn read_final(path: &Path) -> Result<BTreeMap<String, f64>> {
    Ok(read(path)?
        .into_iter()
        .filter(|m| m.step.is_none())
        .map(|m| (m.name, m.value))
        .collect())
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<Metric>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push(Metric {
                    name: prefix.to_string(),
                    step: None,
                    value: f,
                });
            }
        }
        Value::Bool(b) => out.push(Metric {
            name: prefix.to_string(),
            step: None,
            value: f64::from(u8::from(*b)),
        }),
        Value::Array(a) if a.iter().all(|x| x.is_number()) => {
            for (i, x) in a.iter().enumerate() {
                out.push(Metric {
                    name: prefix.to_string(),
                    step: Some(i as i64),
                    value: x.as_f64().unwrap_or(f64::NAN),
                });
            }
        }
        _ => {}
    }
}

/// A small YAML reader for metrics files (mappings, sequences, scalars), on saphyr-parser.
mod yaml {
    use anyhow::{Result, bail};
    use saphyr_parser::{Event, Parser};
    use serde_json::{Map, Value};

    /// As deep as serde_json's own limit, so flattening never runs out of stack.
    const MAX_DEPTH: usize = 128;

    enum Frame {
        Seq(Vec<Value>),
        Map(Map<String, Value>, Option<String>),
    }

    fn scalar(text: &str, plain: bool) -> Value {
        if !plain {
            return Value::String(text.to_string());
        }
        match text {
            "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
            "true" | "True" | "TRUE" => return Value::Bool(true),
            "false" | "False" | "FALSE" => return Value::Bool(false),
            _ => {}
        }
        if let Ok(i) = text.parse::<i64>() {
            return Value::from(i);
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::from(f),
            _ => match text {
                ".nan" | ".NaN" | ".NAN" => Value::Null,
                _ => Value::String(text.to_string()),
            },
        }
    }

    fn push(stack: &mut [Frame], root: &mut Option<Value>, v: Value) -> Result<()> {
        match stack.last_mut() {
            None => *root = Some(v),
            Some(Frame::Seq(s)) => s.push(v),
            Some(Frame::Map(m, key)) => match key.take() {
                None => match v {
                    Value::String(s) => *key = Some(s),
                    other => *key = Some(other.to_string()),
                },
                Some(k) => {
                    m.insert(k, v);
                }
            },
        }
        Ok(())
    }

    pub fn parse(text: &str) -> Result<Value> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut root = None;
        for ev in Parser::new_from_str(text) {
            let (ev, span) = match ev {
                Ok(x) => x,
                Err(e) => bail!("{e}"),
            };
            let _ = span;
            match ev {
                Event::Scalar(t, style, _, _) => {
                    let v = scalar(&t, style == saphyr_parser::ScalarStyle::Plain);
                    push(&mut stack, &mut root, v)?;
                }
                Event::SequenceStart(..) | Event::MappingStart(..) if stack.len() >= MAX_DEPTH => {
                    bail!("nested deeper than {MAX_DEPTH} levels")
                }
                Event::SequenceStart(..) => stack.push(Frame::Seq(Vec::new())),
                Event::MappingStart(..) => stack.push(Frame::Map(Map::new(), None)),
                Event::SequenceEnd | Event::MappingEnd => {
                    let v = match stack.pop() {
                        Some(Frame::Seq(s)) => Value::Array(s),
                        Some(Frame::Map(m, _)) => Value::Object(m),
                        None => bail!("unbalanced YAML"),
                    };
                    push(&mut stack, &mut root, v)?;
                }
                Event::Alias(_) => bail!("aliases are not supported in metrics files"),
                _ => {}
            }
        }
        Ok(root.unwrap_or(Value::Null))
    }
}
