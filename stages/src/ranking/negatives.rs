//! Negatives for reranker training: hard ones mined by BM25 (optionally re-scored by a
//! model) and random ones from the corpus, re-drawn every epoch.
//!
//! For each query, once:
//! 1. BM25 retrieves its best passages; positives are removed (by doc_id and by text
//!    compared without whitespace, [`passage_key`]) and the list is cut to `range_max`
//!    passages.
//! 2. With a [`PairScorer`] (a cross-encoder in the `ml` build) those passages are scored by
//!    it (one [`PairScorer::score_many`] call per batch of queries) and re-ordered by its
//!    scores, ties in BM25's order; otherwise the BM25 scores stand.
//! 3. The hard pool is ranks `range_min..range_max` of that list (0-based, end excluded),
//!    as sentence-transformers' `mine_hard_negatives` does: the top ranks are skipped
//!    because they are often unlabelled positives.
//! 4. With `margin`, a candidate scoring ≥ (lowest positive score − margin) is dropped as a
//!    likely false negative; positives are scored by the same scorer.
//!
//! Then for each epoch, from a generator seeded by hash(seed, epoch, query): `n_hard`
//! distinct passages drawn from the pool without replacement (listed in pool order), and
//! the rest of the `k` drawn uniformly from the whole corpus, never a positive (doc_id or
//! text) nor a passage already chosen. When the pool holds fewer than `n_hard` passages,
//! random ones fill the gap (counted as a shortfall), so every group has `k` negatives
//! whenever the corpus has that many non-positive passages.

use std::collections::HashSet;

use anyhow::{Result, bail};
use rayon::prelude::*;

use super::bm25::Bm25Index;
use super::data::{Passage, QueryGroup};
use super::passage_key;
use crate::rng::{SplitMix, stable_hash};

/// Passages in two flat arenas (ids and texts): a million passages cost their bytes plus
/// two offsets each, not a `String` allocation each.
#[derive(Debug, Default, Clone)]
pub struct Corpus {
    ids: String,
    id_end: Vec<usize>,
    texts: String,
    text_end: Vec<usize>,
}

impl Corpus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, doc_id: &str, text: &str) {
        self.ids.push_str(doc_id);
        self.id_end.push(self.ids.len());
        self.texts.push_str(text);
        self.text_end.push(self.texts.len());
    }

    pub fn len(&self) -> usize {
        self.id_end.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id_end.is_empty()
    }

    fn slice<'a>(arena: &'a str, ends: &[usize], i: usize) -> &'a str {
        let start = if i == 0 { 0 } else { ends[i - 1] };
        &arena[start..ends[i]]
    }

    pub fn doc_id(&self, i: usize) -> &str {
        Self::slice(&self.ids, &self.id_end, i)
    }

    pub fn text(&self, i: usize) -> &str {
        Self::slice(&self.texts, &self.text_end, i)
    }

    /// All texts, in order (for [`Bm25Index::build`]).
    pub fn texts(&self) -> Vec<&str> {
        (0..self.len()).map(|i| self.text(i)).collect()
    }
}

impl FromIterator<Passage> for Corpus {
    fn from_iter<I: IntoIterator<Item = Passage>>(iter: I) -> Self {
        let mut c = Corpus::new();
        for p in iter {
            c.push(&p.doc_id, &p.text);
        }
        c
    }
}

/// Scores (query, passage) pairs, higher meaning more relevant. The `ml` build implements
/// it with a cross-encoder (`crate::model_scorer`); BM25 is the default without one.
pub trait PairScorer: Sync {
    /// One score per passage, in order.
    fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f64>>;

    /// Scores several queries' passages at once: `out[i][j]` scores `(queries[i].0,
    /// queries[i].1[j])`. [`hard_pools`] calls this once per batch of queries, from one
    /// thread, so that a model can batch pairs across queries (sorted by length) and use
    /// all cores (or the GPU) itself. The default scores query by query.
    fn score_many(&self, queries: &[(&str, Vec<&str>)]) -> Result<Vec<Vec<f64>>> {
        queries.iter().map(|(q, p)| self.score(q, p)).collect()
    }
}

