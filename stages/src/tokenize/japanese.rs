//! Japanese BERTs' tokenizer: transformers' `BertJapaneseTokenizer` with
//! `word_tokenizer_type: mecab` (UniDic-lite, UniDic, IPADIC) and `subword_tokenizer_type:
//! wordpiece | character`. These models ship `vocab.txt` + `tokenizer_config.json` and no
//! `tokenizer.json` (transformers has no fast version of this tokenizer).
//!
//! The pipeline is transformers': split the raw text on special tokens (longest match, so a
//! literal `[SEP]` stays one token and MeCab never sees across it) → NFKC per segment →
//! MeCab words (here vibrato, MeCab-compatible with `ignore_space` + `max_grouping_len(24)`)
//! → lowercase when `do_lower_case` → for `character`, one word per code point. The words are
//! then fed as pre-tokenized input to a `tokenizers` WordPiece + `BertProcessing` built from
//! `vocab.txt`, so pairs, truncation and padding are the ones [`super::PairTokenizer`] does for
//! every model.
//!
//! The dictionary is the one the user installed (never a download): `TSUMUGI_MECAB_DICDIR`,
//! then PyPI `unidic_lite` / `ipadic` in a Python's site-packages, then Debian's
//! `mecab-ipadic-utf8` / `mecab-ipadic`. vibrato cannot read MeCab's compiled `sys.dic`, so
//! the dicdir is decompiled into vibrato's text inputs once and the built dictionary cached
//! under the user's cache dir, keyed by a hash of the dicdir's content.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use unicode_normalization::UnicodeNormalization;
use vibrato::{Dictionary, SystemDictionaryBuilder, Tokenizer as Vibrato};

use crate::error::{MlError, Result};

/// Which MeCab dictionary a model was trained with (`mecab_kwargs.mecab_dic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MecabDic {
    UnidicLite,
    Unidic,
    Ipadic,
}

impl MecabDic {
    /// The `mecab_dic` value.
    pub fn name(self) -> &'static str {
        match self {
            MecabDic::UnidicLite => "unidic_lite",
            MecabDic::Unidic => "unidic",
            MecabDic::Ipadic => "ipadic",
        }
    }

    /// What to run to get it.
    pub fn install_hint(self) -> &'static str {
        match self {
            MecabDic::UnidicLite => "pip install unidic-lite",
            MecabDic::Ipadic => "pip install ipadic   (or: apt-get install mecab-ipadic-utf8)",
            MecabDic::Unidic => {
                "pip install unidic && python -m unidic download   (the full UniDic is fetched by that command; tsumugi never downloads it)"
            }
        }
    }
}

/// `subword_tokenizer_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subword {
    WordPiece,
    Character,
}

/// What `tokenizer_config.json` (+ `special_tokens_map.json`) says.
#[derive(Debug, Clone)]
pub struct JapaneseConfig {
    pub mecab_dic: MecabDic,
    /// `-d DIR` from `mecab_kwargs.mecab_option`: an explicit dicdir.
    pub mecab_dicdir: Option<PathBuf>,
    pub subword: Subword,
    pub do_lower_case: bool,
    pub normalize_text: bool,
    pub never_split: Vec<String>,
    pub unk: String,
    pub sep: String,
    pub cls: String,
    pub pad: String,
    pub mask: String,
    /// Every special/added token the raw text is split on before MeCab.
    pub specials: Vec<String>,
}

/// Does `DIR/tokenizer_config.json` ask for `BertJapaneseTokenizer`?
pub fn is_bert_japanese(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("tokenizer_config.json")) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("tokenizer_class")
                .and_then(|c| c.as_str())
                .map(|c| c == "BertJapaneseTokenizer")
        })
        .unwrap_or(false)
}

