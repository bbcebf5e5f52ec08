//! Closed-loop load against the service: a fixed number of requests from a fixed number of
//! clients, stopped at a time limit, over plain HTTP/1.1 on loopback; the mixed requests of
//! the batching benchmark; and a soak (mixed load for a set time, reported per time window
//! with the server's memory). The `loadgen` binary drives it.

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
/// DDIM, DDPM, DPM-Solver++ or SDE-DPM-Solver++, 1–`max_images` images, any class, each with
/// the images it asks for.
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
            let sampler = ["ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++"][next(4) as usize];
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

/// One request of a soak: when it finished and how.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Seconds from the soak's start to its answer.
    pub at_s: f64,
    /// Its outcome.
    pub outcome: Outcome,
}

/// A soak's record: every request with its time, and the server's memory over time.
#[derive(Debug, Clone, Default)]
pub struct Soak {
    /// Clients sending at once.
    pub concurrency: usize,
    /// Seconds it ran.
    pub wall_s: f64,
    /// Every request, in completion order.
    pub requests: Vec<Timed>,
    /// `(seconds from start, resident set in bytes)` of the server, sampled.
    pub rss: Vec<(f64, u64)>,
}

/// One time window of a soak.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Its end, seconds from the start.
    pub end_s: f64,
    /// Requests answered 200.
    pub ok: usize,
    /// Requests answered 503.
    pub busy: usize,
    /// Requests answered otherwise or not at all (errors, 4xx, 5xx other than 503).
    pub errors: usize,
    /// Images of the 200 answers per second.
    pub images_per_s: f64,
    /// Latency percentiles of the 200 answers, seconds.
    pub p50_s: f64,
    /// The 99th percentile.
    pub p99_s: f64,
    /// The server's resident set at the window's last sample, MiB.
    pub rss_mib: Option<f64>,
}

impl Soak {
    /// The record cut into windows of `window_s` seconds (the last may be shorter).
    pub fn windows(&self, window_s: f64) -> Vec<Window> {
        let n = (self.wall_s / window_s).ceil().max(1.0) as usize;
        (0..n)
            .map(|i| {
                let (start, end) = (
                    i as f64 * window_s,
                    ((i + 1) as f64 * window_s).min(self.wall_s),
                );
                let here: Vec<&Outcome> = self
                    .requests
                    .iter()
                    .filter(|t| t.at_s >= start && (t.at_s < end || (i + 1 == n && t.at_s <= end)))
                    .map(|t| &t.outcome)
                    .collect();
                let mut lat: Vec<f64> = here
                    .iter()
                    .filter(|o| o.status == "200")
                    .map(|o| o.seconds)
                    .collect();
                lat.sort_by(f64::total_cmp);
                let images: usize = here
                    .iter()
                    .filter(|o| o.status == "200")
                    .map(|o| o.images)
                    .sum();
                let busy = here.iter().filter(|o| o.status == "503").count();
                Window {
                    end_s: end,
                    ok: lat.len(),
                    busy,
                    errors: here.len() - lat.len() - busy,
                    images_per_s: images as f64 / (end - start).max(1e-9),
                    p50_s: percentile(&lat, 0.5),
                    p99_s: percentile(&lat, 0.99),
                    rss_mib: self
                        .rss
                        .iter()
                        .filter(|(t, _)| *t <= end + 1e-9)
                        .next_back()
                        .map(|(_, b)| *b as f64 / (1 << 20) as f64),
                }
            })
            .collect()
    }

