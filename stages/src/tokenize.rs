//! Pair tokenization for cross-encoders with the Hugging Face `tokenizers` crate:
//! truncation (longest-first or only-second, special tokens counted), padding to the
//! longest pair of a batch, attention masks, token type ids (BERT) or none (RoBERTa), and
//! length-bucketed batching so short pairs are not padded to long ones.

pub mod japanese;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use japanese::{JapaneseConfig, JapaneseWords};

use crate::error::{MlError, Result};

/// How a pair longer than `max_length` is cut (transformers' `truncation=` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Remove tokens from the longer of the two texts, one at a time (`longest_first`).
    #[default]
    LongestFirst,
    /// Cut only the second text (`only_second`); an error when that is not enough.
    OnlySecond,
}

impl std::str::FromStr for Truncation {
    type Err = MlError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "longest_first" | "longest-first" => Ok(Truncation::LongestFirst),
            "only_second" | "only-second" => Ok(Truncation::OnlySecond),
            other => Err(MlError::Input(format!(
                "truncation {other:?}: expected longest_first or only_second"
            ))),
        }
    }
}

/// One tokenized pair, special tokens included, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A padded batch in row-major `[batch, seq]` host buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    /// Present for models that use token types (BERT).
    pub token_type_ids: Option<Vec<i64>>,
}

impl EncodedBatch {
    /// Row `i` of `input_ids`, padding included.
    pub fn row(&self, i: usize) -> &[i64] {
        &self.input_ids[i * self.seq..(i + 1) * self.seq]
    }
}

/// A Japanese BERT's segmenter and the ids `[CLS] a [SEP] b [SEP]` are built with.
struct JapaneseSpecials {
    words: JapaneseWords,
    /// vocab.txt, looked up directly: 3-4× faster than going through `tokenizers` per word.
    vocab: std::collections::HashMap<String, u32>,
    cls_id: u32,
    sep_id: u32,
    unk_id: u32,
    wordpiece: bool,
}

impl JapaneseSpecials {
    /// transformers' WordpieceTokenizer on one word: greedy longest match, `##` after the
    /// first piece, the whole word `[UNK]` when a piece is missing or it has > 100 chars.
    fn wordpiece(&self, word: &str, out: &mut Vec<u32>, buf: &mut String) {
        if word.chars().count() > 100 {
            out.push(self.unk_id);
            return;
        }
        let first = out.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                buf.clear();
                if start > 0 {
                    buf.push_str("##");
                }
                buf.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(buf.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= word[..end].chars().next_back().map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(first);
                    out.push(self.unk_id);
                    return;
                }
            }
        }
    }

    /// The ids of `text`, no specials added.
    fn ids(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut buf = String::new();
        self.words.each_word(text, &mut |w| {
            if self.wordpiece {
                self.wordpiece(w, &mut out, &mut buf)
            } else {
                out.push(self.vocab.get(w).copied().unwrap_or(self.unk_id))
            }
        });
        out
    }
}

/// A `tokenizer.json` set up for pairs of one model (or, for Japanese BERTs, a WordPiece
/// over `vocab.txt` fed MeCab words).
#[derive(Clone)]
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    /// `BertJapaneseTokenizer` models: texts become MeCab words before `tokenizer`, and
    /// specials and truncation are transformers' (Python) ones, done here.
    japanese: Option<Arc<JapaneseSpecials>>,
    path: PathBuf,
    pad_id: u32,
    token_types: bool,
    max_length: usize,
    truncation: Truncation,
}