/// How negatives are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// All k from the hard pool.
    Bm25,
    /// All k uniformly from the corpus.
    Random,
    /// round(k · hard_ratio) hard, the rest random.
    Mix,
}

/// Mining settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MiningConfig {
    pub method: Method,
    pub k: usize,
    pub hard_ratio: f64,
    pub range_min: usize,
    pub range_max: usize,
    pub margin: Option<f64>,
    pub seed: u64,
}

impl Default for MiningConfig {
    fn default() -> Self {
        MiningConfig {
            method: Method::Mix,
            k: 8,
            hard_ratio: 0.5,
            range_min: 10,
            range_max: 100,
            margin: None,
            seed: 13,
        }
    }
}

impl MiningConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 {
            return Err("k must be at least 1".into());
        }
        if !(self.hard_ratio.is_finite() && (0.0..=1.0).contains(&self.hard_ratio)) {
            return Err(format!(
                "hard_ratio must lie in [0, 1], got {}",
                self.hard_ratio
            ));
        }
        if self.range_min >= self.range_max {
            return Err(format!(
                "range_min ({}) must be below range_max ({})",
                self.range_min, self.range_max
            ));
        }
        if let Some(m) = self.margin
            && !m.is_finite()
        {
            return Err(format!("margin must be a finite number, got {m}"));
        }
        Ok(())
    }

    /// How many of the k negatives come from the hard pool.
    pub fn n_hard(&self) -> usize {
        match self.method {
            Method::Bm25 => self.k,
            Method::Random => 0,
            Method::Mix => ((self.k as f64) * self.hard_ratio).round() as usize,
        }
    }
}

/// What is never a negative of a query: its positives, by doc_id and by text compared
/// without whitespace ([`passage_key`], stricter than [`normalize`](super::normalize)).
pub struct Exclusion {
    ids: HashSet<String>,
    texts: HashSet<String>,
}

impl Exclusion {
    pub fn new(positives: &[Passage]) -> Self {
        Exclusion {
            ids: positives.iter().map(|p| p.doc_id.clone()).collect(),
            texts: positives.iter().map(|p| passage_key(&p.text)).collect(),
        }
    }

    pub fn excludes(&self, doc_id: &str, text: &str) -> bool {
        self.ids.contains(doc_id) || self.texts.contains(&passage_key(text))
    }
}

/// A query's hard candidates, best first, and what the margin filter removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HardPool {
    /// Corpus passage numbers.
    pub candidates: Vec<u32>,
    /// Candidates inside the rank range dropped by the margin filter.
    pub dropped_by_margin: usize,
}

/// Hard pools of every group, computed in parallel (rayon). `report` is called with the
/// number of groups done after each batch and returns `false` to stop (cancellation).
pub fn hard_pools(
    index: &Bm25Index,
    corpus: &Corpus,
    groups: &[QueryGroup],
    cfg: &MiningConfig,
    scorer: Option<&dyn PairScorer>,
    report: &(dyn Fn(usize) -> bool + Sync),
) -> Result<Vec<HardPool>> {
    if cfg.n_hard() == 0 {
        return Ok(vec![HardPool::default(); groups.len()]);
    }
    if index.len() != corpus.len() {
        bail!(
            "the BM25 index has {} passages but the corpus {}",
            index.len(),
            corpus.len()
        );
    }
    let mut out = Vec::with_capacity(groups.len());
    // Batches bound the time between cancellation checks. Without a scorer, queries run in
    // parallel inside a batch, each worker with one reusable score array. With one, BM25
    // retrieval runs in parallel, then the scorer gets the whole batch's pairs in one call
    // (a model batches them across queries); batches are smaller since a cross-encoder
    // costs far more per pair than BM25.
    let batch_size = match scorer {
        None => 2048,
        Some(_) => (1024 / cfg.range_max.max(1)).clamp(1, 2048),
    };
    for batch in groups.chunks(batch_size) {
        let ranked: Vec<Vec<(u32, f64)>> = batch
            .par_iter()
            .map_init(
                || index.scratch(),
                |scratch, g| bm25_candidates(index, corpus, g, cfg, scratch),
            )
            .collect();
        match scorer {
            None => {
                let pools: Vec<HardPool> = batch
                    .par_iter()
                    .zip(ranked)
                    .map(|(g, ranked)| {
                        let pos: Vec<f64> = match cfg.margin {
                            Some(_) => g
                                .positives
                                .iter()
                                .map(|p| index.score_text(&g.query_text, &p.text))
                                .collect(),
                            None => Vec::new(),
                        };
                        pool_of(&ranked, &pos, cfg)
                    })
                    .collect();
                out.extend(pools);
            }
            Some(s) => out.extend(rescore(s, corpus, batch, ranked, cfg)?),
        }
        if !report(out.len()) {
            bail!("cancelled");
        }
    }
    Ok(out)
}

