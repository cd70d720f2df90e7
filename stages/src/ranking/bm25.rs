//! Okapi BM25 over a corpus of passages, with Lucene's `BM25Similarity` formula:
//!
//! ```text
//! idf(t)    = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))
//! score(q,d) = Σ_{t ∈ q} idf(t) · tf(t,d) / (tf(t,d) + k1 · (1 − b + b · |d| / avgdl))
//! ```
//!
//! N is the number of passages, df(t) the number of passages containing t, tf(t,d) the
//! count of t in d, |d| the number of tokens of d and avgdl the mean of |d| over the
//! corpus; k1 = 1.2 and b = 0.75 by default. As in Lucene since 8.0 there is no (k1 + 1)
//! factor in the numerator: it scales every score by the same constant and changes no
//! ranking. A term repeated in the query counts once per occurrence (as one clause per
//! occurrence in a Lucene BooleanQuery). Two differences from Lucene, both deliberate:
//! passage lengths are exact (Lucene stores them lossily in one byte) and term
//! frequencies saturate at 65,535 per passage (where BM25 is flat anyway).
//!
//! The index is an inverted index in flat arrays (CSR layout): the postings of term `t` are
//! `docs[offsets[t]..offsets[t + 1]]` (ascending passage numbers) with their frequencies in
//! `tfs` at the same positions. Memory is linear in the number of postings; nothing is
//! quadratic and there is no dense passage × term or query × passage matrix. A search
//! accumulates scores term at a time in a per-thread array of N scores that it resets
//! after each query, and keeps the best k in a bounded heap.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use super::analyzer::analyze;

/// BM25's free parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation (Lucene default 1.2).
    pub k1: f64,
    /// Length normalisation, 0 (none) to 1 (full) (Lucene default 0.75).
    pub b: f64,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

impl Bm25Params {
    /// Checks that k1 ≥ 0 and 0 ≤ b ≤ 1, both finite.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return Err(format!("k1 must be a finite number ≥ 0, got {}", self.k1));
        }
        if !(self.b.is_finite() && (0.0..=1.0).contains(&self.b)) {
            return Err(format!("b must lie in [0, 1], got {}", self.b));
        }
        Ok(())
    }
}

/// One search result: a passage number (its position in the indexed slice) and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub doc: u32,
    pub score: f64,
}

/// "Better" is greater: a higher score, and on equal scores the lower passage number, so
/// results are a total order and the same whatever order the postings were visited in.
impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.doc.cmp(&self.doc))
    }
}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Eq for Hit {}

/// FxHash (rustc's hasher): tokens are looked up ~60M times to index a million passages,
/// and SipHash's DoS resistance buys nothing against one's own corpus.
#[derive(Default, Clone, Copy)]
struct Fx(u64);
impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weak, and hashbrown picks buckets by the low
        // bits: a SplitMix64-style finaliser spreads them.
        let z = (self.0 ^ (self.0 >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        z ^ (z >> 32)
    }
}
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// An immutable BM25 index.
pub struct Bm25Index {
    params: Bm25Params,
    vocab: FxMap<Box<str>, u32>,
    /// Postings of term t: `offsets[t]..offsets[t + 1]` in `docs` and `tfs`.
    offsets: Vec<u64>,
    docs: Vec<u32>,
    tfs: Vec<u16>,
    idf: Vec<f64>,
    doc_len: Vec<u32>,
    avgdl: f64,
    /// k1 · (1 − b) and k1 · b / avgdl: the length norm is one multiply-add per posting.
    norm_c0: f64,
    norm_c1: f64,
    /// Per term, its largest contribution to any passage's score: the bound that lets a
    /// search skip frequent terms' postings (MaxScore).
    max_contrib: Vec<f64>,
}

/// Passages tokenised per chunk by one rayon task: chunk-local term numbers, merged into
/// the global vocabulary afterwards so that tokenising runs in parallel.
struct Chunk {
    terms: Vec<Box<str>>,
    /// Per passage: its distinct (local term, tf) pairs, flattened; `ends[i]` closes passage i.
    post_term: Vec<u32>,
    post_tf: Vec<u16>,
    ends: Vec<usize>,
    lens: Vec<u32>,
}

