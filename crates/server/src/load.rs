//! Closed-loop load against the service: a fixed number of requests from a fixed number of
//! clients, stopped at a time limit, over plain HTTP/1.1 on loopback; and the mixed requests of
//! the batching benchmark. The `loadgen` binary drives it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One answered (or failed) request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `200`, `503`, …, or `error (…)` / `time limit`.
    pub status: String,
    /// Seconds from connecting to the last byte.
    pub seconds: f64,
    /// Images the request asked for.
    pub images: usize,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Clients sending at once.
    pub concurrency: usize,
    /// Wall time of the run, seconds.
    pub wall_s: f64,
    /// Every request, in completion order per client.
    pub outcomes: Vec<Outcome>,
}

impl LoadReport {
    /// Latencies of the requests answered with `status`, sorted.
    pub fn latencies(&self, status: &str) -> Vec<f64> {
        let mut l: Vec<f64> = self
            .outcomes
            .iter()
            .filter(|o| o.status == status)
            .map(|o| o.seconds)
            .collect();
        l.sort_by(f64::total_cmp);
        l
    }

    /// Images of the 200 answers per second of wall time.
    pub fn images_per_s(&self) -> f64 {
        let images: usize = self
            .outcomes
            .iter()
            .filter(|o| o.status == "200")
            .map(|o| o.images)
            .sum();
        images as f64 / self.wall_s
    }

    /// The share of requests answered 503.
    pub fn busy_rate(&self) -> f64 {
        let busy = self.outcomes.iter().filter(|o| o.status == "503").count();
        busy as f64 / self.outcomes.len().max(1) as f64
    }

    /// Counts and latency percentiles by status, one line each.
    pub fn summary(&self) -> String {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &self.outcomes {
            *by.entry(o.status.as_str()).or_default() += 1;
        }
        let ok = by.get("200").copied().unwrap_or(0);
        let mut out = format!(
            "{} requests in {:.2} s at concurrency {}: {:.3} req/s, {:.3} successful req/s, {:.2} images/s\n",
            self.outcomes.len(),
            self.wall_s,
            self.concurrency,
            self.outcomes.len() as f64 / self.wall_s,
            ok as f64 / self.wall_s,
            self.images_per_s()
        );
        for status in by.keys() {
            let lat = self.latencies(status);
            out.push_str(&format!(
                "  {status:>12}: {:4}  p50 {:8.1} ms  p99 {:8.1} ms  max {:8.1} ms\n",
                lat.len(),
                percentile(&lat, 0.5) * 1e3,
                percentile(&lat, 0.99) * 1e3,
                lat.last().copied().unwrap_or(0.0) * 1e3
            ));
        }
        out
    }
}

