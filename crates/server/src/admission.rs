//! Admission by capacity and deadline: which requests the service takes, and in what order the
//! executors start them.
//!
//! A request is weighed in *rows* (its images, twice when guided: both passes of every model
//! call) and *work* (rows × steps: the row-predictions it needs). It is admitted
//!
//! - when it can join a batch now (nothing waits, and an executor has room for its share of a
//!   call), or
//! - when its predicted completion — from the fitted cost of a model call ([`StepTime`]) and
//!   the work in flight and waiting ahead of it — is within [`DEADLINE_HEADROOM`] of its time
//!   limit,
//!
//! and in both cases only while the rows held (in flight + waiting) stay within `max_rows`, the
//! bound that protects memory. Otherwise it is refused at once with a `Retry-After` from the
//! same prediction: the time until enough of the work ahead has drained for it to be admitted.
//!
//! Waiting requests start in arrival order (FIFO). An executor takes the next one while the
//! shares of its runs fit in a call of `max_batch` rows, a run's share being its rows capped at
//! `max_request_rows`: a many-image request puts at most that many rows in a call while others
//! run beside it, so it never holds a whole batch (its step's model call is spread over several
//! calls, with the same pixels: [`diffusion::sampler::step_in_parts`]) — and it takes whatever
//! the others leave, so alone it fills the batch. A request that goes away (its client
//! disconnected, or its time limit passed) leaves the queue at once, or its batch at the next
//! step.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use diffusion::Scheduler;
use tokio::sync::oneshot;

use crate::api::Job;
use crate::metrics::Metrics;
use crate::step_time::StepTime;
use crate::worker::JobOutput;

/// A request is admitted on a prediction only when it would finish within this share of its
/// time limit: the prediction is a fit, and the machine's speed drifts.
pub const DEADLINE_HEADROOM: f64 = 0.8;

/// The sample state every held row keeps (x_t, x̂_0, noise, the model's output and the
/// guidance passes' copies, in f32): what the default `max_rows` is sized by.
const ROW_COPIES: usize = 8;

/// Memory the default `max_rows` allows for the rows' sample state.
const DEFAULT_ROW_BUDGET_BYTES: usize = 256 << 20;

/// The default bound on rows held (in flight + waiting) for a model whose images have
/// `image_elems` values: as many rows as [`DEFAULT_ROW_BUDGET_BYTES`] of sample state holds,
/// at least four full batches per executor, at most 65,536.
pub fn default_max_rows(image_elems: usize, executors: usize, max_batch: usize) -> usize {
    let per_row = image_elems.max(1) * 4 * ROW_COPIES;
    (DEFAULT_ROW_BUDGET_BYTES / per_row).clamp(4 * executors.max(1) * max_batch.max(1), 1 << 16)
}

/// How the pool admits and batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Batch executors.
    pub executors: usize,
    /// Rows per model call.
    pub max_batch: usize,
    /// Rows one request puts in a call while others share it.
    pub max_request_rows: usize,
    /// Rows held at most: in flight and waiting.
    pub max_rows: usize,
    /// Each request's time limit (waiting and sampling).
    pub timeout: Duration,
}

/// A submitted request until an executor answers it.
pub(crate) struct Task {
    pub(crate) id: u64,
    pub(crate) job: Job,
    /// Rows of each of its model calls.
    pub(crate) rows: usize,
    pub(crate) cancelled: Arc<AtomicBool>,
    pub(crate) reply: oneshot::Sender<Result<JobOutput, String>>,
    pub(crate) queued: Instant,
    /// When its time limit passes.
    pub(crate) deadline: Instant,
}

impl Task {
    fn steps(&self) -> usize {
        self.job.scheduler.timesteps().len()
    }

    /// Its row-predictions: rows × steps.
    fn work(&self) -> f64 {
        (self.rows * self.steps()) as f64
    }
}

/// The model calls a run with `work` row-predictions left needs at `share` rows per call.
pub(crate) fn calls_left(work: f64, share: usize) -> f64 {
    (work / share.max(1) as f64).ceil()
}

