//! The `caption-images` kind with the real Tesseract on images drawn here with real fonts
//! (Debian's tesseract-ocr, tesseract-ocr-jpn/-eng, fonts-noto-cjk, fonts-dejavu; .ci/run
//! installs them).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tsumugi_stages::caption::images;
use tsumugi_stages::caption::render::{self, Fonts, Spec, char_error_rate};
use tsumugi_stages::contract::{Reporter, StageInput};
use tsumugi_stages::kinds;

#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
    progress: Mutex<Vec<(u64, Option<u64>, String)>>,
    cancel: AtomicBool,
}

impl Reporter for Recorder {
    fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        self.progress
            .lock()
            .unwrap()
            .push((done, total, message.into()));
    }
    fn metric(&self, _: &str, _: Option<u64>, _: f64) {}
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.into());
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Runs the kind as stage `caption` with the stage environment `env`; returns the rows of
/// `captions.jsonl` and `timings.jsonl`.
fn run_with_env(
    root: &Path,
    with: Value,
    env: &[(&str, &str)],
    rep: &Recorder,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    run_on("cpu", root, with, env, rep)
}

/// [`run_with_env`] on `device` (`--device`).
fn run_on(
    device: &str,
    root: &Path,
    with: Value,
    env: &[(&str, &str)],
    rep: &Recorder,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let info = kinds::kind("caption-images").expect("registered");
    assert!(info.per_item);
    let dir = root.join("out/caption");
    std::fs::create_dir_all(&dir)?;
    let outs: BTreeMap<String, PathBuf> = info
        .outputs
        .iter()
        .map(|(k, f)| (k.to_string(), dir.join(f)))
        .collect();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let input = StageInput {
        name: "caption",
        project_root: root,
        with: &with,
        outs: &outs,
        env: &env,
        device,
    };
    kinds::implementation("caption-images")
        .expect("every build has it")
        .run(&input, rep)?;
    let rows = |k: &str| -> Vec<Value> {
        std::fs::read_to_string(&outs[k])
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Ok((rows("captions"), rows("timings")))
}

fn run(root: &Path, with: Value) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    run_with_env(root, with, &[], &Recorder::default())
}

fn save(root: &Path, rel: &str, img: &image::RgbImage) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    img.save(&p).unwrap();
}

fn spec(text: &str, font: ab_glyph::FontArc, px: f32) -> Spec {
    Spec {
        text: text.into(),
        font,
        px,
        rotate_degrees: 0.0,
        noise: 0.0,
        seed: 7,
    }
}

