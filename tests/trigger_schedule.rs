//! `tsumugi schedule`: cron matching, catch-up, no overlap, failure survival — on a manual
//! clock (no waiting), with a runner that runs a real process per run and the real run
//! database for events.

mod trigger_support;

use chrono::Duration;
use serde_json::json;
use trigger_support::*;
use tsumugi::spec::Span;
use tsumugi::trigger::clock::{Clock, ManualClock};
use tsumugi::trigger::cron::CronSchedule;
use tsumugi::trigger::history::DecisionKind;
use tsumugi::trigger::scheduler::Scheduler;
use tsumugi::trigger::spec::{CronOptions, CronTrigger, cron_triggers};
use tsumugi::trigger::state::{SchedulerState, state_path};

const PIPE: &str = "name: p\nstages:\n  train:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n";

fn trigger(
    cron: &str,
    catchup: Option<&str>,
    tz: Option<&str>,
    when: Option<serde_json::Value>,
) -> CronTrigger {
    let opts = CronOptions {
        tz: tz.map(Into::into),
        catchup: catchup.map(Into::into),
        grace: None,
    };
    CronTrigger::new(0, cron, &opts, when.as_ref(), &Span::default(), &["train"]).unwrap()
}

fn kinds_of(ev: &tsumugi::trigger::scheduler::Evaluation) -> Vec<DecisionKind> {
    ev.decisions.iter().map(|d| d.kind).collect()
}

/// Steps until an evaluation starts a run (at most a few ticks).
async fn next_run<C: Clock, R: tsumugi::trigger::PipelineRunner>(
    s: &mut Scheduler<C, R>,
) -> tsumugi::trigger::scheduler::Evaluation {
    for _ in 0..5 {
        let ev = s.step().await.unwrap().unwrap();
        if ev.fired() {
            return ev;
        }
    }
    panic!("no run in 5 steps");
}

#[test]
fn cron_ticks_follow_the_time_zone() {
    // 03:00 in Tokyo is 18:00 UTC the day before.
    let tokyo = CronSchedule::parse("0 3 * * *", Some("Asia/Tokyo")).unwrap();
    let t = tokyo.ticks_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-03T00:00:00Z"), 10);
    assert_eq!(
        t.ticks,
        vec![utc("2026-01-01T18:00:00Z"), utc("2026-01-02T18:00:00Z")]
    );

    // 09:00 in New York is 14:00 UTC in winter and 13:00 UTC after the DST switch (8 March 2026).
    let ny = CronSchedule::parse("0 9 * * *", Some("America/New_York")).unwrap();
    assert_eq!(
        ny.next_after(utc("2026-03-06T00:00:00Z")),
        Some(utc("2026-03-06T14:00:00Z"))
    );
    assert_eq!(
        ny.next_after(utc("2026-03-09T00:00:00Z")),
        Some(utc("2026-03-09T13:00:00Z"))
    );

    // UTC by default; weekday names; the seconds field is optional.
    let utc_sched = CronSchedule::parse("30 6 * * MON", None).unwrap();
    assert_eq!(
        utc_sched.next_after(utc("2026-01-01T00:00:00Z")),
        Some(utc("2026-01-05T06:30:00Z"))
    );
    let secs = CronSchedule::parse("*/20 * * * * *", None).unwrap();
    assert_eq!(
        secs.ticks_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T00:01:00Z"), 10)
            .count(),
        3
    );

    assert!(
        CronSchedule::parse("0 3 * * *", Some("Asia/Tokio"))
            .unwrap_err()
            .contains("unknown time zone \"Asia/Tokio\"")
    );
    assert!(
        CronSchedule::parse("0 25 * * *", None)
            .unwrap_err()
            .contains("invalid cron expression")
    );
}

