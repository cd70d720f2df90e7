//! Hard-negative mining benchmark (issue 5): a synthetic 1M-passage corpus, BM25 index
//! build time, top-100 mining throughput and, through the `sample-negatives` stage, the
//! end-to-end time. Not a test: run it with `benches/negatives/run.sh` (see README.md),
//! which also measures peak RSS with `/usr/bin/time -v` and runs the Python peer.
//!
//! ```text
//! bench-negatives gen    DIR [--passages N] [--queries Q] [--seed S]
//! bench-negatives search DIR [--k K] [--dump N]
//! bench-negatives stage  DIR
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tsumugi_stages::ranking::bm25::{Bm25Index, Bm25Params};
use tsumugi_stages::ranking::data::{for_each_passage, group_by_query, read_records};
use tsumugi_stages::ranking::negatives::Corpus;
use tsumugi_stages::{Reporter, StageInput, kinds};

/// xorshift64*: the generator only has to be deterministic and fast.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const VOCAB: usize = 200_000;
/// Zipf exponent: ~1 is what word frequencies in English and Japanese text follow.
const ZIPF_S: f64 = 1.07;

/// Word `i` as a pronounceable string of consonant-vowel syllables ("ka", "rose", …): only
/// ASCII letters, at least two of them, so every tokenizer splits the text alike.
fn word(mut i: usize) -> String {
    const C: &[u8] = b"kstnhmyrwgzdbp";
    const V: &[u8] = b"aeiou";
    let mut w = String::new();
    loop {
        w.push(C[i % C.len()] as char);
        i /= C.len();
        w.push(V[i % V.len()] as char);
        i /= V.len();
        if i == 0 {
            break;
        }
        i -= 1;
    }
    w
}

fn generate(dir: &Path, passages: usize, queries: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let words: Vec<String> = (0..VOCAB).map(word).collect();
    // Cumulative Zipf weights, sampled by binary search.
    let mut cdf = Vec::with_capacity(VOCAB);
    let mut total = 0.0;
    for r in 1..=VOCAB {
        total += 1.0 / (r as f64).powf(ZIPF_S);
        cdf.push(total);
    }
    let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let zipf = |g: &mut Gen| {
        let u = g.unit() * total;
        cdf.partition_point(|&c| c < u).min(VOCAB - 1)
    };
    let mut corpus = BufWriter::new(std::fs::File::create(dir.join("corpus.jsonl"))?);
    // Keep every passage's word ids only for the passages that queries are made from.
    let mut sources: Vec<(usize, Vec<usize>)> = Vec::with_capacity(queries);
    let stride = passages / queries.max(1);
    let mut text = String::new();
    for p in 0..passages {
        let len = 40 + g.below(41) as usize;
        let ids: Vec<usize> = (0..len).map(|_| zipf(&mut g)).collect();
        text.clear();
        for (i, &w) in ids.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(&words[w]);
        }
        writeln!(
            corpus,
            "{}",
            json!({"doc_id": format!("d{p}"), "text": text})
        )?;
        if stride > 0 && p % stride == 0 && sources.len() < queries {
            sources.push((p, ids));
        }
    }
    corpus.flush()?;
    // A query: 3–6 distinct words of its source passage (its positive) and 0–2 other words.
    let mut out = BufWriter::new(std::fs::File::create(dir.join("queries.jsonl"))?);
    for (p, ids) in &sources {
        let mut q: Vec<usize> = Vec::new();
        let n = 3 + g.below(4) as usize;
        let mut tries = 0;
        while q.len() < n && tries < 100 {
            tries += 1;
            let w = ids[g.below(ids.len() as u64) as usize];
            if !q.contains(&w) {
                q.push(w);
            }
        }
        for _ in 0..g.below(3) {
            let w = zipf(&mut g);
            if !q.contains(&w) {
                q.push(w);
            }
        }
        let query: Vec<&str> = q.iter().map(|&w| words[w].as_str()).collect();
        let pos: Vec<&str> = ids.iter().map(|&w| words[w].as_str()).collect();
        writeln!(
            out,
            "{}",
            json!({"query_text": query.join(" "),
                   "positives": [{"doc_id": format!("d{p}"), "text": pos.join(" ")}],
                   "negatives": [], "source_chunk": format!("d{p}"), "meta": {"synthetic": true}})
        )?;
    }
    out.flush()?;
    println!(
        "{}",
        json!({"generated": dir.display().to_string(), "passages": passages, "queries": sources.len(),
               "vocabulary": VOCAB, "zipf_s": ZIPF_S, "seed": seed})
    );
    Ok(())
}

