//! tsumugi's f64 reference losses and their gradients against PyTorch (float64 autograd)
//! values saved by `scripts/make_loss_refs.py` (tests/data/loss_refs.json), to 1e-9.

use serde_json::Value;
use tsumugi_stages::losses::{self, Loss};

const TOL: f64 = 1e-9;

fn refs() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/loss_refs.json");
    let text =
        std::fs::read_to_string(path).expect("reference file (run scripts/make_loss_refs.py)");
    serde_json::from_str(&text).expect("reference JSON")
}

/// A flat list of numbers from a (possibly nested) JSON array.
fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

fn check(name: &str, got: &Loss, case: &Value, grads: &[&str]) {
    let want = case["value"].as_f64().unwrap();
    assert!(
        (got.value - want).abs() <= TOL,
        "{name}: value {} vs torch {want}",
        got.value
    );
    let want_grad: Vec<f64> = grads
        .iter()
        .flat_map(|g| flat(&case[format!("grad_{g}")]))
        .collect();
    assert_eq!(got.grad.len(), want_grad.len(), "{name}: gradient length");
    for (i, (a, b)) in got.grad.iter().zip(&want_grad).enumerate() {
        assert!((a - b).abs() <= TOL, "{name}: grad[{i}] {a} vs torch {b}");
    }
}

#[test]
fn losses_match_pytorch() {
    let r = refs();
    let c = &r["cases"];
    let case = &c["mse"];
    check(
        "mse",
        &losses::mse(&flat(&case["pred"]), &flat(&case["target"])).unwrap(),
        case,
        &["pred"],
    );
    let case = &c["bce_with_logits"];
    let got = losses::bce_with_logits(&flat(&case["logits"]), &flat(&case["target"])).unwrap();
    check("bce_with_logits", &got, case, &["logits"]);
    let case = &c["cross_entropy"];
    let target: Vec<usize> = case["target"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let got = losses::cross_entropy(&flat(&case["logits"]), 3, &target).unwrap();
    check("cross_entropy", &got, case, &["logits"]);
    let case = &c["margin_ranking"];
    let got = losses::margin_ranking(
        &flat(&case["pos"]),
        &flat(&case["neg"]),
        case["margin"].as_f64().unwrap(),
    )
    .unwrap();
    check("margin_ranking", &got, case, &["pos", "neg"]);
    let case = &c["listwise_softmax"];
    check(
        "listwise_softmax",
        &losses::listwise_softmax(&flat(&case["scores"]), 5).unwrap(),
        case,
        &["scores"],
    );
    let case = &c["multi_positive_softmax"];
    let got = losses::multi_positive_softmax(&flat(&case["pos"]), &flat(&case["neg"])).unwrap();
    check("multi_positive_softmax", &got, case, &["pos", "neg"]);
    let case = &c["multi_positive_logsumexp"];
    let got = losses::multi_positive_logsumexp(&flat(&case["pos"]), &flat(&case["neg"])).unwrap();
    check("multi_positive_logsumexp", &got, case, &["pos", "neg"]);
}