/// What one executor holds, as it last reported.
#[derive(Debug, Clone, Default)]
pub(crate) struct Load {
    /// Runs in flight.
    pub(crate) runs: usize,
    /// Their rows.
    pub(crate) rows: usize,
    /// Their shares of a call (rows capped at `max_request_rows`).
    pub(crate) share: usize,
    /// Their row-predictions left.
    pub(crate) work: f64,
    /// Each run's deadline and the model calls it still needs (at its share per call).
    pub(crate) deadlines: Vec<(Instant, f64)>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// It would not finish within its time limit behind the work ahead.
    Deadline {
        /// Seconds until it would (the work ahead drained, none arriving).
        retry_after_s: u64,
        /// Its predicted completion, seconds.
        predicted_s: f64,
    },
    /// The rows held would pass `max_rows`.
    Capacity {
        /// Seconds until enough rows are free (predicted).
        retry_after_s: u64,
    },
    /// It alone has more rows than `max_rows`: it can never be admitted.
    TooLarge {
        /// Its rows.
        rows: usize,
        /// The bound.
        max_rows: usize,
    },
    /// The service is shutting down.
    Closed,
}

struct Inner {
    waiting: VecDeque<Task>,
    rows_waiting: usize,
    work_waiting: f64,
    executors: Vec<Load>,
    step_time: StepTime,
    closed: bool,
    next_id: u64,
}