    /// The windows as a Markdown table, with a line for the whole run.
    pub fn table(&self, window_s: f64) -> String {
        let mut out = String::from(
            "| until | 200 | 503 | errors | images/s | p50 | p99 | server RSS |\n|---|---|---|---|---|---|---|---|\n",
        );
        let row = |w: &Window, label: String| {
            format!(
                "| {label} | {} | {} | {} | {:.2} | {:.2} s | {:.2} s | {} |\n",
                w.ok,
                w.busy,
                w.errors,
                w.images_per_s,
                w.p50_s,
                w.p99_s,
                w.rss_mib.map_or("–".into(), |m| format!("{m:.0} MiB"))
            )
        };
        for w in self.windows(window_s) {
            let t = w.end_s.round() as u64;
            out.push_str(&row(&w, format!("{}:{:02}", t / 60, t % 60)));
        }
        let all = self.windows(self.wall_s.max(1e-9));
        if let Some(w) = all.first() {
            out.push_str(&row(w, "**all**".into()));
        }
        out
    }

    /// An SVG of the windows: images/s, p50 and p99 latency, and the server's RSS over time,
    /// three panels sharing the time axis.
    pub fn svg(&self, window_s: f64, title: &str) -> String {
        let w = self.windows(window_s);
        let (width, panel, left, top) = (760.0, 150.0, 70.0, 40.0);
        let minutes = (self.wall_s / 60.0).max(1e-9);
        let x = |t: f64| left + (width - left - 20.0) * (t / 60.0) / minutes;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"14\">{}</text>\n",
            top + 3.0 * (panel + 30.0) + 20.0,
            xml_escape(title)
        );
        let series: [(&str, Vec<(&str, &str, Vec<(f64, f64)>)>); 3] = [
            (
                "images/s",
                vec![(
                    "images/s",
                    "#1f77b4",
                    w.iter().map(|w| (w.end_s, w.images_per_s)).collect(),
                )],
            ),
            (
                "latency (s)",
                vec![
                    (
                        "p50",
                        "#2ca02c",
                        w.iter().map(|w| (w.end_s, w.p50_s)).collect(),
                    ),
                    (
                        "p99",
                        "#d62728",
                        w.iter().map(|w| (w.end_s, w.p99_s)).collect(),
                    ),
                ],
            ),
            (
                "server RSS (MiB)",
                vec![(
                    "RSS",
                    "#9467bd",
                    self.rss
                        .iter()
                        .map(|&(t, b)| (t, b as f64 / (1 << 20) as f64))
                        .collect(),
                )],
            ),
        ];
        for (i, (label, lines)) in series.iter().enumerate() {
            let y0 = top + i as f64 * (panel + 30.0);
            let max = lines
                .iter()
                .flat_map(|l| l.2.iter().map(|p| p.1))
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.1;
            let y = |v: f64| y0 + panel - panel * v / max;
            svg.push_str(&format!(
                "<rect x=\"{left}\" y=\"{y0}\" width=\"{}\" height=\"{panel}\" fill=\"none\" stroke=\"#999\"/>\n<text x=\"4\" y=\"{}\">{label}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n",
                width - left - 20.0,
                y0 - 6.0,
                left - 4.0,
                y0 + 12.0,
                format_tick(max),
                left - 4.0,
                y0 + panel
            ));
            for (j, (name, colour, points)) in lines.iter().enumerate() {
                let path: Vec<String> = points
                    .iter()
                    .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
                    .collect();
                svg.push_str(&format!(
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>\n",
                    path.join(" "),
                    width - 80.0,
                    y0 + 16.0 + 14.0 * j as f64
                ));
            }
        }
        let axis_y = top + 3.0 * (panel + 30.0) - 14.0;
        for k in 0..=4 {
            let t = self.wall_s * k as f64 / 4.0;
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{axis_y}\" text-anchor=\"middle\">{:.0} min</text>\n",
                x(t),
                t / 60.0
            ));
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn format_tick(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Mixed load for `duration`: `concurrency` clients, each sending the next of
/// [`mixed_requests`]' stream (for the served model's `num_classes`) when its last is answered,
/// each request with a time limit of `request_limit`; `rss` is sampled every `rss_every`.
pub async fn soak(
    addr: &str,
    num_classes: Option<usize>,
    max_images: usize,
    seed: u64,
    concurrency: usize,
    duration: Duration,
    request_limit: Duration,
    rss_every: Duration,
    rss: impl Fn() -> Option<u64> + Send + 'static,
) -> Soak {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let started = Instant::now();
    let deadline = started + duration;
    // A long stream from one seed: request i is the same in every soak with that seed.
    let bodies = Arc::new(mixed_requests(100_000, num_classes, max_images, seed));
    let next = Arc::new(AtomicUsize::new(0));
    let record = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            if let Some(b) = rss() {
                samples.push((started.elapsed().as_secs_f64(), b));
            }
            tokio::time::sleep(rss_every.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        if let Some(b) = rss() {
            samples.push((started.elapsed().as_secs_f64(), b));
        }
        samples
    });
    let mut clients = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, bodies, record, addr) = (
            next.clone(),
            bodies.clone(),
            record.clone(),
            addr.to_string(),
        );
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) % bodies.len();
                let (body, images) = &bodies[i];
                let t0 = Instant::now();
                let status =
                    match tokio::time::timeout(request_limit, post_generate(&addr, body)).await {
                        Ok(Ok(s)) => s.to_string(),
                        Ok(Err(e)) => format!("error ({e})"),
                        Err(_) => "time limit".into(),
                    };
                let outcome = Outcome {
                    status,
                    seconds: t0.elapsed().as_secs_f64(),
                    images: *images,
                };
                let at_s = started.elapsed().as_secs_f64();
                record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Timed { at_s, outcome });
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    let rss = sampler.await.unwrap_or_default();
    let requests = std::mem::take(&mut *record.lock().unwrap_or_else(|e| e.into_inner()));
    Soak {
        concurrency,
        wall_s: started.elapsed().as_secs_f64(),
        requests,
        rss,
    }
}

