//! The shape of the house, checked: the workspace crates form layers that only use the ones
//! below them, and inside each crate the top-level modules import each other without a
//! cycle. `cargo tree -p tsumugi --no-default-features -e normal --prefix depth` shows the
//! crate graph; this test fails when someone adds an upward dependency or a module cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A crate may depend only on crates listed before it.
const LAYERS: &[(&str, &str)] = &[
    ("tsumugi-base", "crates/base"),
    ("tsumugi-stages", "stages"),
    ("tsumugi-pipeline", "crates/pipeline"),
    ("tsumugi-store", "crates/store"),
    ("tsumugi-plots", "crates/plots"),
    ("tsumugi-remote", "crates/remote"),
    ("tsumugi-rundb", "crates/rundb"),
    ("tsumugi-exec", "crates/exec"),
    ("tsumugi-triggers", "crates/triggers"),
    ("tsumugi-serve", "crates/serve"),
    ("tsumugi-ui", "crates/ui"),
    ("tsumugi", "."),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace crates named in a Cargo.toml's `[dependencies]` (not dev-dependencies).
fn workspace_deps(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps
            && let Some(name) = line.split(['.', ' ', '=']).next()
            && LAYERS.iter().any(|(n, _)| *n == name)
        {
            deps.push(name.to_string());
        }
    }
    deps
}

#[test]
fn crates_only_depend_on_lower_layers() {
    let mut bad = Vec::new();
    for (i, (name, dir)) in LAYERS.iter().enumerate() {
        for dep in workspace_deps(&root().join(dir).join("Cargo.toml")) {
            let j = LAYERS.iter().position(|(n, _)| *n == dep).unwrap();
            if j >= i {
                bad.push(format!("{name} depends on {dep}, which is not below it"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "upward crate dependencies:\n{}",
        bad.join("\n")
    );
}

/// Top-level module of each source file of a crate: `src/x.rs` and `src/x/**` are `x`.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let name = first.trim_end_matches(".rs").to_string();
            if name == "lib" || name == "main" {
                continue;
            }
            out.entry(name).or_default().push(p);
        }
    }
    out
}

/// The first path segment of every `crate::…` use (also inside `crate::{a, b::c}`), and of
/// `super::…` in a file directly under `src/` (where `super` is the crate root).
fn referenced(text: &str, top_level_file: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut prefixes = vec!["crate::"];
    if top_level_file {
        prefixes.push("super::");
    }
    for prefix in prefixes {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = group
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(group.len(), |(i, _)| i);
                // The leading identifier of each item of the group.
                for item in split_top(&group[..end]) {
                    let ident: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !ident.is_empty() {
                        out.insert(ident);
                    }
                }
            } else {
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() {
                    out.insert(ident);
                }
            }
        }
    }
    out
}

fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == m).unwrap();
                    let mut cycle = path[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut path = Vec::new();
            if let Some(c) = visit(n, graph, &mut state, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

/// The module import graph of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut graph = BTreeMap::new();
    for (name, files) in &mods {
        let mut uses = BTreeSet::new();
        for f in files {
            let top = f.parent() == Some(src);
            let text = fs::read_to_string(f).unwrap();
            for r in referenced(&text, top) {
                if r != *name && mods.contains_key(&r) {
                    uses.insert(r);
                }
            }
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

#[test]
fn no_module_import_cycle_inside_any_crate() {
    let mut cycles = Vec::new();
    for (name, dir) in LAYERS {
        let src = root().join(dir).join("src");
        if let Some(c) = find_cycle(&module_graph(&src)) {
            cycles.push(format!("{name}: {}", c.join(" -> ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "module import cycles:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    fs::write(src.join("a.rs"), "use crate::{b::X, c};").unwrap();
    fs::write(src.join("b.rs"), "use crate::c::Y;").unwrap();
    fs::write(src.join("c.rs"), "// crate::a in a comment\nfn f() {}").unwrap();
    assert_eq!(find_cycle(&module_graph(src)), None);
    fs::create_dir(src.join("c")).unwrap();
    fs::write(
        src.join("c/d.rs"),
        "use super::super::x; fn g() { crate::a::f() }",
    )
    .unwrap();
    assert_eq!(
        find_cycle(&module_graph(src)),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