#[test]
fn japanese_and_english_in_every_format_sizes_rotations_and_noise_are_read() {
    let fonts = Fonts::find().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cases: Vec<(&str, Spec, f64)> = vec![
        (
            "data/images/en/plain.png",
            spec("Cats rule the internet", fonts.sans_latin(), 32.0),
            0.05,
        ),
        (
            "data/images/en/small-serif.webp",
            spec("Quiet mornings are best", fonts.serif_latin(), 14.0),
            0.1,
        ),
        (
            "data/images/ja/plain.png",
            spec("今日はとても良い天気です", fonts.sans_cjk(), 36.0),
            0.1,
        ),
        (
            "data/images/ja/rotated.tiff",
            Spec {
                rotate_degrees: 3.0,
                ..spec("猫が箱の中で眠っている", fonts.serif_cjk(), 40.0)
            },
            0.15,
        ),
        (
            "data/images/en/noisy-rotated.jpg",
            Spec {
                rotate_degrees: -2.5,
                noise: 0.02,
                ..spec("A dog on a skateboard", fonts.sans_latin(), 30.0)
            },
            0.15,
        ),
    ];
    for (rel, s, _) in &cases {
        save(root, rel, &render::render(s));
    }
    // Not an image name: not listed from a directory.
    std::fs::write(root.join("data/images/notes.txt"), "not an image").unwrap();

    let rep = Recorder::default();
    let (rows, timings) = run_with_env(
        root,
        json!({"images": "data/images", "method": "ocr", "language": "jpn+eng", "batch_size": 2}),
        &[],
        &rep,
    )
    .unwrap();
    let mut expected: Vec<&str> = cases.iter().map(|c| c.0).collect();
    expected.sort();
    let got: Vec<&str> = rows.iter().map(|r| r["image"].as_str().unwrap()).collect();
    assert_eq!(got, expected, "one row per image, sorted by path");
    for (rel, s, max_cer) in &cases {
        let row = rows.iter().find(|r| r["image"] == *rel).unwrap();
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "image", "sha256", "caption", "method", "model", "status", "error"
            ]
        );
        let caption = row["caption"].as_str().unwrap();
        let cer = char_error_rate(caption, &s.text);
        assert!(
            cer <= *max_cer,
            "{rel}: read {caption:?} for {:?} (CER {cer:.3})",
            s.text
        );
        assert_eq!(row["status"], "ok");
        assert_eq!(row["error"], Value::Null);
        assert_eq!(row["method"], "ocr");
        let model = row["model"].as_str().unwrap();
        assert!(
            model.starts_with("tesseract ") && model.ends_with(" jpn+eng"),
            "{model}"
        );
        let bytes = std::fs::read(root.join(rel)).unwrap();
        assert_eq!(row["sha256"], hex::encode(Sha256::digest(&bytes)));
    }
    let timing_keys: Vec<&str> = timings
        .iter()
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    assert_eq!(timing_keys, expected);
    assert!(
        timings
            .iter()
            .all(|t| t["caption_ms"].as_f64().unwrap() > 0.0)
    );
    let progress = rep.progress.lock().unwrap();
    let last = progress.last().unwrap();
    assert!(
        last.0 == 5 && last.1 == Some(5) && last.2.ends_with(" images/s"),
        "{progress:?}"
    );

    // The same images give the same bytes (no timings in the captions).
    let first = std::fs::read(root.join("out/caption/captions.jsonl")).unwrap();
    run(root, json!({"images": "data/images", "batch_size": 1})).unwrap();
    assert_eq!(
        std::fs::read(root.join("out/caption/captions.jsonl")).unwrap(),
        first
    );
}

/// A minimal EXIF block (APP1) whose Orientation tag is `orientation`, inserted after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn a_jpeg_turned_by_exif_is_read_upright() {
    let fonts = Fonts::find().unwrap();
    let upright = render::render(&spec("Sideways photo caption", fonts.sans_latin(), 32.0));
    // A camera held sideways stores the pixels turned; EXIF orientation 6 says "turn 90°
    // clockwise to show".
    let stored = image::imageops::rotate270(&upright);
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(stored)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let jpeg = with_exif_orientation(&jpeg, 6);
    let decoded = images::decode(&jpeg).unwrap();
    assert_eq!(
        (decoded.width(), decoded.height()),
        upright.dimensions(),
        "turned upright"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("photos")).unwrap();
    std::fs::write(dir.path().join("photos/IMG_0001.JPG"), &jpeg).unwrap();
    let (rows, _) = run(dir.path(), json!({"images": "photos", "language": "eng"})).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["image"], "photos/IMG_0001.JPG");
    let caption = rows[0]["caption"].as_str().unwrap();
    assert!(
        char_error_rate(caption, "Sideways photo caption") <= 0.1,
        "{caption:?}"
    );
}

fn broken_project() -> tempfile::TempDir {
    let fonts = Fonts::find().unwrap();
    let dir = tempfile::tempdir().unwrap();
    save(
        dir.path(),
        "imgs/a-good.png",
        &render::render(&spec("Hello there", fonts.sans_latin(), 32.0)),
    );
    std::fs::write(dir.path().join("imgs/b-broken.png"), b"this is not a PNG").unwrap();
    dir
}

