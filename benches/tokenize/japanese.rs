//! Japanese tokenizer speed (issue 12): sentences/s of tsumugi's BertJapaneseTokenizer on one
//! thread. Run by `benches/tokenize/japanese.sh`, which also times the Python tokenizer on the
//! same texts.
//!
//!   bench-japanese-tokenize DIC SUB [ROUNDS]   # DIC unidic_lite|ipadic, SUB wordpiece|character
//!
//! Prints one JSON line: sentences, rounds, wall and CPU seconds, sentences/s of each.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use tsumugi_stages::tokenize::{PairTokenizer, Truncation};

/// user + system CPU seconds of this process (Linux /proc/self/stat, clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dic, sub) = (args[1].as_str(), args[2].as_str());
    let rounds: usize = args.get(3).map_or(5, |r| r.parse().unwrap());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/japanese");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixtures.join("sentences.txt.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let sentences: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures.join("vocab.txt"), dir.path().join("vocab.txt")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"tokenizer_class": "BertJapaneseTokenizer", "word_tokenizer_type": "mecab",
            "subword_tokenizer_type": sub, "mecab_kwargs": {"mecab_dic": dic}})
        .to_string(),
    )
    .unwrap();
    let t = Instant::now();
    let tok = PairTokenizer::japanese(dir.path(), true, 512, Truncation::LongestFirst, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let load_s = t.elapsed().as_secs_f64();
    // Warm-up round (page faults of the dictionary), then timed rounds on this one thread.
    let mut n_ids = 0usize;
    for (i, s) in sentences.iter().enumerate() {
        n_ids += tok.encode_single(i, s).unwrap().ids.len();
    }
    let (c0, t0) = (cpu_seconds(), Instant::now());
    for _ in 0..rounds {
        for (i, s) in sentences.iter().enumerate() {
            std::hint::black_box(tok.encode_single(i, s).unwrap());
        }
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
    let n = (sentences.len() * rounds) as f64;
    println!(
        "{}",
        serde_json::json!({"impl": "tsumugi", "dic": dic, "sub": sub, "sentences": sentences.len(),
            "rounds": rounds, "ids": n_ids, "load_s": load_s, "wall_s": wall, "cpu_s": cpu,
            "sentences_per_s_wall": n / wall, "sentences_per_cpu_s": n / cpu})
    );
}