/// The admission controller shared by the handlers and the executors.
pub struct Admission {
    inner: Mutex<Inner>,
    ready: Condvar,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl Admission {
    /// A controller for `limits`, its call cost starting from `calibration` (`(rows, seconds)`
    /// of timed model calls).
    pub fn new(limits: Limits, calibration: &[(usize, f64)], metrics: Arc<Metrics>) -> Self {
        let limits = Limits {
            executors: limits.executors.max(1),
            max_batch: limits.max_batch.max(1),
            max_request_rows: limits.max_request_rows.clamp(1, limits.max_batch.max(1)),
            max_rows: limits.max_rows.max(1),
            ..limits
        };
        metrics.set_max_rows(limits.max_rows);
        Self {
            inner: Mutex::new(Inner {
                waiting: VecDeque::new(),
                rows_waiting: 0,
                work_waiting: 0.0,
                executors: vec![Load::default(); limits.executors],
                step_time: StepTime::new(calibration),
                closed: false,
                next_id: 0,
            }),
            ready: Condvar::new(),
            limits,
            metrics,
        }
    }

    /// The limits in force (after clamping).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A run's share of a call.
    pub(crate) fn share(&self, rows: usize) -> usize {
        rows.min(self.limits.max_request_rows)
    }

    /// Row-predictions per second of all executors with full batches.
    fn throughput(&self, inner: &Inner) -> f64 {
        let l = &self.limits;
        (l.executors * l.max_batch) as f64 / inner.step_time.seconds(l.max_batch).max(1e-9)
    }

    /// Rows held: waiting and in flight.
    fn held(inner: &Inner) -> usize {
        inner.rows_waiting + inner.executors.iter().map(|e| e.rows).sum::<usize>()
    }

    fn work_ahead(inner: &Inner) -> f64 {
        inner.work_waiting + inner.executors.iter().map(|e| e.work).sum::<f64>()
    }

    /// Predicted seconds until a request of `rows` rows and `steps` steps submitted now is
    /// done: the longer of its own steps (each a call, or several when its rows exceed its
    /// share; each call as large as the rows held and its own spread over the executors make
    /// it) and the drain of all the work ahead plus its own at full batches.
    fn predict(&self, inner: &Inner, held: usize, rows: usize, steps: usize) -> f64 {
        let l = &self.limits;
        let ahead = Self::work_ahead(inner);
        let per_call = if ahead > 0.0 {
            l.max_request_rows
        } else {
            l.max_batch
        };
        let call_rows = (held + rows).div_ceil(l.executors).min(l.max_batch);
        let own = (rows.div_ceil(per_call) * steps) as f64 * inner.step_time.seconds(call_rows);
        let drain = (ahead + (rows * steps) as f64) / self.throughput(inner);
        own.max(drain)
    }

    /// Whether `rows` more rows beside the `held` ones would make a run in flight miss its
    /// deadline that it would have met: its calls grow with the rows beside it. If so,
    /// `(seconds until the slowest such run is done, its predicted completion)`.
    fn delays_others(&self, inner: &Inner, held: usize, rows: usize) -> Option<(u64, f64)> {
        let l = &self.limits;
        let rows_after = held + rows;
        let call = |rows: usize| {
            inner
                .step_time
                .seconds(rows.div_ceil(l.executors).clamp(1, l.max_batch))
        };
        let (now_t, after_t) = (call(held), call(rows_after));
        let now = Instant::now();
        inner
            .executors
            .iter()
            .flat_map(|e| &e.deadlines)
            .filter_map(|&(deadline, calls)| {
                let left =
                    deadline.saturating_duration_since(now).as_secs_f64() * DEADLINE_HEADROOM;
                (calls * now_t <= left && calls * after_t > left).then_some(calls * after_t)
            })
            .fold(None, |worst: Option<f64>, t| {
                Some(worst.map_or(t, |w| w.max(t)))
            })
            .map(|t| (t.ceil().max(1.0) as u64, t))
    }

    /// Submits a job of `rows` rows per call: queued (and an executor woken), or refused.
    pub(crate) fn submit(
        &self,
        job: Job,
        rows: usize,
        reply: oneshot::Sender<Result<JobOutput, String>>,
    ) -> Result<(u64, Arc<AtomicBool>), Refusal> {
        let l = self.limits;
        if rows > l.max_rows {
            return Err(Refusal::TooLarge {
                rows,
                max_rows: l.max_rows,
            });
        }
        let steps = job.scheduler.timesteps().len();
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refusal::Closed);
        }
        let held = Self::held(&inner);
        let refusal = if held + rows > l.max_rows {
            // Rows leave as the work ahead drains; enough of them for this one in about the
            // same share of the drain time.
            let excess = (held + rows - l.max_rows) as f64 / held.max(1) as f64;
            let drain = Self::work_ahead(&inner) / self.throughput(&inner);
            Some(Refusal::Capacity {
                retry_after_s: (excess * drain).ceil().max(1.0) as u64,
            })
        } else {
            let share = self.share(rows);
            let can_join = inner.waiting.is_empty()
                && inner
                    .executors
                    .iter()
                    .any(|e| e.runs == 0 || e.share + share <= l.max_batch);
            let predicted = self.predict(&inner, held, rows, steps);
            let allowed = l.timeout.as_secs_f64() * DEADLINE_HEADROOM;
            if !can_join && predicted > allowed {
                Some(Refusal::Deadline {
                    retry_after_s: (predicted - allowed).ceil().max(1.0) as u64,
                    predicted_s: predicted,
                })
            } else {
                self.delays_others(&inner, held, rows)
                    .map(|(retry_after_s, predicted_s)| Refusal::Deadline {
                        retry_after_s,
                        predicted_s,
                    })
            }
        };
        if let Some(r) = refusal {
            self.metrics
                .count_refused(matches!(r, Refusal::Capacity { .. }));
            return Err(r);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let cancelled = Arc::new(AtomicBool::new(false));
        let queued = Instant::now();
        let task = Task {
            id,
            job,
            rows,
            cancelled: cancelled.clone(),
            reply,
            queued,
            deadline: queued + l.timeout,
        };
        inner.rows_waiting += rows;
        inner.work_waiting += task.work();
        inner.waiting.push_back(task);
        self.metrics.count_admitted();
        self.publish(&inner);
        drop(inner);
        self.ready.notify_all();
        Ok((id, cancelled))
    }

    /// The request `id` went away: out of the queue now if it waits there (else its executor
    /// drops it at the next step, seeing `cancelled`).
    pub(crate) fn abandon(&self, id: u64, cancelled: &AtomicBool) {
        cancelled.store(true, Ordering::Relaxed);
        let mut inner = self.lock();
        if let Some(i) = inner.waiting.iter().position(|t| t.id == id) {
            if let Some(t) = inner.waiting.remove(i) {
                Self::unwait(&mut inner, &t);
                self.metrics.count_abandoned(1);
                self.publish(&inner);
            }
        }
    }