fn token_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        // `{"content": "[UNK]", ...}` (AddedToken as saved by transformers)
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl JapaneseConfig {
    /// Reads `DIR/tokenizer_config.json` and, when present, `DIR/special_tokens_map.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let bad = |message: String| MlError::Config {
            path: path.clone(),
            message,
        };
        let text = fs::read_to_string(&path).map_err(|e| MlError::io(&path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let str_field = |k: &str| v.get(k).and_then(|x| x.as_str());
        let bool_field = |k: &str, default: bool| -> Result<bool> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(serde_json::Value::Bool(b)) => Ok(*b),
                Some(other) => Err(bad(format!("`{k}`: expected true or false, got {other}"))),
            }
        };
        if !bool_field("do_word_tokenize", true)? || !bool_field("do_subword_tokenize", true)? {
            return Err(bad(
                "`do_word_tokenize`/`do_subword_tokenize` false is not supported (expected both true, the default)".into(),
            ));
        }
        match str_field("word_tokenizer_type").unwrap_or("basic") {
            "mecab" => {}
            other @ ("sudachi" | "jumanpp" | "basic") => {
                return Err(bad(format!(
                    "`word_tokenizer_type: {other}` is not supported: tsumugi tokenizes Japanese with MeCab dictionaries only (expected \"mecab\"; sudachi, jumanpp and basic word tokenizers are not implemented)"
                )));
            }
            other => {
                return Err(bad(format!(
                    "`word_tokenizer_type: {other:?}`: expected \"mecab\""
                )));
            }
        }
        let subword = match str_field("subword_tokenizer_type").unwrap_or("wordpiece") {
            "wordpiece" => Subword::WordPiece,
            "character" => Subword::Character,
            other => {
                return Err(bad(format!(
                    "`subword_tokenizer_type: {other:?}` is not supported (expected \"wordpiece\" or \"character\")"
                )));
            }
        };
        let kwargs = v.get("mecab_kwargs").cloned().unwrap_or_default();
        // transformers 5 defaults to unidic_lite when mecab_kwargs (or mecab_dic) is absent.
        let mecab_dic = match kwargs.get("mecab_dic") {
            None => MecabDic::UnidicLite,
            Some(d) => match d.as_str() {
                Some("unidic_lite") => MecabDic::UnidicLite,
                Some("unidic") => MecabDic::Unidic,
                Some("ipadic") => MecabDic::Ipadic,
                _ => {
                    return Err(bad(format!(
                        "`mecab_kwargs.mecab_dic: {d}`: expected \"unidic_lite\", \"unidic\" or \"ipadic\" (a custom dictionary goes in mecab_option \"-d DIR\" or TSUMUGI_MECAB_DICDIR)"
                    )));
                }
            },
        };
        let mut mecab_dicdir = None;
        if let Some(opt) = kwargs.get("mecab_option").and_then(|o| o.as_str()) {
            let parts: Vec<&str> = opt.split_whitespace().collect();
            match parts.as_slice() {
                [] => {}
                ["-d", dir] => mecab_dicdir = Some(PathBuf::from(dir)),
                _ => {
                    return Err(bad(format!(
                        "`mecab_kwargs.mecab_option: {opt:?}` is not supported: only \"-d DICDIR\" is (user dictionaries `-u` and other MeCab options are not implemented)"
                    )));
                }
            }
        }
        let normalize_text = match kwargs.get("normalize_text") {
            None => true,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(format!(
                    "`mecab_kwargs.normalize_text: {other}`: expected true or false"
                )));
            }
        };
        let mut never_split = Vec::new();
        if let Some(ns) = v.get("never_split").filter(|n| !n.is_null()) {
            let arr = ns
                .as_array()
                .ok_or_else(|| bad(format!("`never_split: {ns}`: expected a list of strings")))?;
            for t in arr {
                never_split.push(
                    t.as_str()
                        .ok_or_else(|| bad(format!("`never_split`: {t} is not a string")))?
                        .to_string(),
                );
            }
        }
        // special_tokens_map.json wins over tokenizer_config.json, as in transformers.
        let map: serde_json::Value = match fs::read_to_string(dir.join("special_tokens_map.json")) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| MlError::Config {
                path: dir.join("special_tokens_map.json"),
                message: format!("not JSON: {e}"),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let special = |k: &str, default: &str| -> String {
            map.get(k)
                .and_then(token_string)
                .or_else(|| v.get(k).and_then(token_string))
                .unwrap_or_else(|| default.to_string())
        };
        let unk = special("unk_token", "[UNK]");
        let sep = special("sep_token", "[SEP]");
        let cls = special("cls_token", "[CLS]");
        let pad = special("pad_token", "[PAD]");
        let mask = special("mask_token", "[MASK]");
        let mut specials = vec![
            unk.clone(),
            sep.clone(),
            pad.clone(),
            cls.clone(),
            mask.clone(),
        ];
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            for src in [map.get(key), v.get(key)].into_iter().flatten() {
                if let Some(arr) = src.as_array() {
                    specials.extend(arr.iter().filter_map(token_string));
                }
            }
        }
        if let Some(added) = v.get("added_tokens_decoder").and_then(|a| a.as_object()) {
            specials.extend(added.values().filter_map(token_string));
        }
        specials.retain(|s| !s.is_empty());
        specials.sort();
        specials.dedup();
        Ok(Self {
            mecab_dic,
            mecab_dicdir,
            subword,
            do_lower_case: bool_field("do_lower_case", false)?,
            normalize_text,
            never_split,
            unk,
            sep,
            cls,
            pad,
            mask,
            specials,
        })
    }

    /// "mecab/unidic_lite + wordpiece", for messages and `models check`.
    pub fn describe(&self) -> String {
        let sub = match self.subword {
            Subword::WordPiece => "wordpiece",
            Subword::Character => "character",
        };
        format!(
            "BertJapaneseTokenizer (mecab/{}, {sub})",
            self.mecab_dic.name()
        )
    }
}

