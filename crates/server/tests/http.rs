//! The service over real HTTP on 127.0.0.1.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use burn::tensor::Device;
use diffusion::sampler::{to_host, SamplerKind, SamplerSettings};
use diffusion::weights::save_model;
use diffusion::{ModelConfig, SampleRequest, Sampling, UNetConfig};
use server::{serve, state, ServeConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

mod common;
use common::{http, metric, post, retry_after};

/// A tiny random model (8×8 grey, 3 classes) saved once per test binary.
fn weights() -> PathBuf {
    static W: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-test");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "<!doctype html><title>t</title>").unwrap();
        let unet = UNetConfig::new(1, 8, 32, vec![1, 2], vec![4])
            .with_num_res_blocks(1)
            .with_num_classes(Some(3));
        let cfg = ModelConfig::new(unet);
        let model = cfg.unet.init(&Device::flex()).unwrap().randomize(1, 0.05);
        let path = dir.join("tiny.safetensors");
        save_model(&model, &cfg, &path, false).unwrap();
        path
    })
    .clone()
}

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A server batching up to 8 rows per model call (four guided images).
async fn start(workers: usize, timeout: Duration) -> Running {
    start_batching(workers, 8, None, timeout).await
}

/// A server whose executors batch up to `max_batch` rows per model call, holding at most
/// `max_rows` rows (`None`: the default).
async fn start_batching(
    workers: usize,
    max_batch: usize,
    max_rows: Option<usize>,
    timeout: Duration,
) -> Running {
    start_with(weights(), workers, max_batch, max_rows, timeout).await
}

/// A server for the model `w` (its directory also serves the static files).
async fn start_with(
    w: PathBuf,
    workers: usize,
    max_batch: usize,
    max_rows: Option<usize>,
    timeout: Duration,
) -> Running {
    let cfg = ServeConfig {
        weights: w.clone(),
        workers,
        max_batch,
        max_request_rows: None,
        max_rows,
        device: Device::flex(),
        timeout,
        static_dir: w.parent().unwrap().to_path_buf(),
    };
    let st = state(&cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, st, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        done,
    }
}

