//! No input makes the loader panic: every prefix of every pipeline in the corpus, and
//! every file with each byte position replaced by characters YAML treats specially.

use std::path::Path;

use tsumugi::graph::Dag;
use tsumugi::project::Project;
use tsumugi::spec;

fn check(project: &Project, text: &str) {
    // Either outcome is fine; a panic fails the test.
    if let Ok(p) = spec::load_str(Path::new("f.yaml"), text, project) {
        let _ = Dag::build(&p);
    }
}

#[test]
fn truncated_and_mutated_files_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_pipelines");
    let project = Project::new(&dir);
    let mut texts: Vec<String> = Vec::new();
    for path in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // The hostile inputs (deep nesting, interpolation bombs) are about size, not syntax:
        // nearly every prefix of a bomb expands to the 1 MiB limit, which would make this
        // test take many minutes. Whole, they are loaded once here and by the corpus test.
        let name = path.file_name().unwrap().to_string_lossy();
        if name.contains("-nesting") || name.contains("-bomb") {
            check(&project, &text);
            continue;
        }
        texts.push(text);
    }
    texts.push(
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.yaml"))
            .unwrap(),
    );
    let specials = [
        '{', '}', '[', ']', ':', '-', '\t', '"', '\'', '$', '&', '*', '!', '|', '>', '#', '\n', '@',
    ];
    for text in &texts {
        let chars: Vec<char> = text.chars().collect();
        for i in 0..=chars.len() {
            check(&project, &chars[..i].iter().collect::<String>());
        }
        for i in 0..chars.len() {
            let c = specials[i % specials.len()];
            let mut m = chars.clone();
            m[i] = c;
            check(&project, &m.iter().collect::<String>());
        }
    }
}

#[test]
fn alias_bombs_are_refused() {
    let project = Project::new(".");
    let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        y.push_str(&format!(
            "b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            p = if i == 1 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            }
        ));
    }
    y.push_str("stages: {s: {cmd: x}}\n");
    let e = spec::load_str(Path::new("bomb.yaml"), &y, &project)
        .unwrap_err()
        .to_string();
    assert!(e.contains("aliases expand to too many nodes"), "{e}");
}
