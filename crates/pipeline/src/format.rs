//! The keys of the pipeline format, each with its one-line meaning. The loader checks keys
//! against these tables and the JSON Schema is generated from them, so the two cannot drift.

/// (key, description)
pub type Keys = &'static [(&'static str, &'static str)];

pub const TOP: Keys = &[
    (
        "name",
        "Pipeline name (letters, digits, '_', '-', '.'); default: the file stem.",
    ),
    (
        "params",
        "Parameters, referenced as ${params.NAME} (nested: ${params.A.B}); a name that is not here is looked up in params.yaml at the project root.",
    ),
    ("stages", "Stages by name, in file order."),
    (
        "triggers",
        "When `tsumugi watch`/`tsumugi schedule` run the pipeline.",
    ),
    (
        "executor",
        "Where stages run by default: local (default) or slurm (docs/slurm.md).",
    ),
    (
        "slurm",
        "Slurm settings for stages run by the slurm executor: {partition, account, qos, extra: [ARGS]}.",
    ),
];

pub const STAGE: Keys = &[
    (
        "cmd",
        "Shell command, run with `sh -c` in the project root.",
    ),
    ("uses", "Built-in stage kind (instead of cmd)."),
    ("with", "Settings of the built-in kind named by `uses`."),
    (
        "deps",
        "Inputs: paths (files or directories) or {sqlite: {db, query}}.",
    ),
    (
        "outs",
        "Outputs: a list of paths (the key is the path) or a map {KEY: path}; an item may be {path, cache}.",
    ),
    (
        "metrics",
        "Metrics files (JSON or YAML objects of numbers) the stage writes; they are outputs too.",
    ),
    (
        "plots",
        "Plots of files the stage writes (JSON, CSV, TSV): PATH, {PATH: {x, y, template, title}} or {NAME: {x, y: {FILE: FIELD, …}, template}}; template: line, scatter, confusion.",
    ),
    (
        "params",
        "Parameters the stage uses besides those referenced with ${params.NAME}, each its own fingerprint input: an inline param name, a key of params.yaml (train.lr), FILE:KEY, or {FILE: [KEYS]} (YAML, JSON or TOML).",
    ),
    (
        "env",
        "Environment variables for the command; part of the fingerprint.",
    ),
    (
        "needs",
        "Stages that must run before this one (order by hand).",
    ),
    (
        "resources",
        "Slots the stage takes while it runs: {gpu: N, cpu: N}.",
    ),
    (
        "retry",
        "Retries after a failure: a count, or {attempts: N, backoff: DURATION}.",
    ),
    ("timeout", "Time limit of one attempt: 30s, 10m, 2h, 1h30m."),
    (
        "executor",
        "Where this stage runs: local or slurm (overrides the pipeline and --executor).",
    ),
    (
        "slurm",
        "Slurm settings for this stage, overriding the pipeline's key by key.",
    ),
    (
        "map",
        "Run once per item: {glob: PATTERN} | {lines: PATH} | {rows: PATH, key: FIELD}, optional batch: true (cmd only); with cmd, outs are per-item templates using ${item.*}; with uses (a per-item kind), ${item.*} goes in with: and the kind's outputs hold every item's rows.",
    ),
    (
        "merge",
        "With map and cmd: {out: PATH}, every item's outputs concatenated in item-key order (output key 'merged').",
    ),
    (
        "foreach",
        "Expand into one stage per item of a list or map: ${item}, ${key}; names STAGE@ITEM.",
    ),
    (
        "matrix",
        "Expand into one stage per combination: {AXIS: [values]}; ${item.AXIS}; names STAGE@V1-V2.",
    ),
    (
        "register",
        "Keep an output as a version in the adapter registry (adapters/NAME/vN), promoted if a gate passes: {name, out, metrics, promote_if}.",
    ),
];

