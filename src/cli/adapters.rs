//! `tsumugi adapters`: the versions a pipeline's `register:` stages keep (docs/adapters.md).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::lock::{ProjectLock, Wait};
use crate::project::Project;
use crate::registry::{Registry, VersionInfo, fmt_value};
use crate::rundb::{self, RunDb};

const EXAMPLE: &str = "\
Example: a pipeline's export stage registers its model as `nli`, promoted only if the
held-out accuracy is at least 0.85 and not worse than the current version's:

  export:
    uses: export
    with: {base: models/deberta, adapter: ${stages.train.outs.adapter}, merge: false}
    register:
      name: nli
      metrics: ${stages.evaluate.outs.metrics}
      promote_if: {metric: accuracy, min: 0.85}

  tsumugi run pipelines/nli.yaml
      # register nli: v3 kept, not promoted: accuracy 0.8612 < current v2's 0.8790
  tsumugi adapters list nli          # versions, the current one marked *
  tsumugi adapters promote nli 3     # make v3 current anyway (recorded as manual_promote)
  tsumugi adapters rollback nli      # back to the version current before (v2)
  tsumugi adapters history nli       # every registration, promotion and rollback

The current version is adapters/NAME/current (a symlink to vN): load
adapters/nli/current/model.";

#[derive(Debug, Subcommand)]
#[command(after_help = EXAMPLE)]
pub enum AdaptersCommand {
    /// List registered versions: status, the current one marked *, metrics, run.
    List(ListArgs),
    /// Make VERSION current, bypassing the gate (recorded as manual_promote).
    Promote(PromoteArgs),
    /// Make an earlier version current again: VERSION, or the one current before this one.
    Rollback(RollbackArgs),
    /// Every registration, promotion, rejection and rollback of NAME, oldest first.
    History(HistoryArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Registry name (default: every name).
    pub name: Option<String>,
    /// Print JSON on stdout (shape in docs/adapters.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Registry name (`register.name`, default the stage name).
    pub name: String,
    /// Version number: 3 or v3.
    #[arg(value_name = "VERSION")]
    pub to: String,
    /// If another tsumugi holds the project lock, fail (exit 3) instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Registry name (`register.name`, default the stage name).
    pub name: String,
    /// Version to make current (3 or v3). Default: the version that was current before the
    /// current one, from the history; repeated rollbacks go further back (v3 → v2 → v1).
    #[arg(value_name = "VERSION")]
    pub to: Option<String>,
    /// If another tsumugi holds the project lock, fail (exit 3) instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Registry name (`register.name`, default the stage name).
    pub name: String,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(project: &Project, cmd: AdaptersCommand) -> Result<ExitCode> {
    match cmd {
        AdaptersCommand::List(a) => list(project, a),
        AdaptersCommand::Promote(a) => promote(project, a),
        AdaptersCommand::Rollback(a) => rollback(project, a),
        AdaptersCommand::History(a) => history(project, a),
    }
}

fn parse_version(s: &str) -> Result<u32> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse::<u32>()
        .ok()
        .filter(|v| *v > 0)
        .with_context(|| format!("bad version {s:?} (expected a number like 3 or v3)"))
}

fn version_json(v: &VersionInfo, current: Option<u32>) -> serde_json::Value {
    let mut j = serde_json::to_value(v).unwrap_or_default();
    j["current"] = json!(current == Some(v.version));
    j["path"] = json!(v.rel_dir());
    j
}

fn list(project: &Project, a: ListArgs) -> Result<ExitCode> {
    let reg = Registry::new(project);
    let names = match &a.name {
        Some(n) => {
            reg.known(n)?;
            vec![n.clone()]
        }
        None => reg.names()?,
    };
    let mut all = Vec::new();
    for n in &names {
        all.push((n.clone(), reg.current(n)?, reg.versions(n)?));
    }
    if a.json {
        let v = json!({
            "adapters": all.iter().map(|(n, cur, vs)| json!({
                "name": n,
                "current": cur,
                "versions": vs.iter().map(|v| version_json(v, *cur)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!(
            "no adapters registered (a stage with `register:` adds them; see docs/adapters.md)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (i, (n, cur, vs)) in all.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let c = cur.map_or("none".to_string(), |c| format!("v{c}"));
        println!("{n} (current: {c})");
        println!(
            "  {:<7} {:<9} {:<19} {:<12} {:<20} {:<32} GATE",
            "VERSION", "STATUS", "CREATED", "HASH", "RUN", "METRICS"
        );
        for v in vs.iter().rev() {
            let mark = if *cur == Some(v.version) { '*' } else { ' ' };
            let created = v
                .created_at
                .get(..19)
                .unwrap_or(&v.created_at)
                .replace('T', " ");
            // The gate's metric first, then the rest.
            let gate_metric = v.gate.metric.as_deref();
            let mut metrics: Vec<String> = Vec::new();
            if let Some(m) = gate_metric
                && let Some(x) = v.metrics.get(m)
            {
                metrics.push(format!("{m}={}", fmt_value(*x)));
            }
            metrics.extend(
                v.metrics
                    .iter()
                    .filter(|(k, _)| Some(k.as_str()) != gate_metric)
                    .map(|(k, x)| format!("{k}={}", fmt_value(*x))),
            );
            let gate = if v.gate.metric.is_some() {
                format!(
                    "{}: {}",
                    if v.gate.passed { "passed" } else { "failed" },
                    v.gate.reason
                )
            } else {
                "none".to_string()
            };
            let metrics = if metrics.is_empty() {
                "-".to_string()
            } else {
                metrics.join(" ")
            };
            println!(
                "{mark} {:<7} {:<9} {:<19} {:<12} {:<20} {:<32} {gate}",
                format!("v{}", v.version),
                v.status.as_str(),
                created,
                v.hash.get(..12).unwrap_or(&v.hash),
                v.run_id.as_deref().unwrap_or("-"),
                metrics,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn lock(project: &Project, what: &str, no_wait: bool) -> Result<Option<ProjectLock>> {
    let wait = if no_wait { Wait::No } else { Wait::Yes };
    match ProjectLock::acquire(project, what, wait) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.downcast_ref::<crate::lock::Locked>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Makes `version` current and records it: the statuses, and one event.
fn switch(
    project: &Project,
    name: &str,
    version: u32,
    action: &str,
    reason: impl Fn(Option<u32>) -> String,
) -> Result<Option<u32>> {
    let reg = Registry::new(project);
    let db = RunDb::start(project)?;
    let was = reg.set_current(name, version)?;
    if let Some(w) = was.filter(|w| *w != version) {
        db.adapter_status(name, w, "retired");
    }
    db.adapter_status(name, version, "current");
    db.adapter_event(name, version, action, &reason(was), None);
    db.close()?;
    Ok(was)
}

fn promote(project: &Project, a: PromoteArgs) -> Result<ExitCode> {
    let version = parse_version(&a.to)?;
    let Some(_lock) = lock(
        project,
        &format!("tsumugi adapters promote {}", a.name),
        a.no_wait,
    )?
    else {
        return Ok(ExitCode::from(super::run::EXIT_LOCKED));
    };
    let reg = Registry::new(project);
    reg.version(&a.name, version)?;
    if reg.current(&a.name)? == Some(version) {
        println!("{}: v{version} is already current", a.name);
        return Ok(ExitCode::SUCCESS);
    }
    let was = switch(
        project,
        &a.name,
        version,
        "manual_promote",
        |was| match was {
            Some(w) => format!("promoted by hand over v{w}"),
            None => "promoted by hand".to_string(),
        },
    )?;
    match was {
        Some(w) => println!("{}: v{version} is current (was v{w})", a.name),
        None => println!("{}: v{version} is current", a.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// The version that was current before `current`, from the history: the versions made
/// current, in order, form a stack that a rollback pops (and pushes its target on, when
/// that is not what is below).
fn previous_current(events: &[rundb::AdapterEventRow], current: u32) -> Option<u32> {
    let mut stack: Vec<u32> = Vec::new();
    for e in events {
        match e.action.as_str() {
            "promoted" | "manual_promote" if stack.last() != Some(&e.version) => {
                stack.push(e.version);
            }
            "rollback" => {
                stack.pop();
                if stack.last() != Some(&e.version) {
                    stack.push(e.version);
                }
            }
            _ => {}
        }
    }
    if stack.last() != Some(&current) {
        return None;
    }
    stack.len().checked_sub(2).map(|i| stack[i])
}

fn rollback(project: &Project, a: RollbackArgs) -> Result<ExitCode> {
    let explicit = a.to.as_deref().map(parse_version).transpose()?;
    let Some(_lock) = lock(
        project,
        &format!("tsumugi adapters rollback {}", a.name),
        a.no_wait,
    )?
    else {
        return Ok(ExitCode::from(super::run::EXIT_LOCKED));
    };
    let reg = Registry::new(project);
    reg.known(&a.name)?;
    let current = reg.current(&a.name)?;
    let target = match explicit {
        Some(v) => {
            reg.version(&a.name, v)?;
            v
        }
        None => {
            let Some(cur) = current else {
                bail!("{} has no current version to roll back from", a.name);
            };
            let events = match rundb::open_read(project)? {
                Some(c) => rundb::adapter_events(&c, Some(&a.name))?,
                None => Vec::new(),
            };
            previous_current(&events, cur).with_context(|| {
                format!(
                    "{}: no version was current before v{cur} (per the history in runs/tsumugi.db); give the VERSION to roll back to",
                    a.name
                )
            })?
        }
    };
    if current == Some(target) {
        println!("{}: v{target} is already current", a.name);
        return Ok(ExitCode::SUCCESS);
    }
    let was = switch(project, &a.name, target, "rollback", |was| match was {
        Some(w) => format!("rolled back from v{w}"),
        None => "rolled back".to_string(),
    })?;
    match was {
        Some(w) => println!("{}: rolled back to v{target} (was v{w})", a.name),
        None => println!("{}: v{target} is current", a.name),
    }
    Ok(ExitCode::SUCCESS)
}

fn history(project: &Project, a: HistoryArgs) -> Result<ExitCode> {
    Registry::new(project).known(&a.name)?;
    let events = match rundb::open_read(project)? {
        Some(c) => rundb::adapter_events(&c, Some(&a.name))?,
        None => Vec::new(),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"name": a.name, "events": events}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<7} {:<15} {:<24} REASON",
        "AT", "VERSION", "ACTION", "RUN"
    );
    for e in &events {
        println!(
            "{:<24} {:<7} {:<15} {:<24} {}",
            e.at,
            format!("v{}", e.version),
            e.action,
            e.run_id.as_deref().unwrap_or("-"),
            e.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, version: u32) -> rundb::AdapterEventRow {
        rundb::AdapterEventRow {
            id: 0,
            at: String::new(),
            name: "nli".into(),
            version,
            action: action.into(),
            reason: String::new(),
            run_id: None,
        }
    }

    #[test]
    fn rollback_walks_back_through_what_was_current() {
        let mut h = vec![
            ev("registered", 1),
            ev("promoted", 1),
            ev("registered", 2),
            ev("kept", 2),
            ev("registered", 3),
            ev("promoted", 3),
            ev("manual_promote", 2),
        ];
        assert_eq!(previous_current(&h, 2), Some(3));
        h.push(ev("rollback", 3));
        assert_eq!(previous_current(&h, 3), Some(1));
        h.push(ev("rollback", 1));
        assert_eq!(previous_current(&h, 1), None);
        // A history that does not end at the current version gives no answer.
        assert_eq!(previous_current(&h, 3), None);
    }
}
