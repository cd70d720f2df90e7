//! The metric sets the `evaluate` stage writes, one function per task, as flat JSON objects
//! of numbers (the run database records them as the stage's metrics). A metric that is
//! undefined on the data (Pearson of a constant prediction) is `null`, since JSON has no
//! NaN.

use std::hash::Hash;

use serde_json::{Map, Value};

use super::*;

fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Scores rounded to the nearest integer class and clamped to `0..n_classes` (seed 000's
/// "accuracy / F1 over rounded scores" for 0–4 humor ratings). Ties round away from zero.
pub fn round_to_classes(values: &[f64], n_classes: usize) -> Vec<usize> {
    let top = n_classes.saturating_sub(1) as f64;
    values
        .iter()
        .map(|v| v.round().clamp(0.0, top) as usize)
        .collect()
}

/// `n`, `mse`, `rmse`, `mae`, `r2`, `pearson`, `spearman`; with `rounded_classes: Some(k)`
/// also `rounded_accuracy` and `rounded_macro_f1` over [`round_to_classes`] of truth and
/// prediction (both on the label scale given).
pub fn regression_report(
    y: &[f64],
    p: &[f64],
    rounded_classes: Option<usize>,
) -> Result<Map<String, Value>, MetricError> {
    let mut m = Map::new();
    m.insert("n".into(), y.len().into());
    m.insert("mse".into(), num(mse(y, p)?));
    m.insert("rmse".into(), num(rmse(y, p)?));
    m.insert("mae".into(), num(mae(y, p)?));
    m.insert("r2".into(), num(r2(y, p)?));
    let (pr, sp) = if y.len() >= 2 {
        (pearson(y, p)?, spearman(y, p)?)
    } else {
        (f64::NAN, f64::NAN)
    };
    m.insert("pearson".into(), num(pr));
    m.insert("spearman".into(), num(sp));
    if let Some(k) = rounded_classes {
        let (yt, yp) = (round_to_classes(y, k), round_to_classes(p, k));
        m.insert("rounded_accuracy".into(), num(accuracy(&yt, &yp)?));
        m.insert("rounded_macro_f1".into(), num(macro_f1(&yt, &yp, k)?));
    }
    Ok(m)
}

/// `n`, `accuracy`, `macro_f1`, `brier`, `ece` (15 bins) and, per class name,
/// `f1_<name>`; predictions are the argmax of `probs` (first on ties). The confusion matrix
/// is not a flat number: get it from [`confusion_matrix`] for the plot and the report.
pub fn classification_report(
    y: &[usize],
    probs: &[f64],
    labels: &[String],
) -> Result<Map<String, Value>, MetricError> {
    let k = labels.len();
    brier_multiclass(probs, k, y)?; // validates shapes before anything else
    let pred = argmax_rows(probs, k);
    let mut m = Map::new();
    m.insert("n".into(), y.len().into());
    m.insert("accuracy".into(), num(accuracy(y, &pred)?));
    m.insert("macro_f1".into(), num(macro_f1(y, &pred, k)?));
    m.insert("brier".into(), num(brier_multiclass(probs, k, y)?));
    m.insert("ece".into(), num(ece(probs, k, y, 15)?));
    for (name, (_, _, f1)) in labels.iter().zip(per_class_prf(y, &pred, k)?) {
        m.insert(format!("f1_{name}"), num(f1));
    }
    Ok(m)
}

/// Row-wise argmax of a row-major `n × n_classes` matrix, first index on ties (as numpy).
pub fn argmax_rows(probs: &[f64], n_classes: usize) -> Vec<usize> {
    probs
        .chunks(n_classes.max(1))
        .map(|row| {
            let mut arg = 0;
            for (k, v) in row.iter().enumerate() {
                if *v > row[arg] {
                    arg = k;
                }
            }
            arg
        })
        .collect()
}

/// `queries`, `map`, and `ndcg@k`, `mrr@k`, `recall@k` for each k in `ks`.
pub fn ranking_report<G: Eq + Hash>(
    ids: &[G],
    rel: &[f64],
    scores: &[f64],
    ks: &[usize],
) -> Result<Map<String, Value>, MetricError> {
    let mut m = Map::new();
    let queries = ids.iter().collect::<std::collections::HashSet<_>>().len();
    m.insert("queries".into(), queries.into());
    m.insert("map".into(), num(map(ids, rel, scores)?));
    for &k in ks {
        m.insert(format!("ndcg@{k}"), num(ndcg_at_k(ids, rel, scores, k)?));
        m.insert(format!("mrr@{k}"), num(mrr_at_k(ids, rel, scores, k)?));
        m.insert(
            format!("recall@{k}"),
            num(recall_at_k(ids, rel, scores, k)?),
        );
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_report_with_rounded_classes() {
        let y = [0.0, 1.0, 2.0, 3.0, 4.0];
        let p = [0.4, 1.6, 2.0, 2.9, 5.2];
        let m = regression_report(&y, &p, Some(5)).unwrap();
        // rounded predictions 0 2 2 3 4 (5.2 clamps to 4): 4 of 5 right
        assert_eq!(m["rounded_accuracy"], 0.8);
        assert_eq!(m["n"], 5);
        assert!(
            (m["mse"].as_f64().unwrap() - (0.16 + 0.36 + 0.0 + 0.01 + 1.44) / 5.0).abs() < 1e-12
        );
        // A constant prediction: Pearson is undefined → null, not NaN.
        let m = regression_report(&y, &[1.0; 5], None).unwrap();
        assert_eq!(m["pearson"], Value::Null);
        assert!(!m.contains_key("rounded_accuracy"));
    }

    #[test]
    fn classification_report_uses_argmax() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let m =
            classification_report(&[0, 1, 1], &[0.9, 0.1, 0.3, 0.7, 0.6, 0.4], &labels).unwrap();
        assert!((m["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // class a: P 1/2 R 1 → 2/3; class b: P 1 R 1/2 → 2/3
        assert!((m["f1_a"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(classification_report(&[0], &[0.5, 0.5, 0.0], &labels).is_err());
        assert_eq!(argmax_rows(&[0.5, 0.5, 0.2, 0.8], 2), vec![0, 1]);
    }

    #[test]
    fn ranking_report_keys() {
        let m = ranking_report(
            &["q", "q", "r", "r"],
            &[1.0, 0.0, 0.0, 1.0],
            &[0.9, 0.1, 0.8, 0.2],
            &[1, 10],
        )
        .unwrap();
        assert_eq!(m["queries"], 2);
        assert_eq!(m["mrr@1"], 0.5);
        assert_eq!(m["mrr@10"], 0.75);
        assert!(m.contains_key("ndcg@10") && m.contains_key("recall@1") && m.contains_key("map"));
    }
}
