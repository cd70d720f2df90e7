//! Per-item stages (`map:`) end to end, through the real binary: which items run (every item
//! execution appends its key to ran.log), what the merged output holds, and what status says.

mod engine_support;
use engine_support::Proj;

/// `caption` upper-cases each file; `count` depends on the merged output only.
const PIPE: &str = r#"
name: captions
stages:
  caption:
    map: {glob: "data/images/*.png"}
    cmd: echo ${item.key} >> ran.log && tr a-z A-Z < ${item.path} > out/captions/${item.stem}.txt
    outs: out/captions/${item.stem}.txt
    merge: {out: out/captions.txt}
  count:
    cmd: echo count >> ran.log && wc -l < ${stages.caption.outs.merged} > out/count.txt
    outs: [out/count.txt]
"#;

fn with_images(n: usize) -> Proj {
    let p = Proj::new(PIPE);
    for i in 0..n {
        p.write(
            &format!("data/images/img_{i:04}.png"),
            &format!("image {i}\n"),
        );
    }
    p
}

/// A fresh project with the same pipeline and the same images as `p`: the merged output of
/// a from-scratch run over them.
fn from_scratch(p: &Proj) -> String {
    let q = Proj::new(PIPE);
    for e in std::fs::read_dir(p.path("data/images")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        q.write(
            &format!("data/images/{name}"),
            &std::fs::read_to_string(e.path()).unwrap(),
        );
    }
    let (code, _, err) = q.run(&["-j", "4"]);
    assert_eq!(code, 0, "{err}");
    q.read("out/captions.txt")
}