/// Passages per tokenising task: large enough that the per-chunk vocabularies (merged
/// afterwards) stay a small share of the work, small enough to balance 16 cores on 1M passages.
const CHUNK: usize = 16_384;

fn tokenize_chunk<S: AsRef<str>>(texts: &[S]) -> Chunk {
    let mut local: FxMap<Box<str>, u32> = FxMap::default();
    let mut terms: Vec<Box<str>> = Vec::new();
    let mut chunk = Chunk {
        terms: Vec::new(),
        post_term: Vec::new(),
        post_tf: Vec::new(),
        ends: Vec::with_capacity(texts.len()),
        lens: Vec::with_capacity(texts.len()),
    };
    let mut ids: Vec<u32> = Vec::new();
    for text in texts {
        ids.clear();
        analyze(text.as_ref(), &mut |tok| {
            let id = match local.get(tok) {
                Some(&id) => id,
                None => {
                    let id = terms.len() as u32;
                    terms.push(tok.into());
                    local.insert(tok.into(), id);
                    id
                }
            };
            ids.push(id);
        });
        chunk
            .lens
            .push(u32::try_from(ids.len()).unwrap_or(u32::MAX));
        ids.sort_unstable();
        let mut i = 0;
        while i < ids.len() {
            let mut j = i + 1;
            while j < ids.len() && ids[j] == ids[i] {
                j += 1;
            }
            chunk.post_term.push(ids[i]);
            chunk.post_tf.push(u16::try_from(j - i).unwrap_or(u16::MAX));
            i = j;
        }
        chunk.ends.push(chunk.post_term.len());
    }
    chunk.terms = terms;
    chunk
}

/// Why an index could not be built.
#[derive(Debug, Clone, PartialEq)]
pub enum Bm25Error {
    /// More passages than passage numbers (u32).
    TooManyPassages(usize),
    /// Bad k1 or b.
    Params(String),
}

impl std::fmt::Display for Bm25Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bm25Error::TooManyPassages(n) => {
                write!(
                    f,
                    "BM25: {n} passages is more than the index supports (2^32 − 1)"
                )
            }
            Bm25Error::Params(m) => write!(f, "BM25: {m}"),
        }
    }
}
impl std::error::Error for Bm25Error {}

/// A query term in scoring order.
struct Planned {
    term: u32,
    /// Occurrences in the query.
    weight: f64,
    /// weight × the term's largest contribution.
    bound: f64,
}

/// Reusable per-thread search state: a score per passage (0 = not reached) and the
/// passages this query reached, to reset only those.
pub struct Scratch {
    acc: Vec<f64>,
    touched: Vec<u32>,
}

