//! The DAG over a diamond with a side branch: order, closures, neighbours, edges.

use std::path::Path;

use tsumugi::graph::Dag;
use tsumugi::project::Project;
use tsumugi::spec;

const DIAMOND: &str = r#"
stages:
  side: {cmd: "true"}
  d: {cmd: "true", needs: [b, c]}
  c: {cmd: "true", needs: [a]}
  b: {cmd: "true", needs: [a]}
  a: {cmd: "true"}
  e: {cmd: "true", needs: [d, side]}
"#;

fn dag() -> Dag {
    let p = spec::load_str(Path::new("d.yaml"), DIAMOND, &Project::new(".")).unwrap();
    Dag::build(&p).unwrap()
}

#[test]
fn topological_order_keeps_file_order_among_ready_stages() {
    // `side` and `a` are ready first; `side` comes first in the file. `c` before `b` too.
    assert_eq!(dag().topo_order(), vec!["side", "a", "c", "b", "d", "e"]);
}

#[test]
fn closures_and_neighbours() {
    let g = dag();
    assert_eq!(
        g.upstream_closure(&["d"]).unwrap(),
        vec!["a", "c", "b", "d"]
    );
    assert_eq!(
        g.upstream_closure(&["c", "side"]).unwrap(),
        vec!["side", "a", "c"]
    );
    assert_eq!(g.downstream("a").unwrap(), vec!["c", "b", "d", "e"]);
    assert_eq!(g.downstream("e").unwrap(), Vec::<&str>::new());
    assert_eq!(g.dependencies("d").unwrap(), vec!["b", "c"]);
    assert_eq!(g.dependents("a").unwrap(), vec!["b", "c"]);
    assert_eq!(
        g.edges(),
        vec![
            ("a", "c"),
            ("a", "b"),
            ("c", "d"),
            ("b", "d"),
            ("side", "e"),
            ("d", "e")
        ]
    );
    assert!(g.contains("side") && !g.contains("f"));
    let e = g.downstream("f").unwrap_err().to_string();
    assert_eq!(
        e,
        "d.yaml: no stage named 'f' (stages: side, a, c, b, d, e)"
    );
}

#[test]
fn a_cycle_beside_a_valid_part_is_still_an_error() {
    let y = "stages:\n  ok: {cmd: x}\n  p: {cmd: x, needs: [q, ok]}\n  q: {cmd: x, needs: [p]}\n";
    let p = spec::load_str(Path::new("c.yaml"), y, &Project::new(".")).unwrap();
    let e = Dag::build(&p).unwrap_err();
    assert_eq!(e.errors().len(), 1);
    assert_eq!(
        e.to_string(),
        "c.yaml:3:3: dependency cycle: p -> q -> p (each stage needs the next)"
    );
}

#[test]
fn a_hand_built_pipeline_with_duplicate_names_is_refused() {
    let mut p = spec::load_str(Path::new("d.yaml"), DIAMOND, &Project::new(".")).unwrap();
    let again = p.stages[0].clone();
    p.stages.push(again);
    let e = Dag::build(&p).unwrap_err().to_string();
    assert_eq!(e, "d.yaml:3:3: two stages are named 'side'");
}

/// `select` is what `run`, `status` and `--dry-run` schedule: the closure in the one order,
/// with the edges inside it (lists in that order), and the executor asks for nothing else.
#[test]
fn select_is_the_closure_in_the_one_order_with_its_edges() {
    let g = dag();
    let all = g.select(&[]).unwrap();
    assert_eq!(all.order(), g.topo_order());
    assert_eq!(all.needed_by("a"), ["c", "b"]);
    assert_eq!(all.needs("e"), ["side", "d"]);

    let d = g.select(&["d"]).unwrap();
    assert_eq!(d.order(), g.upstream_closure(&["d"]).unwrap());
    assert_eq!(d.needs("d"), ["c", "b"]);
    // `e` is not selected: `d` is needed by nothing inside the selection.
    assert!(d.needed_by("d").is_empty());
    assert!(d.needs("e").is_empty());

    let two = g.select(&["c", "side"]).unwrap();
    assert_eq!(two.order(), ["side", "a", "c"]);
    assert_eq!(two.needed_by("a"), ["c"]);

    let p = spec::load_str(Path::new("d.yaml"), DIAMOND, &Project::new(".")).unwrap();
    let via_executor = tsumugi::executor::select(&p, &["d".to_string()]).unwrap();
    assert_eq!(via_executor, d);
    assert_eq!(
        g.select(&["f"]).unwrap_err().to_string(),
        "d.yaml: no stage named 'f' (stages: side, a, c, b, d, e)"
    );
}
