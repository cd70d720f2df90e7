//! `tsumugi models check DIR`: which architecture, tokenizer and head a checkpoint
//! directory holds, and whether tsumugi loads it (tsumugi_stages::models::check).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

const EXAMPLE: &str = "\
Examples:
  tsumugi models check models/japanese-reranker-cross-encoder-large-v1
  tsumugi models check models/nli-deberta-v3-xsmall --json

The verdict comes from loading the weights and the tokenizer for real (on the CPU), so
`loads: yes` means score, evaluate and train-lora get past loading too. Exit status 1
when the directory does not load.";

#[derive(Debug, Subcommand)]
#[command(after_help = EXAMPLE)]
pub enum ModelsCommand {
    /// Say what a Hugging Face model directory is and whether tsumugi can load it, and why not.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The model directory (config.json, *.safetensors, tokenizer files).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    let ModelsCommand::Check(args) = cmd;
    let report = tsumugi_stages::models::check::check(&args.dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.loads {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