pub const REGISTER: Keys = &[
    (
        "name",
        "Registry name (letters, digits, '_', '-', '.'); default: the stage name.",
    ),
    (
        "out",
        "The output to register: an outs key (built-in kinds) or an out path; default: the stage's only output.",
    ),
    (
        "metrics",
        "Metrics JSON file of the version (flat {NAME: number}), e.g. ${stages.evaluate.outs.metrics}.",
    ),
    (
        "promote_if",
        "Gate for promotion: {metric, min | max, not_worse}; without it every new version is promoted.",
    ),
];

pub const PROMOTE_IF: Keys = &[
    ("metric", "Name of the metric in the metrics file."),
    (
        "min",
        "Higher is better: promote only if the value is ≥ min.",
    ),
    (
        "max",
        "Lower is better: promote only if the value is ≤ max.",
    ),
    (
        "not_worse",
        "Also require a value at least as good as the current version's (default true).",
    ),
];

pub const MAP: Keys = &[
    (
        "glob",
        "One item per matching file; ${item.path}, ${item.key}, ${item.stem}, ${item.name}, ${item.dir}.",
    ),
    (
        "lines",
        "One item per non-empty line of a file; ${item.line}, ${item.key}.",
    ),
    (
        "rows",
        "One item per JSONL row (an object); ${item.FIELD}, ${item.key}.",
    ),
    (
        "key",
        "With rows: the field that keys each item (default: a hash of the row).",
    ),
    (
        "batch",
        "Run the command once with TSUMUGI_ADDED/CHANGED/REMOVED lists instead of once per item.",
    ),
];

pub const MERGE: Keys = &[("out", "The merged output path.")];

pub const OUT_ITEM: Keys = &[
    ("path", "Output path, relative to the project root."),
    ("cache", "Store in the cache (default true)."),
    (
        "persist",
        "Keep it when the stage runs again instead of deleting it first (default false; needs cache: false).",
    ),
];

pub const SQLITE_DEP: Keys = &[(
    "sqlite",
    "Rows of a query over a SQLite file: {db: PATH, query: SQL}.",
)];

pub const SQLITE_FIELDS: Keys = &[
    ("db", "SQLite database file, relative to the project root."),
    ("query", "SELECT whose rows are hashed."),
];

pub const RESOURCES: Keys = &[
    ("gpu", "GPU slots (pins CUDA_VISIBLE_DEVICES)."),
    ("cpu", "CPU slots."),
    (
        "mem",
        "Memory of the stage's Slurm job (--mem): MiB as a number, or 512M, 16G, 1T; not a local slot.",
    ),
];

pub const SLURM: Keys = &[
    ("partition", "sbatch --partition."),
    ("account", "sbatch --account."),
    ("qos", "sbatch --qos."),
    ("extra", "More sbatch arguments, passed as given."),
];

pub const RETRY: Keys = &[
    ("attempts", "Extra attempts after the first failure."),
    (
        "backoff",
        "Wait before the first retry, doubled each time (default 1s).",
    ),
];

pub const CRON_TRIGGER: Keys = &[
    ("cron", "Cron expression (minute hour day month weekday)."),
    (
        "when",
        "Data condition, e.g. {sql: SELECT …, db: PATH}; interpreted by the scheduler.",
    ),
    (
        "tz",
        "IANA time zone the expression is read in (default UTC), e.g. Asia/Tokyo.",
    ),
    (
        "catchup",
        "Ticks missed while the scheduler was down: skip (default) or run-once.",
    ),
    (
        "grace",
        "How late a tick still counts as on time (default 90s).",
    ),
];

pub const WATCH_TRIGGER: Keys = &[("watch", "Paths whose changes re-run the affected stages.")];

pub fn names(keys: Keys) -> impl Iterator<Item = &'static str> {
    keys.iter().map(|(k, _)| *k)
}

/// "a, b, c" for messages.
pub fn list(keys: Keys) -> String {
    names(keys).collect::<Vec<_>>().join(", ")
}
