//! Ranking metrics over groups (one group per query). Every function takes parallel slices
//! — a group id, a graded relevance (`> 0` means relevant for the binary metrics) and a
//! model score per row — computes the metric per group and returns the unweighted mean
//! over groups (groups in order of first appearance, so the sum order is deterministic).
//! A group without any relevant row scores 0 on every metric, as sklearn's `ndcg_score`
//! does; it still counts in the mean.
//!
//! Where rows tie on score, NDCG and MAP follow sklearn (tie-averaged DCG, one
//! precision-recall step per distinct score); MRR@k and Recall@k rank tied rows in input
//! order (a stable sort), which is what `numpy.argsort(-s, kind="stable")` gives.

use std::collections::HashMap;
use std::hash::Hash;

use super::{MetricError, check_finite};

/// Row indices of each group, groups in order of first appearance.
fn groups<G: Eq + Hash>(ids: &[G]) -> Vec<Vec<usize>> {
    let mut index: HashMap<&G, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (row, id) in ids.iter().enumerate() {
        let g = *index.entry(id).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[g].push(row);
    }
    out
}

fn check<G>(ids: &[G], rel: &[f64], scores: &[f64], k: Option<usize>) -> Result<(), MetricError> {
    for (what, len) in [("relevance", rel.len()), ("scores", scores.len())] {
        if len != ids.len() {
            return Err(MetricError::LengthMismatch {
                what,
                left: ids.len(),
                right: len,
            });
        }
    }
    if ids.is_empty() {
        return Err(MetricError::Empty);
    }
    check_finite("relevance", rel)?;
    check_finite("scores", scores)?;
    if k == Some(0) {
        return Err(MetricError::Invalid("k must be at least 1".into()));
    }
    Ok(())
}

fn mean_over_groups<G: Eq + Hash>(
    ids: &[G],
    rel: &[f64],
    scores: &[f64],
    per_group: impl Fn(&[f64], &[f64]) -> f64,
) -> f64 {
    let gs = groups(ids);
    let total: f64 = gs
        .iter()
        .map(|rows| {
            let r: Vec<f64> = rows.iter().map(|&i| rel[i]).collect();
            let s: Vec<f64> = rows.iter().map(|&i| scores[i]).collect();
            per_group(&r, &s)
        })
        .sum();
    total / gs.len() as f64
}

/// Indices sorted by score, highest first, ties in input order.
fn stable_order(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// DCG with sklearn's tie handling: rows with equal scores share the mean of their
/// relevances, spread over the discounts of the positions they occupy together.
fn dcg_tie_averaged(rel: &[f64], scores: &[f64], k: usize) -> f64 {
    let order = stable_order(scores);
    let discount = |pos: usize| {
        if pos < k {
            1.0 / ((pos + 2) as f64).log2()
        } else {
            0.0
        }
    };
    let mut dcg = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let mean_rel = order[i..j].iter().map(|&r| rel[r]).sum::<f64>() / (j - i) as f64;
        let discounts: f64 = (i..j).map(discount).sum();
        dcg += mean_rel * discounts;
        i = j;
    }
    dcg
}

fn ndcg_group(rel: &[f64], scores: &[f64], k: usize) -> f64 {
    let ideal = dcg_tie_averaged(rel, rel, k);
    if ideal == 0.0 {
        0.0
    } else {
        dcg_tie_averaged(rel, scores, k) / ideal
    }
}

/// NDCG@k as sklearn's `ndcg_score(k=k)`: linear gain (the relevance itself, not
/// `2^rel − 1`), discount `1/log2(rank + 1)` for ranks 1..=k, DCG divided by the DCG of
/// the ideal order. Relevances must be ≥ 0.
pub fn ndcg_at_k<G: Eq + Hash>(
    ids: &[G],
    rel: &[f64],
    scores: &[f64],
    k: usize,
) -> Result<f64, MetricError> {
    check(ids, rel, scores, Some(k))?;
    if let Some(i) = rel.iter().position(|&r| r < 0.0) {
        return Err(MetricError::Invalid(format!(
            "ndcg: relevance[{i}] = {} is negative (expected ≥ 0)",
            rel[i]
        )));
    }
    Ok(mean_over_groups(ids, rel, scores, |r, s| {
        ndcg_group(r, s, k)
    }))
}

/// Reciprocal rank of the first relevant row among the top k (0 if none is there), mean
/// over groups.
pub fn mrr_at_k<G: Eq + Hash>(
    ids: &[G],
    rel: &[f64],
    scores: &[f64],
    k: usize,
) -> Result<f64, MetricError> {
    check(ids, rel, scores, Some(k))?;
    Ok(mean_over_groups(ids, rel, scores, |r, s| {
        stable_order(s)
            .iter()
            .take(k)
            .position(|&i| r[i] > 0.0)
            .map_or(0.0, |pos| 1.0 / (pos + 1) as f64)
    }))
}

