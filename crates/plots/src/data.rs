//! A plot file as a table: JSON (an array of objects, or an object whose single array value
//! holds them, as DVC's `{"roc": [{…}]}`), CSV or TSV with a header row.

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

/// Parses `bytes`, the content of `name` (its extension says the format).
pub fn parse(name: &Path, bytes: &[u8]) -> Result<Table> {
    let ext = name
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => json(bytes).with_context(|| format!("plot file {}", name.display())),
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

fn json(bytes: &[u8]) -> Result<Table> {
    let v: Value = serde_json::from_slice(bytes)?;
    let rows = match &v {
        Value::Array(a) => a,
        Value::Object(o) => {
            let arrays: Vec<&Vec<Value>> = o.values().filter_map(Value::as_array).collect();
            match arrays.as_slice() {
                [one] => *one,
                _ => bail!(
                    "expected an array of objects, or an object whose one array holds them (found an object with {} arrays)",
                    arrays.len()
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
        )
        .unwrap();
        assert_eq!(j.columns, ["fpr", "tpr", "t"]);
        assert_eq!(j.rows[0][2], None);
        assert_eq!(j.numeric_columns(), [0, 1]);
        let c = parse(Path::new("h.csv"), b"step,loss\n1,0.5\n2,0.25\n").unwrap();
        assert_eq!(c.rows[1][1], Some(Cell::Num(0.25)));
        let t = parse(Path::new("h.tsv"), b"a\tb\n1\tx\n").unwrap();
        assert_eq!(t.numeric_columns(), [0]);
        assert!(parse(Path::new("x.json"), br#"{"a": [], "b": []}"#).is_err());
        assert!(parse(Path::new("x.png"), b"").is_err());
    }
}