/// The p-quantile of sorted values (nearest rank on `(n − 1) p`), 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The median of values in any order (the mean of the middle two for an even count), 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `POST /v1/generate` with `body` on a new connection; the status code.
pub async fn post_generate(addr: &str, body: &str) -> Result<u16, String> {
    let req = format!(
        "POST /v1/generate HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, &req).await.map(|(status, _)| status)
}

/// The classes of the model the service at `addr` serves (`GET /v1/model`'s `num_classes`;
/// `None`: unconditional).
pub async fn model_classes(addr: &str) -> Result<Option<usize>, String> {
    let req = format!("GET /v1/model HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, body) = exchange(addr, &req).await?;
    if status != 200 {
        return Err(format!("GET /v1/model answered {status}"));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET /v1/model: {e}"))?;
    match &info["num_classes"] {
        serde_json::Value::Null => Ok(None),
        k => k
            .as_u64()
            .map(|k| Some(k as usize))
            .ok_or_else(|| format!("GET /v1/model: num_classes {k} is not a count")),
    }
}

/// Sends one whole HTTP/1.1 request on a new connection and reads the answer to its end: the
/// status code and the body (the service answers with a `Content-Length`, never chunked).
async fn exchange(addr: &str, req: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let status = std::str::from_utf8(raw.get(9..12).ok_or("short response")?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |i| raw[i + 4..].to_vec());
    Ok((status, body))
}

/// Sends `bodies` (with the images each asks for) in order from `concurrency` clients, each
/// sending its next request when the last is answered, until all are sent or `time_limit`.
pub async fn run_load(
    addr: &str,
    bodies: &[(String, usize)],
    concurrency: usize,
    time_limit: Duration,
) -> LoadReport {
    let started = Instant::now();
    let deadline = started + time_limit;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = std::sync::Arc::new(bodies.to_vec());
    let mut clients = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, addr, bodies) = (next.clone(), addr.to_string(), bodies.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((body, images)) = bodies.get(i) else {
                    break;
                };
                let t0 = Instant::now();
                let left = deadline.saturating_duration_since(t0);
                let status = match tokio::time::timeout(left, post_generate(&addr, body)).await {
                    Ok(Ok(s)) => s.to_string(),
                    Ok(Err(e)) => format!("error ({e})"),
                    Err(_) => "time limit".into(),
                };
                outcomes.push(Outcome {
                    status,
                    seconds: t0.elapsed().as_secs_f64(),
                    images: *images,
                });
                if Instant::now() >= deadline {
                    break;
                }
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.unwrap_or_default());
    }
    LoadReport {
        concurrency,
        wall_s: started.elapsed().as_secs_f64(),
        outcomes,
    }
}

/// `n` mixed requests for a model with `num_classes` classes (`None`: unconditional, so every
/// request asks for `"class_label": null`), the same for a seed: 20–50 steps, guidance 0–5,
/// DDIM or DDPM, 1–`max_images` images, any class, each with the images it asks for.
pub fn mixed_requests(
    n: usize,
    num_classes: Option<usize>,
    max_images: usize,
    seed: u64,
) -> Vec<(String, usize)> {
    // SplitMix64: a fixed, portable stream.
    let mut state = seed;
    let mut next = move |k: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % k
    };
    (0..n)
        .map(|_| {
            let steps = 20 + next(31);
            let guidance = next(11) as f64 / 2.0;
            let sampler = ["ddim", "ddpm"][next(2) as usize];
            let images = 1 + next(max_images.max(1) as u64) as usize;
            let class = num_classes.map_or("null".to_string(), |k| {
                next(k.max(1) as u64).to_string()
            });
            let seed = next(1 << 40);
            let body = format!(
                r#"{{"class_label": {class}, "guidance_scale": {guidance}, "sampler": "{sampler}", "num_inference_steps": {steps}, "num_images": {images}, "seed": {seed}}}"#
            );
            (body, images)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_requests_cover_the_ranges_and_repeat_for_a_seed() {
        let r = mixed_requests(200, Some(10), 4, 7);
        assert_eq!(r[..5], mixed_requests(5, Some(10), 4, 7)[..]);
        assert!(mixed_requests(50, Some(10), 1, 7)
            .iter()
            .all(|(_, n)| *n == 1));
        // An unconditional model gets no class.
        assert!(mixed_requests(50, None, 4, 7)
            .iter()
            .all(|(b, _)| b.contains("\"class_label\": null")));
        let values = |key: &str| -> Vec<f64> {
            r.iter()
                .map(|(b, _)| {
                    serde_json::from_str::<serde_json::Value>(b).unwrap()[key]
                        .as_f64()
                        .unwrap()
                })
                .collect()
        };
        let range = |v: Vec<f64>| {
            (
                v.iter().copied().fold(f64::MAX, f64::min),
                v.iter().copied().fold(f64::MIN, f64::max),
            )
        };
        assert_eq!(range(values("num_inference_steps")), (20.0, 50.0));
        assert_eq!(range(values("guidance_scale")), (0.0, 5.0));
        assert_eq!(range(values("num_images")), (1.0, 4.0));
        assert_eq!(range(values("class_label")), (0.0, 9.0));
        assert!(
            r.iter().any(|(b, _)| b.contains("\"ddim\""))
                && r.iter().any(|(b, _)| b.contains("\"ddpm\""))
        );
        assert!(r
            .iter()
            .all(|(b, n)| b.contains(&format!("\"num_images\": {n}"))));
    }

    #[test]
    fn percentiles_and_rates() {
        let report = LoadReport {
            concurrency: 2,
            wall_s: 2.0,
            outcomes: [("200", 1.0, 3), ("200", 3.0, 1), ("503", 0.001, 2)]
                .into_iter()
                .map(|(s, t, n)| Outcome {
                    status: s.into(),
                    seconds: t,
                    images: n,
                })
                .collect(),
        };
        assert_eq!(report.images_per_s(), 2.0);
        assert!((report.busy_rate() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(report.latencies("200"), vec![1.0, 3.0]);
        assert_eq!(percentile(&report.latencies("200"), 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
