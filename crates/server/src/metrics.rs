//! Prometheus metrics, rendered in the text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds of the latency histogram, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Upper bounds of the rows-per-model-call histogram.
pub const ROW_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Upper bounds of the step-latency histogram, seconds.
pub const STEP_BUCKETS: [f64; 10] = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];

/// How far back `sampler_images_per_second` looks.
const RATE_WINDOW_S: f64 = 10.0;

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if value <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    /// The exposition lines of `name`, with `labels` (`key="value"`, or empty).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// The batch executors' measurements.
struct Batching {
    rows: Histogram,
    step: Histogram,
    queue_wait: Histogram,
    /// Images finished, with when, over the last [`RATE_WINDOW_S`].
    recent: std::collections::VecDeque<(std::time::Instant, usize)>,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            rows: Histogram::new(&ROW_BUCKETS),
            step: Histogram::new(&STEP_BUCKETS),
            queue_wait: Histogram::new(&LATENCY_BUCKETS),
            recent: Default::default(),
        }
    }
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batching: Mutex<Batching>,
    /// Images generated.
    pub images: AtomicU64,
    /// Jobs waiting to join a batch (in the queue, or taken from it and waiting for room).
    pub queue_depth: Arc<AtomicUsize>,
    /// Jobs being sampled right now.
    pub in_progress: Arc<AtomicUsize>,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut lat = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        lat.entry(route.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(seconds);
    }

    fn batching(&self) -> std::sync::MutexGuard<'_, Batching> {
        self.batching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one batched model call: its rows and how long the step took.
    pub fn observe_iteration(&self, rows: usize, seconds: f64) {
        let mut b = self.batching();
        b.rows.observe(rows as f64);
        b.step.observe(seconds);
    }

    /// Records how long a request waited in the queue before it was admitted.
    pub fn observe_queue_wait(&self, seconds: f64) {
        self.batching().queue_wait.observe(seconds);
    }

    /// Records `n` finished images (for `sampler_images_per_second`).
    pub fn observe_images(&self, n: usize) {
        let now = std::time::Instant::now();
        let mut b = self.batching();
        b.recent.push_back((now, n));
        Self::prune(&mut b.recent, now);
    }

    fn prune(
        recent: &mut std::collections::VecDeque<(std::time::Instant, usize)>,
        now: std::time::Instant,
    ) {
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() > RATE_WINDOW_S)
        {
            recent.pop_front();
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP http_requests_total HTTP requests by route and status.\n# TYPE http_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP http_request_duration_seconds Request latency by route.\n# TYPE http_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        let mut b = self.batching();
        out.push_str("# HELP sampler_batch_rows Rows per batched model call (a guided image counts twice).\n# TYPE sampler_batch_rows histogram\n");
        b.rows.render(&mut out, "sampler_batch_rows", "");
        out.push_str("# HELP sampler_step_seconds Time of one batched denoising step (model call and every request's scheduler step).\n# TYPE sampler_step_seconds histogram\n");
        b.step.render(&mut out, "sampler_step_seconds", "");
        out.push_str("# HELP sampler_queue_wait_seconds Time a request waited in the queue before it was admitted to a batch.\n# TYPE sampler_queue_wait_seconds histogram\n");
        b.queue_wait
            .render(&mut out, "sampler_queue_wait_seconds", "");
        let now = std::time::Instant::now();
        Self::prune(&mut b.recent, now);
        let images: usize = b.recent.iter().map(|(_, n)| n).sum();
        drop(b);
        let _ = writeln!(
            out,
            "# HELP sampler_images_per_second Images finished per second over the last {RATE_WINDOW_S} s.\n# TYPE sampler_images_per_second gauge\nsampler_images_per_second {}",
            images as f64 / RATE_WINDOW_S
        );
        let _ = writeln!(
            out,
            "# HELP sampler_queue_depth Jobs waiting to join a batch.\n# TYPE sampler_queue_depth gauge\nsampler_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP sampler_jobs_in_progress Jobs being sampled.\n# TYPE sampler_jobs_in_progress gauge\nsampler_jobs_in_progress {}",
            self.in_progress.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP images_generated_total Images generated.\n# TYPE images_generated_total counter\nimages_generated_total {}",
            self.images.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.observe("/v1/generate", 200, 0.3);
        m.observe("/v1/generate", 200, 3.0);
        m.observe("/v1/generate", 422, 0.001);
        let t = m.render();
        assert!(t.contains("http_requests_total{route=\"/v1/generate\",status=\"200\"} 2"));
        assert!(
            t.contains("http_request_duration_seconds_bucket{route=\"/v1/generate\",le=\"0.5\"} 2")
        );
        assert!(t.contains("http_request_duration_seconds_count{route=\"/v1/generate\"} 3"));
        assert!(t.contains("sampler_queue_depth 0"));
        // The batching histograms.
        m.observe_iteration(12, 0.03);
        m.observe_iteration(40, 0.2);
        m.observe_queue_wait(0.02);
        m.observe_images(5);
        let t = m.render();
        assert!(t.contains("sampler_batch_rows_bucket{le=\"16\"} 1"), "{t}");
        assert!(
            t.contains("sampler_batch_rows_bucket{le=\"+Inf\"} 2"),
            "{t}"
        );
        assert!(t.contains("sampler_batch_rows_sum 52"), "{t}");
        assert!(
            t.contains("sampler_step_seconds_bucket{le=\"0.05\"} 1"),
            "{t}"
        );
        assert!(t.contains("sampler_queue_wait_seconds_count 1"), "{t}");
        assert!(t.contains("sampler_images_per_second 0.5"), "{t}");
    }
}