/// A query's BM25 list without its positives, cut at `range_max`: (passage, score), best
/// first.
fn bm25_candidates(
    index: &Bm25Index,
    corpus: &Corpus,
    group: &QueryGroup,
    cfg: &MiningConfig,
    scratch: &mut super::bm25::Scratch,
) -> Vec<(u32, f64)> {
    let excl = Exclusion::new(&group.positives);
    // Positives (and texts equal to them) can sit anywhere in the list; ask for more until
    // `range_max` non-positive passages are in hand or BM25 has nothing more to give.
    let mut depth = cfg.range_max.saturating_add(group.positives.len());
    loop {
        let hits = index.search(&group.query_text, depth, scratch);
        let exhausted = hits.len() < depth;
        let kept: Vec<(u32, f64)> = hits
            .into_iter()
            .filter(|h| !excl.excludes(corpus.doc_id(h.doc as usize), corpus.text(h.doc as usize)))
            .map(|h| (h.doc, h.score))
            .take(cfg.range_max)
            .collect();
        if kept.len() >= cfg.range_max || exhausted {
            return kept;
        }
        depth = depth.saturating_mul(2);
    }
}

/// Re-orders a batch's BM25 candidates by the scorer's scores (one `score_many` call; the
/// positives are scored in the same call when `margin` needs them) and cuts the pools.
fn rescore(
    scorer: &dyn PairScorer,
    corpus: &Corpus,
    batch: &[QueryGroup],
    ranked: Vec<Vec<(u32, f64)>>,
    cfg: &MiningConfig,
) -> Result<Vec<HardPool>> {
    let requests: Vec<(&str, Vec<&str>)> = batch
        .iter()
        .zip(&ranked)
        .map(|(g, r)| {
            let mut texts: Vec<&str> = r.iter().map(|&(d, _)| corpus.text(d as usize)).collect();
            if cfg.margin.is_some() {
                texts.extend(g.positives.iter().map(|p| p.text.as_str()));
            }
            (g.query_text.as_str(), texts)
        })
        .collect();
    let scores = scorer.score_many(&requests)?;
    if scores.len() != requests.len() {
        bail!(
            "the scorer returned {} score lists for {} queries",
            scores.len(),
            requests.len()
        );
    }
    let mut pools = Vec::with_capacity(batch.len());
    for ((g, r), (scores, (_, texts))) in batch
        .iter()
        .zip(ranked)
        .zip(scores.into_iter().zip(&requests))
    {
        if scores.len() != texts.len() {
            bail!(
                "the scorer returned {} scores for {} passages",
                scores.len(),
                texts.len()
            );
        }
        if let Some(bad) = scores.iter().find(|x| !x.is_finite()) {
            bail!(
                "the scorer returned a non-finite score ({bad}) for query {:?}",
                g.query_text
            );
        }
        let (cand, pos) = scores.split_at(r.len());
        let mut rescored: Vec<(u32, f64)> =
            r.iter().zip(cand).map(|(&(d, _), &s)| (d, s)).collect();
        // Best first; ties keep BM25's order (a stable sort).
        rescored.sort_by(|a, b| b.1.total_cmp(&a.1));
        pools.push(pool_of(&rescored, pos, cfg));
    }
    Ok(pools)
}

