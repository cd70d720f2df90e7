//! Decoding: greedy or temperature/top-p sampling with a seeded generator, stopping at the
//! checkpoint's end tokens (`generation_config.json`'s `eos_token_id`) or after
//! `max_new_tokens`. With the KV cache (the default) the prompt is run once and each new
//! token is one row; without it every step re-runs the whole sequence (transformers'
//! `use_cache=False`), which the parity tests use to check the cache changes nothing.

use std::path::Path;

use burn::prelude::*;
use serde_json::Value;

use super::text::KvCache;
use super::{Patches, Qwen2VlCaptioner, rope_index};
use crate::error::{MlError, Result};

/// How to pick each token.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first on ties, as `argmax`).
    Greedy,
    /// `softmax(logits / temperature)`, cut to the smallest set of tokens whose probability
    /// reaches `top_p` (transformers' `TopPLogitsWarper`), drawn with a generator seeded by
    /// `seed`: the same seed gives the same text.
    Sample {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// End tokens are not chosen before this many new tokens (transformers'
    /// `min_new_tokens`).
    pub min_new_tokens: usize,
    pub sampling: Sampling,
    pub use_cache: bool,
    /// Tokens that end generation (not returned); `None`: the checkpoint's.
    pub stop_tokens: Option<Vec<u32>>,
    /// transformers' `repetition_penalty` over the prompt and the tokens so far (a seen
    /// token's logit divided by it when positive, multiplied when negative); `None`: the
    /// checkpoint's `generation_config.json` value (Qwen2-VL-Instruct ships 1.05), else 1.
    pub repetition_penalty: Option<f32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            min_new_tokens: 0,
            sampling: Sampling::Greedy,
            use_cache: true,
            stop_tokens: None,
            repetition_penalty: None,
        }
    }
}

