//! The analyzer BM25 indexes and searches with. One analyzer for every language, because a
//! reranker corpus is often mixed (Japanese passages quoting English product names):
//!
//! - Full-width ASCII (`Ａ`–`～`, U+FF01–FF5E) folds to ASCII and the ideographic space to a
//!   space, as Lucene's CJKWidthFilter does for those ranges (half-width katakana is left
//!   as it is).
//! - CJK characters (Han, Hiragana, Katakana, Hangul) are indexed as overlapping character
//!   bigrams, as Lucene's `CJKAnalyzer` (CJKBigramFilter) does: `東京都の天気` →
//!   `東京 京都 都の の天 天気`. A CJK run of a single character is kept as a unigram.
//!   Bigrams need no dictionary and no word segmenter, and they are what Lucene-based
//!   engines ship for CJK by default.
//! - Everything else: maximal runs of alphanumeric characters, lowercased (`GPT-4o` →
//!   `gpt 4o`). Punctuation and whitespace separate tokens. No stemming, no stop words
//!   (BM25's idf already discounts frequent words; Lucene's CJKAnalyzer would drop a few
//!   English ones).

/// True for characters that the CJK bigram rule applies to.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3005..=0x3007          // 々 〆 〇
        | 0x3040..=0x309F        // Hiragana
        | 0x30A0..=0x30FF        // Katakana (with ー)
        | 0x31F0..=0x31FF        // Katakana phonetic extensions
        | 0x3400..=0x4DBF        // CJK extension A
        | 0x4E00..=0x9FFF        // CJK unified ideographs
        | 0xF900..=0xFAFF        // CJK compatibility ideographs
        | 0xFF66..=0xFF9F        // half-width Katakana
        | 0x1100..=0x11FF        // Hangul Jamo
        | 0x3130..=0x318F        // Hangul compatibility Jamo
        | 0xAC00..=0xD7AF        // Hangul syllables
        | 0x20000..=0x2FA1F      // CJK extensions B–F, compatibility supplement
    )
}

/// Full-width ASCII variants to ASCII, the ideographic space to a space.
fn fold_width(c: char) -> char {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        0x3000 => ' ',
        _ => c,
    }
}

/// Calls `emit` with each token of `text`, in order. Tokens are borrowed from a buffer the
/// analyzer reuses, so indexing allocates nothing per token.
pub fn analyze(text: &str, emit: &mut dyn FnMut(&str)) {
    let mut word = String::new();
    let mut bigram = String::new();
    // The previous character of the current CJK run, and the run's length so far.
    let mut prev: Option<char> = None;
    let mut run = 0usize;
    for raw in text.chars() {
        let c = fold_width(raw);
        if is_cjk(c) {
            if !word.is_empty() {
                emit(&word);
                word.clear();
            }
            if let Some(p) = prev {
                bigram.clear();
                bigram.push(p);
                bigram.push(c);
                emit(&bigram);
            }
            prev = Some(c);
            run += 1;
            continue;
        }
        if run == 1
            && let Some(p) = prev
        {
            bigram.clear();
            bigram.push(p);
            emit(&bigram);
        }
        prev = None;
        run = 0;
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            emit(&word);
            word.clear();
        }
    }
    if run == 1
        && let Some(p) = prev
    {
        bigram.clear();
        bigram.push(p);
        emit(&bigram);
    }
    if !word.is_empty() {
        emit(&word);
    }
}

/// The tokens of `text` as owned strings (tests, diagnostics; indexing uses [`analyze`]).
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    analyze(text, &mut |t| out.push(t.to_string()));
    out
}

#[cfg(test)]
mod tests {
    use super::tokens;

    #[test]
    fn words_and_bigrams() {
        assert_eq!(
            tokens("東京都の天気"),
            ["東京", "京都", "都の", "の天", "天気"]
        );
        assert_eq!(tokens("GPT-4oとは何？"), ["gpt", "4o", "とは", "は何"]);
        assert_eq!(tokens("a 猫 b"), ["a", "猫", "b"]);
        assert_eq!(tokens("ＢＭ２５　スコア"), ["bm25", "スコ", "コア"]);
        assert_eq!(tokens("  Hello, World!  "), ["hello", "world"]);
        assert_eq!(tokens("한국어"), ["한국", "국어"]);
        assert!(tokens(" ,.; ").is_empty());
    }
}
