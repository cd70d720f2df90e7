//! Japanese BERTs' tokenizer against transformers' `BertJapaneseTokenizer` (fugashi + PyPI
//! unidic-lite / ipadic): ids identical on the 2,117 real Japanese texts of
//! `tests/fixtures/japanese` (Debian docs, manpages-ja full-width lines, stress lines) for
//! both dictionaries × wordpiece/character, pairs truncated like transformers, and a tiny
//! Japanese BERT scored end to end with transformers' logits. Made by
//! `scripts/make_japanese_tokenizer_fixtures.py`.
//!
//! The dictionaries come from PyPI (`pip install unidic-lite==1.0.8 ipadic==1.0.0`). Without
//! them these tests print why and pass, unless TSUMUGI_REQUIRE_MECAB=1 (CI), where that is a
//! failure.
#![cfg(feature = "ml")]

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tsumugi_stages::device::CpuBackend;
use tsumugi_stages::models::{CrossEncoder, LoadOptions, ModelDir, ModelInput};
use tsumugi_stages::tokenize::japanese::{JapaneseConfig, MecabDic, find_dictionary};
use tsumugi_stages::tokenize::{PairTokenizer, Truncation};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/japanese")
        .join(name)
}

fn gunzip_lines(name: &str) -> Vec<String> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture(name)).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s.lines().map(str::to_string).collect()
}

fn ids(line: &str) -> Vec<u32> {
    line.split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect()
}

/// A model-less dir with `vocab.txt` and a `tokenizer_config.json` for `dic`/`sub`.
fn tokenizer_dir(dic: &str, sub: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("vocab.txt"), dir.path().join("vocab.txt")).unwrap();
    let cfg = serde_json::json!({
        "tokenizer_class": "BertJapaneseTokenizer",
        "do_lower_case": false,
        "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": sub,
        "mecab_kwargs": {"mecab_dic": dic},
    });
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    dir
}

/// False (after saying why) when `dic` is not installed here; a panic under TSUMUGI_REQUIRE_MECAB=1.
fn have(dic: &str) -> bool {
    let dir = tokenizer_dir(dic, "wordpiece");
    let config = JapaneseConfig::from_dir(dir.path()).unwrap();
    match find_dictionary(&config) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("TSUMUGI_REQUIRE_MECAB").as_deref() != Ok("1"),
                "TSUMUGI_REQUIRE_MECAB=1 but {e}"
            );
            println!("skipped: {e}");
            false
        }
    }
}