/// `generation_config.json`'s `eos_token_id` (a number or a list); without the file,
/// the chat template's `<|im_end|>` and `<|endoftext|>`.
pub fn stop_tokens(path: &Path, tokenizer: &tokenizers::Tokenizer) -> Result<Vec<u32>> {
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let bad = |v: &Value| MlError::Config {
            path: path.to_path_buf(),
            message: format!("eos_token_id: expected a token id or a list of them, found {v}"),
        };
        match v.get("eos_token_id") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ids)) => {
                return ids
                    .iter()
                    .map(|i| i.as_u64().map(|n| n as u32).ok_or_else(|| bad(i)))
                    .collect();
            }
            Some(i) => return Ok(vec![i.as_u64().ok_or_else(|| bad(i))? as u32]),
        }
    }
    Ok(["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect())
}

/// `generation_config.json`'s `repetition_penalty`, 1 without the file or the field.
pub fn repetition_penalty(path: &Path) -> Result<f32> {
    if !path.is_file() {
        return Ok(1.0);
    }
    let text = std::fs::read_to_string(path).map_err(|e| MlError::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| MlError::Config {
        path: path.to_path_buf(),
        message: format!("not valid JSON: {e}"),
    })?;
    match v.get("repetition_penalty") {
        None | Some(Value::Null) => Ok(1.0),
        Some(p) => match p.as_f64() {
            Some(f) if f > 0.0 => Ok(f as f32),
            _ => Err(MlError::Config {
                path: path.to_path_buf(),
                message: format!("repetition_penalty: expected a number > 0, found {p}"),
            }),
        },
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor` on one row of logits.
fn penalise(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for &t in seen {
        if let Some(v) = logits.get_mut(t as usize) {
            *v = if *v < 0.0 { *v * penalty } else { *v / penalty };
        }
    }
}

/// SplitMix64: a small, fixed generator, so a seed means the same draws on every machine.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks a token from one row of logits.
fn pick(logits: &mut [f32], sampling: &Sampling, rng: &mut Rng) -> u32 {
    match sampling {
        Sampling::Greedy => {
            let mut best = 0;
            for (i, &v) in logits.iter().enumerate() {
                if v > logits[best] {
                    best = i;
                }
            }
            best as u32
        }
        Sampling::Sample {
            temperature, top_p, ..
        } => {
            let t = temperature.max(1e-6);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut probs: Vec<(usize, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (i, (((v - max) / t) as f64).exp()))
                .collect();
            let total: f64 = probs.iter().map(|p| p.1).sum();
            probs.iter_mut().for_each(|p| p.1 /= total);
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut kept = 0;
            let mut mass = 0.0;
            for p in &probs {
                kept += 1;
                mass += p.1;
                if mass >= *top_p as f64 {
                    break;
                }
            }
            let mut r = rng.next_f64() * mass;
            for p in &probs[..kept] {
                r -= p.1;
                if r <= 0.0 {
                    return p.0 as u32;
                }
            }
            probs[kept - 1].0 as u32
        }
    }
}

/// New tokens after the prompt `ids` (holding one `<|image_pad|>` run per entry of
/// `images`), stop token excluded.
pub fn generate<B: Backend>(
    cap: &Qwen2VlCaptioner<B>,
    ids: &[u32],
    images: &[Patches],
    opts: &GenerateOptions,
) -> Result<Vec<u32>> {
    let model = &cap.model;
    let device = &cap.device;
    let image_token = cap.config.image_token_id;
    let grids: Vec<[usize; 3]> = images.iter().map(|p| p.grid_thw).collect();
    let (positions, delta) = rope_index(ids, image_token, &grids, cap.processor.merge_size)?;
    let prompt = model.inputs_embeds(ids, images, image_token, device)?;
    let stops = opts.stop_tokens.as_deref().unwrap_or(&cap.stop_tokens);
    let mut rng = Rng(match opts.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    });
    let penalty = opts.repetition_penalty.unwrap_or(cap.repetition_penalty);
    let mut seen: Vec<u32> = ids.to_vec();
    seen.sort_unstable();
    seen.dedup();
    let mut out = Vec::new();
    let mut cache = KvCache::default();
    let mut logits = model
        .text
        .forward(prompt.clone(), &positions, &mut cache, true);
    // Without the cache: the whole sequence's rows, grown by one per step.
    let mut all_embeds = prompt;
    let mut all_positions = positions;
    while out.len() < opts.max_new_tokens {
        let mut row: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| MlError::Input(format!("logits: {e:?}")))?;
        penalise(&mut row, &seen, penalty);
        if out.len() < opts.min_new_tokens {
            for &s in stops {
                if let Some(v) = row.get_mut(s as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let token = pick(&mut row, &opts.sampling, &mut rng);
        if stops.contains(&token) {
            break;
        }
        out.push(token);
        if let Err(i) = seen.binary_search(&token) {
            seen.insert(i, token);
        }
        if out.len() == opts.max_new_tokens {
            break;
        }
        let index = (ids.len() + out.len() - 1) as i64;
        let next = model.text.embed(&[token], device);
        let pos = index + delta;
        if opts.use_cache {
            let p = [vec![pos], vec![pos], vec![pos]];
            logits = model.text.forward(next, &p, &mut cache, true);
        } else {
            all_embeds = Tensor::cat(vec![all_embeds, next], 1);
            for axis in &mut all_positions {
                axis.push(pos);
            }
            logits = model.text.forward(
                all_embeds.clone(),
                &all_positions,
                &mut KvCache::default(),
                true,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_as_transformers() {
        let mut row = vec![2.0f32, -2.0, 1.0];
        penalise(&mut row, &[0, 1], 2.0);
        assert_eq!(row, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn sampling_is_seeded_and_top_p_cuts() {
        let logits = vec![0.0f32, 3.0, 2.9, -1.0, 1.0];
        let s = |seed| Sampling::Sample {
            temperature: 1.0,
            top_p: 0.9,
            seed,
        };
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| pick(&mut logits.clone(), &s(seed), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // top_p 0.9 keeps tokens 1 and 2 (0.47 + 0.43 ≥ 0.9), never the others.
        assert!(draw(7).iter().all(|t| [1, 2].contains(t)));
        // A tiny top_p is greedy.
        let mut rng = Rng(1);
        let greedy = Sampling::Sample {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 1,
        };
        assert_eq!(pick(&mut logits.clone(), &greedy, &mut rng), 1);
    }
}