fn stale_items(p: &Proj, stage: &str) -> (serde_json::Value, Vec<String>) {
    let v = p.status_json();
    let s = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .unwrap()
        .clone();
    let reasons = s["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    (s["items"].clone(), reasons)
}

/// The `map_items` events of the last run: (ran, cached).
fn last_item_counts(p: &Proj) -> (u64, u64) {
    let db = rusqlite::Connection::open(p.path("runs/tsumugi.db")).unwrap();
    let msg: String = db
        .query_row(
            "SELECT message FROM events WHERE kind = 'map_items' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
    (v["ran"].as_u64().unwrap(), v["cached"].as_u64().unwrap())
}

#[test]
fn one_added_removed_or_changed_item_among_1000_reruns_exactly_that_item() {
    let p = with_images(1000);
    let (code, _, err) = p.run(&["-j", "4"]);
    assert_eq!(code, 0, "{err}");
    let mut first = p.executions();
    assert_eq!(first.len(), 1001, "every item once, then count");
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 1001);
    assert_eq!(last_item_counts(&p), (1000, 0));
    assert!(p.read("out/captions.txt").starts_with("IMAGE 0\nIMAGE 1\n"));

    // Nothing changed: nothing runs.
    p.clear_executions();
    let (code, v, err) = p.run(&["-j", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(p.executions().is_empty());
    assert_eq!(Proj::with_status(&v, "cached"), ["caption", "count"]);

    // Added.
    p.write("data/images/img_1000.png", "image 1000\n");
    let (items, reasons) = stale_items(&p, "caption");
    assert_eq!(items["stale"], 1);
    assert_eq!(items["added"], 1);
    assert_eq!(items["total"], 1001);
    assert!(
        reasons.contains(&"caption: 1 of 1001 items stale (added: img_1000.png)".to_string()),
        "{reasons:?}"
    );
    p.clear_executions();
    let (code, _, err) = p.run(&["-j", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["img_1000.png", "count"]);
    assert_eq!(last_item_counts(&p), (1, 1000));
    assert_eq!(p.read("out/captions/img_1000.txt"), "IMAGE 1000\n");
    assert_eq!(p.read("out/captions.txt"), from_scratch(&p));

    // Removed: no item runs, its output and its line are gone.
    std::fs::remove_file(p.path("data/images/img_0500.png")).unwrap();
    let (items, reasons) = stale_items(&p, "caption");
    assert_eq!(items["removed"], 1, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("removed: img_0500.png")),
        "{reasons:?}"
    );
    p.clear_executions();
    let (code, _, err) = p.run(&["-j", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["count"]);
    assert!(!p.path("out/captions/img_0500.txt").exists());
    let merged = p.read("out/captions.txt");
    assert!(!merged.contains("IMAGE 500\n"));
    assert_eq!(merged.lines().count(), 1000);
    assert_eq!(merged, from_scratch(&p));

    // Changed.
    p.write("data/images/img_0042.png", "image forty-two\n");
    let (items, reasons) = stale_items(&p, "caption");
    assert_eq!(
        (items["stale"].clone(), items["changed"].clone()),
        (1.into(), 1.into())
    );
    assert!(
        reasons.contains(&"caption: 1 of 1000 items stale (changed: img_0042.png)".to_string()),
        "{reasons:?}"
    );
    p.clear_executions();
    let (code, _, err) = p.run(&["-j", "4"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["img_0042.png", "count"]);
    assert!(p.read("out/captions.txt").contains("IMAGE FORTY-TWO\n"));
    assert_eq!(p.read("out/captions.txt"), from_scratch(&p));
}

#[test]
fn an_item_whose_output_is_unchanged_leaves_downstream_cached() {
    // Only the first word counts, so editing the rest of a file changes nothing downstream.
    let p = Proj::new(
        r#"
stages:
  first:
    map: {glob: "data/*.txt"}
    cmd: echo ${item.key} >> ran.log && cut -d' ' -f1 ${item.path} > out/first/${item.name}
    outs: out/first/${item.name}
    merge: {out: out/first.txt}
  use:
    cmd: echo use >> ran.log && sort ${stages.first.outs.merged} > out/sorted.txt
    outs: [out/sorted.txt]
"#,
    );
    for i in 0..5 {
        p.write(&format!("data/{i}.txt"), &format!("w{i} tail\n"));
    }
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    p.clear_executions();
    p.write("data/3.txt", "w3 another tail\n");
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["3.txt"]);
    assert_eq!(Proj::with_status(&v, "cached"), ["use"]);
}

#[test]
fn a_batch_command_gets_exactly_the_added_changed_and_removed_items() {
    let p = Proj::new(
        r#"
stages:
  batch:
    map: {glob: "data/*.txt", batch: true}
    cmd: >-
      echo batch >> ran.log &&
      { echo A; cat "$TSUMUGI_ADDED"; echo C; cat "$TSUMUGI_CHANGED"; echo R; cat "$TSUMUGI_REMOVED"; } > lists.txt &&
      for f in $(cat "$TSUMUGI_ADDED" "$TSUMUGI_CHANGED"); do b=$(basename $f .txt); wc -c < $f > out/$b.n; done
    outs: out/${item.stem}.n
    merge: {out: out/all.n}
"#,
    );
    for i in 0..6 {
        p.write(&format!("data/{i}.txt"), &"x".repeat(i + 1));
    }
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        p.read("lists.txt"),
        "A\ndata/0.txt\ndata/1.txt\ndata/2.txt\ndata/3.txt\ndata/4.txt\ndata/5.txt\nC\nR\n"
    );
    p.write("data/6.txt", "new");
    p.write("data/2.txt", "changed!");
    std::fs::remove_file(p.path("data/4.txt")).unwrap();
    p.clear_executions();
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["batch"]);
    assert_eq!(
        p.read("lists.txt"),
        "A\ndata/6.txt\nC\ndata/2.txt\nR\ndata/4.txt\n"
    );
    assert_eq!(p.read("out/all.n"), "1\n2\n8\n4\n6\n3\n");
    assert!(!p.path("out/4.n").exists());
    // Nothing changed: the batch command does not run at all.
    p.clear_executions();
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(p.executions().is_empty());
}

#[test]
fn rows_are_keyed_by_a_field_and_merged_in_key_order() {
    let p = Proj::new(
        r#"
stages:
  greet:
    map: {rows: data/people.jsonl, key: id}
    cmd: |
      echo ${item.id} >> ran.log && printf '{"id": "%s", "hello": "%s"}\n' ${item.id} ${item.name} > out/g/${item.key}.json
    outs: out/g/${item.key}.json
    merge: {out: out/greetings.jsonl}
"#,
    );
    p.write(
        "data/people.jsonl",
        "{\"id\": \"c\", \"name\": \"Chiyo\"}\n{\"id\": \"a\", \"name\": \"Aki\"}\n{\"id\": \"b\", \"name\": \"Ben's\"}\n",
    );
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        p.read("out/greetings.jsonl"),
        "{\"id\": \"a\", \"hello\": \"Aki\"}\n{\"id\": \"b\", \"hello\": \"Ben's\"}\n{\"id\": \"c\", \"hello\": \"Chiyo\"}\n"
    );
    // Reordering rows changes nothing; editing one row re-runs that row only.
    p.write(
        "data/people.jsonl",
        "{\"id\": \"a\", \"name\": \"Aki\"}\n{\"id\": \"b\", \"name\": \"Bea\"}\n{\"id\": \"c\", \"name\": \"Chiyo\"}\n",
    );
    p.clear_executions();
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["b"]);
    assert!(p.read("out/greetings.jsonl").contains("\"Bea\""));
}

