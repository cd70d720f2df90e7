//! tsumugi's metrics against numpy / scipy / scikit-learn values saved by
//! `scripts/make_metric_refs.py` (tests/data/metric_refs.json), to 1e-9.

use serde_json::Value;
use tsumugi_stages::metrics;

const TOL: f64 = 1e-9;

fn refs() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metric_refs.json");
    let text =
        std::fs::read_to_string(path).expect("reference file (run scripts/make_metric_refs.py)");
    serde_json::from_str(&text).expect("reference JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn assert_close(case: usize, name: &str, got: f64, want: &Value) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("case {case}: no reference for {name}"));
    assert!(
        (got - want).abs() <= TOL,
        "case {case} {name}: got {got}, reference {want}"
    );
}

#[test]
fn regression_matches_scipy_and_sklearn() {
    let refs = refs();
    let cases = refs["regression"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, c) in cases.iter().enumerate() {
        let (y, p) = (f64s(&c["y"]), f64s(&c["p"]));
        assert_close(i, "mse", metrics::mse(&y, &p).unwrap(), &c["mse"]);
        assert_close(i, "rmse", metrics::rmse(&y, &p).unwrap(), &c["rmse"]);
        assert_close(i, "mae", metrics::mae(&y, &p).unwrap(), &c["mae"]);
        assert_close(i, "r2", metrics::r2(&y, &p).unwrap(), &c["r2"]);
        assert_close(
            i,
            "pearson",
            metrics::pearson(&y, &p).unwrap(),
            &c["pearson"],
        );
        assert_close(
            i,
            "spearman",
            metrics::spearman(&y, &p).unwrap(),
            &c["spearman"],
        );
    }
}

#[test]
fn classification_matches_sklearn() {
    let refs = refs();
    let cases = refs["classification"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, c) in cases.iter().enumerate() {
        let k = c["n_classes"].as_u64().unwrap() as usize;
        let (y, pred) = (usizes(&c["y"]), usizes(&c["pred"]));
        let probs: Vec<f64> = c["probs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(f64s)
            .collect();
        assert_close(
            i,
            "accuracy",
            metrics::accuracy(&y, &pred).unwrap(),
            &c["accuracy"],
        );
        assert_close(
            i,
            "macro_f1",
            metrics::macro_f1(&y, &pred, k).unwrap(),
            &c["macro_f1"],
        );
        assert_close(
            i,
            "brier",
            metrics::brier_multiclass(&probs, k, &y).unwrap(),
            &c["brier"],
        );
        assert_close(
            i,
            "ece15",
            metrics::ece(&probs, k, &y, 15).unwrap(),
            &c["ece15"],
        );
        let want: Vec<Vec<u64>> = c["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(
            metrics::confusion_matrix(&y, &pred, k).unwrap(),
            want,
            "case {i} confusion"
        );
    }
}

#[test]
fn ranking_matches_sklearn_and_numpy() {
    let refs = refs();
    let cases = refs["ranking"].as_array().unwrap();
    assert!(!cases.is_empty());
    for (i, c) in cases.iter().enumerate() {
        let ids: Vec<&str> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        let (rel, s) = (f64s(&c["rel"]), f64s(&c["scores"]));
        for k in usizes(&c["ks"]) {
            let ndcg = metrics::ndcg_at_k(&ids, &rel, &s, k).unwrap();
            assert_close(i, &format!("ndcg@{k}"), ndcg, &c[format!("ndcg@{k}")]);
            let mrr = metrics::mrr_at_k(&ids, &rel, &s, k).unwrap();
            assert_close(i, &format!("mrr@{k}"), mrr, &c[format!("mrr@{k}")]);
            let recall = metrics::recall_at_k(&ids, &rel, &s, k).unwrap();
            assert_close(i, &format!("recall@{k}"), recall, &c[format!("recall@{k}")]);
        }
        assert_close(i, "map", metrics::map(&ids, &rel, &s).unwrap(), &c["map"]);
    }
}
