//! `tsumugi models check DIR` on real directories: the fixtures load, an unsupported
//! architecture, a base encoder without a head and a directory without its tokenizer are
//! each said plainly, with exit status 1 when the model cannot be loaded.
#![cfg(feature = "ml")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("stages/tests/fixtures")
        .join(name)
}

fn check(dir: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsumugi"));
    cmd.args(["models", "check"]).arg(dir);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap(), text)
}

#[test]
fn fixtures_load_and_say_what_they_are() {
    for (name, arch, labels) in [
        ("bert-1", "Bert", 1),
        ("roberta-3", "Roberta", 3),
        ("xlm-roberta-3", "XlmRoberta", 3),
    ] {
        let (code, text) = check(&fixture(name), true);
        assert_eq!(code, 0, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["architecture"], arch);
        assert_eq!(v["loads"], true);
        assert!(
            v["head"]
                .as_str()
                .unwrap()
                .contains(&format!("{labels} label(s), trained head")),
            "{text}"
        );
        assert!(
            v["tokenizer"]
                .as_str()
                .unwrap()
                .starts_with("tokenizer.json")
        );
        assert!(v["parameters"].as_u64().unwrap() > 10_000);
    }
}

#[test]
fn a_qwen2_vl_checkpoint_is_recognised_as_a_captioning_model() {
    let (code, text) = check(&fixture("qwen2-vl"), true);
    assert_eq!(code, 0, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["architecture"], "Qwen2VL");
    assert_eq!(v["loads"], true);
    assert_eq!(
        v["head"],
        "a captioning model (Qwen2-VL): used by caption-images, not by train-lora"
    );
    assert!(v["parameters"].as_u64().unwrap() > 100_000);
}

#[test]
fn what_does_not_load_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    // Seed 000's captioner, its config only: said to be a captioning model, and why it
    // does not load.
    let qwen = tmp.path().join("qwen");
    std::fs::create_dir(&qwen).unwrap();
    std::fs::write(
        qwen.join("config.json"),
        r#"{"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}"#,
    )
    .unwrap();
    let (code, text) = check(&qwen, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("Qwen2VLForConditionalGeneration"), "{text}");
    assert!(
        text.contains("a captioning model (Qwen2-VL): used by caption-images, not by train-lora"),
        "{text}"
    );
    assert!(
        text.contains("config.json: mrope_section is missing"),
        "{text}"
    );

    // The weights without tokenizer.json: loads no, the tokenizer file named.
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("bert-1").join(f), bare.join(f)).unwrap();
    }
    let (code, text) = check(&bare, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no tokenizer files"), "{text}");
    assert!(text.contains("tokenizer.json"), "{text}");

    // A base encoder (no classifier weights) loads, and says train-lora makes its head.
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(
        fixture("bert-1").join("config.json"),
        base.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("bert-1").join("tokenizer.json"),
        base.join("tokenizer.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture("bert-1").join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("classifier"))
        .collect();
    std::fs::write(
        base.join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    let (code, text) = check(&base, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("no classification head in the weights (classifier.weight, classifier.bias): train-lora trains one"),
        "{text}"
    );
}
