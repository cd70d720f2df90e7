//! Reranker training data, a built-in BM25 index and hard-negative mining (issue 5).
//!
//! - [`data`]: seed 003's JSONL (`{query_text, positives, negatives, source_chunk, meta}`),
//!   read with errors naming file:line and field; grouping by query (multi-positive) and a
//!   query-level train / validation / test split.
//! - [`analyzer`]: the tokeniser BM25 uses (words for alphabetic scripts, character
//!   bigrams for CJK, as Lucene's CJKAnalyzer).
//! - [`bm25`]: an inverted index with postings in flat arrays and parallel top-k search.
//! - [`negatives`]: hard (BM25 or model-rescored) and random negatives, re-drawn per epoch.
//!
//! Nothing here needs burn: it is compiled in every build. docs/ranking.md documents the
//! formulas and the choices made.

pub mod analyzer;
pub mod bm25;
pub mod data;
pub mod negatives;

/// The identity of a query or passage text: leading and trailing whitespace removed and
/// every run of (Unicode) whitespace replaced by one ASCII space. Case and punctuation are
/// kept: "What is BM25?" and "what is bm25" are different queries, but "What  is\tBM25? "
/// and "What is BM25?" are the same one. Used for the query-level split (no query on two
/// sides) and to keep positives out of the negatives.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The key that keeps positives out of negatives: the text with all whitespace removed. It
/// is stricter than [`normalize`] on purpose: a copy of a positive re-flowed across lines or,
/// in Japanese or Chinese, with a space inserted between characters (`東京の天気は　晴れ`) is
/// still the positive. Two passages that differ only in where their spaces are are never
/// worth a negative slot.
pub fn passage_key(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}