/// The resident set of process `pid` (`/proc/PID/status`'s VmRSS), bytes; `None` where there
/// is no such file (not Linux, or the process is gone).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
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
        for sampler in ["ddim", "ddpm", "dpmsolver++", "sde-dpmsolver++"] {
            let name = format!("\"{sampler}\"");
            assert!(r.iter().any(|(b, _)| b.contains(&name)), "{sampler}");
        }
        assert!(r
            .iter()
            .all(|(b, n)| b.contains(&format!("\"num_images\": {n}"))));
    }

    #[test]
    fn a_soak_is_cut_into_windows() {
        let ok = |at_s, seconds, images| Timed {
            at_s,
            outcome: Outcome {
                status: "200".into(),
                seconds,
                images,
            },
        };
        let mut s = Soak {
            concurrency: 2,
            wall_s: 25.0,
            requests: vec![
                ok(1.0, 1.0, 2),
                ok(9.0, 3.0, 1),
                ok(12.0, 2.0, 4),
                ok(25.0, 4.0, 1),
            ],
            rss: vec![
                (0.0, 100 << 20),
                (10.0, 101 << 20),
                (20.0, 101 << 20),
                (25.0, 102 << 20),
            ],
        };
        s.requests.push(Timed {
            at_s: 15.0,
            outcome: Outcome {
                status: "503".into(),
                seconds: 0.001,
                images: 1,
            },
        });
        let w = s.windows(10.0);
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].ok, w[0].busy, w[0].errors), (2, 0, 0));
        assert_eq!(w[0].images_per_s, 0.3);
        assert_eq!((w[0].p50_s, w[0].p99_s), (3.0, 3.0));
        assert_eq!(w[0].rss_mib, Some(101.0));
        assert_eq!((w[1].ok, w[1].busy), (1, 1));
        // The last window is 5 s long and holds the request that ended with the run.
        assert_eq!((w[2].end_s, w[2].ok, w[2].images_per_s), (25.0, 1, 0.2));
        assert_eq!(w[2].rss_mib, Some(102.0));
        let table = s.table(10.0);
        assert!(table.contains("| **all** | 4 | 1 | 0 |"), "{table}");
        assert!(s.svg(10.0, "t").starts_with("<svg"));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
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