#[test]
fn an_unreadable_image_fails_the_stage_or_is_recorded_as_on_error_says() {
    let dir = broken_project();
    let root = dir.path();
    let with = |on_error: &str| json!({"images": "imgs", "language": "eng", "on_error": on_error});

    let err = run(root, with("fail")).unwrap_err().to_string();
    assert!(err.contains("image imgs/b-broken.png"), "{err}");
    assert!(err.contains("on_error: skip"), "{err}");
    assert!(
        !root.join("out/caption/captions.jsonl").exists(),
        "nothing written on failure"
    );

    let rep = Recorder::default();
    let (rows, _) = run_with_env(root, with("skip"), &[], &rep).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["status"], "ok");
    assert_eq!(rows[0]["caption"], "Hello there");
    assert_eq!(rows[1]["image"], "imgs/b-broken.png");
    assert_eq!(rows[1]["status"], "skipped");
    assert_eq!(rows[1]["caption"], Value::Null);
    assert!(
        rows[1]["error"].as_str().unwrap().contains("not an image"),
        "{}",
        rows[1]
    );
    assert_eq!(
        rows[1]["sha256"],
        hex::encode(Sha256::digest(b"this is not a PNG")),
        "the file was read, so it has a hash"
    );
    let logs = rep.lines.lock().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("imgs/b-broken.png") && l.contains("skipped")),
        "{logs:?}"
    );

    let (rows, _) = run(root, with("fallback")).unwrap();
    assert_eq!(rows[1]["status"], "fallback");
    assert_eq!(rows[1]["caption"], "");
    assert!(rows[1]["error"].is_string());
}