fn search(dir: &Path, k: usize, dump: usize) -> Result<()> {
    let t = Instant::now();
    let mut corpus = Corpus::new();
    for_each_passage(&dir.join("corpus.jsonl"), |p| {
        corpus.push(&p.doc_id, &p.text)
    })?;
    let groups = group_by_query(read_records(&dir.join("queries.jsonl"))?);
    let read_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let c = cpu_s();
    let texts = corpus.texts();
    let index = Bm25Index::build(&texts, Bm25Params::default())?;
    drop(texts);
    let index_s = t.elapsed().as_secs_f64();
    let index_cpu_s = cpu_s() - c;

    let queries: Vec<&str> = groups.iter().map(|g| g.query_text.as_str()).collect();
    let t = Instant::now();
    let c = cpu_s();
    let hits = index.search_many(&queries, k);
    let search_s = t.elapsed().as_secs_f64();
    let search_cpu_s = cpu_s() - c;

    // Recall of the source passage (the positive) in the top k: a sanity check that the
    // synthetic queries are answerable, not a quality claim.
    let found = groups
        .iter()
        .zip(&hits)
        .filter(|(g, h)| {
            h.iter()
                .any(|h| corpus.doc_id(h.doc as usize) == g.positives[0].doc_id)
        })
        .count();
    if dump > 0 {
        let mut s = String::new();
        for (qi, h) in hits.iter().enumerate().take(dump) {
            for (rank, hit) in h.iter().enumerate().take(10) {
                writeln!(
                    s,
                    "{qi}\t{rank}\t{}\t{:.6}",
                    corpus.doc_id(hit.doc as usize),
                    hit.score
                )?;
            }
        }
        std::fs::write(dir.join("top10.tsumugi.tsv"), s)?;
    }
    println!(
        "{}",
        json!({
            "passages": index.len(), "terms": index.vocabulary_size(), "postings": index.postings(),
            "avgdl": index.avgdl(), "queries": queries.len(), "k": k,
            "threads": rayon::current_num_threads(),
            "read_s": read_s, "index_s": index_s, "index_cpu_s": index_cpu_s,
            "search_s": search_s, "search_cpu_s": search_cpu_s,
            "queries_per_s": queries.len() as f64 / search_s,
            "queries_per_cpu_s": queries.len() as f64 / search_cpu_s,
            "positive_in_top_k": found as f64 / queries.len().max(1) as f64,
        })
    );
    Ok(())
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat: on a shared
/// machine wall time says more about the neighbours than about the code. USER_HZ is 100 on
/// Linux (part of its ABI).
fn cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Quiet;
impl Reporter for Quiet {
    fn progress(&self, _: u64, _: Option<u64>, _: &str) {}
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        eprintln!("{line}");
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn stage(dir: &Path) -> Result<()> {
    let with = json!({"input": "queries.jsonl", "corpus": "corpus.jsonl", "method": "mix", "k": 8,
                      "hard_ratio": 0.5, "range_min": 10, "range_max": 100, "epochs": 3, "seed": 13});
    let out = dir.join("stage-out");
    let info = kinds::kind("sample-negatives").context("kind not registered")?;
    let outs: BTreeMap<String, PathBuf> = info
        .outputs
        .iter()
        .map(|(k, f)| (k.to_string(), out.join(f)))
        .collect();
    let env = BTreeMap::new();
    let input = StageInput {
        name: "negatives",
        project_root: dir,
        with: &with,
        outs: &outs,
        env: &env,
        device: "cpu",
    };
    let t = Instant::now();
    let c = cpu_s();
    kinds::implementation("sample-negatives")
        .context("no implementation")?
        .run(&input, &Quiet)?;
    println!(
        "{}",
        json!({"stage_s": t.elapsed().as_secs_f64(), "stage_cpu_s": cpu_s() - c, "with": with,
               "threads": rayon::current_num_threads()})
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, dir) = match args.as_slice() {
        [c, d, ..] => (c.as_str(), PathBuf::from(d)),
        _ => bail!("usage: bench-negatives gen|search|stage DIR [options]"),
    };
    let opt = |name: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a number")),
            None => Ok(default),
        }
    };
    match cmd {
        "gen" => generate(
            &dir,
            opt("--passages", 1_000_000)? as usize,
            opt("--queries", 10_000)? as usize,
            opt("--seed", 2026)?,
        ),
        "search" => search(&dir, opt("--k", 100)? as usize, opt("--dump", 0)? as usize),
        "stage" => stage(&dir),
        other => bail!("unknown command `{other}`: expected gen, search or stage"),
    }
}