impl Bm25Index {
    /// Indexes `texts`; passage `i` of the index is `texts[i]`. Tokenising runs in
    /// parallel on rayon's pool; the result is the same whatever the number of threads.
    pub fn build<S: AsRef<str> + Sync>(texts: &[S], params: Bm25Params) -> Result<Self, Bm25Error> {
        params.validate().map_err(Bm25Error::Params)?;
        if texts.len() >= u32::MAX as usize {
            return Err(Bm25Error::TooManyPassages(texts.len()));
        }
        let chunks: Vec<Chunk> = texts.par_chunks(CHUNK).map(tokenize_chunk).collect();

        // Global term numbers in order of first appearance: deterministic.
        let mut vocab: FxMap<Box<str>, u32> = FxMap::default();
        let mut remaps: Vec<Vec<u32>> = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let remap = c
                .terms
                .iter()
                .map(|t| {
                    // Look up before inserting: most chunk terms are already known, and
                    // `entry` would allocate a key for each.
                    if let Some(&id) = vocab.get(t) {
                        return id;
                    }
                    let next = vocab.len() as u32;
                    *vocab.entry(t.clone()).or_insert(next)
                })
                .collect();
            remaps.push(remap);
        }
        let n_terms = vocab.len();
        let mut df = vec![0u64; n_terms];
        for (c, remap) in chunks.iter().zip(&remaps) {
            for &t in &c.post_term {
                df[remap[t as usize] as usize] += 1;
            }
        }
        let mut offsets = Vec::with_capacity(n_terms + 1);
        let mut total = 0u64;
        offsets.push(0);
        for &d in &df {
            total += d;
            offsets.push(total);
        }
        let mut docs = vec![0u32; total as usize];
        let mut tfs = vec![0u16; total as usize];
        let mut cursor: Vec<u64> = offsets[..n_terms].to_vec();
        let mut doc_len = Vec::with_capacity(texts.len());
        let mut doc = 0u32;
        // Passages are visited in order, so every posting list comes out sorted.
        for (c, remap) in chunks.into_iter().zip(&remaps) {
            let mut start = 0;
            for (&end, &len) in c.ends.iter().zip(&c.lens) {
                for p in start..end {
                    let t = remap[c.post_term[p] as usize] as usize;
                    let at = cursor[t] as usize;
                    docs[at] = doc;
                    tfs[at] = c.post_tf[p];
                    cursor[t] += 1;
                }
                start = end;
                doc_len.push(len);
                doc += 1;
            }
        }
        let n = texts.len() as f64;
        let idf = df
            .iter()
            .map(|&d| (1.0 + (n - d as f64 + 0.5) / (d as f64 + 0.5)).ln())
            .collect();
        let sum_len: u64 = doc_len.iter().map(|&l| u64::from(l)).sum();
        // An all-empty corpus has no postings, so avgdl is never divided into; 1 keeps it finite.
        let avgdl = if sum_len == 0 {
            1.0
        } else {
            sum_len as f64 / n
        };
        let mut index = Bm25Index {
            norm_c0: params.k1 * (1.0 - params.b),
            norm_c1: params.k1 * params.b / avgdl,
            max_contrib: Vec::new(),
            params,
            vocab,
            offsets,
            docs,
            tfs,
            idf,
            doc_len,
            avgdl,
        };
        index.max_contrib = (0..n_terms as u32)
            .into_par_iter()
            .map(|t| {
                let (lo, hi) = index.range(t);
                let idf = index.idf[t as usize];
                index.docs[lo..hi]
                    .iter()
                    .zip(&index.tfs[lo..hi])
                    .map(|(&d, &tf)| index.contrib(idf, tf, d))
                    .fold(0.0, f64::max)
            })
            .collect();
        Ok(index)
    }

    /// Number of indexed passages.
    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    /// True when no passage was indexed.
    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// Number of distinct terms.
    pub fn vocabulary_size(&self) -> usize {
        self.vocab.len()
    }

    /// Total number of postings (distinct (term, passage) pairs).
    pub fn postings(&self) -> usize {
        self.docs.len()
    }

    /// Mean passage length in tokens.
    pub fn avgdl(&self) -> f64 {
        self.avgdl
    }

    /// The parameters the index scores with.
    pub fn params(&self) -> Bm25Params {
        self.params
    }

    /// Document frequency of an (analyzed) term, 0 when unknown.
    pub fn df(&self, term: &str) -> u64 {
        self.vocab.get(term).map_or(0, |&t| {
            self.offsets[t as usize + 1] - self.offsets[t as usize]
        })
    }

    /// idf of an (analyzed) term as in the formula above; `None` when it is not in the corpus.
    pub fn idf(&self, term: &str) -> Option<f64> {
        self.vocab.get(term).map(|&t| self.idf[t as usize])
    }

    /// The query's distinct known terms with their number of occurrences, in the order
    /// every score is summed in: largest possible contribution first (term number on
    /// ties). One fixed order makes [`Bm25Index::search`], [`Bm25Index::score_doc`] and
    /// [`Bm25Index::score_text`] agree to the last bit. Terms absent from the corpus are
    /// dropped (they score 0 everywhere).
    fn plan(&self, query: &str) -> Vec<Planned> {
        let mut counts: FxMap<u32, u32> = FxMap::default();
        analyze(query, &mut |tok| {
            if let Some(&t) = self.vocab.get(tok) {
                *counts.entry(t).or_insert(0) += 1;
            }
        });
        let mut plan: Vec<Planned> = counts
            .into_iter()
            .map(|(term, n)| Planned {
                term,
                weight: f64::from(n),
                bound: f64::from(n) * self.max_contrib[term as usize],
            })
            .collect();
        plan.sort_by(|a, b| b.bound.total_cmp(&a.bound).then(a.term.cmp(&b.term)));
        plan
    }

    /// k1 · (1 − b + b · len / avgdl).
    fn norm(&self, len: u32) -> f64 {
        self.norm_c0 + self.norm_c1 * f64::from(len)
    }

    /// One posting's contribution: idf · tf / (tf + norm(|d|)).
    fn contrib(&self, idf: f64, tf: u16, doc: u32) -> f64 {
        let tf = f64::from(tf);
        idf * tf / (tf + self.norm(self.doc_len[doc as usize]))
    }

    /// Fresh search state for this index.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            acc: vec![0.0; self.len()],
            touched: Vec::new(),
        }
    }

    /// tf of term `t` in passage `doc` (binary search in its postings), 0 if absent.
    fn tf(&self, t: u32, doc: u32) -> u16 {
        let (lo, hi) = self.range(t);
        match self.docs[lo..hi].binary_search(&doc) {
            Ok(i) => self.tfs[lo + i],
            Err(_) => 0,
        }
    }

    /// The score of indexed passage `doc` for `query`, found by binary search in the
    /// postings (no accumulator needed). 0 for a passage sharing no term with the query.
    pub fn score_doc(&self, query: &str, doc: u32) -> f64 {
        if doc as usize >= self.len() {
            return 0.0;
        }
        let mut score = 0.0;
        for p in self.plan(query) {
            let tf = self.tf(p.term, doc);
            if tf > 0 {
                score += p.weight * self.contrib(self.idf[p.term as usize], tf, doc);
            }
        }
        score
    }

    /// The score that `text` would get for `query` with this corpus' statistics (idf,
    /// avgdl), whether or not it is in the corpus: how a positive's score is found for the
    /// margin filter. For an indexed passage it equals [`Bm25Index::score_doc`].
    pub fn score_text(&self, query: &str, text: &str) -> f64 {
        let plan = self.plan(query);
        if plan.is_empty() {
            return 0.0;
        }
        let mut counts: FxMap<u32, u32> = FxMap::default();
        let mut len = 0u32;
        analyze(text, &mut |tok| {
            len = len.saturating_add(1);
            if let Some(&t) = self.vocab.get(tok) {
                *counts.entry(t).or_insert(0) += 1;
            }
        });
        let norm = self.norm(len);
        let mut score = 0.0;
        for p in plan {
            if let Some(&c) = counts.get(&p.term) {
                let tf = f64::from(u16::try_from(c).unwrap_or(u16::MAX));
                score += p.weight * (self.idf[p.term as usize] * tf / (tf + norm));
            }
        }
        score
    }

    fn range(&self, t: u32) -> (usize, usize) {
        (
            self.offsets[t as usize] as usize,
            self.offsets[t as usize + 1] as usize,
        )
    }

    /// The best `k` passages for `query`, best first (score descending, then passage
    /// number ascending). Only passages sharing a term with the query are returned, so
    /// there may be fewer than `k`. Exact: the same result as scoring every passage.
    ///
    /// Terms are processed in the plan's order (largest bound first), term at a time into
    /// the accumulator. Before each term, θ is the k-th best partial score so far, a lower
    /// bound of the final k-th score since scores only grow. Once the bounds of the
    /// remaining terms sum below θ, a passage not reached yet cannot make the top k
    /// (MaxScore, Turtle & Flood 1995): the remaining, frequent terms' long posting lists
    /// are not scanned; only the passages that can still reach θ are looked up in them.
    pub fn search(&self, query: &str, k: usize, scratch: &mut Scratch) -> Vec<Hit> {
        if k == 0 || self.is_empty() {
            return Vec::new();
        }
        if scratch.acc.len() != self.len() {
            *scratch = self.scratch();
        }
        let plan = self.plan(query);
        // rest[j]: the most that terms j.. can add to any passage. The slack covers
        // rounding: sums in another order may exceed it by a few ulps.
        let mut rest = vec![0.0; plan.len() + 1];
        for j in (0..plan.len()).rev() {
            rest[j] = rest[j + 1] + plan[j].bound;
        }
        let slack = |x: f64| x * (1.0 + 1e-9) + 1e-12;
        let Scratch { acc, touched } = scratch;
        let mut kth: Vec<f64> = Vec::new();
        let mut pruned_from = plan.len();
        // The best partial score: θ cannot exceed it, so while the remaining bounds do,
        // computing θ (a selection over every passage reached) would be wasted.
        let mut best = 0.0f64;
        for (j, p) in plan.iter().enumerate() {
            if j > 0 && touched.len() >= k && slack(rest[j]) < best {
                kth.clear();
                kth.extend(touched.iter().map(|&d| acc[d as usize]));
                let (_, theta, _) = kth.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
                if slack(rest[j]) < *theta {
                    pruned_from = j;
                    break;
                }
            }
            let idf = self.idf[p.term as usize];
            let (lo, hi) = self.range(p.term);
            for (&d, &tf) in self.docs[lo..hi].iter().zip(&self.tfs[lo..hi]) {
                let slot = &mut acc[d as usize];
                // Every contribution is > 0 (idf > 0, tf ≥ 1), so 0 means "not reached yet".
                if *slot == 0.0 {
                    touched.push(d);
                }
                *slot += p.weight * self.contrib(idf, tf, d);
                best = best.max(*slot);
            }
        }
        let mut candidates: Vec<u32> = Vec::new();
        if pruned_from < plan.len() {
            // θ as computed just before the break.
            kth.clear();
            kth.extend(touched.iter().map(|&d| acc[d as usize]));
            let (_, theta, _) = kth.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let theta = *theta;
            let reach = slack(rest[pruned_from]);
            for &d in touched.iter() {
                if acc[d as usize] + reach >= theta {
                    candidates.push(d);
                } else {
                    acc[d as usize] = 0.0;
                }
            }
            for p in &plan[pruned_from..] {
                let idf = self.idf[p.term as usize];
                for &d in &candidates {
                    let tf = self.tf(p.term, d);
                    if tf > 0 {
                        acc[d as usize] += p.weight * self.contrib(idf, tf, d);
                    }
                }
            }
        } else {
            std::mem::swap(&mut candidates, touched);
        }
        let mut heap: BinaryHeap<Reverse<Hit>> =
            BinaryHeap::with_capacity(k.min(candidates.len()) + 1);
        for &d in &candidates {
            let hit = Hit {
                doc: d,
                score: acc[d as usize],
            };
            acc[d as usize] = 0.0;
            if heap.len() < k {
                heap.push(Reverse(hit));
            } else if let Some(mut worst) = heap.peek_mut()
                && hit > worst.0
            {
                *worst = Reverse(hit);
            }
        }
        touched.clear();
        if candidates.capacity() > touched.capacity() {
            // Keep the larger buffer for the next query.
            candidates.clear();
            std::mem::swap(&mut candidates, touched);
        }
        heap.into_sorted_vec().into_iter().map(|r| r.0).collect()
    }

    /// [`Bm25Index::search`] for many queries in parallel on rayon's pool; result `i` is
    /// for `queries[i]`. Each worker reuses one score array (N × 8 bytes).
    pub fn search_many<S: AsRef<str> + Sync>(&self, queries: &[S], k: usize) -> Vec<Vec<Hit>> {
        queries
            .par_iter()
            .map_init(|| self.scratch(), |s, q| self.search(q.as_ref(), k, s))
            .collect()
    }
}
