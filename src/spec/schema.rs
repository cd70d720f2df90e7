//! JSON Schema of the pipeline format (see `tsumugi schema`).