#[test]
fn lines_map_and_a_failing_item_keeps_the_others() {
    let p = Proj::new(
        r#"
stages:
  shout:
    map: {lines: data/prompts.txt}
    cmd: echo ${item.key} >> ran.log && test ${item.line} != bad && echo ${item.line} | tr a-z A-Z > out/s/${item.key}.txt
    outs: out/s/${item.key}.txt
    merge: {out: out/shout.txt}
"#,
    );
    p.write("data/prompts.txt", "one\nbad\nthree\n");
    let (code, _, _) = p.run(&["-j", "1"]);
    assert_ne!(code, 0);
    let failed_first = p.executions().len();
    assert!(failed_first >= 1);
    p.write("data/prompts.txt", "one\ntwo\nthree\n");
    p.clear_executions();
    let (code, _, err) = p.run(&["-j", "1"]);
    assert_eq!(code, 0, "{err}");
    // Items that succeeded before the failure are not run again.
    assert_eq!(p.executions().len(), 3 - (failed_first - 1));
    let mut lines: Vec<String> = p.read("out/shout.txt").lines().map(String::from).collect();
    lines.sort();
    assert_eq!(lines, ["ONE", "THREE", "TWO"]);
}

#[test]
fn map_errors_name_the_place() {
    let p = Proj::new(
        "stages:\n  s:\n    map: {glob: \"data/*.txt\"}\n    cmd: cat ${item.path} > out/x.txt\n    outs: out/x.txt\n",
    );
    let out = p.cmd().args(["validate", "p.yaml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.yaml:5:11"), "{err}");
    assert!(err.contains("does not use ${item.…}"), "{err}");

    p.set_pipeline(
        "stages:\n  s:\n    map: {glob: \"data/*.txt\"}\n    cmd: cat ${item.line}\n    outs: out/${item.key}\n",
    );
    let out = p.cmd().args(["validate", "p.yaml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.yaml:4:"), "{err}");
    assert!(err.contains("item has no field 'line'"), "{err}");
}

#[test]
fn gc_keeps_item_outputs_and_an_edited_item_output_comes_back() {
    let p = Proj::new(
        r#"
stages:
  copy:
    map: {glob: "data/*.txt"}
    cmd: echo ${item.key} >> ran.log && cp ${item.path} out/c/${item.name}
    outs: out/c/${item.name}
"#,
    );
    for i in 0..3 {
        p.write(&format!("data/{i}.txt"), &format!("item {i}\n"));
    }
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    p.cmd().args(["gc"]).assert().success();
    p.write("out/c/1.txt", "edited by hand\n");
    p.write("data/9.txt", "item 9\n");
    p.clear_executions();
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.executions(), ["9.txt"]);
    assert_eq!(p.read("out/c/1.txt"), "item 1\n");
}

#[test]
fn force_runs_every_item_again() {
    let p = Proj::new(
        r#"
stages:
  copy:
    map: {lines: data/l.txt}
    cmd: echo ${item.line} >> ran.log && echo ${item.line} > out/${item.key}
    outs: out/${item.key}
"#,
    );
    p.write("data/l.txt", "a\nb\nc\n");
    let (code, _, err) = p.run(&[]);
    assert_eq!(code, 0, "{err}");
    p.clear_executions();
    let (code, _, err) = p.run(&["--force"]);
    assert_eq!(code, 0, "{err}");
    let mut ran = p.executions();
    ran.sort();
    assert_eq!(ran, ["a", "b", "c"]);
}
