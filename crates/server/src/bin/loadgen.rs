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
//! cargo run --release -p server --bin loadgen -- --soak 1800 --concurrency 8 \
//!     --server-pid "$(pgrep -f 'trainer serve')" --report docs/soak
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use server::load::{
    median, mixed_requests, model_classes, percentile, rss_bytes, run_load, soak, LoadReport,
};

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
    /// Mixed requests instead of --body: 20–50 steps, guidance 0–5, DDIM or DDPM, 1 to
    /// --max-images images.
    #[arg(long)]
    mixed: bool,
    /// The most images a mixed request asks for (1 = single-image requests).
    #[arg(long, default_value_t = 4)]
    max_images: usize,
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
    /// --sweep: the services' bound on rows in flight + waiting (default: the service's).
    #[arg(long)]
    max_rows: Option<usize>,
    /// Soak for this many seconds: mixed requests (as --mixed) from --concurrency clients
    /// against --addr, reported per --window (throughput, p50/p99 latency, errors, the
    /// server's RSS).
    #[arg(long)]
    soak: Option<f64>,
    /// --soak: the window of the report, seconds.
    #[arg(long, default_value_t = 60.0)]
    window: f64,
    /// --soak: the server's process id, to sample its resident memory (Linux `/proc`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// --soak: write `soak.md` (the table), `soak.svg` (the plot) and `soak.json` (every
    /// request) into this folder.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Measure fairness: start the service here once per `--max-request-rows` in
    /// --fairness-caps; in each, one 64-image guided request and, while it runs, one-image
    /// requests from --concurrency clients; print both latencies.
    #[arg(long)]
    fairness: bool,
    /// --fairness: the caps to compare (rows one request puts in a call while others share it).
    #[arg(long, value_delimiter = ',', default_value = "32,16,8")]
    fairness_caps: Vec<usize>,
    /// --sweep: runs of each (concurrency, service) pair, the two services taking turns to go
    /// first; the table shows medians over the rounds. This machine's speed drifts by tens of
    /// percent within minutes, so only runs close together compare.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

fn main() {
    let a = Args::parse();
    // The services --sweep starts here allocate as `trainer serve`'s do.
    flex_kernels::allocator::retain_freed_memory();
    if let Err(e) = run(a) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<(), String> {
    if a.requests == 0
        || a.concurrency.contains(&0)
        || a.max_batch == 0
        || a.rounds == 0
        || !(1..=64).contains(&a.max_images)
    {
        return Err(
            "--requests, --concurrency, --max-batch and --rounds must be at least 1, --max-images 1 to 64"
                .into(),
        );
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
        if a.fairness {
            return fairness(&a).await;
        }
        if let Some(seconds) = a.soak {
            return run_soak(&a, seconds, limit).await;
        }
        let bodies = if a.mixed {
            let classes = model_classes(&a.addr).await?;
            mixed_requests(a.requests, classes, a.max_images, a.seed)
        } else {
            vec![(a.body.clone(), 1); a.requests]
        };
        for &c in &a.concurrency {
            print!("{}", run_load(&a.addr, &bodies, c, limit).await.summary());
        }
        Ok(())
    })
}

/// One service's figures over the rounds of one concurrency.
struct Runs(Vec<LoadReport>);

impl Runs {
    fn median(&self, f: impl Fn(&LoadReport) -> f64) -> f64 {
        median(&self.0.iter().map(f).collect::<Vec<_>>())
    }

    /// `images/s | p50 | p99 | 503` cells (medians over the rounds).
    fn cells(&self) -> String {
        format!(
            "{:.2} | {:.2} s | {:.2} s | {:.0} %",
            self.median(LoadReport::images_per_s),
            self.median(|r| percentile(&r.latencies("200"), 0.5)),
            self.median(|r| percentile(&r.latencies("200"), 0.99)),
            self.median(LoadReport::busy_rate) * 100.0
        )
    }