/// Fraction of a group's relevant rows that are among its top k, mean over groups.
pub fn recall_at_k<G: Eq + Hash>(
    ids: &[G],
    rel: &[f64],
    scores: &[f64],
    k: usize,
) -> Result<f64, MetricError> {
    check(ids, rel, scores, Some(k))?;
    Ok(mean_over_groups(ids, rel, scores, |r, s| {
        let relevant = r.iter().filter(|&&x| x > 0.0).count();
        if relevant == 0 {
            return 0.0;
        }
        let found = stable_order(s)
            .iter()
            .take(k)
            .filter(|&&i| r[i] > 0.0)
            .count();
        found as f64 / relevant as f64
    }))
}

/// Average precision of one group as sklearn's `average_precision_score(rel > 0, scores)`:
/// `Σₙ (Rₙ − Rₙ₋₁) Pₙ` over the distinct scores taken as thresholds, highest first, where
/// Pₙ and Rₙ are precision and recall of the rows scoring ≥ the n-th threshold. Without
/// ties this is the usual mean of precision@rank over the relevant rows. 0 when the group
/// has no relevant row.
pub fn average_precision(rel: &[f64], scores: &[f64]) -> f64 {
    let positives = rel.iter().filter(|&&x| x > 0.0).count();
    if positives == 0 {
        return 0.0;
    }
    let order = stable_order(scores);
    let (mut tp, mut seen, mut ap, mut prev_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        tp += order[i..j].iter().filter(|&&r| rel[r] > 0.0).count();
        seen += j - i;
        let recall = tp as f64 / positives as f64;
        ap += (recall - prev_recall) * (tp as f64 / seen as f64);
        prev_recall = recall;
        i = j;
    }
    ap
}

/// Mean average precision: [`average_precision`] averaged over groups.
pub fn map<G: Eq + Hash>(ids: &[G], rel: &[f64], scores: &[f64]) -> Result<f64, MetricError> {
    check(ids, rel, scores, None)?;
    Ok(mean_over_groups(ids, rel, scores, average_precision))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn one_query_by_hand() {
        // Ranked order by score: d0 (rel 0), d1 (rel 1), d2 (rel 0), d3 (rel 1).
        let ids = ["q"; 4];
        let rel = [0.0, 1.0, 0.0, 1.0];
        let s = [0.9, 0.8, 0.7, 0.6];
        assert!(close(mrr_at_k(&ids, &rel, &s, 10).unwrap(), 0.5));
        assert!(close(mrr_at_k(&ids, &rel, &s, 1).unwrap(), 0.0));
        assert!(close(recall_at_k(&ids, &rel, &s, 2).unwrap(), 0.5));
        // AP = (1/2 + 2/4) / 2
        assert!(close(map(&ids, &rel, &s).unwrap(), 0.5));
        // DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!(close(ndcg_at_k(&ids, &rel, &s, 10).unwrap(), dcg / idcg));
        // @2: DCG = 1/log2(3), IDCG = 1 + 1/log2(3)
        assert!(close(
            ndcg_at_k(&ids, &rel, &s, 2).unwrap(),
            (1.0 / 3f64.log2()) / idcg
        ));
    }

    #[test]
    fn groups_are_averaged_and_empty_groups_score_zero() {
        let ids = [1, 1, 2, 2];
        let rel = [1.0, 0.0, 0.0, 0.0];
        let s = [0.5, 0.1, 0.3, 0.2];
        assert!(close(mrr_at_k(&ids, &rel, &s, 10).unwrap(), 0.5));
        assert!(close(ndcg_at_k(&ids, &rel, &s, 10).unwrap(), 0.5));
        assert!(close(map(&ids, &rel, &s).unwrap(), 0.5));
    }

    #[test]
    fn ties_follow_sklearn() {
        // All tied: DCG = mean rel (0.5) × (1 + 1/log2 3); IDCG = 1.
        let ids = ["q"; 2];
        let v = ndcg_at_k(&ids, &[1.0, 0.0], &[0.3, 0.3], 10).unwrap();
        assert!(close(v, 0.5 * (1.0 + 1.0 / 3f64.log2())));
        // One threshold: recall 1 at precision 1/2.
        assert!(close(average_precision(&[1.0, 0.0], &[0.3, 0.3]), 0.5));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(ndcg_at_k(&[1, 1], &[-1.0, 0.0], &[0.0, 1.0], 3).is_err());
        assert!(mrr_at_k(&[1], &[1.0], &[0.0], 0).is_err());
        assert!(map(&[1, 2], &[1.0], &[0.0, 1.0]).is_err());
    }
}
