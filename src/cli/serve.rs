//! `tsumugi serve`: the inference server (crates/serve, docs/serve.md).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tsumugi_stages::device::DeviceSpec;

use crate::project::Project;

pub const LONG_ABOUT: &str = "\
Serve a cross-encoder over HTTP: POST /predict (pairs → logits, score or probs), POST /rerank \
(text-embeddings-inference's request and response), GET /health, GET /metrics (Prometheus), \
and the adapter endpoints {prefix}/adapter/load, /unload, /status.

The adapter on the base model is swapped while the server runs: the new one is loaded beside \
the old, then switched; requests in flight finish on the version they started on. With \
--follow NAME the server follows the registry (docs/adapters.md): `tsumugi adapters promote` \
or `rollback`, or a run that promotes a version, switches it within a second. A version that \
fails to load leaves the current one serving; the error is logged and shown in status.

Concurrent requests are scored together (dynamic batching within --max-batch-tokens and \
--max-wait); a full queue answers 503 with Retry-After. The server listens on 127.0.0.1 \
unless told otherwise, and then refuses to start without a token for the adapter endpoints. \
It prints `listening on http://ADDR` on stdout once it accepts requests, and finishes the \
requests in flight on SIGTERM.

Examples:
  tsumugi serve --model models/minilm-l6 --follow nli --prefix /nli
  tsumugi serve --model models/minilm-l6 --adapter out/adapter --bind 127.0.0.1:0
  TSUMUGI_SERVE_TOKEN=s3cret tsumugi serve --model models/base --bind 0.0.0.0:8080 \\
      --adapter-root /srv/adapters";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Base model directory in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Serve this adapter from the start: a PEFT adapter directory (merged into the
    /// model's weights) or an exported model directory (config.json).
    #[arg(long, value_name = "DIR", conflicts_with = "follow")]
    pub adapter: Option<PathBuf>,
    /// Follow registry NAME (adapters/NAME in the project): serve its current version and
    /// switch when `current` changes.
    #[arg(long, value_name = "NAME")]
    pub follow: Option<String>,
    /// A directory `POST {prefix}/adapter/load {"path": …}` may load from (repeatable).
    /// Without one, loading by path is refused; registry names always work.
    #[arg(long = "adapter-root", value_name = "DIR")]
    pub adapter_roots: Vec<PathBuf>,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub bind: SocketAddr,
    /// Path prefix of the adapter endpoints, e.g. /nli for /nli/adapter/load.
    #[arg(long, default_value = "", value_name = "PATH")]
    pub prefix: String,
    /// cpu, wgpu, wgpu:N, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, bf16 or f16: the number type of the encoder layers' matrix products (see
    /// `tsumugi score --help`).
    #[arg(long, default_value = "f32")]
    pub precision: tsumugi_stages::precision::Precision,
    /// Pairs per forward pass within a batch (pairs are grouped by length first).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Tokens per pair, special tokens included (capped at the model's limit).
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Tokens (before padding) scored in one call across concurrent requests.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// How long a batch waits for more requests when the queue runs dry.
    #[arg(long, default_value = "2ms", value_parser = tsumugi_base::duration::parse_arg)]
    pub max_wait: Duration,
    /// Requests waiting for the model at most; more get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Pairs (or rerank texts) in one request at most (413 beyond).
    #[arg(long, default_value_t = 1024)]
    pub max_pairs: usize,
    /// Request body size at most, in bytes (413 beyond).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body: usize,
    /// A request not answered within this gets 504.
    #[arg(long, default_value = "30s", value_parser = tsumugi_base::duration::parse_arg)]
    pub timeout: Duration,
    /// File holding the bearer token of the adapter endpoints (else TSUMUGI_SERVE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How often --follow reads the registry's `current` link.
    #[arg(long, default_value = "200ms", value_parser = tsumugi_base::duration::parse_arg)]
    pub poll: Duration,
}

pub fn run(project: &Project, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "--token-file {}: the file is empty",
                f.display()
            );
            Some(t)
        }
        None => std::env::var("TSUMUGI_SERVE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_string()),
    };
    if !args.prefix.is_empty() && !args.prefix.starts_with('/') {
        anyhow::bail!("--prefix {:?}: must start with '/'", args.prefix);
    }
    let config = tsumugi_serve::Config {
        model: args.model,
        adapter: args.adapter,
        follow: args.follow,
        adapter_roots: args.adapter_roots,
        project: project.root().to_path_buf(),
        bind: args.bind,
        prefix: args.prefix,
        device: args.device,
        batch: args.batch,
        max_length: args.max_length,
        precision: args.precision,
        max_batch_tokens: args.max_batch_tokens,
        max_wait: args.max_wait,
        queue: args.queue,
        max_pairs: args.max_pairs,
        max_body: args.max_body,
        timeout: args.timeout,
        token,
        poll: args.poll,
    };
    tsumugi_serve::serve(config, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