#[test]
fn pipeline_triggers_take_cron_tz_and_report_errors_at_file_line_col() {
    let (_d, pr) = project(&[(
        "pipelines/p.yaml",
        "name: p\nstages:\n  train:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\ntriggers:\n  - cron: \"CRON_TZ=Asia/Tokyo 0 3 * * *\"\n",
    )]);
    let p = load(&pr, "pipelines/p.yaml");
    let t = cron_triggers(&p).unwrap();
    assert_eq!(t[0].schedule.tz().name(), "Asia/Tokyo");
    assert_eq!(
        t[0].schedule.next_after(utc("2026-01-01T00:00:00Z")),
        Some(utc("2026-01-01T18:00:00Z"))
    );

    let bad = [
        (
            "cron: \"CRON_TZ=Mars/Olympus 0 3 * * *\"",
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            "cron: \"0 3 * * *\"\n    when: {sql: SELECT 1}",
            "in 'when': when: 'sql' needs 'db: PATH'",
        ),
        (
            "cron: \"0 3 * * *\"\n    when: {since_last_success: {stage: trian, at_least: 7d}}",
            "no stage named 'trian' in this pipeline (did you mean 'train'?)",
        ),
        (
            "cron: \"0 3 * * *\"\n    when: {all: [{chnaged: [data/*]}]}",
            "when.all[0]: expected one of sql, since_last_success, changed, all, any; found 'chnaged' (did you mean 'changed'?)",
        ),
        (
            "cron: \"0 3 * * *\"\n    when: {since_last_success: {stage: train, at_least: soon}}",
            "at_least: \"soon\" is not a duration",
        ),
        (
            "cron: \"0 3 * * *\"\n    when: {sql: SELECT 1, db: a.db, since_last_success: {stage: train, at_least: 1d}}",
            "one condition per mapping",
        ),
    ];
    for (trig, want) in bad {
        let (_d, pr) = project(&[(
            "pipelines/p.yaml",
            &format!(
                "name: p\nstages:\n  train:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\ntriggers:\n  - {trig}\n"
            ),
        )]);
        let p = load(&pr, "pipelines/p.yaml");
        let e = cron_triggers(&p).unwrap_err().to_string();
        assert!(e.starts_with("pipelines/p.yaml:7:5: "), "{e}");
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
}

#[test]
fn trigger_level_tz_catchup_and_grace_keys() {
    let (_d, pr) = project(&[(
        "pipelines/p.yaml",
        "name: p\nstages:\n  train:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\ntriggers:\n  - cron: \"0 3 * * *\"\n    tz: Asia/Tokyo\n    catchup: run-once\n    grace: 5m\n",
    )]);
    let t = cron_triggers(&load(&pr, "pipelines/p.yaml")).unwrap();
    assert_eq!(t[0].schedule.tz().name(), "Asia/Tokyo");
    assert_eq!(t[0].catchup, tsumugi::trigger::spec::Catchup::RunOnce);
    assert_eq!(t[0].grace, Duration::minutes(5));
    let (_d, pr) = project(&[(
        "pipelines/p.yaml",
        "name: p\nstages:\n  train:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\ntriggers:\n  - cron: \"0 3 * * *\"\n    catchup: always\n",
    )]);
    let e = cron_triggers(&load(&pr, "pipelines/p.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "pipelines/p.yaml:7:5: unknown catchup policy \"always\": expected skip or run-once"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn first_start_fires_an_on_time_tick_and_nothing_older() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    let clock = ManualClock::new(utc("2026-01-01T05:00:00Z"));
    let runner = ProcessRunner::new(d.path());
    let mut s = Scheduler::new(
        &pr,
        "p",
        vec![trigger("0 3 * * *", None, None, None)],
        clock.clone(),
        runner.clone(),
    )
    .unwrap();
    // Started at 05:00: the 03:00 tick predates the scheduler; it is not "missed".
    let ev = s.evaluate_due().await.unwrap();
    assert!(ev.decisions.is_empty(), "{:?}", ev.decisions);
    // The next step sleeps (instantly) to 03:00 the next day and fires.
    let ev = s.step().await.unwrap().unwrap();
    assert_eq!(clock.now(), utc("2026-01-02T03:00:00Z"));
    assert_eq!(
        kinds_of(&ev),
        vec![DecisionKind::Fired, DecisionKind::RunOk]
    );
    assert_eq!(runner.runs_on_disk(), 1);
    let st = SchedulerState::load(&state_path(&pr, "p")).unwrap();
    assert_eq!(
        st.get("0 3 * * * @ UTC").last_tick,
        Some(utc("2026-01-02T03:00:00Z"))
    );
    // Both decisions are events in the run database.
    assert_eq!(kinds(&pr), vec!["cron.fired", "cron.run_ok"]);

    // A first start on a frequent schedule: the ticks before the start are not "missed".
    let (d3, pr3) = project(&[("pipelines/p.yaml", PIPE)]);
    let runner3 = ProcessRunner::new(d3.path());
    let clock3 = ManualClock::new(utc("2026-01-01T00:00:31Z"));
    let mut s3 = Scheduler::new(
        &pr3,
        "p",
        vec![trigger("*/10 * * * * *", None, None, None)],
        clock3,
        runner3.clone(),
    )
    .unwrap();
    let ev = s3.evaluate_due().await.unwrap();
    assert_eq!(
        kinds_of(&ev),
        vec![DecisionKind::Fired, DecisionKind::RunOk]
    );
    assert_eq!(ev.decisions[0].at, utc("2026-01-01T00:00:30Z"));

    // A fresh start 30 s after a tick (crontab's `--once` case) still counts it as on time.
    let (d2, pr2) = project(&[("pipelines/p.yaml", PIPE)]);
    let runner2 = ProcessRunner::new(d2.path());
    let clock2 = ManualClock::new(utc("2026-01-01T03:00:30Z"));
    let mut s2 = Scheduler::new(
        &pr2,
        "p",
        vec![trigger("0 3 * * *", None, None, None)],
        clock2,
        runner2.clone(),
    )
    .unwrap();
    assert!(s2.evaluate_due().await.unwrap().fired());
    assert_eq!(runner2.runs_on_disk(), 1);
}

#[tokio::test]
async fn tokyo_trigger_fires_at_tokyo_time() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    let clock = ManualClock::new(utc("2026-01-01T00:00:00Z"));
    let runner = ProcessRunner::new(d.path());
    let mut s = Scheduler::new(
        &pr,
        "p",
        vec![trigger("0 3 * * *", None, Some("Asia/Tokyo"), None)],
        clock.clone(),
        runner.clone(),
    )
    .unwrap();
    s.step().await.unwrap().unwrap();
    assert_eq!(clock.now(), utc("2026-01-01T18:00:00Z"));
    assert_eq!(runner.runs_on_disk(), 1);
}

#[tokio::test]
async fn catchup_skip_drops_ticks_missed_while_down() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    let runner = ProcessRunner::new(d.path());
    let clock = ManualClock::new(utc("2026-01-01T03:00:00Z"));
    {
        let mut s = Scheduler::new(
            &pr,
            "p",
            vec![trigger("0 3 * * *", Some("skip"), None, None)],
            clock.clone(),
            runner.clone(),
        )
        .unwrap();
        assert!(s.evaluate_due().await.unwrap().fired());
    }
    // Down for three days; a new process starts at 10:00 on day 4.
    clock.set(utc("2026-01-04T10:00:00Z"));
    let mut s = Scheduler::new(
        &pr,
        "p",
        vec![trigger("0 3 * * *", Some("skip"), None, None)],
        clock.clone(),
        runner.clone(),
    )
    .unwrap();
    let ev = s.evaluate_due().await.unwrap();
    assert_eq!(kinds_of(&ev), vec![DecisionKind::Missed]);
    let msg = &ev.decisions[0].detail;
    assert!(
        msg.starts_with("3 tick(s) missed while tsumugi schedule was not running"),
        "{msg}"
    );
    assert!(msg.contains("catchup: skip, dropped"), "{msg}");
    assert_eq!(runner.runs_on_disk(), 1);
    // Dropped for good: evaluating again now does nothing.
    assert!(s.evaluate_due().await.unwrap().decisions.is_empty());
    // The next tick is on time again.
    let ev = s.step().await.unwrap().unwrap();
    assert!(ev.fired());
    assert_eq!(clock.now(), utc("2026-01-05T03:00:00Z"));
    assert_eq!(runner.runs_on_disk(), 2);
}

#[tokio::test]
async fn catchup_run_once_runs_once_for_all_missed_ticks() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    let runner = ProcessRunner::new(d.path());
    let clock = ManualClock::new(utc("2026-01-01T03:00:00Z"));
    let t = || vec![trigger("0 3 * * *", Some("run-once"), None, None)];
    {
        let mut s = Scheduler::new(&pr, "p", t(), clock.clone(), runner.clone()).unwrap();
        assert!(s.evaluate_due().await.unwrap().fired());
    }
    clock.set(utc("2026-01-04T10:00:00Z"));
    let mut s = Scheduler::new(&pr, "p", t(), clock.clone(), runner.clone()).unwrap();
    let ev = s.evaluate_due().await.unwrap();
    assert_eq!(
        kinds_of(&ev),
        vec![
            DecisionKind::Missed,
            DecisionKind::Fired,
            DecisionKind::RunOk
        ]
    );
    assert!(
        ev.decisions[0]
            .detail
            .contains("catchup: run-once, evaluating once now"),
        "{}",
        ev.decisions[0].detail
    );
    assert_eq!(runner.runs_on_disk(), 2);
    // Once, not three times.
    let ev = s.evaluate_due().await.unwrap();
    assert!(!ev.fired());
    assert_eq!(runner.runs_on_disk(), 2);
}

