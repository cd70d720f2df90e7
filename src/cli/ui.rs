//! `tsumugi ui`: the local web UI (crates/ui, docs/ui.md).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::project::Project;

pub const LONG_ABOUT: &str = "\
A local web UI over the project's run database, cache, pipeline files and adapter registry: \
runs and experiments in a table sortable by any column or metric (paginated, filtered by \
pipeline), a comparison of N runs (params that differ, metrics with their change, overlaid \
training curves, the plots they wrote), one run's stages on a timeline with their logs, \
each pipeline's graph coloured stale/fresh with the reasons `tsumugi status` gives, and the \
adapter versions with their gate results.

It listens on 127.0.0.1 only: another address needs --bind, and anyone who can reach it \
can read the runs and logs. It is read-only unless a token is given (--token or \
TSUMUGI_UI_TOKEN): then `POST /api/adapters/NAME/promote?version=N` with `Authorization: \
Bearer TOKEN` promotes an adapter version. It prints `listening on http://ADDR` on stdout \
once it accepts requests; Ctrl-C or SIGTERM stops it.

Examples:
  tsumugi ui                          # http://127.0.0.1:8470
  tsumugi ui -C ~/proj --port 0       # a free port, printed
  tsumugi ui pipelines/sts.yaml       # the graph of this file only
  TSUMUGI_UI_TOKEN=s3cret tsumugi ui --bind 0.0.0.0:8470";

#[derive(Debug, Args)]
pub struct UiArgs {
    /// Pipeline files whose graph to show (relative to the project root). Default:
    /// pipelines/*.yaml and the root's *.yaml that have `stages:`.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, short, default_value_t = 8470)]
    pub port: u16,
    /// Listen on ADDR:PORT instead of 127.0.0.1 (e.g. 0.0.0.0:8470). Everyone who can
    /// reach it can read the runs and logs.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "port")]
    pub bind: Option<SocketAddr>,
    /// Allow the write action (promote an adapter version) to requests with
    /// `Authorization: Bearer TOKEN`. Without a token the UI is read-only.
    #[arg(long, env = "TSUMUGI_UI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub fn run(project: &Project, args: UiArgs) -> anyhow::Result<ExitCode> {
    let bind = match args.bind {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                eprintln!(
                    "warning: listening on {addr}: whoever can reach it can read every run, log and metric{}",
                    if args.token.is_some() {
                        " (writes need the token)"
                    } else {
                        ""
                    }
                );
            }
            addr
        }
        None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port),
    };
    let token = args
        .token
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    for f in &args.files {
        anyhow::ensure!(
            project.root().join(f).is_file(),
            "pipeline file {} not found in {}",
            f.display(),
            project.root().display()
        );
    }
    let config = tsumugi_ui::Config {
        project: project.root().to_path_buf(),
        bind,
        files: args.files,
        token,
    };
    tsumugi_ui::serve(config, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
