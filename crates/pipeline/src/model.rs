//! The resolved pipeline: what the parser hands to the graph, the fingerprinter and the
//! executor. Every `${…}` is interpolated, `foreach`/`matrix` are expanded, and every path
//! is relative to the project root and checked to stay inside it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A place in a pipeline file, for error messages at any later step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Span {
    pub file: PathBuf,
    /// 1-based line and column.
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A whole pipeline file, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub name: String,
    /// The pipeline file as given on the command line.
    pub file: PathBuf,
    /// All parameters after interpolation.
    pub params: BTreeMap<String, serde_json::Value>,
    /// The params-file keys the stages use, with their effective values (overrides
    /// applied), per file, each shaped like its file (see `params_file`).
    pub param_files: BTreeMap<PathBuf, serde_json::Value>,
    /// Stages in file order (after expansion); names are unique.
    pub stages: Vec<Stage>,
    pub triggers: Vec<Trigger>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// What a stage runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A shell command (`cmd:`), run by `sh -c` in the project root.
    Cmd { cmd: String },
    /// A built-in kind (`uses:` + `with:`); `version` is the kind's implementation version.
    Builtin {
        kind: String,
        version: u32,
        with: serde_json::Value,
    },
}

/// An input whose content goes into the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dep {
    /// A file or directory, relative to the project root.
    Path(PathBuf),
    /// The rows a query returns from a SQLite file (hashed as rows, not as the file).
    Sqlite { db: PathBuf, query: String },
}

/// A declared output: a file or directory, relative to the project root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Out {
    pub path: PathBuf,
    /// Stored in the cache (default true). `cache: false` outputs are neither stored nor restored.
    pub cache: bool,
    /// Kept when the stage runs again (default false; needs `cache: false`): a file the
    /// stage creates once and something else then owns, such as an application's database.
    pub persist: bool,
}

/// Declared resources; the executor treats them as slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Resources {
    pub gpu: u32,
    pub cpu: u32,
    /// Memory in MiB (`mem: 16G`); 0: not declared. Only the Slurm executor uses it
    /// (`--mem`); locally it is not a slot.
    pub mem_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retry {
    /// Extra attempts after the first failure.
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 0,
            backoff: Duration::from_secs(1),
        }
    }
}

/// One stage, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub action: Action,
    /// Inputs (deduplicated, sorted). A dep that is another stage's out is an edge.
    pub deps: Vec<Dep>,
    /// Declared outputs by key. For `outs: [a, b]` the key is the path as written.
    pub outs: BTreeMap<String, Out>,
    /// Metrics files (JSON objects of numbers, or YAML) recorded into the run database.
    /// They are outputs too.
    pub metrics: Vec<PathBuf>,
    /// `plots:`: files among the outputs drawn by `tsumugi plots` (not in the fingerprint).
    pub plots: Vec<crate::Plot>,
    /// The parameters this stage uses (`params:` list and every `${params.x}` it references),
    /// with their resolved values: only these go into its fingerprint.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Declared environment: names and values that go into the fingerprint and the process.
    pub env: BTreeMap<String, String>,
    /// Explicit ordering edges (`needs:`) and the edges made by references, by stage name.
    pub needs: Vec<String>,
    pub resources: Resources,
    pub retry: Retry,
    pub timeout: Option<Duration>,
    /// `map:`: the stage runs once per item (or once per batch of changed items) instead of
    /// once; its `outs` are then the merged output only, or a built-in kind's outputs, each
    /// every item's part in key order (see [`MapSpec`]).
    pub map: Option<MapSpec>,
    /// `register:`: after the stage completes, keep one of its outputs as a version in the
    /// adapter registry (see `docs/adapters.md`). Not part of the fingerprint.
    pub register: Option<Register>,
    /// Where the stage's work runs (`executor:`, `slurm:`). Not part of the fingerprint:
    /// the same command or built-in on the same inputs gives the same outputs on a Slurm
    /// node as locally (the project is on a shared file system), so a result computed by
    /// either executor is a valid cache hit for the other.
    pub exec: StageExecutor,
    /// Where the stage is declared, for messages.
    pub span: Span,
}

/// Where a stage's work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// A supervised process group (or in-process built-in) on this machine.
    #[default]
    Local,
    /// A Slurm batch job (`sbatch`), on a node that sees the project directory.
    Slurm,
}

impl ExecutorKind {
    pub fn parse(s: &str) -> Option<ExecutorKind> {
        match s {
            "local" => Some(ExecutorKind::Local),
            "slurm" => Some(ExecutorKind::Slurm),
            _ => None,
        }
    }
}

