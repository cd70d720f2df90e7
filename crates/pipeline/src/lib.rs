//! tsumugi's pipeline files: YAML → validated, interpolated [`Pipeline`] → [`graph::Dag`].
//!
//! The format is documented in `docs/pipeline-format.md`; [`load`] is the entry point. Every
//! problem in a file is collected as a [`Diagnostic`] with its `file:line:col` and, where
//! it helps, a did-you-mean; the [`graph`] adds edges from `${stages.…}` references, deps on
//! other stages' outputs and `needs:`, and is the one place the stage order is computed.
//!
//! ```
//! let project = tsumugi_base::project::Project::new(".");
//! let text = "name: demo\nstages:\n  hello:\n    cmd: echo hi > hi.txt\n    outs: [hi.txt]\n";
//! let p = tsumugi_pipeline::load_str(std::path::Path::new("demo.yaml"), text, &project).unwrap();
//! assert_eq!(p.stages.len(), 1);
//! ```

mod error;
pub mod format;
pub mod graph;
mod interp;
mod load;
mod model;
mod plots;
pub mod params_file;
pub mod schema;
mod settings;
mod yaml;

pub use error::{Diagnostic, SpecError, did_you_mean};
pub use load::{
    BuiltinInput, builtin_inputs, builtin_outputs, load, load_str, load_str_with_kinds,
    load_with_overrides,
};
pub use model::*;
pub use plots::{Plot, Series, Template};