fn check_ids(dic: &str, sub: &str) {
    if !have(dic) {
        return;
    }
    let sentences = gunzip_lines("sentences.txt.gz");
    let expected = gunzip_lines(&format!("ids-{dic}-{sub}.txt.gz"));
    let split = expected.iter().position(|l| l == "PAIRS").unwrap();
    assert_eq!(split, sentences.len());
    assert!(sentences.len() >= 2000);
    let dir = tokenizer_dir(dic, sub);
    let tok =
        PairTokenizer::japanese(dir.path(), true, 512, Truncation::LongestFirst, None).unwrap();
    let mut wrong = Vec::new();
    for (i, (s, want)) in sentences.iter().zip(&expected).enumerate() {
        let got = tok.encode_single(i, s).unwrap().ids;
        if got != ids(want) {
            wrong.push(format!("line {i} {s:?}\n  got  {got:?}\n  want {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{dic}/{sub}: {} of {} texts differ from BertJapaneseTokenizer, first: {}",
        wrong.len(),
        sentences.len(),
        wrong.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
    // Pairs: [CLS] a [SEP] b [SEP], longest_first to 32 tokens, token types.
    let tok = tok.with_truncation(32, Truncation::LongestFirst).unwrap();
    let pairs = &expected[split + 1..];
    assert_eq!(pairs.len(), 300);
    for (k, line) in pairs.iter().enumerate() {
        let (want_ids, want_types) = line.split_once('|').unwrap();
        let got = tok
            .encode(k, &sentences[2 * k], &sentences[2 * k + 1])
            .unwrap();
        assert_eq!(got.ids, ids(want_ids), "{dic}/{sub} pair {k}: input_ids");
        assert_eq!(
            got.type_ids,
            ids(want_types),
            "{dic}/{sub} pair {k}: token_type_ids"
        );
    }
    println!(
        "{dic}/{sub}: {} texts and {} pairs identical to BertJapaneseTokenizer",
        sentences.len(),
        pairs.len()
    );
}

#[test]
fn unidic_lite_wordpiece_ids_match_transformers() {
    check_ids("unidic_lite", "wordpiece");
}

#[test]
fn unidic_lite_character_ids_match_transformers() {
    check_ids("unidic_lite", "character");
}

#[test]
fn ipadic_wordpiece_ids_match_transformers() {
    check_ids("ipadic", "wordpiece");
}

#[test]
fn ipadic_character_ids_match_transformers() {
    check_ids("ipadic", "character");
}

#[test]
fn tiny_japanese_bert_scores_like_transformers() {
    if !have("unidic_lite") {
        return;
    }
    let path = fixture("model");
    assert!(
        !path.join("tokenizer.json").exists(),
        "the fixture must exercise the vocab.txt path"
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("expected.json")).unwrap())
            .unwrap();
    let dir = ModelDir::open(&path).unwrap();
    let tok = PairTokenizer::for_model(&dir, 64, Truncation::LongestFirst).unwrap();
    assert_eq!(
        tok.describe(),
        "BertJapaneseTokenizer (mecab/unidic_lite, wordpiece)"
    );
    let pairs: Vec<(String, String)> = expected["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let enc = tok.encode_batch(&pairs).unwrap();
    let want_ids: Vec<i64> = expected["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
        .collect();
    assert_eq!(enc.input_ids, want_ids, "padded input_ids");
    let device = Default::default();
    let (model, _) =
        CrossEncoder::<CpuBackend>::load(&dir, &LoadOptions::default(), &device).unwrap();
    let got: Vec<f32> = model
        .forward(&ModelInput::from_batch(&enc, &device))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let want: Vec<f32> = expected["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_f64().unwrap() as f32)
        .collect();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "tiny Japanese BERT, {} pairs: max |Δ logits| = {d:.2e}",
        pairs.len()
    );
    assert_eq!(got.len(), want.len());
    assert!(d <= 1e-4, "logits differ from transformers by {d}");
}

#[test]
fn other_word_tokenizers_are_refused_by_name() {
    for (key, value, needle) in [
        ("word_tokenizer_type", "sudachi", "sudachi"),
        ("word_tokenizer_type", "jumanpp", "jumanpp"),
        ("subword_tokenizer_type", "sentencepiece", "sentencepiece"),
    ] {
        let dir = tokenizer_dir("unidic_lite", "wordpiece");
        let p = dir.path().join("tokenizer_config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        cfg[key] = Value::from(value);
        std::fs::write(&p, cfg.to_string()).unwrap();
        let err = JapaneseConfig::from_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle) && err.contains("tokenizer_config.json"),
            "{err}"
        );
    }
}

#[test]
fn a_missing_dictionary_names_the_install_command() {
    if std::env::var_os("TSUMUGI_MECAB_DICDIR").is_some() {
        println!("skipped: TSUMUGI_MECAB_DICDIR is set and wins over mecab_dic");
        return;
    }
    // The full UniDic is never installed by pip alone (its download is a separate step).
    let dir = tokenizer_dir("unidic", "wordpiece");
    let config = JapaneseConfig::from_dir(dir.path()).unwrap();
    assert_eq!(config.mecab_dic, MecabDic::Unidic);
    match find_dictionary(&config) {
        Ok(src) => println!("skipped: a full UniDic is installed at {:?}", src.path()),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("\"unidic\"") && e.contains("pip install unidic"),
                "{e}"
            );
        }
    }
    // An explicit dicdir that is not one is refused with its path.
    let p = dir.path().join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["mecab_kwargs"] = serde_json::json!({"mecab_option": "-d /nonexistent/dicdir"});
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = find_dictionary(&JapaneseConfig::from_dir(dir.path()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/dicdir") && e.contains("sys.dic"),
        "{e}"
    );
}