impl PairTokenizer {
    /// Loads `path`. `pad_id` pads batches; `token_types` says whether the model takes
    /// token type ids. Padding and truncation stored in the file are replaced by ours.
    pub fn from_file(
        path: &Path,
        pad_id: u32,
        token_types: bool,
        max_length: usize,
        truncation: Truncation,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| MlError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("cannot load tokenizer: {e}"),
        })?;
        let mut out = Self {
            tokenizer,
            japanese: None,
            path: path.to_path_buf(),
            pad_id,
            token_types,
            max_length: 0,
            truncation,
        };
        out.tokenizer.with_padding(None);
        out.set_truncation(max_length, truncation)?;
        Ok(out)
    }

    /// A Japanese BERT's tokenizer (`BertJapaneseTokenizer` in `DIR/tokenizer_config.json`,
    /// `DIR/vocab.txt`): MeCab words, then WordPiece, `[CLS] a [SEP] b [SEP]`. Returns the
    /// tokenizer and the id of the config's pad token (when in the vocab).
    pub fn japanese(
        dir: &Path,
        token_types: bool,
        max_length: usize,
        truncation: Truncation,
        pad_id: Option<u32>,
    ) -> Result<Self> {
        let config = JapaneseConfig::from_dir(dir)?;
        let words = JapaneseWords::new(config)?;
        Self::japanese_with(dir, words, token_types, max_length, truncation, pad_id)
    }

    /// [`PairTokenizer::japanese`] with the words already set up (tests, benches).
    pub fn japanese_with(
        dir: &Path,
        words: JapaneseWords,
        token_types: bool,
        max_length: usize,
        truncation: Truncation,
        pad_id: Option<u32>,
    ) -> Result<Self> {
        use tokenizers::models::wordpiece::WordPiece;
        let path = dir.join("vocab.txt");
        let err = |message: String| MlError::Tokenizer {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| MlError::io(&path, e))?;
        // transformers' load_vocab: one token a line, a repeated token keeps its last index.
        let vocab: ahash::AHashMap<String, u32> = text
            .lines()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let config = words.config().clone();
        let id = |t: &str, what: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| err(format!("the {what} token {t:?} is not in the vocabulary")))
        };
        let (cls_id, sep_id) = (id(&config.cls, "cls")?, id(&config.sep, "sep")?);
        let pad_id = match pad_id {
            Some(p) => p,
            None => id(&config.pad, "pad")?,
        };
        let unk_id = id(&config.unk, "unk")?;
        let direct: std::collections::HashMap<String, u32> =
            vocab.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token(config.unk.clone())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| err(format!("WordPiece: {e}")))?;
        let tokenizer = Tokenizer::new(model);
        let mut out = Self {
            tokenizer,
            japanese: Some(Arc::new(JapaneseSpecials {
                wordpiece: config.subword == japanese::Subword::WordPiece,
                words,
                vocab: direct,
                cls_id,
                sep_id,
                unk_id,
            })),
            path,
            pad_id,
            token_types,
            max_length: 0,
            truncation,
        };
        out.set_truncation(max_length, truncation)?;
        Ok(out)
    }

    /// "BertJapaneseTokenizer (mecab/unidic_lite, wordpiece)" or the tokenizer file's path.
    pub fn describe(&self) -> String {
        match &self.japanese {
            Some(j) => j.words.config().describe(),
            None => self.path.display().to_string(),
        }
    }

    fn set_truncation(&mut self, max_length: usize, truncation: Truncation) -> Result<()> {
        let strategy = match truncation {
            Truncation::LongestFirst => TruncationStrategy::LongestFirst,
            Truncation::OnlySecond => TruncationStrategy::OnlySecond,
        };
        if self.japanese.is_some() {
            // Truncated in `encode_japanese`, the way transformers' Python tokenizers do.
            if max_length < 3 {
                return Err(MlError::Tokenizer {
                    path: self.path.clone(),
                    message: format!(
                        "max_length {max_length}: below the 3 special tokens of a pair"
                    ),
                });
            }
            self.max_length = max_length;
            self.truncation = truncation;
            return Ok(());
        }
        let params = TruncationParams {
            max_length,
            strategy,
            stride: 0,
            direction: TruncationDirection::Right,
        };
        self.tokenizer
            .with_truncation(Some(params))
            .map_err(|e| MlError::Tokenizer {
                path: self.path.clone(),
                message: format!("max_length {max_length}: {e}"),
            })?;
        self.max_length = max_length;
        self.truncation = truncation;
        Ok(())
    }

    /// A copy with another length limit / truncation strategy.
    pub fn with_truncation(&self, max_length: usize, truncation: Truncation) -> Result<Self> {
        let mut t = self.clone();
        t.set_truncation(max_length, truncation)?;
        Ok(t)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The underlying `tokenizers` tokenizer (for a Japanese BERT: the WordPiece over
    /// `vocab.txt` alone, without the MeCab step; use [`PairTokenizer::encode`]).
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes one pair (`index` is only for the error message).
    pub fn encode(&self, index: usize, a: &str, b: &str) -> Result<EncodedPair> {
        if let Some(j) = &self.japanese {
            return self.encode_japanese(j, index, a, Some(b));
        }
        let enc = self
            .tokenizer
            .encode((a, b), true)
            .map_err(|e| MlError::Encode {
                index,
                message: format!(
                    "{e} (max_length {}, {:?})",
                    self.max_length, self.truncation
                ),
            })?;
        Ok(EncodedPair {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// Tokenizes one text alone (`[CLS] a [SEP]`), as transformers' `tokenizer(text)`.
    pub fn encode_single(&self, index: usize, a: &str) -> Result<EncodedPair> {
        if let Some(j) = &self.japanese {
            return self.encode_japanese(j, index, a, None);
        }
        let enc = self
            .tokenizer
            .encode(a, true)
            .map_err(|e| MlError::Encode {
                index,
                message: e.to_string(),
            })?;
        Ok(EncodedPair {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
        })
    }

    /// `[CLS] a [SEP] (b [SEP])`, truncated as transformers' Python tokenizers do: their
    /// longest_first splits a tie differently from the `tokenizers` crate (the second text
    /// gives up the odd token), and BertJapaneseTokenizer has no fast version.
    fn encode_japanese(
        &self,
        j: &JapaneseSpecials,
        index: usize,
        a: &str,
        b: Option<&str>,
    ) -> Result<EncodedPair> {
        let mut ids = j.ids(a);
        let mut pair = b.map(|b| j.ids(b));
        let specials = if pair.is_some() { 3 } else { 2 };
        let total = ids.len() + pair.as_ref().map_or(0, Vec::len) + specials;
        if total > self.max_length {
            let remove = total - self.max_length;
            match (&mut pair, self.truncation) {
                (None, _) => ids.truncate(ids.len().saturating_sub(remove)),
                (Some(p), Truncation::LongestFirst) => {
                    let (la, lb) = (ids.len(), p.len());
                    let first = la.abs_diff(lb).min(remove);
                    let second = remove - first;
                    let (cut_a, cut_b) = if la > lb {
                        (first + second / 2, second - second / 2)
                    } else {
                        (second / 2, first + second - second / 2)
                    };
                    ids.truncate(la.saturating_sub(cut_a));
                    p.truncate(lb.saturating_sub(cut_b));
                }
                (Some(p), Truncation::OnlySecond) => {
                    if p.len() <= remove {
                        return Err(MlError::Encode {
                            index,
                            message: format!(
                                "the second text has {} tokens and {remove} must go to fit max_length {} (only_second truncation)",
                                p.len(),
                                self.max_length
                            ),
                        });
                    }
                    p.truncate(p.len() - remove);
                }
            }
        }
        let mut out_ids = Vec::with_capacity(self.max_length.min(total));
        out_ids.push(j.cls_id);
        out_ids.extend(&ids);
        out_ids.push(j.sep_id);
        let mut type_ids = vec![0; out_ids.len()];
        if let Some(p) = pair {
            out_ids.extend(&p);
            out_ids.push(j.sep_id);
            type_ids.resize(out_ids.len(), 1);
        }
        Ok(EncodedPair {
            ids: out_ids,
            type_ids,
        })
    }

    /// Tokenizes all pairs, in parallel, in input order.
    pub fn encode_all<S: AsRef<str> + Sync>(&self, pairs: &[(S, S)]) -> Result<Vec<EncodedPair>> {
        pairs
            .par_iter()
            .enumerate()
            .map(|(i, (a, b))| self.encode(i, a.as_ref(), b.as_ref()))
            .collect()
    }

    /// Pads `items` to the longest one (right padding, as transformers does by default).
    pub fn pad(&self, items: &[&EncodedPair]) -> EncodedBatch {
        let seq = items.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        self.pad_to(items, seq)
    }

    /// Like [`PairTokenizer::pad`] to `seq` tokens (at least the longest pair's length).
    pub fn pad_to(&self, items: &[&EncodedPair], seq: usize) -> EncodedBatch {
        let seq = items.iter().map(|p| p.ids.len()).fold(seq, usize::max);
        let batch = items.len();
        let mut input_ids = vec![self.pad_id as i64; batch * seq];
        let mut attention_mask = vec![0i64; batch * seq];
        let mut types = vec![0i64; batch * seq];
        for (r, p) in items.iter().enumerate() {
            for (c, (&id, &t)) in p.ids.iter().zip(&p.type_ids).enumerate() {
                input_ids[r * seq + c] = id as i64;
                attention_mask[r * seq + c] = 1;
                types[r * seq + c] = t as i64;
            }
        }
        EncodedBatch {
            batch,
            seq,
            input_ids,
            attention_mask,
            token_type_ids: self.token_types.then_some(types),
        }
    }

    /// Tokenizes and pads one batch of pairs in the given order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, pairs: &[(S, S)]) -> Result<EncodedBatch> {
        let encoded = self.encode_all(pairs)?;
        Ok(self.pad(&encoded.iter().collect::<Vec<_>>()))
    }
}

/// Groups item indices into batches of at most `batch_size` items of similar length
/// (sorted by length, longest first, so the first batch shows the peak memory at once).
/// Every index appears exactly once; callers put results back by index.
pub fn length_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep input order, so batching is deterministic.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_batches_cover_every_index_once_grouped_by_length() {
        let lengths = [5, 1, 9, 3, 9, 2, 7];
        let batches = length_batches(&lengths, 3);
        assert_eq!(batches, vec![vec![2, 4, 6], vec![0, 3, 5], vec![1]]);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        assert!(length_batches(&[], 4).is_empty());
    }

    #[test]
    fn truncation_names_parse() {
        assert_eq!(
            "only_second".parse::<Truncation>().unwrap(),
            Truncation::OnlySecond
        );
        assert_eq!(
            "longest-first".parse::<Truncation>().unwrap(),
            Truncation::LongestFirst
        );
        assert!("only_first".parse::<Truncation>().is_err());
    }
}
