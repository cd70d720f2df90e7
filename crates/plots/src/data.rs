//! A plot file as a table: JSON (an array of objects, or an object whose array value holds
//! them, as DVC's `{"roc": [{…}]}`), CSV or TSV with a header row.
//!
//! A JSON object with several arrays of objects (train-lora's `history.json`: `steps` and
//! `evals`) gives the array whose rows have every field the plot names (x and y); when more
//! than one has them, the longest (the per-step log rather than the periodic evaluations).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One value of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Num(f64),
    Text(String),
}

impl Cell {
    pub fn num(&self) -> Option<f64> {
        match self {
            Cell::Num(v) => Some(*v),
            Cell::Text(t) => t.trim().parse().ok(),
        }
    }
    /// As a class label (confusion plots): whole numbers without `.0`.
    pub fn label(&self) -> String {
        match self {
            Cell::Num(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", *v as i64),
            Cell::Num(v) => v.to_string(),
            Cell::Text(t) => t.clone(),
        }
    }
}

/// Columns in first-seen order; a row lacks a column where it is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Cell>>>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
    /// Columns with a number in every row that has them (and at least one).
    pub fn numeric_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|&i| {
                let cells: Vec<&Cell> = self.rows.iter().filter_map(|r| r[i].as_ref()).collect();
                !cells.is_empty() && cells.iter().all(|c| c.num().is_some())
            })
            .collect()
    }
}

/// Parses `bytes`, the content of `name` (its extension says the format); `fields` are the
/// fields the plot reads, which choose among several arrays of a JSON object.
pub fn parse(name: &Path, bytes: &[u8], fields: &[&str]) -> Result<Table> {
    let ext = name
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => {
            json(bytes, fields).with_context(|| format!("plot file {}", name.display()))
        }
        Some("csv") => {
            delimited(bytes, b',').with_context(|| format!("plot file {}", name.display()))
        }
        Some("tsv") => {
            delimited(bytes, b'\t').with_context(|| format!("plot file {}", name.display()))
        }
        _ => bail!(
            "plot file {}: expected a .json, .csv or .tsv file",
            name.display()
        ),
    }
}

fn json(bytes: &[u8], fields: &[&str]) -> Result<Table> {
    let v: Value = serde_json::from_slice(bytes)?;
    let rows = match &v {
        Value::Array(a) => a,
        Value::Object(o) => {
            let arrays: Vec<(&String, &Vec<Value>)> = o
                .iter()
                .filter_map(|(k, v)| Some((k, v.as_array()?)))
                .collect();
            let has_fields = |a: &Vec<Value>| {
                a.first()
                    .and_then(Value::as_object)
                    .is_some_and(|row| fields.iter().all(|f| row.contains_key(*f)))
            };
            let fitting = arrays.iter().filter(|(_, a)| has_fields(a));
            match (arrays.as_slice(), fitting.max_by_key(|(_, a)| a.len())) {
                ([(_, one)], _) => *one,
                (_, Some((_, best))) => *best,
                ([], None) => bail!("expected an array of objects, or an object holding one"),
                (_, None) => bail!(
                    "none of its arrays ({}) has rows with the fields {}",
                    arrays
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    fields.join(", ")
                ),
            }
        }
        _ => bail!("expected an array of objects"),
    };
    let mut t = Table::default();
    for (i, r) in rows.iter().enumerate() {
        let Value::Object(o) = r else {
            bail!("item {i} is not an object");
        };
        let mut row = vec![None; t.columns.len()];
        for (k, v) in o {
            let cell = match v {
                Value::Number(n) => n.as_f64().map(Cell::Num),
                Value::Bool(b) => Some(Cell::Num(if *b { 1.0 } else { 0.0 })),
                Value::String(s) => Some(Cell::Text(s.clone())),
                _ => None,
            };
            let col = match t.column(k) {
                Some(c) => c,
                None => {
                    t.columns.push(k.clone());
                    for r in &mut t.rows {
                        r.push(None);
                    }
                    row.push(None);
                    t.columns.len() - 1
                }
            };
            row[col] = cell;
        }
        t.rows.push(row);
    }
    Ok(t)
}

fn delimited(bytes: &[u8], delimiter: u8) -> Result<Table> {
    let mut r = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(bytes);
    let columns: Vec<String> = r.headers()?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        rows.push(
            (0..columns.len())
                .map(|i| {
                    rec.get(i).map(|s| match s.trim().parse::<f64>() {
                        Ok(v) => Cell::Num(v),
                        Err(_) => Cell::Text(s.to_owned()),
                    })
                })
                .collect(),
        );
    }
    Ok(Table { columns, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_csv_and_tsv_read_as_one_table_shape() {
        let j = parse(
            Path::new("roc.json"),
            br#"{"roc": [{"fpr": 0, "tpr": 0.5}, {"fpr": 1, "tpr": 1, "t": "x"}]}"#,
            &["fpr", "tpr"],
        )
        .unwrap();
        assert_eq!(j.columns, ["fpr", "tpr", "t"]);
        assert_eq!(j.rows[0][2], None);
        assert_eq!(j.numeric_columns(), [0, 1]);
        let c = parse(Path::new("h.csv"), b"step,loss\n1,0.5\n2,0.25\n", &[]).unwrap();
        assert_eq!(c.rows[1][1], Some(Cell::Num(0.25)));
        let t = parse(Path::new("h.tsv"), b"a\tb\n1\tx\n", &[]).unwrap();
        assert_eq!(t.numeric_columns(), [0]);
        assert!(parse(Path::new("x.json"), br#"{"a": [], "b": []}"#, &[]).is_err());
        assert!(parse(Path::new("x.png"), b"", &[]).is_err());
    }

    #[test]
    fn of_several_arrays_the_one_with_the_plots_fields_is_read() {
        // train-lora's history.json, shortened.
        let h = br#"{"task": "regression", "steps": [{"step": 1, "loss": 0.9, "lr": 1e-4},
            {"step": 2, "loss": 0.7, "lr": 1e-4}, {"step": 3, "loss": 0.6, "lr": 1e-4}],
            "evals": [{"step": 2, "loss": 0.8, "metric": 0.55}], "total_steps": 3}"#;
        let path = Path::new("history.json");
        let by_metric = parse(path, h, &["step", "metric"]).unwrap();
        assert_eq!(by_metric.rows.len(), 1, "only evals has a metric field");
        let by_loss = parse(path, h, &["step", "loss"]).unwrap();
        assert_eq!(
            by_loss.rows.len(),
            3,
            "both have loss: the longer, the per-step log"
        );
        let err = parse(path, h, &["step", "accuracy"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("none of its arrays"), "{msg}");
        assert!(
            msg.contains("has rows with the fields step, accuracy"),
            "{msg}"
        );
    }
}
