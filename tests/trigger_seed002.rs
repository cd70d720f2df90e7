//! Seed 002's retraining rule, written as-is in a pipeline file: "≥ 100 new corrections,
//! ≥ 5% correction rate, ≥ 7 days since the last training", checked every night at 03:00
//! Tokyo time. Real pipeline loader, real executor, real run database; only the clock is
//! manual.

mod trigger_support;

use std::path::PathBuf;

use chrono::Duration;
use trigger_support::*;
use tsumugi::trigger::clock::{Clock, ManualClock};
use tsumugi::trigger::history::DecisionKind;
use tsumugi::trigger::runner::ExecutorRunner;
use tsumugi::trigger::scheduler::Scheduler;
use tsumugi::trigger::spec::cron_triggers;

const PIPELINE: &str = r#"
name: nli-lora
params: {min_new: 100, min_rate: 0.05}
stages:
  train:
    cmd: mkdir -p adapters && date +%s%N > adapters/lora.txt
    deps:
      - sqlite:
          db: data/lyra.db
          query: SELECT id, premise, hypothesis, correct_label FROM nli_corrections ORDER BY id
    outs: [adapters/lora.txt]
  evaluate:
    cmd: cat ${stages.train.outs.adapters/lora.txt} > eval.txt
    outs: [eval.txt]
triggers:
  - cron: "CRON_TZ=Asia/Tokyo 0 3 * * *"
    when:
      all:
        - sql: SELECT count(*) FROM nli_corrections WHERE used_for_training = 0
          db: data/lyra.db
          min: ${params.min_new}
        - sql: >-
            SELECT 1.0 * (SELECT count(*) FROM nli_corrections WHERE used_for_training = 0)
                 / max(1, (SELECT count(*) FROM nli_predictions WHERE trained = 0))
          db: data/lyra.db
          min: ${params.min_rate}
        - since_last_success: {stage: train, at_least: 7d}
"#;

struct Lyra {
    conn: rusqlite::Connection,
}