/// Ranks `range_min..` of a ranked candidate list, without the candidates the margin
/// filter drops (score ≥ lowest positive score − margin).
fn pool_of(ranked: &[(u32, f64)], positive_scores: &[f64], cfg: &MiningConfig) -> HardPool {
    let in_range = ranked.get(cfg.range_min..).unwrap_or(&[]);
    let mut pool = HardPool::default();
    let threshold = cfg.margin.map(|m| {
        positive_scores
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            - m
    });
    for &(d, s) in in_range {
        match threshold {
            Some(t) if s >= t => pool.dropped_by_margin += 1,
            _ => pool.candidates.push(d),
        }
    }
    pool
}

/// The negatives one group gets in one epoch, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// Corpus passage numbers: the hard ones (in pool order), then the random ones.
    pub negatives: Vec<u32>,
    pub hard: usize,
    /// Hard negatives wanted but missing from the pool (replaced by random ones).
    pub shortfall: usize,
}

/// Draws `group`'s negatives for `epoch`. Only (seed, epoch, the query's key, the pool and
/// the corpus) matter, so an epoch can be re-drawn alone, in any order, on any thread.
pub fn draw(
    corpus: &Corpus,
    group: &QueryGroup,
    pool: &HardPool,
    cfg: &MiningConfig,
    epoch: u64,
) -> Draw {
    let mut rng = SplitMix(stable_hash(
        cfg.seed,
        &[b"negatives", &epoch.to_le_bytes(), group.key.as_bytes()],
    ));
    let excl = Exclusion::new(&group.positives);
    let want_hard = cfg.n_hard().min(cfg.k);
    let n = pool.candidates.len();
    // Partial Fisher–Yates over pool positions; then back to pool (rank) order.
    let mut positions: Vec<usize> = (0..n).collect();
    let take = want_hard.min(n);
    for i in 0..take {
        let j = i + rng.below((n - i) as u64) as usize;
        positions.swap(i, j);
    }
    let mut picked = positions[..take].to_vec();
    picked.sort_unstable();
    let mut negatives: Vec<u32> = picked.iter().map(|&p| pool.candidates[p]).collect();
    let hard = negatives.len();
    let mut chosen: HashSet<u32> = negatives.iter().copied().collect();

    let mut need = cfg.k - hard;
    let total = corpus.len() as u64;
    // Rejection sampling: cheap on a large corpus. A small or mostly-positive corpus can
    // make it slow to find the last few, so after a bounded number of tries the eligible
    // passages are listed and drawn from directly.
    let mut tries = 0usize;
    // Bounded by the corpus size too: wanting nearly the whole corpus is faster to list.
    let max_tries = need
        .saturating_mul(64)
        .min(corpus.len().saturating_mul(4))
        .saturating_add(256);
    while need > 0 && total > 0 && tries < max_tries {
        tries += 1;
        let d = rng.below(total) as u32;
        if chosen.contains(&d) || excl.excludes(corpus.doc_id(d as usize), corpus.text(d as usize))
        {
            continue;
        }
        chosen.insert(d);
        negatives.push(d);
        need -= 1;
    }
    if need > 0 {
        let mut eligible: Vec<u32> = (0..corpus.len() as u32)
            .filter(|&d| {
                !chosen.contains(&d)
                    && !excl.excludes(corpus.doc_id(d as usize), corpus.text(d as usize))
            })
            .collect();
        let m = eligible.len();
        let take = need.min(m);
        for i in 0..take {
            let j = i + rng.below((m - i) as u64) as usize;
            eligible.swap(i, j);
        }
        negatives.extend_from_slice(&eligible[..take]);
    }
    Draw {
        shortfall: want_hard - hard,
        hard,
        negatives,
    }
}
