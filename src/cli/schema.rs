use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct SchemaArgs {}

/// Prints the JSON Schema (draft 2020-12) of pipeline files; the same text is shipped as
/// `schema/pipeline.schema.json`.
pub fn run(_args: SchemaArgs) -> anyhow::Result<ExitCode> {
    println!("{}", crate::spec::schema::pipeline_schema_string());
    Ok(ExitCode::SUCCESS)
}
