//! Admission under bursts, over real HTTP on 127.0.0.1, with the shipped MNIST model and the
//! service's default settings (`trainer serve`'s): a burst the service can finish in time is
//! served whole, each answer byte-identical to its solo result; a burst it cannot finish gets
//! 503s with a Retry-After, and every request it admitted finishes.
//!
//! The two tests run one at a time (a lock): admission predicts from the measured speed of
//! the machine, which a second burst beside it would halve.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use server::{serve, state, ServeConfig};
use tokio::sync::oneshot;

mod common;
use common::{metric, post, retry_after, Reply};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Running {
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// `trainer serve`'s defaults (one worker, batches of 32 rows, the default bound) with this
/// time limit.
async fn start(timeout: Duration) -> Running {
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../weights/mnist.safetensors");
    let cfg = ServeConfig {
        weights,
        workers: 1,
        max_batch: 32,
        max_request_rows: None,
        max_rows: None,
        timeout,
        static_dir: PathBuf::from("."),
        device: Device::flex(),
    };
    let st = state(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, st, async {
        let _ = rx.await;
    }));
    Running { addr, stop, done }
}

/// Sends every body at once (one connection each) and returns the answers in order.
async fn burst(addr: std::net::SocketAddr, bodies: &[String], limit: Duration) -> Vec<Reply> {
    let tasks: Vec<_> = bodies
        .iter()
        .map(|b| {
            let b = b.clone();
            tokio::spawn(async move { tokio::time::timeout(limit, post(addr, &b)).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().expect("no request hangs"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_64_is_served_each_as_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let srv = start(Duration::from_secs(120)).await;
    // 64 one-image guided requests, 20 DDIM steps: 16 seeds, each request 4 times.
    let body = |seed: usize| {
        format!(
            r#"{{"class_label": {}, "guidance_scale": 3.0, "sampler": "ddim", "num_inference_steps": 20, "seed": {seed}}}"#,
            seed % 10
        )
    };
    let bodies: Vec<String> = (0..64).map(|i| body(i % 16)).collect();
    let started = Instant::now();
    let answers = burst(srv.addr, &bodies, Duration::from_secs(120)).await;
    let took = started.elapsed();
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(
            r.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(metric(srv.addr, "sampler_admitted_total").await, 64.0);
    // Batched: far fewer model calls than the 1,280 steps.
    let calls = metric(srv.addr, "sampler_batch_rows_count").await;
    assert!(calls <= 200.0, "{calls} model calls");
    // Each alone (one at a time) gives the same bytes.
    for seed in 0..16 {
        let alone = post(srv.addr, &body(seed)).await;
        assert_eq!(alone.status, 200);
        for i in (seed..64).step_by(16) {
            assert_eq!(
                answers[i].json()["images"],
                alone.json()["images"],
                "request {i} differs from seed {seed} alone"
            );
        }
    }
    eprintln!("burst of 64 served in {took:?} with {calls} model calls");
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_cannot_finish_in_time_gets_503s_and_every_admitted_request_finishes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let limit = Duration::from_secs(10);
    let srv = start(limit).await;
    // 64 guided images of 50 DDPM steps: 6,400 row-predictions, several times what this
    // machine does in 10 s.
    let bodies: Vec<String> = (0..64)
        .map(|i| {
            format!(
                r#"{{"class_label": {}, "num_inference_steps": 50, "seed": {i}}}"#,
                i % 10
            )
        })
        .collect();
    let answers = burst(srv.addr, &bodies, Duration::from_secs(60)).await;
    let (mut ok, mut busy, mut retries) = (0, 0, Vec::new());
    for r in &answers {
        match r.status {
            200 => ok += 1,
            503 => {
                busy += 1;
                retries.push(retry_after(r).expect("a Retry-After on every 503"));
                assert!(r.json()["error"].as_str().unwrap().contains("time limit"));
            }
            s => panic!(
                "an admitted request failed: {s} {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    // Retry-After is the predicted time until the work ahead has drained enough for the
    // request to be admitted: at least a second, and — the work admitted being what fits in
    // the time limit — no more than the time limit.
    assert!(retries.iter().all(|r| (1..=10).contains(r)), "{retries:?}");
    assert_eq!(metric(srv.addr, "sampler_admitted_total").await, ok as f64);
    assert_eq!(
        metric(srv.addr, "sampler_refused_total{reason=\"deadline\"}").await,
        busy as f64
    );
    eprintln!("deadline burst: {ok} served, {busy} refused, Retry-After {retries:?}");
    srv.stop.send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}
