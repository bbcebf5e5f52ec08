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
    /// at different steps share one call, and a request with more rows takes each step over
    /// several calls. Size it to the device: the rows where a call's time per row stops
    /// falling (`bench --sections forward`).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Rows one request puts in a call while others share it (default: half of --max-batch),
    /// so a many-image request never holds the whole batch.
    #[arg(long)]
    max_request_rows: Option<usize>,
    /// Rows held at most, in flight and waiting: the bound that protects memory (default: as
    /// many rows as 256 MiB of sample state holds, at least 4 batches per worker). Requests
    /// are admitted while they fit it and are predicted to finish within --timeout; otherwise
    /// 503 with a Retry-After from that prediction.
    #[arg(long)]
    max_rows: Option<usize>,
    /// Replaced by --max-rows (admission by capacity and deadline): an error if given.
    #[arg(long, hide = true)]
    queue: Option<usize>,
    /// Per-request time limit in seconds (waiting + sampling): admission predicts against it,
    /// and past it the answer is 504.
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
    if a.queue.is_some() {
        bail!("--queue is gone: the service admits requests by capacity and deadline; bound the rows held with --max-rows (see docs/http-api.md)");
    }
    if let Some(r) = a.max_request_rows {
        if !(1..=a.max_batch).contains(&r) {
            bail!(
                "--max-request-rows must lie in 1..=--max-batch ({}), got {r}",
                a.max_batch
            );
        }
    }
    if a.max_rows == Some(0) {
        bail!("--max-rows must be at least 1");
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
        max_request_rows: a.max_request_rows,
        max_rows: a.max_rows,
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