#[test]
fn a_missing_language_pack_or_engine_names_the_packages_to_install() {
    let dir = broken_project();
    let err = run(dir.path(), json!({"images": "imgs", "language": "jpn+zzz"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no language pack for zzz"), "{err}");
    assert!(
        err.contains("apt-get install tesseract-ocr tesseract-ocr-zzz"),
        "{err}"
    );

    let err = run_with_env(
        dir.path(),
        json!({"images": "imgs"}),
        &[("TSUMUGI_TESSERACT", "/nonexistent/tesseract")],
        &Recorder::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/tesseract"), "{err}");
    assert!(
        err.contains("apt-get install tesseract-ocr tesseract-ocr-jpn tesseract-ocr-eng"),
        "{err}"
    );
}

#[test]
fn a_vlm_needs_its_model_and_cancellation_stops_between_images() {
    let dir = broken_project();
    let err = run(dir.path(), json!({"images": "imgs", "method": "vlm+ocr"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs `model:`"), "{err}");
    let err = format!(
        "{:#}",
        run(
            dir.path(),
            json!({"images": "imgs", "method": "vlm", "model": "models/qwen2-vl"}),
        )
        .unwrap_err()
    );
    if cfg!(feature = "ml") {
        assert!(
            err.contains("loading the Qwen2-VL model") && err.contains("models/qwen2-vl"),
            "{err}"
        );
    } else {
        assert!(err.contains("needs a build with the `ml` feature"), "{err}");
    }

    let rep = Recorder::default();
    rep.cancel.store(true, Ordering::SeqCst);
    let err = run_with_env(
        dir.path(),
        json!({"images": "imgs", "language": "eng"}),
        &[],
        &rep,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cancelled after 0 of 2 images"), "{err}");
    assert!(!dir.path().join("out/caption/captions.jsonl").exists());

    let err = run(dir.path(), json!({"images": "no/such/dir"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no/such/dir"), "{err}");
}

/// `method: vlm` and `vlm+ocr` with the tiny random-weight Qwen2-VL checkpoint that
/// transformers wrote (stages/tests/fixtures/qwen2-vl, whose generation matches
/// transformers token for token: tests/qwen2_vl.rs): each row's caption is what the model
/// generates for that image and prompt (with the OCR text for vlm+ocr).
#[cfg(feature = "ml")]
#[test]
fn vlm_and_vlm_plus_ocr_caption_with_qwen2_vl() {
    use tsumugi_stages::caption::Captioner;
    use tsumugi_stages::caption::vlm::VlmCaptioner;
    use tsumugi_stages::kinds::caption_images::DEFAULT_PROMPT;

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-vl");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let fonts = Fonts::find().unwrap();
    let text = "Tokyo 2026";
    save(
        root,
        "imgs/a.png",
        &render::render(&spec(text, fonts.sans_latin(), 32.0)),
    );
    std::fs::copy(
        fixture.join("images/wide-300x200.png"),
        root.join("imgs/b.png"),
    )
    .unwrap();
    let vlm = VlmCaptioner::<burn::backend::Flex>::load(
        &fixture,
        DEFAULT_PROMPT,
        8,
        &Default::default(),
        Default::default(),
    )
    .unwrap();

    let (rows, timings) = run(
        root,
        json!({"images": "imgs", "method": "vlm", "model": fixture, "max_new_tokens": 8}),
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let img = image::open(root.join(row["image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_eq!(row["caption"], vlm.caption(&img, None).unwrap(), "{row}");
        assert_eq!(row["method"], "vlm");
        assert_eq!(row["model"], "qwen2-vl");
        assert_eq!(row["status"], "ok");
    }
    assert!(
        timings
            .iter()
            .all(|t| t["caption_ms"].as_f64().unwrap() > 0.0)
    );

    // vlm+ocr: the prompt carries what Tesseract read, and the row names both.
    let (rows, _) = run(
        root,
        json!({"images": "imgs/a.png", "method": "vlm+ocr", "model": fixture,
               "max_new_tokens": 8, "language": "eng"}),
    )
    .unwrap();
    let ocr = {
        use tsumugi_stages::caption::ocr::{OcrCaptioner, Tesseract};
        use tsumugi_stages::caption::preprocess::Preprocess;
        OcrCaptioner {
            engine: Tesseract::find(None)
                .unwrap()
                .with_languages("eng")
                .unwrap(),
            preprocess: Preprocess::default(),
            psm: None,
        }
    };
    let img = image::open(root.join("imgs/a.png")).unwrap().to_rgb8();
    let read = ocr.caption(&img, None).unwrap();
    assert!(char_error_rate(&read, text) < 0.2, "OCR read {read:?}");
    assert!(vlm.prompt_for(Some(&read)).contains(&read));
    assert_eq!(rows[0]["caption"], vlm.caption(&img, Some(&read)).unwrap());
    assert_eq!(rows[0]["method"], "vlm+ocr");
    assert!(
        rows[0]["model"]
            .as_str()
            .unwrap()
            .starts_with("qwen2-vl + tesseract"),
        "{}",
        rows[0]
    );
}

/// `method: vlm` on `--device wgpu` in f16 (CI: lavapipe): the stage runs Qwen2-VL there,
/// the log names device and precision, and each row's caption is what that model, loaded
/// the same way, generates. bf16 is refused by name before any image is read.
#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use tsumugi_stages::caption::Captioner;
    use tsumugi_stages::caption::vlm::VlmCaptioner;
    use tsumugi_stages::kinds::caption_images::DEFAULT_PROMPT;
    use tsumugi_stages::precision::Precision;

    #[test]
    fn vlm_captions_on_wgpu_in_f16() {
        let Some(device) = support::wgpu_device() else {
            return;
        };
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-vl");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("imgs")).unwrap();
        for name in ["wide-300x200.png", "disc-97x61.png"] {
            std::fs::copy(
                fixture.join("images").join(name),
                root.join("imgs").join(name),
            )
            .unwrap();
        }
        let with = |precision: &str| {
            json!({"images": "imgs", "method": "vlm", "model": fixture, "max_new_tokens": 8,
                   "precision": precision})
        };
        let rep = Recorder::default();
        let (rows, _) = run_on("wgpu", root, with("f16"), &[], &rep).unwrap();
        assert!(
            rep.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("Qwen2-VL on wgpu in f16")),
            "{:?}",
            rep.lines.lock().unwrap()
        );
        let vlm = VlmCaptioner::<burn::backend::Wgpu>::load(
            &fixture,
            DEFAULT_PROMPT,
            8,
            &device,
            Precision::F16,
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            let img = image::open(root.join(row["image"].as_str().unwrap()))
                .unwrap()
                .to_rgb8();
            assert_eq!(row["status"], "ok", "{row}");
            assert_eq!(row["caption"], vlm.caption(&img, None).unwrap(), "{row}");
        }
        let err = run_on("wgpu", root, with("bf16"), &[], &Recorder::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("precision: bf16 is not supported"),
            "{err:#}"
        );
    }
}
