//! `uses: caption-images` end to end: `tsumugi run` over images drawn with real fonts, read by
//! the real Tesseract (Debian's tesseract-ocr + -jpn/-eng and fonts-noto-cjk, installed by
//! .ci/run).

mod engine_support;

use engine_support::Proj;
use tsumugi_stages::caption::render::{self, Fonts, Spec, char_error_rate};

const PIPELINE: &str = r#"
name: cap
stages:
  caption:
    uses: caption-images
    with:
      images: data/images
      method: ocr
      language: jpn+eng
      on_error: skip
"#;

fn draw(p: &Proj, rel: &str, spec: &Spec) {
    let path = p.path(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    render::render(spec).save(&path).unwrap();
}

#[test]
fn tsumugi_run_captions_a_folder_of_images() {
    let fonts = Fonts::find().unwrap();
    let p = Proj::new(PIPELINE);
    let texts = [
        (
            "data/images/1-en.png",
            "Never trust a smiling cat",
            fonts.sans_latin(),
            0.0,
        ),
        (
            "data/images/2-ja.png",
            "電車で寝過ごした",
            fonts.sans_cjk(),
            0.0,
        ),
        (
            "data/images/3-ja-tilted.png",
            "明日は雨が降るでしょう",
            fonts.sans_cjk(),
            2.0,
        ),
    ];
    for (rel, text, font, deg) in &texts {
        let spec = Spec {
            text: text.to_string(),
            font: font.clone(),
            px: 34.0,
            rotate_degrees: *deg,
            noise: 0.0,
            seed: 1,
        };
        draw(&p, rel, &spec);
    }
    std::fs::write(p.path("data/images/4-broken.png"), b"GIF89a? no").unwrap();

    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        Proj::statuses(&v),
        [("caption".to_string(), "ran".to_string())]
    );
    let rows: Vec<serde_json::Value> = p
        .read("out/cap/caption/captions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    for ((rel, text, _, _), row) in texts.iter().zip(&rows) {
        assert_eq!(row["image"], *rel);
        let caption = row["caption"].as_str().unwrap();
        let cer = char_error_rate(caption, text);
        assert!(cer <= 0.1, "{rel}: {caption:?} for {text:?} (CER {cer:.3})");
    }
    assert_eq!(rows[3]["status"], "skipped");
    assert!(p.path("out/cap/caption/timings.jsonl").exists());

    // Nothing changed: nothing runs again.
    let (code, v, _) = p.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(
        Proj::statuses(&v),
        [("caption".to_string(), "cached".to_string())]
    );
}
