//! A bounded load generator for the sampling service, loopback only.
//!
//! One run against a server (a fixed request, or mixed ones), or `--sweep`: start the service
//! twice in this process on 127.0.0.1 — one request at a time (`--max-batch 1`) and batched —
//! and send both the same mixed requests at each concurrency, printing a table.
//!
//! ```sh
//! cargo run --release -p server --bin loadgen -- --addr 127.0.0.1:8080 --requests 64 \
//!     --concurrency 8 --time-limit 300 --body '{"class_label": 3, "num_inference_steps": 50}'
//! cargo run --release -p server --bin loadgen -- --sweep --weights weights/mnist.safetensors
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use server::load::{mixed_requests, percentile, run_load, LoadReport};

/// Send bounded load to the sampling service and report throughput and latency.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Server address (loopback), for a single run.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Requests per run (per concurrency and mode with --sweep).
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Clients sending at once; with --sweep a list, e.g. `1,4,16,64`.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    concurrency: Vec<usize>,
    /// Stop each run after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    time_limit: f64,
    /// The request body of a single run (ignored with --mixed and --sweep).
    #[arg(
        long,
        default_value = r#"{"class_label": 3, "guidance_scale": 3.0, "num_inference_steps": 50, "seed": 0}"#
    )]
    body: String,
    /// Mixed requests instead of --body: 20–50 steps, guidance 0–5, DDIM or DDPM, 1–4 images.
    #[arg(long)]
    mixed: bool,
    /// Seed of the mixed requests.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start the service here twice (one at a time, and batched) and compare them.
    #[arg(long)]
    sweep: bool,
    /// --sweep: the weights to serve (`NAME.safetensors` with `NAME.json`).
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// --sweep: rows per batched model call of the batched service.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// --sweep: the services' queue (requests waiting; more get 503).
    #[arg(long, default_value_t = 16)]
    queue: usize,
}

fn main() {
    let a = Args::parse();
    if let Err(e) = run(a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    if a.requests == 0 || a.concurrency.contains(&0) || a.max_batch == 0 {
        return Err("--requests, --concurrency and --max-batch must be at least 1".into());
    }
    if !(a.time_limit.is_finite() && a.time_limit > 0.0) {
        return Err("--time-limit must be a positive number of seconds".into());
    }
    let limit = Duration::from_secs_f64(a.time_limit);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        if a.sweep {
            return sweep(&a, limit).await;
        }
        let bodies = if a.mixed {
            mixed_requests(a.requests, 10, a.seed)
        } else {
            vec![(a.body.clone(), 1); a.requests]
        };
        for &c in &a.concurrency {
            print!("{}", run_load(&a.addr, &bodies, c, limit).await.summary());
        }
        Ok(())
    })
}

/// Both services, every concurrency, the same requests: a Markdown table.
async fn sweep(a: &Args, limit: Duration) -> Result<(), String> {
    let mut servers = Vec::new();
    for max_batch in [1, a.max_batch] {
        let config = server::ServeConfig {
            weights: a.weights.clone(),
            workers: 1,
            max_batch,
            queue: a.queue,
            timeout: Duration::from_secs(600),
            static_dir: PathBuf::from("."),
            device: burn::tensor::Device::flex(),
        };
        let state = server::state(&config).map_err(|e| e.to_string())?;
        let classes = state.config.unet.num_classes.unwrap_or(1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(server::serve(listener, state, std::future::pending()));
        servers.push((max_batch, addr.to_string(), classes));
    }
    println!(
        "{} mixed requests per run (seed {}), queue {}, time limit {} s per run\n",
        a.requests, a.seed, a.queue, a.time_limit
    );
    println!("| serving | concurrency | images/s | req/s | p50 latency | p99 latency | 503 |");
    println!("|---|---|---|---|---|---|---|");
    for &c in &a.concurrency {
        for (max_batch, addr, classes) in &servers {
            let bodies = mixed_requests(a.requests, *classes, a.seed);
            let r: LoadReport = run_load(addr, &bodies, c, limit).await;
            let ok = r.latencies("200");
            let mode = if *max_batch == 1 {
                "one at a time".to_string()
            } else {
                format!("batched ({max_batch} rows)")
            };
            println!(
                "| {mode} | {c} | {:.2} | {:.2} | {:.2} s | {:.2} s | {:.0} % |",
                r.images_per_s(),
                ok.len() as f64 / r.wall_s,
                percentile(&ok, 0.5),
                percentile(&ok, 0.99),
                r.busy_rate() * 100.0
            );
            let unanswered = r
                .outcomes
                .iter()
                .filter(|o| o.status != "200" && o.status != "503")
                .count();
            if unanswered > 0 {
                println!("|  | ({unanswered} failed or hit the time limit) | | | | | |");
            }
        }
    }
    Ok(())
}
