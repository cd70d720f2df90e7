//! Building blocks of the `sample-negatives` stage (issue 5) that need no model: a BM25
//! index for hard negatives and a seeded, per-epoch draw.
//!
//! BM25 is Lucene's variant (the `BM25Similarity` defaults): for a query of tokens q₁…qₙ
//! (repeats count once each time they occur) and a document d of length |d|,
//!
//! `score(q, d) = Σᵢ idf(qᵢ) · tf(qᵢ, d)·(k₁ + 1) / (tf(qᵢ, d) + k₁·(1 − b + b·|d|/avgdl))`,
//! `idf(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))`,
//!
//! with k₁ = 1.2, b = 0.75, N documents, df(t) the number of documents containing t,
//! avgdl the mean document length in tokens. Unlike the classic Robertson idf this one is
//! never negative, so a very common term cannot push a document down. Tokens are the
//! lowercased maximal runs of alphanumeric characters (Unicode), which suits English and
//! other space-separated languages; Japanese needs a word segmenter first.
//!
//! Memory: the index holds one posting (doc id, term frequency) per distinct term of each
//! document; a search touches only the postings of the query's terms and keeps the best
//! `k` in a heap, so no document × query matrix is ever built.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// BM25 parameters (Lucene's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    pub k1: f64,
    pub b: f64,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

/// Lowercased maximal runs of alphanumeric characters.
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// An inverted index over a fixed list of documents (ids are their positions).
#[derive(Debug, Clone)]
pub struct Bm25Index {
    params: Bm25Params,
    doc_len: Vec<u32>,
    avgdl: f64,
    postings: HashMap<String, Vec<(u32, u32)>>,
}