    /// Requests that failed or hit the time limit, over all rounds.
    fn unanswered(&self) -> usize {
        let failed = |o: &&server::load::Outcome| o.status != "200" && o.status != "503";
        self.0
            .iter()
            .map(|r| r.outcomes.iter().filter(failed).count())
            .sum()
    }
}

/// Both services, every concurrency, the same requests: a Markdown table.
async fn sweep(a: &Args, limit: Duration) -> Result<(), String> {
    let (mut servers, mut services) = (Vec::new(), Vec::new());
    for max_batch in [1, a.max_batch] {
        let service = Service::start(a, max_batch, None).await?;
        let (addr, classes) = (service.addr.clone(), service.classes);
        servers.push((addr, classes));
        services.push(service);
    }
    println!(
        "{} mixed requests per run (1–{} images, seed {}), one worker, batched at most {} rows, \
         {} round(s) with the order alternating (medians), time limit {} s per run\n",
        a.requests, a.max_images, a.seed, a.max_batch, a.rounds, a.time_limit
    );
    println!(
        "| concurrency | one at a time: images/s | p50 | p99 | 503 | batched: images/s | p50 | p99 | 503 | \
         batched / one at a time, images/s (range) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &c in &a.concurrency {
        let mut runs = [Runs(Vec::new()), Runs(Vec::new())];
        for round in 0..a.rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (addr, classes) = &servers[i];
                let bodies = mixed_requests(a.requests, *classes, a.max_images, a.seed);
                runs[i].0.push(run_load(addr, &bodies, c, limit).await);
            }
        }
        let mut ratios: Vec<f64> = runs[0]
            .0
            .iter()
            .zip(&runs[1].0)
            .map(|(one, batched)| batched.images_per_s() / one.images_per_s())
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {c} | {} | {} | {:.2}× ({:.2}–{:.2}) |",
            runs[0].cells(),
            runs[1].cells(),
            median(&ratios),
            ratios[0],
            ratios[ratios.len() - 1]
        );
        let unanswered = runs[0].unanswered() + runs[1].unanswered();
        if unanswered > 0 {
            println!("| | ({unanswered} failed or hit the time limit) | | | | | | | | |");
        }
    }
    Ok(())
}