#[tokio::test]
async fn runs_never_overlap_and_ticks_during_a_run_follow_the_policy() {
    for (policy, runs_after_recheck, clock_after) in [
        ("skip", 1, "2026-01-01T02:30:00Z"),
        ("run-once", 2, "2026-01-01T05:00:00Z"),
    ] {
        let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
        let clock = ManualClock::new(utc("2026-01-01T00:00:00Z"));
        let mut runner = ProcessRunner::new(d.path());
        // Each run takes 2 h 30 min of (manual) time: two hourly ticks pass during it.
        runner.run_takes = Some((clock.clone(), Duration::minutes(150)));
        // Two triggers due at the same tick share one run.
        let mut hourly = trigger("0 * * * *", Some(policy), None, None);
        hourly.index = 1;
        let daily = trigger("0 0 * * *", Some(policy), None, None);
        let mut s =
            Scheduler::new(&pr, "p", vec![daily, hourly], clock.clone(), runner.clone()).unwrap();
        let ev = s.evaluate_due().await.unwrap();
        assert_eq!(
            kinds_of(&ev),
            vec![
                DecisionKind::Fired,
                DecisionKind::Fired,
                DecisionKind::RunOk
            ],
            "{policy}"
        );
        assert!(
            ev.decisions[0].detail.contains("(one run for cron[0]"),
            "{}",
            ev.decisions[0].detail
        );
        assert_eq!(runner.runs_on_disk(), 1);
        assert_eq!(clock.now(), utc("2026-01-01T02:30:00Z"));

        // Right after the run: the 01:00 and 02:00 ticks passed during it.
        let ev = s.step().await.unwrap().unwrap();
        // No sleeping before the re-check; only a catch-up run (run-once) lets time pass.
        assert_eq!(clock.now(), utc(clock_after), "{policy}");
        let missed = ev
            .decisions
            .iter()
            .find(|d| d.kind == DecisionKind::Missed)
            .expect("a missed decision");
        assert!(
            missed.detail.contains(
                "2 tick(s) missed during run test-1 (runs of one pipeline never overlap)"
            ),
            "{}",
            missed.detail
        );
        assert_eq!(runner.runs_on_disk(), runs_after_recheck, "{policy}");
        assert_eq!(
            runner
                .max_in_flight
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
}

#[tokio::test]
async fn a_failing_run_never_stops_the_scheduler() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    let clock = ManualClock::new(utc("2026-01-01T00:00:30Z"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut runner = ProcessRunner::new(d.path());
    runner.done = Some(tx);
    runner.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut s = Scheduler::new(
        &pr,
        "p",
        vec![trigger("*/10 * * * *", None, None, None)],
        clock.clone(),
        runner.clone(),
    )
    .unwrap();
    // The daemon loop itself: it must go on through three failing runs; the test stops it.
    s.run_until(async move {
        while let Some(n) = rx.recv().await {
            if n == 3 {
                break;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(runner.runs_on_disk(), 3);
    assert_eq!(clock.now(), utc("2026-01-01T00:20:00Z"));
    let k = kinds(&pr);
    assert_eq!(
        k.iter().filter(|k| *k == "cron.run_failed").count(),
        3,
        "{k:?}"
    );
    let (_, msg) = events(&pr)
        .into_iter()
        .find(|(k, _)| k == "cron.run_failed")
        .unwrap();
    assert!(
        msg.contains("run test-1 failed (failed stages: all); the scheduler carries on"),
        "{msg}"
    );

    // A run that cannot even start (say, the project is locked) is survived as well.
    runner
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    runner
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ev = next_run(&mut s).await;
    assert!(ev.run_failed());
    assert!(
        ev.decisions
            .last()
            .unwrap()
            .detail
            .contains("run could not start: the project is locked")
    );
    runner
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let ev = next_run(&mut s).await;
    assert!(ev.fired() && !ev.run_failed());
    assert_eq!(runner.runs_on_disk(), 4);
}

#[tokio::test]
async fn sql_conditions_count_with_min_and_boolean() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    let db = d.path().join("data/app.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE corrections(id INTEGER PRIMARY KEY, used INTEGER NOT NULL DEFAULT 0);",
    )
    .unwrap();
    let add = |n: usize| {
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..n {
            conn.execute("INSERT INTO corrections(used) VALUES (0)", [])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    };
    add(99);
    let clock = ManualClock::new(utc("2026-01-01T00:00:00Z"));
    let runner = ProcessRunner::new(d.path());
    let count = trigger(
        "0 * * * *",
        None,
        None,
        Some(
            json!({"sql": "SELECT count(*) FROM corrections WHERE used = 0", "db": "data/app.db", "min": 100}),
        ),
    );
    let mut s = Scheduler::new(&pr, "p", vec![count], clock.clone(), runner.clone()).unwrap();
    let ev = s.evaluate_due().await.unwrap();
    assert_eq!(kinds_of(&ev), vec![DecisionKind::Skipped]);
    assert!(
        ev.decisions[0].detail.contains("= 99 < min 100"),
        "{}",
        ev.decisions[0].detail
    );
    add(1);
    let ev = s.step().await.unwrap().unwrap();
    assert!(ev.fired(), "{:?}", ev.decisions);
    assert!(
        ev.decisions[0].detail.contains("= 100 ≥ min 100"),
        "{}",
        ev.decisions[0].detail
    );

    // A boolean query; NULL and no rows are false.
    for (q, fires) in [
        ("SELECT count(*) >= 100 FROM corrections", true),
        ("SELECT count(*) >= 1000 FROM corrections", false),
        ("SELECT NULL", false),
        ("SELECT id FROM corrections WHERE id < 0", false),
    ] {
        let (d2, pr2) = project(&[("pipelines/p.yaml", PIPE)]);
        std::fs::create_dir_all(d2.path().join("data")).unwrap();
        std::fs::copy(&db, d2.path().join("data/app.db")).unwrap();
        let r = ProcessRunner::new(d2.path());
        let t = trigger(
            "0 * * * *",
            None,
            None,
            Some(json!({"sql": q, "db": "data/app.db"})),
        );
        let mut s = Scheduler::new(
            &pr2,
            "p",
            vec![t],
            ManualClock::new(utc("2026-01-01T00:00:00Z")),
            r.clone(),
        )
        .unwrap();
        assert_eq!(s.evaluate_due().await.unwrap().fired(), fires, "{q}");
    }

    // A broken query is a skipped tick with the reason, not a crash; the next tick goes on.
    let (d3, pr3) = project(&[("pipelines/p.yaml", PIPE)]);
    std::fs::create_dir_all(d3.path().join("data")).unwrap();
    std::fs::copy(&db, d3.path().join("data/app.db")).unwrap();
    let r = ProcessRunner::new(d3.path());
    let t = trigger(
        "0 * * * *",
        None,
        None,
        Some(json!({"sql": "SELECT count(*) FROM no_such_table", "db": "data/app.db"})),
    );
    let mut s = Scheduler::new(
        &pr3,
        "p",
        vec![t],
        ManualClock::new(utc("2026-01-01T00:00:00Z")),
        r.clone(),
    )
    .unwrap();
    let ev = s.evaluate_due().await.unwrap();
    assert_eq!(kinds_of(&ev), vec![DecisionKind::Skipped]);
    assert!(
        ev.decisions[0].detail.contains("could not be evaluated"),
        "{}",
        ev.decisions[0].detail
    );
    assert!(format!("{:?}", ev.decisions[0].detail).contains("no_such_table"));
    assert!(s.step().await.unwrap().is_ok());
    assert_eq!(r.runs_on_disk(), 0);
}

#[tokio::test]
async fn sql_conditions_never_write() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE)]);
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    let conn = rusqlite::Connection::open(d.path().join("data/app.db")).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let t = trigger(
        "0 * * * *",
        None,
        None,
        Some(json!({"sql": "DELETE FROM t RETURNING 1", "db": "data/app.db"})),
    );
    let r = ProcessRunner::new(d.path());
    let mut s = Scheduler::new(
        &pr,
        "p",
        vec![t],
        ManualClock::new(utc("2026-01-01T00:00:00Z")),
        r,
    )
    .unwrap();
    let ev = s.evaluate_due().await.unwrap();
    assert!(
        ev.decisions[0].detail.contains("could not be evaluated"),
        "{}",
        ev.decisions[0].detail
    );
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn changed_globs_fire_once_per_change_and_retry_after_a_failed_run() {
    let (d, pr) = project(&[
        ("pipelines/p.yaml", PIPE),
        ("data/in/a.csv", "1\n"),
        ("data/in/b.txt", "x\n"),
    ]);
    let clock = ManualClock::new(utc("2026-01-01T00:00:00Z"));
    let runner = ProcessRunner::new(d.path());
    let t = trigger(
        "0 * * * *",
        None,
        None,
        Some(json!({"changed": ["data/in/*.csv"]})),
    );
    let mut s = Scheduler::new(&pr, "p", vec![t], clock.clone(), runner.clone()).unwrap();
    // No earlier run: changed.
    assert!(s.evaluate_due().await.unwrap().fired());
    // Nothing changed: skipped, with the reason.
    let ev = s.step().await.unwrap().unwrap(); // re-check right after the run
    assert!(!ev.fired());
    let ev = s.step().await.unwrap().unwrap();
    assert_eq!(kinds_of(&ev), vec![DecisionKind::Skipped]);
    assert!(
        ev.decisions[0]
            .detail
            .contains("nothing changed since the last run"),
        "{}",
        ev.decisions[0].detail
    );
    // A file that does not match the glob: still nothing.
    std::fs::write(d.path().join("data/in/b.txt"), "y\n").unwrap();
    assert!(!s.step().await.unwrap().unwrap().fired());
    // A matching file added: fires; the run fails, so the change is still pending next tick.
    std::fs::write(d.path().join("data/in/c.csv"), "2\n").unwrap();
    runner.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(s.step().await.unwrap().unwrap().run_failed());
    runner
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut ev = s.step().await.unwrap().unwrap();
    if !ev.fired() {
        ev = s.step().await.unwrap().unwrap();
    }
    assert!(ev.fired() && !ev.run_failed(), "{:?}", ev.decisions);
    // Consumed by the successful run.
    let _ = s.step().await.unwrap().unwrap();
    assert!(!s.step().await.unwrap().unwrap().fired());
    // A content change (same names) counts.
    std::fs::write(d.path().join("data/in/a.csv"), "changed\n").unwrap();
    assert!(s.step().await.unwrap().unwrap().fired());
    assert_eq!(runner.runs_on_disk(), 4);
}

#[tokio::test]
async fn any_and_all_combine_and_explain_every_clause() {
    let (d, pr) = project(&[("pipelines/p.yaml", PIPE), ("data/x.csv", "1\n")]);
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    rusqlite::Connection::open(d.path().join("data/app.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let when = json!({"any": [
        {"sql": "SELECT count(*) FROM t", "db": "data/app.db", "min": 5},
        {"all": [{"changed": ["data/*.csv"]}, {"sql": "SELECT 1", "db": "data/app.db"}]}
    ]});
    let runner = ProcessRunner::new(d.path());
    let mut s = Scheduler::new(
        &pr,
        "p",
        vec![trigger("0 * * * *", None, None, Some(when))],
        ManualClock::new(utc("2026-01-01T00:00:00Z")),
        runner.clone(),
    )
    .unwrap();
    let ev = s.evaluate_due().await.unwrap();
    assert!(ev.fired());
    let why = &ev.decisions[0].detail;
    assert!(
        why.starts_with(
            "any(✗ sql \"SELECT count(*) FROM t\" = 1 < min 5; ✓ all(✓ changed [data/*.csv]"
        ),
        "{why}"
    );
    let _ = s.step().await; // re-check after the run
    let ev = s.step().await.unwrap().unwrap();
    assert!(!ev.fired());
    assert!(
        ev.decisions[0]
            .detail
            .contains("✗ changed [data/*.csv]: nothing changed"),
        "{}",
        ev.decisions[0].detail
    );
}