fn png_dims(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_is_reproducible_and_equals_the_library() {
    let mut srv = start(1, Duration::from_secs(60)).await;
    let body = r#"{"class_label": 1, "guidance_scale": 2.5, "sampler": "ddim", "num_inference_steps": 20, "eta": 0.0, "seed": 42, "num_images": 2}"#;
    let a = post(srv.addr, body).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let b = post(srv.addr, body).await;
    let (ja, jb) = (a.json(), b.json());
    assert_eq!(ja["images"], jb["images"], "same seed ⇒ identical bytes");
    assert_eq!(ja["seed"], 42);
    assert_eq!(ja["class_label"], 1);
    let b64 = base64::engine::general_purpose::STANDARD;
    let pngs: Vec<Vec<u8>> = ja["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| b64.decode(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(pngs.len(), 2);
    assert_eq!(png_dims(&pngs[0]), (8, 8));
    // The same bytes as the shared sampling loop gives (which `trainer sample --num 2 --pad 0
    // --scale 1` runs): one noise stream for the request's images.
    let (model, cfg) = diffusion::weights::load_model(&weights(), &Device::flex()).unwrap();
    let settings = SamplerSettings {
        sampler: SamplerKind::Ddim,
        num_inference_steps: 20,
        ..Default::default()
    };
    let scheduler = cfg.scheduler(&settings).unwrap();
    let request = SampleRequest {
        image_shape: cfg.unet.image_shape(),
        class_labels: vec![Some(1); 2],
        guidance_scale: 2.5,
        seed: 42,
    };
    let sample = Sampling::new(&model, &scheduler, &request, &Device::flex())
        .unwrap()
        .run(|_| {});
    let values = to_host(sample);
    assert_eq!(pngs[0], server::worker::image_png(&values[..64], [1, 8, 8]));
    assert_eq!(pngs[1], server::worker::image_png(&values[64..], [1, 8, 8]));
    // DPM-Solver++ through the API is the library's DPM-Solver++ too.
    let r = post(
        srv.addr,
        r#"{"class_label": 2, "sampler": "dpmsolver++", "num_inference_steps": 8, "seed": 5}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["sampler"], "dpmsolver++");
    let png = b64.decode(j["images"][0].as_str().unwrap()).unwrap();
    let settings = SamplerSettings {
        sampler: SamplerKind::DpmSolverPlusPlus,
        num_inference_steps: 8,
        ..Default::default()
    };
    let scheduler = cfg.scheduler(&settings).unwrap();
    let request = SampleRequest {
        image_shape: cfg.unet.image_shape(),
        class_labels: vec![Some(2)],
        guidance_scale: 3.0,
        seed: 5,
    };
    let values = to_host(
        Sampling::new(&model, &scheduler, &request, &Device::flex())
            .unwrap()
            .run(|_| {}),
    );
    assert_eq!(png, server::worker::image_png(&values, [1, 8, 8]));
    // Without a sampler the request runs the default one, DDPM (stochastic).
    let plain = post(
        srv.addr,
        r#"{"class_label": 2, "num_inference_steps": 8, "seed": 5}"#,
    )
    .await;
    let ddpm = post(
        srv.addr,
        r#"{"class_label": 2, "sampler": "ddpm", "num_inference_steps": 8, "seed": 5}"#,
    )
    .await;
    assert_eq!(plain.json()["sampler"], "ddpm");
    assert_eq!(plain.json()["images"], ddpm.json()["images"]);
    // A null seed is replaced by a random one, which is returned.
    let r = post(
        srv.addr,
        r#"{"class_label": null, "num_inference_steps": 5}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["seed"].as_u64().is_some());
    // The PNG route.
    let p = http(
        srv.addr,
        "GET",
        "/v1/generate.png?class_label=2&seed=3&num_inference_steps=5",
        None,
        b"",
    )
    .await;
    assert_eq!(p.status, 200);
    assert!(p
        .headers
        .to_ascii_lowercase()
        .contains("content-type: image/png"));
    assert_eq!(png_dims(&p.body), (8, 8));
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_4xx_naming_the_problem() {
    let mut srv = start(1, Duration::from_secs(60)).await;
    let cases: &[(&str, u16, &str)] = &[
        (
            r#"{"class_label": 1, "colour": "red"}"#,
            400,
            "unknown field `colour`",
        ),
        (r#"{"class_label": "one"}"#, 400, "class_label"),
        (r#"{"guidance_scale": "high"}"#, 400, "guidance_scale"),
        (r#"{"num_images": -1}"#, 400, "num_images"),
        (r#"{"guidance_scale": 1e999}"#, 400, "guidance_scale"),
        (
            r#"{"class_label": 3}"#,
            422,
            "class_label: 3 is out of range 0..=2",
        ),
        (r#"{"guidance_scale": 30.5}"#, 422, "guidance_scale"),
        (r#"{"guidance_scale": -0.5}"#, 422, "guidance_scale"),
        (r#"{"num_inference_steps": 0}"#, 422, "num_inference_steps"),
        (
            r#"{"num_inference_steps": 1001}"#,
            422,
            "num_inference_steps",
        ),
        (r#"{"eta": 1.5}"#, 422, "eta"),
        (
            r#"{"sampler": "dpm"}"#,
            400,
            "unknown variant `dpm`, expected one of `ddim`, `ddpm`, `dpmsolver++`, `sde-dpmsolver++`",
        ),
        (
            r#"{"sampler": "ddim", "use_karras_sigmas": true}"#,
            422,
            "use_karras_sigmas applies to dpmsolver++ and sde-dpmsolver++, not ddim",
        ),
        (
            r#"{"sampler": "dpmsolver++", "num_inference_steps": 1000}"#,
            422,
            "sampler: invalid sampler setting: num_inference_steps = 1000 repeats timestep",
        ),
        (r#"{"num_images": 65}"#, 422, "num_images"),
        (r#"{"num_images": 0}"#, 422, "num_images"),
        (r#"{"class_label": 1"#, 400, "invalid request"),
        (r#"[1, 2]"#, 400, "invalid request"),
    ];
    for (body, status, needle) in cases {
        let r = post(srv.addr, body).await;
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(r.status, *status, "{body} → {msg}");
        assert!(msg.contains(needle), "{body}: `{msg}` lacks `{needle}`");
    }
    let r = http(srv.addr, "POST", "/v1/generate", Some("text/plain"), b"{}").await;
    assert_eq!(r.status, 415);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("application/json"));
    let big = format!(
        r#"{{"class_label": 1, "pad": "{}"}}"#,
        "x".repeat(server::api::MAX_BODY)
    );
    let r = post(srv.addr, &big).await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("1048576"));
    let r = http(srv.addr, "GET", "/v1/generate.png?class_label=x", None, b"").await;
    assert_eq!(r.status, 400);
    let r = http(srv.addr, "GET", "/nope", None, b"").await;
    assert_eq!(r.status, 404);
    // Observability routes.
    let h = http(srv.addr, "GET", "/healthz", None, b"").await;
    assert_eq!((h.status, h.body.as_slice()), (200, b"ok".as_slice()));
    let m = String::from_utf8(http(srv.addr, "GET", "/metrics", None, b"").await.body).unwrap();
    assert!(
        m.contains("http_requests_total{route=\"/v1/generate\",status=\"422\"}"),
        "{m}"
    );
    assert!(m.contains("sampler_queue_depth"));
    let o = http(srv.addr, "GET", "/openapi.json", None, b"")
        .await
        .json();
    assert!(o["paths"]["/v1/generate"]["post"].is_object());
    assert!(
        o["components"]["schemas"]["GenerateRequest"]["properties"]["guidance_scale"].is_object()
    );
    // The documented sampler names are exactly the ones requests accept.
    let names: Vec<&str> = o["components"]["schemas"]["SamplerName"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", o["components"]["schemas"]["SamplerName"]))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let kinds: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, kinds);
    let i = http(srv.addr, "GET", "/", None, b"").await;
    assert_eq!(i.status, 200);
    assert!(String::from_utf8_lossy(&i.body).contains("<title>t</title>"));
    // Cross-origin isolated, so the page may run the threads bundle.
    let h = i.headers.to_ascii_lowercase();
    assert!(h.contains("cross-origin-opener-policy: same-origin"), "{h}");
    assert!(
        h.contains("cross-origin-embedder-policy: require-corp"),
        "{h}"
    );
    let w = http(srv.addr, "GET", "/weights/tiny.json", None, b"").await;
    assert_eq!(w.status, 200);
    // The served model: its URLs fetch the very files, and the hash covers both.
    assert!(o["paths"]["/v1/model"]["get"].is_object());
    let m = http(srv.addr, "GET", "/v1/model", None, b"").await.json();
    assert_eq!(m["weights_url"], "/weights/tiny.safetensors");
    assert_eq!(m["config_url"], "/weights/tiny.json");
    assert_eq!(m["image_shape"], serde_json::json!([1, 8, 8]));
    assert_eq!(m["num_classes"], 3);
    let weights_bytes = std::fs::read(weights()).unwrap();
    let config_bytes = std::fs::read(weights().with_extension("json")).unwrap();
    assert_eq!(w.body, config_bytes);
    assert_eq!(m["weights_bytes"], weights_bytes.len());
    assert_eq!(
        http(srv.addr, "GET", "/weights/tiny.safetensors", None, b"")
            .await
            .body,
        weights_bytes
    );
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(&weights_bytes)
        .chain_update(&config_bytes)
        .finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(m["sha256"], hex);
    assert_eq!(m["config"]["unet"]["resolution"], 8);
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_gives_504() {
    let mut srv = start(1, Duration::from_millis(1)).await;
    let r = post(
        srv.addr,
        r#"{"class_label": 0, "num_inference_steps": 500}"#,
    )
    .await;
    assert_eq!(r.status, 504);
    assert!(r.json()["error"].as_str().unwrap().contains("limit"));
    // The abandoned request leaves at its next step and is never finished.
    until_no_job_in_progress(srv.addr, Duration::from_secs(30)).await;
    assert_eq!(metric(srv.addr, "images_generated_total").await, 0.0);
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_executors_a_request_finishes_while_the_other_waits_for_work() {
    // One executor takes the request; the other then waits on the empty queue. The busy one
    // must not wait for the queue in turn (it did: 504 at the time limit).
    let mut srv = start_batching(2, 8, None, Duration::from_secs(20)).await;
    for seed in 0..2 {
        let body = format!(r#"{{"class_label": 1, "num_inference_steps": 20, "seed": {seed}}}"#);
        let r = tokio::time::timeout(Duration::from_secs(15), post(srv.addr, &body))
            .await
            .expect("answered before the time limit");
        assert_eq!(r.status, 200);
    }
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut srv = start(1, Duration::from_secs(60)).await;
    let addr = srv.addr;
    let body = r#"{"class_label": 2, "num_inference_steps": 200, "seed": 5}"#;
    let inflight: Vec<_> = (0..2).map(|_| tokio::spawn(post(addr, body))).collect();
    // Wait until both are accepted (one sampling, one queued), then shut down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.stop.take().unwrap().send(()).unwrap();
    for t in inflight {
        assert_eq!(t.await.unwrap().status, 200, "in-flight request completed");
    }
    srv.done.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// Waits until no job is in progress; fails when one still is after `within` (an abandoned
/// request that kept running).
async fn until_no_job_in_progress(addr: std::net::SocketAddr, within: Duration) {
    let started = Instant::now();
    while metric(addr, "sampler_jobs_in_progress").await > 0.0 {
        assert!(
            started.elapsed() < within,
            "the abandoned request kept running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Mixed requests (samplers, step counts, guidance scales, classes, image counts, seeds).
fn mixed_requests(n: usize) -> Vec<(String, usize)> {
    (0..n)
        .map(|i| {
            let sampler = ["ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++"][i % 4];
            let guidance = [0.0, 1.0, 2.5, 5.0][(i / 4) % 4];
            let class = if i % 5 == 4 {
                "null".to_string()
            } else {
                (i % 3).to_string()
            };
            let steps = 3 + (i * 7) % 10;
            let karras = sampler.contains("solver") && i % 3 == 0;
            let body = format!(
                r#"{{"class_label": {class}, "guidance_scale": {guidance}, "sampler": "{sampler}", "num_inference_steps": {steps}, "use_karras_sigmas": {karras}, "seed": {}, "num_images": {}}}"#,
                100 + i,
                1 + i % 4
            );
            (body, steps)
        })
        .collect()
}

/// The PNGs of 16 mixed requests batched together equal those of each alone (the f32 values
/// are equal bit for bit: `crates/diffusion/tests/step_batching.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_equal_their_solo_results_byte_for_byte() {
    let requests = mixed_requests(16);
    // Each alone, one at a time.
    let mut solo = start_batching(1, 1, None, Duration::from_secs(60)).await;
    let mut alone = Vec::new();
    for (body, _) in &requests {
        let r = post(solo.addr, body).await;
        assert_eq!(
            r.status,
            200,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        alone.push(r.json()["images"].clone());
    }
    assert_eq!(
        metric(solo.addr, "sampler_batch_rows_bucket{le=\"8\"}").await,
        metric(solo.addr, "sampler_batch_rows_count").await
    );
    solo.stop.take().unwrap().send(()).unwrap();
    solo.done.await.unwrap().unwrap();
    // All 16 at once: batched step by step, up to 32 rows per model call.
    let mut srv = start_batching(1, 32, None, Duration::from_secs(60)).await;
    let tasks: Vec<_> = requests
        .iter()
        .map(|(body, _)| {
            let (addr, body) = (srv.addr, body.clone());
            tokio::spawn(async move { post(addr, &body).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.json()["images"],
            alone[i],
            "request {i} ({}) differs from it alone",
            requests[i].0
        );
    }
    // They shared model calls: fewer calls than steps, some with more rows than any request.
    let steps: usize = requests.iter().map(|(_, s)| s).sum();
    let calls = metric(srv.addr, "sampler_batch_rows_count").await;
    assert!(
        calls < steps as f64,
        "{calls} model calls for {steps} steps"
    );
    assert!(metric(srv.addr, "sampler_batch_rows_bucket{le=\"8\"}").await < calls);
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

/// Opens a `POST /v1/generate` with `body` and returns the connection without reading.
async fn send_only(addr: std::net::SocketAddr, body: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// Waits until `metric` reaches `value`.
async fn until_metric(addr: std::net::SocketAddr, name: &str, value: f64, within: Duration) {
    let started = Instant::now();
    while metric(addr, name).await != value {
        assert!(
            started.elapsed() < within,
            "{name} = {} after {within:?}, not {value}",
            metric(addr, name).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_rows() {
    let mut srv = start_batching(1, 8, None, Duration::from_secs(120)).await;
    // Two long requests fill the batch (4 guided images = 8 rows, a share of 4 each); a third
    // waits. Its client goes away: its rows leave the queue at once.
    let body = r#"{"class_label": 1, "num_inference_steps": 1000, "num_images": 4, "seed": 1}"#;
    let running: Vec<_> = [
        send_only(srv.addr, body).await,
        send_only(srv.addr, body).await,
    ]
    .into();
    until_metric(
        srv.addr,
        "sampler_rows_in_flight",
        16.0,
        Duration::from_secs(10),
    )
    .await;
    let waiting = send_only(srv.addr, body).await;
    until_metric(
        srv.addr,
        "sampler_rows_waiting",
        8.0,
        Duration::from_secs(10),
    )
    .await;
    drop(waiting);
    until_metric(
        srv.addr,
        "sampler_rows_waiting",
        0.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(metric(srv.addr, "sampler_abandoned_total").await, 1.0);
    // Those sampling leave the batch at the next step, long before their 1,000 steps.
    let calls_then = metric(srv.addr, "sampler_batch_rows_count").await;
    drop(running);
    until_metric(
        srv.addr,
        "sampler_rows_in_flight",
        0.0,
        Duration::from_secs(10),
    )
    .await;
    until_no_job_in_progress(srv.addr, Duration::from_secs(10)).await;
    assert_eq!(metric(srv.addr, "sampler_abandoned_total").await, 3.0);
    let calls = metric(srv.addr, "sampler_batch_rows_count").await - calls_then;
    assert!(calls < 900.0, "{calls} steps after the clients left");
    assert_eq!(
        metric(srv.addr, "images_generated_total").await,
        0.0,
        "an abandoned request was finished"
    );
    // The freed rows serve the next request.
    let r = post(
        srv.addr,
        r#"{"class_label": 2, "num_inference_steps": 5, "num_images": 4}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_held_stay_within_max_rows() {
    // At most 24 rows: three guided 4-image requests; a burst of 64 gets 503s (capacity)
    // with a Retry-After, and never more than that is held.
    let mut srv = start_batching(1, 16, Some(24), Duration::from_secs(120)).await;
    let body = r#"{"class_label": 0, "num_inference_steps": 40, "num_images": 4, "seed": 3}"#;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let addr = srv.addr;
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(60), post(addr, body)).await
            })
        })
        .collect();
    let mut most = 0.0f64;
    while !tasks.iter().all(|t| t.is_finished()) {
        let held = metric(srv.addr, "sampler_rows_in_flight").await
            + metric(srv.addr, "sampler_rows_waiting").await;
        most = most.max(held);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most <= 24.0, "{most} rows held");
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap().expect("no request hangs");
        match r.status {
            200 => ok += 1,
            503 => {
                assert!(retry_after(&r).expect("a Retry-After") >= 1);
                assert!(r.json()["error"].as_str().unwrap().contains("bound"));
                busy += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(
        ok >= 3 && busy >= 1 && ok + busy == 64,
        "ok {ok}, busy {busy}"
    );
    assert_eq!(
        metric(srv.addr, "sampler_refused_total{reason=\"capacity\"}").await,
        busy as f64
    );
    // A request that alone is over the bound can never be admitted: 422, not 503.
    let r = post(srv.addr, r#"{"class_label": 0, "num_images": 13}"#).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].as_str().unwrap().contains("--max-rows"));
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_image_request_does_not_starve_small_ones() {
    // 64 guided images = 128 rows against a batch of 8: while others share the batch it puts
    // 4 rows in each call (32 calls per step). One-image requests sent after it finish first,
    // and it gives the images it gives alone.
    let mut srv = start_batching(1, 8, None, Duration::from_secs(120)).await;
    let big = r#"{"class_label": 1, "num_inference_steps": 6, "num_images": 64, "seed": 9}"#;
    let big_task = {
        let addr = srv.addr;
        tokio::spawn(async move { post(addr, big).await })
    };
    until_metric(
        srv.addr,
        "sampler_rows_in_flight",
        128.0,
        Duration::from_secs(10),
    )
    .await;
    for seed in 0..3 {
        let body = format!(r#"{{"class_label": 2, "num_inference_steps": 6, "seed": {seed}}}"#);
        let r = post(srv.addr, &body).await;
        assert_eq!(r.status, 200);
        assert!(
            !big_task.is_finished(),
            "small request {seed} waited for the big one"
        );
    }
    let r = big_task.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let images = r.json()["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 64);
    // Alone in the library, one model call of 128 rows per step.
    let device = Device::flex();
    let (model, config) = diffusion::weights::load_model(&weights(), &device).unwrap();
    let scheduler = config
        .scheduler(&SamplerSettings {
            sampler: SamplerKind::Ddpm,
            num_inference_steps: 6,
            eta: 0.0,
            use_karras_sigmas: false,
        })
        .unwrap();
    let request = SampleRequest {
        image_shape: config.unet.image_shape(),
        class_labels: vec![Some(1); 64],
        guidance_scale: 3.0,
        seed: 9,
    };
    let values = to_host(
        Sampling::new(&model, &scheduler, &request, &device)
            .unwrap()
            .run(|_| {}),
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for (i, (img, got)) in values.chunks_exact(64).zip(&images).enumerate() {
        let want = b64.encode(server::worker::image_png(img, [1, 8, 8]));
        assert_eq!(
            got.as_str().unwrap(),
            want,
            "image {i} differs from the run alone"
        );
    }
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

/// loadgen's mixed requests take the served model's classes from `GET /v1/model` and are all
/// served (an unconditional model would get `"class_label": null`, not a 400 per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_asks_the_service_for_its_classes() {
    let mut srv = start_batching(1, 16, None, Duration::from_secs(60)).await;
    let addr = srv.addr.to_string();
    let classes = server::load::model_classes(&addr).await.unwrap();
    assert_eq!(classes, Some(3));
    let bodies = server::load::mixed_requests(4, classes, 2, 0);
    let report = server::load::run_load(&addr, &bodies, 2, Duration::from_secs(60)).await;
    let statuses: Vec<&str> = report.outcomes.iter().map(|o| o.status.as_str()).collect();
    assert_eq!(statuses, ["200"; 4]);
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}

/// An RGB model imported from diffusers (`tests/golden/imported/`, 8×8, unconditional) over
/// HTTP: colour PNGs of the model's size, the very images `trainer sample` gives for the same
/// request (the native golden the browser tests compare with too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_rgb_model_serves_its_colour_images() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/imported");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-rgb");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["google-style.safetensors", "google-style.json"] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    let mut srv = start_with(
        dir.join("google-style.safetensors"),
        1,
        8,
        None,
        Duration::from_secs(60),
    )
    .await;
    let r = post(
        srv.addr,
        r#"{"num_images": 4, "sampler": "ddim", "num_inference_steps": 10, "seed": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let npy = std::fs::read(golden.join("google-style-ddim-s3-n4.npy")).unwrap();
    let (values, shape) = artifacts::parse_npy(&npy).unwrap();
    assert_eq!(shape, vec![4, 3, 8, 8]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let images = r.json()["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 4);
    for (i, img) in images.iter().enumerate() {
        let png = b64.decode(img.as_str().unwrap()).unwrap();
        assert_eq!(png_dims(&png), (8, 8));
        assert_eq!(
            png,
            server::worker::image_png(&values[i * 192..(i + 1) * 192], [3, 8, 8])
        );
    }
    // A class for an unconditional model is a 4xx naming the field.
    let bad = post(srv.addr, r#"{"class_label": 1}"#).await;
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    assert!(String::from_utf8_lossy(&bad.body).contains("unconditional"));
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A base64 PNG of a `side` × `side` grey pattern (values in [-1, 1] from `f`).
fn png_b64(side: usize, f: impl Fn(usize) -> f32) -> String {
    use base64::Engine;
    let values: Vec<f32> = (0..side * side).map(f).collect();
    let png = artifacts::png_bytes(&artifacts::grid(&values, [1, 1, side, side], 1, 0, 1));
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// SDEdit and inpainting over HTTP: the very images the library gives for the same request,
/// and every bad combination of the new fields a 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_image_and_mask_edit_as_the_library_does() {
    let mut srv = start(1, Duration::from_secs(60)).await;
    let image = png_b64(8, |i| if (i / 8) % 3 == 0 { 0.8 } else { -0.6 });
    let mask = png_b64(8, |i| if i >= 32 { 1.0 } else { -1.0 });
    let (model, cfg) = diffusion::weights::load_model(&weights(), &Device::flex()).unwrap();
    let device = Device::flex();
    let image_values = {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(&image)
            .unwrap();
        artifacts::image_values(&png, 1, 8, false).unwrap()
    };
    let to4 = |v: Vec<f32>| {
        burn::tensor::Tensor::<4>::from_data(
            burn::tensor::TensorData::new(v, [2, 1, 8, 8]),
            &device,
        )
    };
    let request = SampleRequest {
        image_shape: [1, 8, 8],
        class_labels: vec![Some(1); 2],
        guidance_scale: 2.0,
        seed: 4,
    };
    // SDEdit, DDIM 10 steps at strength 0.6.
    let body = format!(
        r#"{{"class_label": 1, "guidance_scale": 2.0, "sampler": "ddim", "num_inference_steps": 10, "seed": 4, "num_images": 2, "init_image": "{image}", "strength": 0.6}}"#
    );
    let r = post(srv.addr, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let scheduler = cfg
        .scheduler(&SamplerSettings {
            sampler: SamplerKind::Ddim,
            num_inference_steps: 10,
            ..Default::default()
        })
        .unwrap();
    let values = to_host(
        Sampling::new(&model, &scheduler, &request, &device)
            .unwrap()
            .with_init_image(to4(image_values.repeat(2)), 0.6)
            .unwrap()
            .run(|_| {}),
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let pngs: Vec<Vec<u8>> = r.json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| b64.decode(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(pngs[1], server::worker::image_png(&values[64..], [1, 8, 8]));
    // Inpainting, RePaint 10 steps with jumps.
    let body = format!(
        r#"{{"class_label": 1, "guidance_scale": 2.0, "num_inference_steps": 10, "seed": 4, "num_images": 2, "init_image": "{image}", "mask": "{mask}", "jump_length": 3, "jump_n_sample": 2}}"#
    );
    let r = post(srv.addr, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let keep: Vec<f32> = (0..64).map(|i| if i >= 32 { 0.0 } else { 1.0 }).collect();
    let repaint = diffusion::sampler::AnyScheduler::RePaint(
        diffusion::sampler::RePaintSchedulerConfig {
            num_inference_steps: 10,
            jump_length: 3,
            jump_n_sample: 2,
            ..Default::default()
        }
        .init(&cfg.schedule.build().unwrap(), cfg.prediction_type)
        .unwrap(),
    );
    let values = to_host(
        Sampling::new(&model, &repaint, &request, &device)
            .unwrap()
            .with_inpainting(to4(image_values.repeat(2)), to4(keep.repeat(2)))
            .unwrap()
            .run(|_| {}),
    );
    let png = b64.decode(r.json()["images"][0].as_str().unwrap()).unwrap();
    assert_eq!(png, server::worker::image_png(&values[..64], [1, 8, 8]));
    // Bad combinations.
    let big = png_b64(16, |_| 0.0);
    let cases = [
        (
            format!(r#"{{"mask": "{mask}"}}"#),
            "mask: applies to an init_image",
        ),
        (
            r#"{"strength": 0.5}"#.to_string(),
            "strength: applies to an init_image",
        ),
        (
            r#"{"init_image": "!!"}"#.to_string(),
            "init_image: not base64",
        ),
        (
            r#"{"init_image": "aGVsbG8="}"#.to_string(),
            "init_image: not a readable image",
        ),
        (
            format!(r#"{{"init_image": "{big}"}}"#),
            "init_image: the image is 16×16; the model takes 8×8",
        ),
        (
            format!(r#"{{"init_image": "{image}", "strength": 1.5}}"#),
            "strength = 1.5 must lie in (0, 1]",
        ),
        (
            format!(r#"{{"init_image": "{image}", "strength": 0.01}}"#),
            "leaves no step to take",
        ),
        (
            format!(r#"{{"init_image": "{image}", "mask": "{mask}", "strength": 0.5}}"#),
            "strength: applies to SDEdit",
        ),
        (
            format!(r#"{{"init_image": "{image}", "mask": "{mask}", "sampler": "ddim"}}"#),
            "sampler: inpainting",
        ),
        (
            format!(r#"{{"init_image": "{image}", "jump_length": 3}}"#),
            "jump_length: applies to inpainting",
        ),
        (
            format!(r#"{{"init_image": "{image}", "mask": "{big}"}}"#),
            "mask: the image is 16×16",
        ),
        (
            format!(r#"{{"init_image": "{image}", "mask": "{mask}", "jump_n_sample": 0}}"#),
            "jump_n_sample: 0",
        ),
    ];
    for (body, needle) in cases {
        let r = post(srv.addr, &body).await;
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(r.status, 422, "{body} → {msg}");
        assert!(
            msg.contains(needle) && !msg.contains('\n'),
            "`{msg}` lacks `{needle}`"
        );
    }
    srv.stop.take().unwrap().send(()).unwrap();
    srv.done.await.unwrap().unwrap();
}
