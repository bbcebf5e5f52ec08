//! Prometheus metrics, rendered in the text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
    admission: Mutex<AdmissionGauges>,
}

/// Admission's gauges and counters ([`crate::admission`]).
#[derive(Default)]
struct AdmissionGauges {
    requests_waiting: usize,
    requests_in_flight: usize,
    rows_waiting: usize,
    rows_in_flight: usize,
    max_rows: usize,
    predicted_wait_s: f64,
    admitted: u64,
    refused_deadline: u64,
    refused_capacity: u64,
    abandoned: u64,
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

    fn admission(&self) -> std::sync::MutexGuard<'_, AdmissionGauges> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the admission gauges: requests and rows waiting and in flight, and the predicted
    /// time for all of it to drain.
    pub fn set_admission(
        &self,
        requests_waiting: usize,
        requests_in_flight: usize,
        rows_waiting: usize,
        rows_in_flight: usize,
        predicted_wait_s: f64,
    ) {
        let mut a = self.admission();
        a.requests_waiting = requests_waiting;
        a.requests_in_flight = requests_in_flight;
        a.rows_waiting = rows_waiting;
        a.rows_in_flight = rows_in_flight;
        a.predicted_wait_s = predicted_wait_s;
    }

    /// Sets the bound on rows held.
    pub fn set_max_rows(&self, max_rows: usize) {
        self.admission().max_rows = max_rows;
    }

    /// Counts an admitted request.
    pub fn count_admitted(&self) {
        self.admission().admitted += 1;
    }

    /// Counts a refused request: by capacity (`max_rows`) or else by deadline.
    pub fn count_refused(&self, capacity: bool) {
        let mut a = self.admission();
        if capacity {
            a.refused_capacity += 1;
        } else {
            a.refused_deadline += 1;
        }
    }

    /// Counts `n` admitted requests that went away before their answer.
    pub fn count_abandoned(&self, n: usize) {
        self.admission().abandoned += n as u64;
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

    /// Records how long a request waited in the queue before an executor started it.
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
        let a = self.admission();
        let gauges: [(&str, &str, f64); 6] = [
            (
                "sampler_queue_depth",
                "Requests admitted and waiting to join a batch.",
                a.requests_waiting as f64,
            ),
            (
                "sampler_jobs_in_progress",
                "Requests being sampled.",
                a.requests_in_flight as f64,
            ),
            (
                "sampler_rows_waiting",
                "Rows (images, twice when guided) of the requests waiting.",
                a.rows_waiting as f64,
            ),
            (
                "sampler_rows_in_flight",
                "Rows of the requests being sampled.",
                a.rows_in_flight as f64,
            ),
            (
                "sampler_max_rows",
                "The bound on rows in flight + waiting (--max-rows).",
                a.max_rows as f64,
            ),
            (
                "sampler_predicted_wait_seconds",
                "Predicted time for the work in flight and waiting to finish.",
                a.predicted_wait_s,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sampler_admitted_total Requests admitted.\n# TYPE sampler_admitted_total counter\nsampler_admitted_total {}",
            a.admitted
        );
        let _ = writeln!(
            out,
            "# HELP sampler_refused_total Requests refused (503) by reason: deadline (would not finish within the time limit) or capacity (--max-rows).\n# TYPE sampler_refused_total counter\nsampler_refused_total{{reason=\"deadline\"}} {}\nsampler_refused_total{{reason=\"capacity\"}} {}",
            a.refused_deadline, a.refused_capacity
        );
        let _ = writeln!(
            out,
            "# HELP sampler_abandoned_total Admitted requests that went away before their answer (client gone or time limit); their rows were freed.\n# TYPE sampler_abandoned_total counter\nsampler_abandoned_total {}",
            a.abandoned
        );
        drop(a);
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