impl Lyra {
    fn new(path: PathBuf) -> Self {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE nli_predictions(id INTEGER PRIMARY KEY, trained INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE nli_corrections(id INTEGER PRIMARY KEY, premise TEXT, hypothesis TEXT,
                 correct_label TEXT, used_for_training INTEGER NOT NULL DEFAULT 0);",
        )
        .unwrap();
        Lyra { conn }
    }
    // One transaction per batch: thousands of autocommits would each wait for an fsync.
    fn predictions(&self, n: usize) {
        self.conn.execute_batch("BEGIN").unwrap();
        for _ in 0..n {
            self.conn
                .execute("INSERT INTO nli_predictions(trained) VALUES (0)", [])
                .unwrap();
        }
        self.conn.execute_batch("COMMIT").unwrap();
    }
    fn corrections(&self, n: usize) {
        self.conn.execute_batch("BEGIN").unwrap();
        for i in 0..n {
            self.conn
                .execute(
                    "INSERT INTO nli_corrections(premise, hypothesis, correct_label) VALUES (?1, ?2, 'refutes')",
                    [format!("premise {i}"), format!("hypothesis {i}")],
                )
                .unwrap();
        }
        self.conn.execute_batch("COMMIT").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_retraining_rule_as_written() {
    let (d, pr) = project(&[("pipelines/nli.yaml", PIPELINE)]);
    let lyra = Lyra::new(d.path().join("data/lyra.db"));
    let p = load(&pr, "pipelines/nli.yaml");
    let triggers = cron_triggers(&p).unwrap();
    assert_eq!(triggers[0].schedule.tz().name(), "Asia/Tokyo");
    // Start at the first 03:00 Tokyo after the real now: the executor stamps runs with the
    // real time, and "7 days since" is measured against the manual clock.
    let first = triggers[0].schedule.next_after(chrono::Utc::now()).unwrap();
    let clock = ManualClock::new(first);
    let runner = ExecutorRunner::new(&pr, "pipelines/nli.yaml".into());
    let mut s = Scheduler::new(&pr, "nli-lora", triggers, clock.clone(), runner).unwrap();
    let day = |k: i64| first + Duration::days(k);

    // Night 0: 99 corrections of 1,000 predictions: too few.
    lyra.predictions(1000);
    lyra.corrections(99);
    let ev = s.evaluate_due().await.unwrap();
    assert_eq!(ev.decisions.len(), 1);
    assert_eq!(ev.decisions[0].kind, DecisionKind::Skipped);
    let why = &ev.decisions[0].detail;
    assert!(why.contains("= 99 < min 100"), "{why}");
    assert!(why.contains("'train' never succeeded"), "{why}");

    // Night 1: 150 corrections, but 4,000 predictions: a 3.75% rate is too low.
    clock.set(day(1));
    lyra.predictions(3000);
    lyra.corrections(51);
    let ev = s.evaluate_due().await.unwrap();
    assert_eq!(ev.decisions[0].kind, DecisionKind::Skipped);
    assert!(
        ev.decisions[0].detail.contains("= 0.0375 < min 0.05"),
        "{}",
        ev.decisions[0].detail
    );

    // Night 2: 250 corrections of 4,000 (6.25%), never trained: the rule holds and the
    // pipeline runs, recorded as a cron run.
    clock.set(day(2));
    lyra.corrections(100);
    let ev = s.evaluate_due().await.unwrap();
    assert!(ev.fired() && !ev.run_failed(), "{:?}", ev.decisions);
    let run_id = ev.run.clone().unwrap().unwrap().run_id;
    assert!(d.path().join("eval.txt").is_file());
    let conn = tsumugi::rundb::open_read(&pr).unwrap().unwrap();
    let trig: String = conn
        .query_row("SELECT trigger FROM runs WHERE id = ?1", [&run_id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(trig, "cron");

    // Nights 3..8: plenty of new corrections, but the last training is under 7 days old.
    // The scheduler was "down" for a few nights: those ticks are missed and dropped (skip).
    lyra.corrections(100);
    clock.set(day(6));
    let ev = s.evaluate_due().await.unwrap();
    let kinds: Vec<_> = ev.decisions.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        vec![DecisionKind::Missed, DecisionKind::Skipped],
        "{:?}",
        ev.decisions
    );
    assert!(
        ev.decisions[1]
            .detail
            .contains("since_last_success: 'train' succeeded"),
        "{}",
        ev.decisions[1].detail
    );
    assert!(
        ev.decisions[1].detail.contains("< 7days"),
        "{}",
        ev.decisions[1].detail
    );

    // Night 9: more than 7 days since the training ran: it runs again, and `train` really
    // re-runs because its SQLite dep (the corrections) changed.
    clock.set(day(9));
    let ev = s.evaluate_due().await.unwrap();
    assert!(ev.fired() && !ev.run_failed(), "{:?}", ev.decisions);
    let run2 = ev.run.clone().unwrap().unwrap().run_id;
    let st: String = conn
        .query_row(
            "SELECT status FROM stage_runs WHERE run_id = ?1 AND stage = 'train'",
            [&run2],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(st, "ran");

    // Every decision is in the run database's event log.
    let k: Vec<String> = kinds_of_events(&pr)
        .into_iter()
        .filter(|k| k.starts_with("cron."))
        .collect();
    assert_eq!(
        k,
        vec![
            "cron.skipped",
            "cron.skipped",
            "cron.fired",
            "cron.run_ok",
            "cron.missed",
            "cron.skipped",
            "cron.missed",
            "cron.fired",
            "cron.run_ok"
        ]
    );
    assert_eq!(clock.now(), day(9));
}

fn kinds_of_events(pr: &tsumugi::project::Project) -> Vec<String> {
    kinds(pr)
}
