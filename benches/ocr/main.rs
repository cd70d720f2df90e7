//! OCR quality (issue 13): character error rate of (a) the plain `tesseract` CLI on the raw
//! image file, (b) tsumugi's OCR without preprocessing, (c) with its default preprocessing,
//! (d) without denoise and (e) with Otsu binarisation added, over a fixed set of images drawn here: Japanese and English × sans and
//! serif fonts × 16 and 32 px × straight and rotated 3° × clean and 3 % noise × 2 texts
//! (64 images). Prints a Markdown table; `benches/ocr/run.sh` runs it.
//!
//! Usage: cargo run -p tsumugi-stages --example bench-ocr [-- --keep DIR]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tsumugi_stages::caption::image::DynamicImage;
use tsumugi_stages::caption::ocr::Tesseract;
use tsumugi_stages::caption::preprocess::{Binarize, Preprocess};
use tsumugi_stages::caption::render::{self, Fonts, Spec, char_error_rate};

const JA: [&str; 2] = [
    "今日は雨が降りそうなので傘を持って出かけます",
    "駅前の新しいパン屋さんはとても人気がある",
];
const EN: [&str; 2] = [
    "The quick brown fox jumps over the lazy dog",
    "Please remember to water the plants on Friday",
];
const LANGUAGE: &str = "jpn+eng";

struct Case {
    lang: &'static str,
    font: &'static str,
    px: f32,
    rotate: f32,
    noise: f32,
    text: &'static str,
    path: PathBuf,
    img: DynamicImage,
}

/// (a) the CLI, then tsumugi's variants.
const N: usize = 5;

#[derive(Default, Clone, Copy)]
struct Acc {
    cer: [f64; N],
    secs: [f64; N],
    n: usize,
}

fn main() -> Result<()> {
    let keep = std::env::args()
        .skip_while(|a| a != "--keep")
        .nth(1)
        .map(PathBuf::from);
    let tmp = tempfile::tempdir()?;
    let dir = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let fonts = Fonts::find()?;
    let tess = Tesseract::find(None)?.with_languages(LANGUAGE)?;

    let mut cases = Vec::new();
    for lang in ["jpn", "eng"] {
        for font in ["sans", "serif"] {
            for px in [16.0f32, 32.0] {
                for rotate in [0.0f32, 3.0] {
                    for noise in [0.0f32, 0.03] {
                        for t in 0..2 {
                            let (text, f) = match (lang, font) {
                                ("jpn", "sans") => (JA[t], fonts.sans_cjk()),
                                ("jpn", _) => (JA[t], fonts.serif_cjk()),
                                (_, "sans") => (EN[t], fonts.sans_latin()),
                                _ => (EN[t], fonts.serif_latin()),
                            };
                            let img = render::render(&Spec {
                                text: text.into(),
                                font: f,
                                px,
                                rotate_degrees: rotate,
                                noise,
                                seed: cases.len() as u64 + 1,
                            });
                            let path = dir.join(format!(
                                "{:02}-{lang}-{font}-{px}-{rotate}-{noise}.png",
                                cases.len()
                            ));
                            img.save(&path)?;
                            cases.push(Case {
                                lang,
                                font,
                                px,
                                rotate,
                                noise,
                                text,
                                path,
                                img: DynamicImage::ImageRgb8(img),
                            });
                        }
                    }
                }
            }
        }
    }

    let variants = [
        Preprocess::none(),
        Preprocess::default(),
        Preprocess {
            denoise: false,
            ..Preprocess::default()
        },
        Preprocess {
            binarize: Binarize::Otsu,
            ..Preprocess::default()
        },
    ];
    let mut rows: Vec<(String, [f64; N], [f64; N])> = Vec::new();
    for c in &cases {
        let mut cer = [0.0; N];
        let mut secs = [0.0; N];
        // (a) what a user runs by hand: the CLI on the file.
        let t = Instant::now();
        let out = Command::new("tesseract")
            .arg(&c.path)
            .args(["stdout", "-l", LANGUAGE])
            .env("OMP_THREAD_LIMIT", "1")
            .output()
            .context("running tesseract")?;
        if !out.status.success() {
            bail!("tesseract failed on {}", c.path.display());
        }
        secs[0] = t.elapsed().as_secs_f64();
        cer[0] = char_error_rate(&String::from_utf8_lossy(&out.stdout), c.text);
        // (b) tsumugi, no preprocessing; (c) default preprocessing; (d) without denoise;
        // (e) with Otsu binarisation.
        for (k, p) in variants.iter().enumerate().map(|(i, p)| (i + 1, p)) {
            let t = Instant::now();
            let (page, _) = p.apply(&c.img);
            let text = tess.read(&page, None)?;
            secs[k] = t.elapsed().as_secs_f64();
            cer[k] = char_error_rate(&text, c.text);
        }
        rows.push((
            format!("{}", c.path.file_name().unwrap().to_string_lossy()),
            cer,
            secs,
        ));
        eprintln!(
            "{:<40} a {:.3}  b {:.3}  c {:.3}  d {:.3}  e {:.3}",
            rows.last().unwrap().0,
            cer[0],
            cer[1],
            cer[2],
            cer[3],
            cer[4]
        );
    }

    let group = |name: &str, pick: &dyn Fn(&Case) -> bool| {
        let mut acc = Acc::default();
        for (c, (_, cer, secs)) in cases.iter().zip(&rows) {
            if pick(c) {
                for k in 0..N {
                    acc.cer[k] += cer[k];
                    acc.secs[k] += secs[k];
                }
                acc.n += 1;
            }
        }
        let m = |x: f64| x / acc.n as f64;
        let cells: Vec<String> = acc.cer.iter().map(|x| format!("{:.3}", m(*x))).collect();
        println!("| {name} | {} | {} |", acc.n, cells.join(" | "));
        acc
    };
    println!(
        "| setting | images | (a) tesseract CLI, raw file | (b) tsumugi, no preprocessing | (c) tsumugi, default preprocessing | (d) (c) without denoise | (e) (c) + Otsu binarisation |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for lang in ["jpn", "eng"] {
        for px in [16.0, 32.0] {
            group(&format!("{lang}, {px} px"), &|c| {
                c.lang == lang && c.px == px
            });
        }
    }
    for font in ["sans", "serif"] {
        group(&format!("{font} fonts"), &|c| c.font == font);
    }
    group("straight", &|c| c.rotate == 0.0);
    group("rotated 3°", &|c| c.rotate != 0.0);
    group("clean", &|c| c.noise == 0.0);
    group("3 % noise", &|c| c.noise != 0.0);
    let all = group("**all**", &|_| true);
    println!();
    let times: Vec<String> = (0..N)
        .map(|k| {
            format!(
                "({}) {:.2} s = {:.2}× a",
                (b'a' + k as u8) as char,
                all.secs[k] / all.n as f64,
                all.secs[k] / all.secs[0]
            )
        })
        .collect();
    println!("time per image: {}", times.join(", "));
    println!("{}", tess.name());
    Ok(())
}