/// `slurm:` settings (pipeline level, overridden key by key at stage level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Extra `sbatch` arguments, passed as given (after tsumugi's own).
    pub extra: Vec<String>,
}

/// A stage's executor choice: its own `executor:`, the pipeline's, and the merged `slurm:`.
/// Precedence: the stage's `executor:` > `tsumugi run --executor` > the pipeline's > local.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StageExecutor {
    pub stage: Option<ExecutorKind>,
    pub pipeline: Option<ExecutorKind>,
    pub slurm: SlurmSettings,
}

impl StageExecutor {
    /// The executor that runs the stage, given `--executor` (if any).
    pub fn resolve(&self, cli: Option<ExecutorKind>) -> ExecutorKind {
        self.stage.or(cli).or(self.pipeline).unwrap_or_default()
    }
}

/// A stage's `register:` block, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Register {
    /// Registry name: `adapters/<name>/`. Default: the stage name.
    pub name: String,
    /// The key in the stage's `outs` of the artifact to register.
    pub out: String,
    /// A metrics JSON file (flat `{"name": number}`), read when the version is registered.
    pub metrics: Option<PathBuf>,
    /// Without a gate every new version is promoted.
    pub promote_if: Option<Gate>,
}

/// `promote_if:` of a `register:` block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    pub metric: String,
    /// `min:` (higher is better) or `max:` (lower is better).
    pub bound: Bound,
    /// Also require the new value to be at least as good as the current version's.
    pub not_worse: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Higher is better; the value must be ≥ this.
    Min(f64),
    /// Lower is better; the value must be ≤ this.
    Max(f64),
}

impl Bound {
    pub fn limit(self) -> f64 {
        match self {
            Bound::Min(x) | Bound::Max(x) => x,
        }
    }

    /// Whether `a` is at least as good as `b` in this direction.
    pub fn at_least_as_good(self, a: f64, b: f64) -> bool {
        match self {
            Bound::Min(_) => a >= b,
            Bound::Max(_) => a <= b,
        }
    }

    /// `≥` or `≤`: the relation a passing value has to the bound.
    pub fn ok_sign(self) -> &'static str {
        match self {
            Bound::Min(_) => "≥",
            Bound::Max(_) => "≤",
        }
    }

    /// `<` or `>`: the relation a failing value has to the bound.
    pub fn fail_sign(self) -> &'static str {
        match self {
            Bound::Min(_) => "<",
            Bound::Max(_) => ">",
        }
    }
}

/// A per-item stage (`map:`), resolved. `${item.*}` in the command, in `item_outs` and in a
/// built-in kind's `with:` strings are left in place by the loader and filled in per item
/// at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapSpec {
    pub source: MapSource,
    /// Per-item output path templates, relative to the project root (`out/${item.stem}.txt`).
    /// Empty for a built-in kind (`uses:`): its per-item outputs are placed by the runtime,
    /// under `out/<pipeline>/<stage>/items/`.
    pub item_outs: Vec<String>,
    /// Run the command once with lists of added/changed/removed items instead of once per item.
    pub batch: bool,
    /// `merge: {out: PATH}`: every item's outputs concatenated in item-key order.
    pub merge: Option<PathBuf>,
}

/// Where a mapped stage's items come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapSource {
    /// Every file matching `pattern` (relative to the project root) under `base`, the
    /// pattern's literal directory prefix; an item's key is its path relative to `base`.
    Glob { pattern: String, base: PathBuf },
    /// One item per non-empty line; the key is a hash of the line.
    Lines { path: PathBuf },
    /// One item per JSONL row (a JSON object); the key is `key`'s field, or a hash of the row.
    Rows { path: PathBuf, key: Option<String> },
}

impl MapSource {
    /// The file or directory the items are read from (a dependency of the stage).
    pub fn path(&self) -> &std::path::Path {
        match self {
            MapSource::Glob { base, .. } => base,
            MapSource::Lines { path } | MapSource::Rows { path, .. } => path,
        }
    }
}

/// A trigger from the `triggers:` list (issue: watch and schedule).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Cron {
        cron: String,
        when: Option<serde_json::Value>,
        /// `tz:`, `catchup:`, `grace:` as written (checked by the scheduler).
        tz: Option<String>,
        catchup: Option<String>,
        grace: Option<String>,
        span: Span,
    },
    Watch {
        paths: Vec<PathBuf>,
        span: Span,
    },
}