impl Bm25Index {
    /// Indexes `docs` in order; document `i` has id `i`. At most `u32::MAX` documents.
    pub fn build<'a>(docs: impl IntoIterator<Item = &'a str>, params: Bm25Params) -> Self {
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut doc_len = Vec::new();
        let mut tf: HashMap<String, u32> = HashMap::new();
        for (id, doc) in docs.into_iter().enumerate() {
            let id = u32::try_from(id).expect("at most u32::MAX documents");
            tf.clear();
            let tokens = tokenize(doc);
            doc_len.push(tokens.len() as u32);
            for t in tokens {
                *tf.entry(t).or_insert(0) += 1;
            }
            for (t, n) in tf.drain() {
                postings.entry(t).or_default().push((id, n));
            }
        }
        let total: u64 = doc_len.iter().map(|&l| u64::from(l)).sum();
        let avgdl = if doc_len.is_empty() {
            0.0
        } else {
            total as f64 / doc_len.len() as f64
        };
        Bm25Index {
            params,
            doc_len,
            avgdl,
            postings,
        }
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// `ln(1 + (N − df + 0.5) / (df + 0.5))`.
    pub fn idf(&self, term: &str) -> f64 {
        let df = self.postings.get(term).map_or(0, Vec::len) as f64;
        let n = self.doc_len.len() as f64;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    fn term_weight(&self, tf: u32, doc: u32) -> f64 {
        let Bm25Params { k1, b } = self.params;
        let tf = f64::from(tf);
        let norm = if self.avgdl > 0.0 {
            f64::from(self.doc_len[doc as usize]) / self.avgdl
        } else {
            0.0
        };
        tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * norm))
    }

    /// Scores of every document that shares a term with `query`, by document id.
    fn accumulate(&self, query: &str) -> HashMap<u32, f64> {
        let mut scores: HashMap<u32, f64> = HashMap::new();
        for term in tokenize(query) {
            let Some(list) = self.postings.get(&term) else {
                continue;
            };
            let idf = self.idf(&term);
            for &(doc, tf) in list {
                *scores.entry(doc).or_insert(0.0) += idf * self.term_weight(tf, doc);
            }
        }
        scores
    }

    /// BM25 score of document `doc` for `query` (0 when they share no term).
    pub fn score(&self, query: &str, doc: u32) -> f64 {
        self.accumulate(query).get(&doc).copied().unwrap_or(0.0)
    }

    /// The `k` best documents for `query` with a positive score, best first; equal scores
    /// in ascending id order, so the result is deterministic.
    pub fn top_k(&self, query: &str, k: usize) -> Vec<(u32, f64)> {
        if k == 0 {
            return Vec::new();
        }
        // A min-heap of the best k so far: memory O(k) beyond the touched scores.
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
        for (doc, score) in self.accumulate(query) {
            heap.push(Ranked { score, doc });
            if heap.len() > k {
                heap.pop();
            }
        }
        let mut out: Vec<(u32, f64)> = heap.into_iter().map(|r| (r.doc, r.score)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// Heap entry ordered so that the heap's top is the *worst* kept document.
#[derive(Debug)]
struct Ranked {
    score: f64,
    doc: u32,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // Lower score is "greater" (popped first); on equal scores the higher id goes first.
        other
            .score
            .total_cmp(&self.score)
            .then(self.doc.cmp(&other.doc))
    }
}

/// splitmix64: a tiny, fixed PRNG, so draws never change with a dependency's release.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by rejection so there is no modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Up to `n` distinct indices of `0..pool`, none for which `exclude` is true, drawn
/// uniformly without replacement from a generator seeded by (`seed`, `epoch`, `key`): the
/// same triple gives the same draw, another epoch an independent one. `key` is the query
/// (so queries do not share draws). Fewer than `n` come back only when fewer are eligible.
///
/// Memory is O(n), not O(pool): small draws from a large pool (random negatives from a
/// 1M-passage corpus) use rejection sampling; when `n` is a large share of the pool the
/// pool is shuffled instead (a partial Fisher–Yates).
pub fn draw(
    seed: u64,
    epoch: u64,
    key: &str,
    pool: usize,
    n: usize,
    exclude: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let h = fnv1a(
        key.as_bytes(),
        fnv1a(
            &epoch.to_le_bytes(),
            fnv1a(&seed.to_le_bytes(), 0xcbf2_9ce4_8422_2325),
        ),
    );
    let mut rng = SplitMix(h);
    if pool == 0 || n == 0 {
        return Vec::new();
    }
    if n.saturating_mul(4) < pool {
        let mut seen = HashSet::with_capacity(2 * n);
        let mut out = Vec::with_capacity(n);
        // Enough tries that failing to fill means the eligible set is tiny; then fall back
        // to the exhaustive path below, which is exact.
        let mut tries = 0usize;
        while out.len() < n && tries < 64 * n + 64 {
            tries += 1;
            let i = rng.below(pool as u64) as usize;
            if seen.insert(i) && !exclude(i) {
                out.push(i);
            }
        }
        if out.len() == n {
            return out;
        }
    }
    let mut idx: Vec<usize> = (0..pool).filter(|&i| !exclude(i)).collect();
    let take = n.min(idx.len());
    for i in 0..take {
        let j = i + rng.below((idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(take);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn bm25_matches_a_hand_computed_example() {
        let docs = ["the cat sat on the mat", "the dog sat", "cats and dogs"];
        let idx = Bm25Index::build(docs, Bm25Params::default());
        // N = 3, lengths 6, 3, 3 → avgdl 4.
        // "cat": df 1 → idf ln(1 + 2.5/1.5); "sat": df 2 → idf ln(1 + 1.5/2.5).
        let idf_cat = (1.0f64 + 2.5 / 1.5).ln();
        let idf_sat = (1.0f64 + 1.5 / 2.5).ln();
        assert!(close(idx.idf("cat"), idf_cat) && close(idx.idf("sat"), idf_sat));
        // doc 0: tf 1 each, |d|/avgdl = 1.5 → weight 2.2 / (1 + 1.2·(0.25 + 0.75·1.5)).
        let w0 = 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * 1.5));
        assert!(close(idx.score("cat sat", 0), (idf_cat + idf_sat) * w0));
        // doc 1: "sat" only, |d|/avgdl = 0.75.
        let w1 = 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * 0.75));
        assert!(close(idx.score("Cat, SAT!", 1), idf_sat * w1));
        assert_eq!(idx.score("cat sat", 2), 0.0);
        // "the" twice in doc 0: tf 2.
        let idf_the = (1.0f64 + 1.5 / 2.5).ln();
        let w_the = 2.0 * 2.2 / (2.0 + 1.2 * (0.25 + 0.75 * 1.5));
        assert!(close(idx.score("the", 0), idf_the * w_the));

        let top = idx.top_k("cat sat", 10);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(idx.top_k("cat sat", 1).len(), 1);
        assert!(idx.top_k("zebra", 5).is_empty());
    }

    #[test]
    fn top_k_ties_are_deterministic() {
        let idx = Bm25Index::build(["a b", "a b", "a b", "c"], Bm25Params::default());
        let top = idx.top_k("a", 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn draws_are_reproducible_differ_by_epoch_and_skip_excluded() {
        let positives: HashSet<usize> = [3, 17, 500].into_iter().collect();
        let ex = |i: usize| positives.contains(&i);
        let a = draw(13, 0, "q1", 1_000_000, 8, ex);
        assert_eq!(a, draw(13, 0, "q1", 1_000_000, 8, ex));
        assert_ne!(a, draw(13, 1, "q1", 1_000_000, 8, ex));
        assert_ne!(a, draw(13, 0, "q2", 1_000_000, 8, ex));
        assert_ne!(a, draw(14, 0, "q1", 1_000_000, 8, ex));
        assert_eq!(a.len(), 8);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 8, "distinct");

        // A small pool: the exhaustive path, still never an excluded index.
        for epoch in 0..20 {
            let d = draw(1, epoch, "q", 20, 10, ex);
            assert_eq!(d.len(), 10);
            assert!(d.iter().all(|i| !positives.contains(i) && *i < 20));
            assert_eq!(d.iter().collect::<HashSet<_>>().len(), 10);
        }
        // Fewer eligible than asked: all of them.
        let mut d = draw(1, 0, "q", 5, 10, |i| i == 2);
        d.sort();
        assert_eq!(d, vec![0, 1, 3, 4]);
        assert!(draw(1, 0, "q", 0, 3, |_| false).is_empty());
    }

    #[test]
    fn draw_is_pinned() {
        // Changing the generator moves every negative: it needs a kind version bump.
        assert_eq!(draw(13, 0, "q1", 1000, 3, |_| false), vec![655, 757, 683]);
    }
}
