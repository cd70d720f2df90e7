//! Pipeline files: YAML → validated, interpolated [`Pipeline`].
//!
//! The format is documented in `docs/pipeline-format.md`; [`load`] is the entry point.

mod error;
pub mod format;
mod interp;
mod load;
mod model;
pub mod schema;
mod settings;
mod yaml;

pub use error::{Diagnostic, SpecError, did_you_mean};
pub use load::{
    BuiltinInput, builtin_inputs, builtin_outputs, load, load_str, load_str_with_kinds,
    parse_duration,
};
pub use model::*;