/// Splits raw text into MeCab words the way `BertJapaneseTokenizer` does before WordPiece.
pub struct JapaneseWords {
    config: JapaneseConfig,
    vibrato: Arc<Vibrato>,
    /// Specials, longest first, for the longest-match split.
    specials: Vec<String>,
    /// Lowercasing exemptions: never_split + specials.
    keep_case: HashSet<String>,
}

impl std::fmt::Debug for JapaneseWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JapaneseWords")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JapaneseWords {
    /// The segmenter for `config`, with its dictionary found (and built once) as described in
    /// the module docs.
    pub fn new(config: JapaneseConfig) -> Result<Self> {
        let vibrato = load_segmenter(&config)?;
        Ok(Self::with_segmenter(config, vibrato))
    }

    /// The words of `config` cut by an already loaded segmenter.
    pub fn with_segmenter(config: JapaneseConfig, vibrato: Arc<Vibrato>) -> Self {
        let mut specials = config.specials.clone();
        specials.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let keep_case = config
            .never_split
            .iter()
            .chain(&config.specials)
            .cloned()
            .collect();
        Self {
            config,
            vibrato,
            specials,
            keep_case,
        }
    }

    pub fn config(&self) -> &JapaneseConfig {
        &self.config
    }

    /// Appends the words of `text` (specials as themselves) to `out`.
    pub fn words(&self, text: &str, out: &mut Vec<String>) {
        self.each_word(text, &mut |w| out.push(w.to_string()));
    }

    /// Calls `f` with each word of `text` in order (specials as themselves; for
    /// `character`, each character): what WordPiece / the vocabulary lookup takes next.
    pub fn each_word(&self, text: &str, f: &mut dyn FnMut(&str)) {
        let mut worker = self.vibrato.new_worker();
        let mut rest = text;
        let mut pos = 0;
        // Longest special token at each char boundary; the text between goes to MeCab.
        while pos < rest.len() {
            if let Some(sp) = self
                .specials
                .iter()
                .find(|s| rest[pos..].starts_with(s.as_str()))
            {
                self.segment(&mut worker, &rest[..pos], f);
                f(sp);
                rest = &rest[pos + sp.len()..];
                pos = 0;
            } else {
                pos += rest[pos..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.segment(&mut worker, rest, f);
    }

    fn segment(
        &self,
        worker: &mut vibrato::tokenizer::worker::Worker<'_>,
        text: &str,
        f: &mut dyn FnMut(&str),
    ) {
        if text.is_empty() {
            return;
        }
        let norm: String = if self.config.normalize_text {
            text.nfkc().collect()
        } else {
            text.to_string()
        };
        worker.reset_sentence(&norm);
        worker.tokenize();
        let mut ch = [0u8; 4];
        for i in 0..worker.num_tokens() {
            let surface = worker.token(i).surface();
            let lowered;
            let word = if self.config.do_lower_case && !self.keep_case.contains(surface) {
                lowered = surface.to_lowercase();
                lowered.as_str()
            } else {
                surface
            };
            match self.config.subword {
                // WordPiece then splits on Python's whitespace; surfaces carry none but the
                // FS..US controls, which Python's str.split() also treats as spaces.
                Subword::WordPiece => {
                    for w in word.split(is_python_space).filter(|w| !w.is_empty()) {
                        f(w)
                    }
                }
                // CharacterTokenizer: NFKC again (idempotent when normalize_text), each code point.
                Subword::Character => {
                    if self.config.normalize_text && !word.is_ascii() {
                        let w: String = word.nfkc().collect();
                        for c in w.chars() {
                            f(c.encode_utf8(&mut ch))
                        }
                    } else {
                        for c in word.chars() {
                            f(c.encode_utf8(&mut ch))
                        }
                    }
                }
            }
        }
    }
}

/// Python's `str.isspace()` set, which `str.split()` uses.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

// ---------------------------------------------------------------------------------------------
// Dictionary discovery

/// Where a dictionary was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DicSource {
    /// A compiled MeCab dicdir (`sys.dic matrix.bin char.bin unk.dic`), UTF-8.
    Compiled(PathBuf),
    /// MeCab source files (`*.csv matrix.def char.def unk.def`) in EUC-JP (Debian `mecab-ipadic`).
    EucJpSources(PathBuf),
}

impl DicSource {
    pub fn path(&self) -> &Path {
        match self {
            DicSource::Compiled(p) | DicSource::EucJpSources(p) => p,
        }
    }
}

fn is_compiled_dicdir(p: &Path) -> bool {
    ["sys.dic", "matrix.bin", "char.bin", "unk.dic"]
        .iter()
        .all(|f| p.join(f).is_file())
}

fn is_source_dicdir(p: &Path) -> bool {
    ["matrix.def", "char.def", "unk.def"]
        .iter()
        .all(|f| p.join(f).is_file())
}

/// site-packages / dist-packages dirs of the Pythons this machine likely uses, without
/// spawning one: the active venv, the user's, the system's.
fn site_packages_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(prefix) = std::env::var_os("CONDA_PREFIX") {
        roots.push(PathBuf::from(prefix).join("lib"));
    }
    // The venv/prefix of each python3 on PATH (`…/bin/python3` → `…/lib`).
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("python3").exists()
                && let Some(prefix) = dir.parent()
            {
                roots.push(prefix.join("lib"));
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib"].map(PathBuf::from));
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = fs::read_dir(&root) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pys.sort();
        for py in pys {
            for sub in ["site-packages", "dist-packages"] {
                let d = py.join(sub);
                if d.is_dir() && !out.contains(&d) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Where `python3` imports `package` from (None when there is no python3 or no package).
fn python_package_dir(package: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util,sys; s=importlib.util.find_spec(sys.argv[1]); print(s.submodule_search_locations[0] if s else '')",
            package,
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Finds the dictionary `config` asks for; the error lists where it looked and what to install.
pub fn find_dictionary(config: &JapaneseConfig) -> Result<DicSource> {
    let mut looked = Vec::new();
    let explicit = std::env::var_os("TSUMUGI_MECAB_DICDIR")
        .map(|d| (PathBuf::from(d), "TSUMUGI_MECAB_DICDIR"))
        .or_else(|| {
            config
                .mecab_dicdir
                .clone()
                .map(|d| (d, "mecab_kwargs.mecab_option -d"))
        });
    if let Some((dir, from)) = explicit {
        if is_compiled_dicdir(&dir) {
            return Ok(DicSource::Compiled(dir));
        }
        if is_source_dicdir(&dir) {
            return Ok(DicSource::EucJpSources(dir));
        }
        return Err(MlError::Input(format!(
            "{from} = {}: not a MeCab dictionary directory (expected sys.dic, matrix.bin, char.bin and unk.dic)",
            dir.display()
        )));
    }
    let package = match config.mecab_dic {
        MecabDic::UnidicLite => "unidic_lite",
        MecabDic::Ipadic => "ipadic",
        MecabDic::Unidic => "unidic",
    };
    for sp in site_packages_dirs() {
        let d = sp.join(package).join("dicdir");
        if is_compiled_dicdir(&d) {
            return Ok(DicSource::Compiled(d));
        }
        looked.push(d.display().to_string());
    }
    // A Python elsewhere (pyenv, a venv not on PATH as `python3`…): ask the first python3.
    if let Some(d) = python_package_dir(package).map(|p| p.join("dicdir")) {
        if is_compiled_dicdir(&d) {
            return Ok(DicSource::Compiled(d));
        }
        looked.push(d.display().to_string());
    }
    if config.mecab_dic == MecabDic::Ipadic {
        let d = PathBuf::from("/var/lib/mecab/dic/ipadic-utf8");
        if is_compiled_dicdir(&d) {
            return Ok(DicSource::Compiled(d));
        }
        looked.push(d.display().to_string());
        let d = PathBuf::from("/usr/share/mecab/dic/ipadic");
        if is_source_dicdir(&d) {
            return Ok(DicSource::EucJpSources(d));
        }
        looked.push(d.display().to_string());
    }
    Err(MlError::Input(format!(
        "the model's tokenizer_config.json asks for the MeCab dictionary {:?} (mecab_kwargs.mecab_dic) and it is not installed (looked in: {}). Install it: {}   (or set TSUMUGI_MECAB_DICDIR to a MeCab dicdir)",
        config.mecab_dic.name(),
        looked.join(", "),
        config.mecab_dic.install_hint()
    )))
}

// ---------------------------------------------------------------------------------------------
// Build + cache

fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("TSUMUGI_MECAB_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tsumugi").join("mecab")
}

/// xxh3-128 of the files that make the dictionary, and of the builder's version.
fn content_key(src: &DicSource) -> Result<String> {
    let dir = src.path();
    let mut names: Vec<String> = match src {
        DicSource::Compiled(_) => ["sys.dic", "matrix.bin", "char.bin", "unk.dic"]
            .map(String::from)
            .to_vec(),
        DicSource::EucJpSources(_) => {
            let mut v: Vec<String> = fs::read_dir(dir)
                .map_err(|e| MlError::io(dir, e))?
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(".csv") || n.ends_with(".def"))
                .collect();
            v.sort();
            v
        }
    };
    names.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(
        concat!(
            "vibrato-0.5.3/tsumugi-decompile-1/",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    let mut buf = vec![0u8; 1 << 20];
    for n in &names {
        let p = dir.join(n);
        h.update(n.as_bytes());
        let mut f = fs::File::open(&p).map_err(|e| MlError::io(&p, e))?;
        loop {
            let k = f.read(&mut buf).map_err(|e| MlError::io(&p, e))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// Segmenters already loaded in this process, by content key (unidic-lite is ~250 MB).
fn loaded() -> &'static Mutex<BTreeMap<String, Arc<Vibrato>>> {
    static LOADED: OnceLock<Mutex<BTreeMap<String, Arc<Vibrato>>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Finds, builds (once, cached on disk) and loads the dictionary of `config`.
pub fn load_segmenter(config: &JapaneseConfig) -> Result<Arc<Vibrato>> {
    let src = find_dictionary(config)?;
    load_segmenter_from(&src)
}

/// A MeCab-compatible segmenter over the dictionary at `src`, from the on-disk cache when
/// it was built before.
pub fn load_segmenter_from(src: &DicSource) -> Result<Arc<Vibrato>> {
    let key = content_key(src)?;
    let mut map = loaded().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = map.get(&key) {
        return Ok(d.clone());
    }
    let cached = cache_root().join(format!("{key}.vibrato"));
    let dict = match fs::File::open(&cached) {
        Ok(f) => Dictionary::read(BufReader::with_capacity(1 << 20, f)).map_err(|e| {
            MlError::Input(format!(
                "{}: cached MeCab dictionary is unreadable ({e}); delete it and it is rebuilt",
                cached.display()
            ))
        })?,
        Err(_) => {
            eprintln!(
                "tsumugi: building the MeCab dictionary {} for vibrato (once; cached in {})",
                src.path().display(),
                cached.display()
            );
            let dict = build_dictionary(src)?;
            let mut out = tsumugi_base::atomic::AtomicFile::create(&cached)
                .map_err(|e| MlError::Input(format!("{e:#}")))?;
            dict.write(out.writer())
                .map_err(|e| MlError::Input(format!("{}: {e}", cached.display())))?;
            out.commit().map_err(|e| MlError::Input(format!("{e:#}")))?;
            dict
        }
    };
    // Both settings are vibrato's "MeCab compatibility" switches; without them spaces
    // become tokens and long unknown runs are grouped differently from MeCab.
    let vibrato = Vibrato::new(dict)
        .ignore_space(true)
        .map_err(|e| MlError::Input(format!("{}: vibrato: {e}", src.path().display())))?
        .max_grouping_len(24);
    let vibrato = Arc::new(vibrato);
    map.insert(key, vibrato.clone());
    Ok(vibrato)
}

/// Builds a vibrato dictionary from a MeCab dicdir (compiled or EUC-JP sources).
pub fn build_dictionary(src: &DicSource) -> Result<Dictionary> {
    let vib =
        |e: vibrato::errors::VibratoError| MlError::Input(format!("{}: {e}", src.path().display()));
    match src {
        DicSource::Compiled(dir) => {
            let lex = decompile_dic(&dir.join("sys.dic"), true)?;
            let unk = decompile_dic(&dir.join("unk.dic"), false)?;
            let chars = decompile_char_bin(&dir.join("char.bin"))?;
            let matrix = MatrixDef::open(&dir.join("matrix.bin"))?;
            SystemDictionaryBuilder::from_readers(
                lex.as_bytes(),
                BufReader::with_capacity(1 << 20, matrix),
                chars.as_bytes(),
                unk.as_bytes(),
            )
            .map_err(vib)
        }
        DicSource::EucJpSources(dir) => {
            let read = |name: &str| -> Result<String> {
                let p = dir.join(name);
                let bytes = fs::read(&p).map_err(|e| MlError::io(&p, e))?;
                Ok(euc_jp(&bytes))
            };
            let mut csvs: Vec<PathBuf> = fs::read_dir(dir)
                .map_err(|e| MlError::io(dir, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                .collect();
            csvs.sort();
            let mut lex = String::new();
            for p in csvs {
                let bytes = fs::read(&p).map_err(|e| MlError::io(&p, e))?;
                lex.push_str(&euc_jp(&bytes));
                if !lex.ends_with('\n') {
                    lex.push('\n');
                }
            }
            SystemDictionaryBuilder::from_readers(
                lex.as_bytes(),
                read("matrix.def")?.as_bytes(),
                read("char.def")?.as_bytes(),
                read("unk.def")?.as_bytes(),
            )
            .map_err(vib)
        }
    }
}

fn euc_jp(bytes: &[u8]) -> String {
    encoding_rs::EUC_JP.decode(bytes).0.into_owned()
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("a 4-byte slice"))
}

/// MeCab's compiled `sys.dic`/`unk.dic` → lexicon CSV (`surface,left,right,cost,features`).
/// Surfaces live only in the Darts double array, so the trie is walked; entries of one key
/// keep their token-table order (ties in cost could depend on it). Features are written as
/// `*`: segmentation does not use them and they are most of the size.
fn decompile_dic(path: &Path, quote: bool) -> Result<String> {
    let b = fs::read(path).map_err(|e| MlError::io(path, e))?;
    let bad = |m: &str| MlError::Input(format!("{}: not a MeCab dictionary ({m})", path.display()));
    if b.len() < 72 {
        return Err(bad("shorter than its header"));
    }
    let dsize = u32_at(&b, 24) as usize;
    let tsize = u32_at(&b, 28) as usize;
    let charset = String::from_utf8_lossy(b[40..72].split(|&c| c == 0).next().unwrap_or(&[]))
        .to_ascii_lowercase();
    if !(charset == "utf-8" || charset == "utf8") {
        return Err(MlError::Input(format!(
            "{}: the dictionary is encoded in {charset:?}; tsumugi reads UTF-8 ones (apt-get install mecab-ipadic-utf8, or pip install ipadic)",
            path.display()
        )));
    }
    if b.len() < 72 + dsize + tsize {
        return Err(bad("truncated"));
    }
    let da = &b[72..72 + dsize];
    let toks = &b[72 + dsize..72 + dsize + tsize];
    let n = dsize / 8;
    let base_of =
        |i: usize| i32::from_le_bytes(da[8 * i..8 * i + 4].try_into().expect("a 4-byte slice"));
    let check_of = |i: usize| u32_at(da, 8 * i + 4) as i64;
    let mut out = String::new();
    if n == 0 {
        return Ok(out);
    }
    let mut stack: Vec<(i32, Vec<u8>)> = vec![(base_of(0), Vec::new())];
    while let Some((base, key)) = stack.pop() {
        if base < 0 {
            continue;
        }
        let bu = base as usize;
        if bu < n && check_of(bu) == base as i64 && base_of(bu) < 0 {
            let v = -(base_of(bu) as i64) - 1;
            let (first, count) = ((v >> 8) as usize, (v & 0xff) as usize);
            let surface = std::str::from_utf8(&key).map_err(|_| bad("a surface is not UTF-8"))?;
            let surface = if quote && (surface.contains(',') || surface.contains('"')) {
                format!("\"{}\"", surface.replace('"', "\"\""))
            } else {
                surface.to_string()
            };
            for k in first..first + count {
                let t = toks
                    .get(16 * k..16 * k + 8)
                    .ok_or_else(|| bad("token index out of range"))?;
                let l = u16::from_le_bytes([t[0], t[1]]);
                let r = u16::from_le_bytes([t[2], t[3]]);
                let cost = i16::from_le_bytes([t[6], t[7]]);
                use std::fmt::Write;
                let _ = writeln!(out, "{surface},{l},{r},{cost},*");
            }
        }
        // Children pushed in reverse so they pop in byte order (deterministic output).
        for c in (0..=255usize).rev() {
            let p = bu + c + 1;
            if p < n && check_of(p) == base as i64 {
                let mut k = key.clone();
                k.push(c as u8);
                stack.push((base_of(p), k));
            }
        }
    }
    Ok(out)
}

/// MeCab's `char.bin` → `char.def`.
fn decompile_char_bin(path: &Path) -> Result<String> {
    let b = fs::read(path).map_err(|e| MlError::io(path, e))?;
    let bad = || MlError::Input(format!("{}: not a MeCab char.bin", path.display()));
    if b.len() < 4 {
        return Err(bad());
    }
    let cs = u32_at(&b, 0) as usize;
    let names_end = 4 + 32 * cs;
    // MeCab writes 0xFFFF code points (U+0000..U+FFFE), not 65,536.
    if b.len() < names_end + 4 * 0xFFFF {
        return Err(bad());
    }
    let count = (b.len() - names_end) / 4;
    let names: Vec<String> = (0..cs)
        .map(|i| {
            let raw = &b[4 + 32 * i..4 + 32 * (i + 1)];
            String::from_utf8_lossy(raw.split(|&c| c == 0).next().unwrap_or(&[])).into_owned()
        })
        .collect();
    let info: Vec<u32> = (0..count).map(|i| u32_at(&b, names_end + 4 * i)).collect();
    // CharInfo bitfield, LSB first: type:18 default_type:8 length:4 group:1 invoke:1.
    let dec = |x: u32| {
        (
            x & 0x3ffff,
            ((x >> 18) & 0xff) as usize,
            (x >> 26) & 0xf,
            (x >> 30) & 1,
            (x >> 31) & 1,
        )
    };
    let mut params: BTreeMap<usize, (u32, u32, u32)> = BTreeMap::new();
    for &x in &info {
        let (_, d, len, g, inv) = dec(x);
        params.entry(d).or_insert((inv, g, len));
    }
    use std::fmt::Write;
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        let (inv, g, len) = params.get(&i).copied().unwrap_or((0, 0, 0));
        let _ = writeln!(out, "{name} {inv} {g} {len}");
    }
    let mut start = 0usize;
    for cp in 1..=info.len() {
        if cp == info.len() || (info[cp] & 0x3ff_ffff) != (info[start] & 0x3ff_ffff) {
            let (t, d, ..) = dec(info[start]);
            if d != 0 || t != 1 {
                let mut cats = vec![names.get(d).ok_or_else(bad)?.as_str()];
                cats.extend(
                    (0..cs)
                        .filter(|&k| (t >> k) & 1 == 1 && k != d)
                        .map(|k| names[k].as_str()),
                );
                let _ = writeln!(out, "0x{start:04X}..0x{:04X} {}", cp - 1, cats.join(" "));
            }
            start = cp;
        }
    }
    Ok(out)
}

/// MeCab's `matrix.bin` as `matrix.def` text, formatted while read: unidic-lite's is 514 MB
/// as text, which need never exist at once.
struct MatrixDef {
    data: Vec<u8>,
    lsize: usize,
    rsize: usize,
    /// Next cell (`l + lsize * r`); `None` before the header line.
    next: Option<usize>,
    line: Vec<u8>,
    line_pos: usize,
}

impl MatrixDef {
    fn open(path: &Path) -> Result<Self> {
        let data = fs::read(path).map_err(|e| MlError::io(path, e))?;
        if data.len() < 4 {
            return Err(MlError::Input(format!(
                "{}: not a MeCab matrix.bin",
                path.display()
            )));
        }
        let lsize = u16::from_le_bytes([data[0], data[1]]) as usize;
        let rsize = u16::from_le_bytes([data[2], data[3]]) as usize;
        if data.len() < 4 + 2 * lsize * rsize {
            return Err(MlError::Input(format!(
                "{}: truncated matrix.bin",
                path.display()
            )));
        }
        Ok(Self {
            data,
            lsize,
            rsize,
            next: None,
            line: Vec::new(),
            line_pos: 0,
        })
    }

    /// Refills `line` with up to 4096 lines; false at the end.
    fn refill(&mut self) -> bool {
        use std::io::Write;
        self.line.clear();
        self.line_pos = 0;
        let total = self.lsize * self.rsize;
        let mut i = match self.next {
            None => {
                let _ = writeln!(self.line, "{} {}", self.lsize, self.rsize);
                0
            }
            Some(i) => i,
        };
        let end = (i + 4096).min(total);
        while i < end {
            let (l, r) = (i % self.lsize, i / self.lsize);
            let off = 4 + 2 * i;
            let cost = i16::from_le_bytes([self.data[off], self.data[off + 1]]);
            let _ = writeln!(self.line, "{l} {r} {cost}");
            i += 1;
        }
        self.next = Some(i);
        !self.line.is_empty()
    }
}

impl Read for MatrixDef {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.line_pos >= self.line.len() && !self.refill() {
            return Ok(0);
        }
        let k = buf.len().min(self.line.len() - self.line_pos);
        buf[..k].copy_from_slice(&self.line[self.line_pos..self.line_pos + k]);
        self.line_pos += k;
        Ok(k)
    }
}
