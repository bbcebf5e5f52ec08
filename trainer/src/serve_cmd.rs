//! `trainer serve`: the HTTP sampling API and the browser page.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Weights file (`NAME.safetensors`, with `NAME.json` beside it); also served at
    /// `/weights/`.
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Batch executors: threads that each run a copy of the model and batch the requests in
    /// flight step by step.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Rows per batched model call (a guided image counts twice, for its two passes); requests
    /// at different steps share one call. 1 serves one request at a time.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Requests that may wait to join a batch; beyond that the answer is 503 + Retry-After.
    #[arg(long, default_value_t = 4)]
    queue: usize,
    /// Per-request time limit in seconds (queueing + sampling); past it the answer is 504.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Directory served at `/` (with `index.html` and `pkg/`).
    #[arg(long, default_value = ".")]
    static_dir: PathBuf,
    /// Device the executors sample on: `cpu` (Burn flex), `wgpu`, or `cuda[:N]` (needs the
    /// matching cargo feature).
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub(crate) fn cmd_serve(a: ServeArgs) -> Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if a.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = server::ServeConfig {
        weights: a.weights,
        workers: a.workers,
        max_batch: a.max_batch,
        queue: a.queue,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        static_dir: a.static_dir,
        device: training::device::parse_device(&a.device)?,
    };
    let state = server::state(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.addr)
            .await
            .with_context(|| format!("cannot listen on {}", a.addr))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        server::serve(listener, state, server::shutdown_signal()).await?;
        anyhow::Ok(())
    })
}
