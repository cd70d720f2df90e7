//! `caption-images` item by item (`map:` + `uses:`), end to end through the real binary, the
//! real Tesseract (Debian's tesseract-ocr + -eng, installed by .ci/run) and images drawn by
//! the test with real fonts. Tesseract runs through a logging shim (`TSUMUGI_TESSERACT`),
//! so the OCR calls are counted where they happen, not only from the run record.

mod engine_support;

use std::path::Path;

use engine_support::Proj;
use tsumugi_stages::caption::render::{self, Fonts, Spec};

const PIPE: &str = r#"
name: cap
stages:
  caption:
    uses: caption-images
    map: {glob: "data/images/*.png"}
    with: {images: "${item.path}", method: ocr, language: eng, on_error: skip}
  count:
    cmd: wc -l < ${stages.caption.outs.captions} > out/n.txt
    outs: [out/n.txt]
"#;

/// A `tesseract` that appends one line to `calls.log` per recognition (not for `--version`
/// or `--list-langs`) and hands over to the real one.
fn shim(p: &Proj) -> String {
    let log = p.path("calls.log");
    let script = p.path("tesseract-shim.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$*\" in *--version*|*--list-langs*) ;; *) echo call >> '{}' ;; esac\nexec tesseract \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

/// `tsumugi run p.yaml -j 2 --json` with the shim; (exit code, summary, stderr, OCR calls).
fn run(p: &Proj, extra: &[&str]) -> (i32, serde_json::Value, String, usize) {
    let _ = std::fs::remove_file(p.path("calls.log"));
    let out = p
        .cmd()
        .env("TSUMUGI_TESSERACT", shim(p))
        .args(["run", "p.yaml", "-j", "2", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}); stderr: {stderr}"));
    let calls = std::fs::read_to_string(p.path("calls.log"))
        .unwrap_or_default()
        .lines()
        .count();
    (out.status.code().unwrap_or(-1), v, stderr, calls)
}

/// The last `map_items` event of the run database: (ran, cached, added, changed, removed).
fn item_counts(p: &Proj) -> [u64; 5] {
    let db = rusqlite::Connection::open(p.path("runs/tsumugi.db")).unwrap();
    let msg: String = db
        .query_row(
            "SELECT message FROM events WHERE kind = 'map_items' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
    ["ran", "cached", "added", "changed", "removed"].map(|k| v[k].as_u64().unwrap())
}

fn draw(root: &Path, rel: &str, text: &str, fonts: &Fonts) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = Spec {
        text: text.to_string(),
        font: fonts.sans_latin(),
        px: 26.0,
        rotate_degrees: 0.0,
        noise: 0.0,
        seed: 1,
    };
    render::render(&spec).save(&path).unwrap();
}

fn rows(p: &Proj) -> Vec<serde_json::Value> {
    p.read("out/cap/caption/captions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_hundred_images_then_one_added_one_changed_one_removed_captions_two() {
    let fonts = Fonts::find().unwrap();
    let p = Proj::new(PIPE);
    for i in 0..200 {
        draw(
            p.root(),
            &format!("data/images/img_{i:03}.png"),
            &format!("tile {i}"),
            &fonts,
        );
    }
    let t = std::time::Instant::now();
    let (code, v, err, full_calls) = run(&p, &[]);
    // Printed, not asserted: the figure for the report (`-- --nocapture`).
    eprintln!(
        "200 images: {full_calls} OCR calls, {:.1} s with -j 2",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        Proj::statuses(&v),
        [
            ("caption".into(), "ran".into()),
            ("count".into(), "ran".into())
        ]
    );
    assert_eq!(item_counts(&p), [200, 0, 200, 0, 0]);
    assert!(full_calls >= 200, "{full_calls} OCR calls for 200 images");
    let first = rows(&p);
    assert_eq!(first.len(), 200);
    assert_eq!(first[7]["image"], "data/images/img_007.png");
    assert!(first.iter().all(|r| r["status"] == "ok"), "{first:?}");
    // Rendered digits are easy for Tesseract: nearly every caption holds its number.
    let read = first
        .iter()
        .enumerate()
        .filter(|(i, r)| r["caption"].as_str().unwrap_or("").contains(&i.to_string()))
        .count();
    assert!(read >= 190, "only {read} of 200 captions hold their number");

    // Nothing changed: nothing runs.
    let (code, v, err, calls) = run(&p, &[]);
    assert_eq!((code, calls), (0, 0), "{err}");
    assert_eq!(Proj::with_status(&v, "cached").len(), 2);

    // One added, one changed, one removed: status names them, two images are captioned.
    draw(p.root(), "data/images/img_200.png", "tile 200", &fonts);
    draw(p.root(), "data/images/img_005.png", "tile 5005", &fonts);
    std::fs::remove_file(p.path("data/images/img_010.png")).unwrap();
    let st = p.status_json();
    let caption = st["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "caption")
        .unwrap();
    assert_eq!(caption["items"]["stale"], 2);
    assert_eq!(caption["items"]["total"], 200);
    let reasons = caption["reasons"].to_string();
    assert!(
        reasons.contains("added: img_200.png")
            && reasons.contains("changed: img_005.png")
            && reasons.contains("removed: img_010.png"),
        "{reasons}"
    );
    let (code, _, err, calls) = run(&p, &[]);
    eprintln!(
        "+1 ~1 -1: {calls} OCR calls; map_items [ran, cached, added, changed, removed] = {:?}",
        item_counts(&p)
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(item_counts(&p), [2, 198, 1, 1, 1]);
    // Two images' worth of OCR calls, by the shim's count.
    assert_eq!(
        calls * 200,
        full_calls * 2,
        "{calls} calls, {full_calls} for 200"
    );
    let now = rows(&p);
    assert_eq!(now.len(), 200);
    assert!(now.iter().all(|r| r["image"] != "data/images/img_010.png"));
    assert!(
        now[5]["caption"].as_str().unwrap().contains("5005"),
        "{}",
        now[5]
    );
    assert_eq!(now[199]["image"], "data/images/img_200.png");
    assert_eq!(p.read("out/n.txt").trim(), "200");

    // Byte-identical to a from-scratch run over the same images.
    let q = Proj::new(PIPE);
    std::fs::create_dir_all(q.path("data/images")).unwrap();
    for e in std::fs::read_dir(p.path("data/images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), q.path("data/images").join(e.file_name())).unwrap();
    }
    let (code, _, err, _) = run(&q, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        p.read("out/cap/caption/captions.jsonl") == q.read("out/cap/caption/captions.jsonl"),
        "the merged captions differ from a from-scratch run"
    );
}

#[test]
fn an_unreadable_image_is_skipped_and_reported_and_the_run_succeeds() {
    let fonts = Fonts::find().unwrap();
    let p = Proj::new(PIPE);
    draw(p.root(), "data/images/a.png", "first 1", &fonts);
    draw(p.root(), "data/images/c.png", "third 3", &fonts);
    p.write("data/images/b.png", "this is not a PNG\n");
    let (code, _, err, _) = run(&p, &[]);
    assert_eq!(code, 0, "{err}");
    let r = rows(&p);
    assert_eq!(r.len(), 3);
    assert_eq!(r[1]["image"], "data/images/b.png");
    assert_eq!(r[1]["status"], "skipped");
    assert!(r[1]["caption"].is_null());
    assert!(
        r[1]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}",
        r[1]
    );
    assert_eq!(
        (r[0]["status"].as_str(), r[2]["status"].as_str()),
        (Some("ok"), Some("ok"))
    );

    // Removing the bad image drops its row; the others stay cached.
    std::fs::remove_file(p.path("data/images/b.png")).unwrap();
    let (code, _, err, calls) = run(&p, &[]);
    assert_eq!((code, calls), (0, 0), "{err}");
    let r = rows(&p);
    assert_eq!(r.len(), 2);
    assert_eq!(item_counts(&p), [0, 2, 0, 0, 1]);
    assert!(!p.path("out/cap/caption/items/b.png").exists());
}
