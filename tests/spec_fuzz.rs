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
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
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