/// `--soak`: mixed load for a set time, reported per window.
async fn run_soak(a: &Args, seconds: f64, limit: Duration) -> Result<(), String> {
    if !(seconds.is_finite() && seconds > 0.0 && a.window.is_finite() && a.window > 0.0) {
        return Err("--soak and --window must be positive numbers of seconds".into());
    }
    if a.concurrency.len() != 1 {
        return Err("--soak takes one --concurrency".into());
    }
    if a.server_pid.is_some_and(|p| rss_bytes(p).is_none()) {
        return Err(format!(
            "--server-pid {}: no such process (or no /proc)",
            a.server_pid.unwrap_or_default()
        ));
    }
    let classes = model_classes(&a.addr).await?;
    let pid = a.server_pid;
    eprintln!(
        "soak: {seconds} s of mixed requests (1–{} images) from {} clients against {}{}",
        a.max_images,
        a.concurrency[0],
        a.addr,
        if pid.is_some() {
            ""
        } else {
            " (no --server-pid: no RSS)"
        }
    );
    let record = soak(
        &a.addr,
        classes,
        a.max_images,
        a.seed,
        a.concurrency[0],
        Duration::from_secs_f64(seconds),
        limit,
        Duration::from_secs(5),
        move || pid.and_then(rss_bytes),
    )
    .await;
    let table = record.table(a.window);
    print!("{table}");
    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let title = format!(
            "loadgen --soak {seconds:.0}: {} clients, mixed requests of 1–{} images",
            a.concurrency[0], a.max_images
        );
        let requests: Vec<serde_json::Value> = record
            .requests
            .iter()
            .map(|t| {
                serde_json::json!({"at_s": t.at_s, "status": t.outcome.status, "seconds": t.outcome.seconds, "images": t.outcome.images})
            })
            .collect();
        let json = serde_json::json!({
            "concurrency": record.concurrency, "wall_s": record.wall_s, "max_images": a.max_images,
            "seed": a.seed, "requests": requests, "rss": record.rss,
        });
        for (name, text) in [
            ("soak.md", table),
            ("soak.svg", record.svg(a.window, &title)),
            ("soak.json", json.to_string()),
        ] {
            let path = dir.join(name);
            artifacts::write_atomic(&path, text.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        eprintln!("report → {}", dir.display());
    }
    Ok(())
}

/// `--fairness`: a 64-image request beside one-image ones, per cap.
async fn fairness(a: &Args) -> Result<(), String> {
    if a.fairness_caps.iter().any(|&c| c == 0 || c > a.max_batch) || a.concurrency.len() != 1 {
        return Err("--fairness-caps must lie in 1..=--max-batch, with one --concurrency".into());
    }
    let big = r#"{"class_label": 3, "guidance_scale": 3.0, "sampler": "ddim", "num_inference_steps": 20, "num_images": 64, "seed": 1}"#;
    println!(
        "one 64-image guided request (DDIM 20 steps, 128 rows) and one-image guided requests (DDIM 20 steps) from {} clients while it runs; --max-batch {}\n",
        a.concurrency[0], a.max_batch
    );
    println!("| --max-request-rows | 64-image request | one-image requests served beside it | their p50 | their p99 |");
    println!("|---|---|---|---|---|");
    for &cap in &a.fairness_caps {
        let service = Service::start(a, a.max_batch, Some(cap)).await?;
        let addr = service.addr.clone();
        let started = std::time::Instant::now();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let big_task = {
            let (addr, finished) = (addr.clone(), finished.clone());
            tokio::spawn(async move {
                let status = server::load::post_generate(&addr, big).await;
                finished.store(true, std::sync::atomic::Ordering::Relaxed);
                status
            })
        };
        // The small ones start once the big one runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut clients = Vec::new();
        for c in 0..a.concurrency[0] {
            let addr = addr.clone();
            let done = finished.clone();
            clients.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = format!(
                        r#"{{"class_label": {}, "guidance_scale": 3.0, "sampler": "ddim", "num_inference_steps": 20, "seed": {}}}"#,
                        i % 10,
                        1000 * c + i
                    );
                    let t0 = std::time::Instant::now();
                    if server::load::post_generate(&addr, &body).await == Ok(200) {
                        lat.push(t0.elapsed().as_secs_f64());
                    }
                    i += 1;
                }
                lat
            }));
        }
        let status = big_task.await.map_err(|e| e.to_string())??;
        let big_s = started.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        for c in clients {
            lat.extend(c.await.map_err(|e| e.to_string())?);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "| {cap} | {big_s:.1} s ({status}) | {} | {:.2} s | {:.2} s |",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        service.stop().await;
    }
    Ok(())
}

/// A service started in this process on 127.0.0.1 (the weights and bound of `a`, one worker,
/// a 600 s time limit), until [`Service::stop`] or until it is dropped.
struct Service {
    addr: String,
    classes: Option<usize>,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Service {
    async fn start(
        a: &Args,
        max_batch: usize,
        max_request_rows: Option<usize>,
    ) -> Result<Self, String> {
        let config = server::ServeConfig {
            weights: a.weights.clone(),
            workers: 1,
            max_batch,
            max_request_rows,
            max_rows: a.max_rows,
            timeout: Duration::from_secs(600),
            static_dir: PathBuf::from("."),
            device: burn::tensor::Device::flex(),
        };
        let state = server::state(&config).map_err(|e| e.to_string())?;
        let classes = state.config.unet.num_classes;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            classes,
            stop,
            served,
        })
    }

    /// Stops accepting and waits for the requests in flight.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.served.await;
    }
}
