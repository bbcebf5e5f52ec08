//! A bounded load generator for the sampling service: a fixed number of requests at a fixed
//! concurrency, stopped at a time limit; prints throughput and latency percentiles by status.
//!
//! ```sh
//! cargo run --release -p server --bin loadgen -- --addr 127.0.0.1:8080 --requests 64 \
//!     --concurrency 8 --time-limit 300 --body '{"class_label": 3, "num_inference_steps": 50}'
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    addr: String,
    requests: usize,
    concurrency: usize,
    time_limit: Duration,
    body: String,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8080".into(),
        requests: 64,
        concurrency: 8,
        time_limit: Duration::from_secs(300),
        body: r#"{"class_label": 3, "guidance_scale": 3.0, "num_inference_steps": 50, "seed": 0}"#
            .into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = val()?,
            "--requests" => a.requests = val()?.parse().map_err(|_| "--requests: not a number")?,
            "--concurrency" => a.concurrency = val()?.parse().map_err(|_| "--concurrency: not a number")?,
            "--time-limit" => {
                a.time_limit = Duration::from_secs_f64(val()?.parse().map_err(|_| "--time-limit: not a number")?)
            }
            "--body" => a.body = val()?,
            "--help" | "-h" => {
                return Err("usage: loadgen [--addr HOST:PORT] [--requests N] [--concurrency C] [--time-limit SECONDS] [--body JSON]".into())
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.requests == 0 || a.concurrency == 0 {
        return Err("--requests and --concurrency must be at least 1".into());
    }
    Ok(a)
}

async fn one(addr: &str, body: &str) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v1/generate HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    std::str::from_utf8(raw.get(9..12).ok_or("short response")?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "bad status line".into())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let deadline = started + args.time_limit;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (next, addr, body, n) = (
            next.clone(),
            args.addr.clone(),
            args.body.clone(),
            args.requests,
        );
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let t0 = Instant::now();
                let left = deadline.saturating_duration_since(t0);
                let status = match tokio::time::timeout(left, one(&addr, &body)).await {
                    Ok(Ok(s)) => s.to_string(),
                    Ok(Err(e)) => format!("error ({e})"),
                    Err(_) => "time limit".into(),
                };
                results.push((status, t0.elapsed().as_secs_f64()));
                if Instant::now() >= deadline {
                    break;
                }
            }
            results
        }));
    }
    let mut by_status: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for w in workers {
        for (status, secs) in w.await.expect("worker") {
            by_status.entry(status).or_default().push(secs);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let total: usize = by_status.values().map(Vec::len).sum();
    let ok = by_status.get("200").map_or(0, Vec::len);
    println!(
        "{total} requests in {wall:.2} s at concurrency {}: {:.3} req/s, {:.3} successful req/s",
        args.concurrency,
        total as f64 / wall,
        ok as f64 / wall
    );
    for (status, mut lat) in by_status {
        lat.sort_by(f64::total_cmp);
        println!(
            "  {status:>12}: {:4}  p50 {:8.1} ms  p99 {:8.1} ms  max {:8.1} ms",
            lat.len(),
            pct(&lat, 0.5) * 1e3,
            pct(&lat, 0.99) * 1e3,
            lat.last().copied().unwrap_or(0.0) * 1e3
        );
    }
}
