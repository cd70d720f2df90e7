//! Pipeline files: YAML → validated, interpolated [`Pipeline`].

mod model;

pub use model::*;