    fn unwait(inner: &mut Inner, t: &Task) {
        inner.rows_waiting -= t.rows;
        inner.work_waiting = (inner.work_waiting - t.work()).max(0.0);
    }

    /// Executor `executor` (holding `load`) takes the waiting requests that fit beside its
    /// runs, in arrival order, stopping at the first that does not. An idle executor (no
    /// runs) blocks until one arrives and takes at least one; `None` when the pool is closed
    /// and nothing waits.
    pub(crate) fn take(&self, executor: usize, load: Load) -> Option<Vec<Task>> {
        let l = self.limits;
        let mut inner = self.lock();
        loop {
            let mut taken = Vec::new();
            let mut mine = load.clone();
            while let Some(front) = inner.waiting.front() {
                let fits = mine.runs == 0 || mine.share + self.share(front.rows) <= l.max_batch;
                if !fits && !front.cancelled.load(Ordering::Relaxed) {
                    break;
                }
                let Some(t) = inner.waiting.pop_front() else {
                    break;
                };
                Self::unwait(&mut inner, &t);
                if t.cancelled.load(Ordering::Relaxed) {
                    self.metrics.count_abandoned(1);
                    continue;
                }
                self.metrics
                    .observe_queue_wait(t.queued.elapsed().as_secs_f64());
                mine.runs += 1;
                mine.rows += t.rows;
                mine.share += self.share(t.rows);
                mine.work += t.work();
                mine.deadlines
                    .push((t.deadline, calls_left(t.work(), self.share(t.rows))));
                taken.push(t);
            }
            // The taken requests count as this executor's at once, so that no submission sees
            // their rows and work in neither place.
            inner.executors[executor] = mine;
            self.publish(&inner);
            if !taken.is_empty() || load.runs > 0 {
                return Some(taken);
            }
            if inner.closed {
                return None;
            }
            inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Executor `executor` reports what it holds now and, after a model call, the call's rows
    /// and seconds (to fit the call cost).
    pub(crate) fn report(&self, executor: usize, load: Load, call: Option<(usize, f64)>) {
        let mut inner = self.lock();
        inner.executors[executor] = load;
        if let Some((rows, s)) = call {
            inner.step_time.observe(rows, s);
        }
        self.publish(&inner);
    }

    /// Stops admitting; idle executors return.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Writes the gauges.
    fn publish(&self, inner: &Inner) {
        let in_flight = inner.executors.iter().map(|e| e.rows).sum();
        let runs = inner.executors.iter().map(|e| e.runs).sum();
        let wait = Self::work_ahead(inner) / self.throughput(inner);
        self.metrics.set_admission(
            inner.waiting.len(),
            runs,
            inner.rows_waiting,
            in_flight,
            wait,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffusion::sampler::{SamplerKind, SamplerSettings};
    use diffusion::{ModelConfig, UNetConfig};

    fn job(steps: usize, images: usize) -> Job {
        let config = ModelConfig::new(UNetConfig::new(1, 8, 32, vec![1, 2], vec![]));
        Job {
            class_label: None,
            guidance_scale: 1.0,
            scheduler: config
                .scheduler(&SamplerSettings {
                    sampler: SamplerKind::Ddim,
                    num_inference_steps: steps,
                    eta: 0.0,
                    use_karras_sigmas: false,
                })
                .unwrap(),
            seed: 0,
            num_images: images,
            edit: None,
        }
    }

    fn admission(timeout_s: f64, max_rows: usize) -> Admission {
        let limits = Limits {
            executors: 1,
            max_batch: 8,
            max_request_rows: 4,
            max_rows,
            timeout: Duration::from_secs_f64(timeout_s),
        };
        // 10 ms + 1 ms per row: a full call (8 rows) takes 18 ms, 444 row-predictions/s.
        Admission::new(limits, &[(1, 0.011), (8, 0.018)], Arc::default())
    }

    fn submit(a: &Admission, steps: usize, rows: usize) -> Result<u64, Refusal> {
        let (tx, _rx) = oneshot::channel();
        a.submit(job(steps, rows), rows, tx).map(|(id, _)| id)
    }

    #[test]
    fn admits_by_deadline_and_capacity_and_says_when_to_retry() {
        // 10 s limit: 8 s allowed, ≈ 3,550 row-predictions at 444/s; each request is 100
        // (2 rows × 50 steps). The first joins at once; the others queue on the prediction.
        let a = admission(10.0, 1000);
        let admitted = (0..60).take_while(|_| submit(&a, 50, 2).is_ok()).count();
        assert!((34..=36).contains(&admitted), "{admitted}");
        match submit(&a, 50, 2) {
            Err(Refusal::Deadline {
                retry_after_s,
                predicted_s,
            }) => {
                assert!((8.0..8.5).contains(&predicted_s), "{predicted_s}");
                assert_eq!(retry_after_s, 1);
            }
            other => panic!("{other:?}"),
        }
        // A long request is told to come back later.
        match submit(&a, 1000, 8) {
            Err(Refusal::Deadline { retry_after_s, .. }) => assert!(retry_after_s >= 18),
            other => panic!("{other:?}"),
        }
        // Capacity: at most 10 rows held.
        let a = admission(1e6, 10);
        assert!(submit(&a, 10, 8).is_ok());
        assert!(matches!(submit(&a, 10, 4), Err(Refusal::Capacity { .. })));
        assert!(submit(&a, 10, 2).is_ok());
        assert_eq!(
            submit(&a, 10, 11),
            Err(Refusal::TooLarge {
                rows: 11,
                max_rows: 10
            })
        );
    }

    #[test]
    fn executors_take_in_order_while_shares_fit_and_abandoned_requests_leave() {
        let a = admission(1e6, 1000);
        let ids: Vec<u64> = [16, 2, 4, 2]
            .into_iter()
            .map(|rows| submit(&a, 10, rows).unwrap())
            .collect();
        // Shares: 16 rows → 4 (the cap), then 2 and the next 4 would make 10 > 8: it stops.
        let taken = a.take(0, Load::default()).unwrap();
        assert_eq!(taken.iter().map(|t| t.rows).collect::<Vec<_>>(), [16, 2]);
        let load = a.lock().executors[0].clone();
        assert_eq!((load.runs, load.rows, load.share), (2, 18, 6));
        assert_eq!(a.lock().rows_waiting, 6);
        // The request behind leaves the queue at once when its client goes.
        let flag = AtomicBool::new(false);
        a.abandon(ids[2], &flag);
        assert_eq!(a.lock().rows_waiting, 2);
        let more = a.take(0, load).unwrap();
        assert_eq!(more.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[3]]);
        a.close();
        assert!(a.take(0, Load::default()).is_none());
    }

    #[test]
    fn a_request_that_would_make_one_in_flight_miss_its_deadline_is_refused() {
        let a = admission(1e6, 1000);
        // One run in flight, 2 rows, 60 calls left and 1 s to its deadline: at 12 ms a call
        // (2 rows) it finishes in 0.72 s, within 80 % of the second.
        a.lock().executors[0] = Load {
            runs: 1,
            rows: 2,
            share: 2,
            work: 120.0,
            deadlines: vec![(Instant::now() + Duration::from_secs(1), 60.0)],
        };
        // 6 more rows would make its calls 18 ms: 1.08 s, past it. Refused, though there is
        // room in the batch, until it is done.
        match submit(&a, 10, 6) {
            Err(Refusal::Deadline {
                retry_after_s,
                predicted_s,
            }) => {
                assert_eq!(retry_after_s, 2);
                assert!((predicted_s - 1.08).abs() < 1e-6, "{predicted_s}");
            }
            other => panic!("{other:?}"),
        }
        // One more row keeps it within (13 ms a call: 0.78 s).
        assert!(submit(&a, 10, 1).is_ok());
    }

    #[test]
    fn the_default_bound_follows_the_image_size() {
        // 28×28 grey: 10,699 rows; 256×256 RGB: four full batches.
        assert_eq!(default_max_rows(784, 1, 32), 10_699);
        assert_eq!(default_max_rows(3 * 256 * 256, 1, 32), 128);
    }
}
