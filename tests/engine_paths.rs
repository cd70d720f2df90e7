//! Nothing outside the project is touched, and the cache is never written through: real
//! `tsumugi` runs of real `sh` stages on the real file system.

mod engine_support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use engine_support::Proj;
use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The message of stage `name` in a run summary.
fn message(v: &serde_json::Value, name: &str) -> String {
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {v}"))["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn object(p: &Proj, hash: &str) -> std::path::PathBuf {
    p.path(&format!("cache/objects/{}/{}", &hash[..2], &hash[2..]))
}

/// Item 2: a stage links `o/sub` out of the project; a later stage's output
/// `o/sub/file.txt` must be neither removed nor written through that link.
#[test]
fn a_symlink_made_at_run_time_cannot_lead_removal_or_writes_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("file.txt"), "precious\n").unwrap();
    let p = Proj::new(&format!(
        r#"
stages:
  link:
    cmd: mkdir -p o && ln -s {out} o/sub && touch link.done
    outs: [link.done]
  use:
    needs: [link]
    cmd: echo overwritten > o/sub/file.txt
    outs: [o/sub/file.txt]
"#,
        out = outside.path().display()
    ));
    let (code, v, err) = p.run(&[]);
    assert_ne!(code, 0, "{v}\n{err}");
    assert_eq!(Proj::with_status(&v, "failed"), ["use"], "{v}");
    assert_eq!(
        message(&v, "use"),
        format!(
            "out o/sub/file.txt: o/sub is a symlink to {} (outside the project); refusing to remove/write through it",
            outside.path().display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("file.txt")).unwrap(),
        "precious\n"
    );
}

/// Item 2, at commit: a stage that makes the link itself (tsumugi made `o/sub` as the
/// output's folder; the stage replaces it) and writes through it does not
/// succeed, and its output is neither stored nor cleaned up through the link.
#[test]
fn a_stage_writing_through_its_own_symlink_out_of_the_project_fails_at_commit() {
    let outside = tempfile::tempdir().unwrap();
    let p = Proj::new(&format!(
        r#"
stages:
  sneaky:
    cmd: rmdir o/sub && ln -s {out} o/sub && echo written > o/sub/file.txt
    outs: [o/sub/file.txt]
"#,
        out = outside.path().display()
    ));
    let (code, v, err) = p.run(&[]);
    assert_ne!(code, 0, "{v}\n{err}");
    assert_eq!(Proj::with_status(&v, "failed"), ["sneaky"], "{v}");
    let m = message(&v, "sneaky");
    assert!(
        m.starts_with(&format!(
            "out o/sub/file.txt: o/sub is a symlink to {} (outside the project); refusing to commit through it",
            outside.path().display()
        )),
        "{m}"
    );
    // Nothing of it went into the store.
    assert!(!object(&p, &sha(b"written\n")).exists());
    assert_eq!(
        std::fs::read_to_string(outside.path().join("file.txt")).unwrap(),
        "written\n"
    );
}

/// Item 8b: an object replaced by a symlink (here to a file outside with the right bytes)
/// is corrupt: discarded, the stage re-runs, the output is a regular file again.
#[test]
fn a_cache_object_replaced_by_a_symlink_is_never_restored() {
    let outside = tempfile::tempdir().unwrap();
    let p = Proj::new(
        "stages:\n  a:\n    cmd: echo a >> ran.log && printf 'hello\\n' > a.txt\n    outs: [a.txt]\n",
    );
    assert_eq!(p.run(&[]).0, 0);
    let hash = sha(b"hello\n");
    let obj = object(&p, &hash);
    std::fs::write(outside.path().join("bait"), "hello\n").unwrap();
    std::fs::remove_file(&obj).unwrap();
    std::os::unix::fs::symlink(outside.path().join("bait"), &obj).unwrap();
    std::fs::remove_file(p.path("a.txt")).unwrap();
    p.clear_executions();

    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{v}\n{err}");
    assert!(
        err.contains(&format!(
            "cache object {hash} (output a.txt of stage a) is corrupt"
        )),
        "{err}"
    );
    assert_eq!(Proj::with_status(&v, "ran"), ["a"], "{v}");
    assert_eq!(p.executions(), ["a"]);
    let md = std::fs::symlink_metadata(p.path("a.txt")).unwrap();
    assert!(md.file_type().is_file(), "{:?}", md.file_type());
    assert_eq!(p.read("a.txt"), "hello\n");
    // The store holds a real object again.
    let md = std::fs::symlink_metadata(&obj).unwrap();
    assert!(md.file_type().is_file(), "{:?}", md.file_type());
    assert_eq!(sha(&std::fs::read(&obj).unwrap()), hash);
}

/// Item 8c: writing to a restored output changes that file only, never the cache object.
#[test]
fn appending_to_a_restored_output_leaves_the_cache_object_intact() {
    let p = Proj::new(
        r#"
stages:
  a:
    cmd: printf 'orig\n' > a.txt && mkdir -p d && printf 'x\n' > d/x.txt
    outs: [a.txt, d]
  later:
    needs: [a]
    cmd: echo more >> a.txt && echo more >> d/x.txt && touch later.done
    outs: [later.done]
"#,
    );
    assert_eq!(p.run(&["a"]).0, 0);
    std::fs::remove_file(p.path("a.txt")).unwrap();
    std::fs::remove_dir_all(p.path("d")).unwrap();
    let (code, v, err) = p.run(&["a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "restored"), ["a"], "{v}");
    // A later command stage appends to the restored outputs.
    let (code, v, err) = p.run(&[]);
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(p.read("a.txt"), "orig\nmore\n");
    // And a direct write, after making it writable the way a user would.
    std::fs::set_permissions(p.path("a.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(p.path("a.txt"))
        .unwrap()
        .write_all(b"direct\n")
        .unwrap();

    for (bytes, what) in [(&b"orig\n"[..], "a.txt"), (&b"x\n"[..], "d/x.txt")] {
        let obj = object(&p, &sha(bytes));
        assert_eq!(
            sha(&std::fs::read(&obj).unwrap()),
            sha(bytes),
            "the object behind {what} changed"
        );
    }
    std::fs::remove_file(p.path("a.txt")).unwrap();
    std::fs::remove_dir_all(p.path("d")).unwrap();
    let (code, v, err) = p.run(&["a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(Proj::with_status(&v, "restored"), ["a"], "{v}");
    assert_eq!(p.read("a.txt"), "orig\n");
    assert_eq!(p.read("d/x.txt"), "x\n");
    // An ordinary writable file of its own (not the store's read-only 0444).
    let md = std::fs::metadata(p.path("a.txt")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o644);
}

/// Item 8d: a FIFO in a directory output cannot be stored; the stage fails and says which
/// path and what it is, instead of storing the directory without it.
#[test]
fn a_fifo_in_a_directory_output_fails_the_stage_by_name() {
    let p = Proj::new(
        "stages:\n  d:\n    cmd: mkdir -p d && echo x > d/a && mkfifo d/pipe\n    outs: [d]\n",
    );
    let (code, v, err) = p.run(&[]);
    assert_ne!(code, 0, "{v}\n{err}");
    assert_eq!(Proj::with_status(&v, "failed"), ["d"], "{v}");
    let m = message(&v, "d");
    assert!(
        m.contains(
            "output d: d/pipe is a FIFO; a directory output may hold only files and directories"
        ),
        "{m}"
    );
    assert!(
        std::fs::symlink_metadata(p.path("d/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}
