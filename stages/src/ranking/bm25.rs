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

/// An immutable BM25 index.
pub struct Bm25Index {
    params: Bm25Params,
    vocab: HashMap<Box<str>, u32>,
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

const CHUNK: usize = 4096;

fn tokenize_chunk<S: AsRef<str>>(texts: &[S]) -> Chunk {
    let mut local: HashMap<Box<str>, u32> = HashMap::new();
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
        let mut vocab: HashMap<Box<str>, u32> = HashMap::new();
        let mut remaps: Vec<Vec<u32>> = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let remap = c
                .terms
                .iter()
                .map(|t| {
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
        Ok(Bm25Index {
            norm_c0: params.k1 * (1.0 - params.b),
            norm_c1: params.k1 * params.b / avgdl,
            params,
            vocab,
            offsets,
            docs,
            tfs,
            idf,
            doc_len,
            avgdl,
        })
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

    /// The query's term numbers, occurrences repeated; terms absent from the corpus are
    /// dropped (they would score 0 everywhere).
    fn query_terms(&self, query: &str) -> Vec<u32> {
        let mut out = Vec::new();
        analyze(query, &mut |tok| {
            if let Some(&t) = self.vocab.get(tok) {
                out.push(t);
            }
        });
        out
    }

    /// k1 · (1 − b + b · len / avgdl).
    fn norm(&self, len: u32) -> f64 {
        self.norm_c0 + self.norm_c1 * f64::from(len)
    }

    /// Fresh search state for this index.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            acc: vec![0.0; self.len()],
            touched: Vec::new(),
        }
    }

    /// The score of indexed passage `doc` for `query`, found by binary search in the
    /// postings (no accumulator needed). 0 for a passage sharing no term with the query.
    pub fn score_doc(&self, query: &str, doc: u32) -> f64 {
        let Some(&len) = self.doc_len.get(doc as usize) else {
            return 0.0;
        };
        let norm = self.norm(len);
        let mut score = 0.0;
        for t in self.query_terms(query) {
            let (lo, hi) = self.range(t);
            if let Ok(i) = self.docs[lo..hi].binary_search(&doc) {
                let tf = f64::from(self.tfs[lo + i]);
                score += self.idf[t as usize] * tf / (tf + norm);
            }
        }
        score
    }

    /// The score that `text` would get for `query` with this corpus' statistics (idf,
    /// avgdl), whether or not it is in the corpus: how a positive's score is found for the
    /// margin filter. For an indexed passage it equals [`Bm25Index::score_doc`].
    pub fn score_text(&self, query: &str, text: &str) -> f64 {
        let q = self.query_terms(query);
        if q.is_empty() {
            return 0.0;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        let mut len = 0u32;
        analyze(text, &mut |tok| {
            len = len.saturating_add(1);
            if let Some(&t) = self.vocab.get(tok) {
                *counts.entry(t).or_insert(0) += 1;
            }
        });
        let norm = self.norm(len);
        let mut score = 0.0;
        for t in q {
            if let Some(&c) = counts.get(&t) {
                let tf = f64::from(c.min(u32::from(u16::MAX)));
                score += self.idf[t as usize] * tf / (tf + norm);
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
    /// there may be fewer than `k`.
    pub fn search(&self, query: &str, k: usize, scratch: &mut Scratch) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        if scratch.acc.len() != self.len() {
            *scratch = self.scratch();
        }
        let Scratch { acc, touched } = scratch;
        for t in self.query_terms(query) {
            let idf = self.idf[t as usize];
            let (lo, hi) = self.range(t);
            for (&d, &tf) in self.docs[lo..hi].iter().zip(&self.tfs[lo..hi]) {
                let tf = f64::from(tf);
                let slot = &mut acc[d as usize];
                // Every contribution is > 0 (idf > 0, tf ≥ 1), so 0 means "not reached yet".
                if *slot == 0.0 {
                    touched.push(d);
                }
                *slot += idf * tf / (tf + self.norm(self.doc_len[d as usize]));
            }
        }
        let mut heap: BinaryHeap<Reverse<Hit>> = BinaryHeap::with_capacity(k + 1);
        for &d in touched.iter() {
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
