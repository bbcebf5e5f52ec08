//! Sampling off the async runtime: batch executors behind a bounded queue, batching requests
//! step by step.
//!
//! Each executor thread builds its own copy of the model from the weight bytes and keeps a set
//! of requests in flight. Every iteration it admits waiting requests while their rows fit in
//! `max_batch` (a guided image counts twice: both passes), drops the abandoned ones (time limit,
//! client gone), and runs one step of every request in flight as one batched model call
//! ([`diffusion::sampler::step_together`]): requests at different steps, with different samplers,
//! step counts, classes and guidance scales share it, and each applies its own scheduler step
//! with its own noise stream. The model's forward is batch-invariant, so a request's pixels are
//! the same as when it runs alone. When the queue is full, [`Pool::submit`] refuses at once so the
//! handler can answer 503. A request too large for `max_batch` runs alone. A panic (a bug) fails
//! only the request it struck where that is known (starting a request; a model call that fails
//! is retried one request at a time from the states before it, so only a request that fails
//! alone is answered with the error) and otherwise the requests in flight; the executor itself
//! always goes on serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use artifacts::{grid, png_bytes};
use burn::tensor::Device;
use diffusion::sampler::{step_together, to_host, AnyScheduler, SamplingState};
use diffusion::weights::load_model_from_bytes;
use diffusion::{ModelConfig, SampleRequest, Scheduler, UNet};
use tokio::sync::oneshot;

use crate::api::Job;
use crate::metrics::Metrics;

/// The answer to a request that met a bug (a panic) while it was served.
const INTERNAL_ERROR: &str = "internal error while sampling";

/// What a worker returns: one PNG per image and the sampling time.
#[derive(Debug)]
pub struct JobOutput {
    /// PNG bytes, one per image.
    pub pngs: Vec<Vec<u8>>,
    /// Time from admission to the last step, milliseconds.
    pub elapsed_ms: f64,
}

struct Task {
    job: Job,
    cancelled: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<JobOutput, String>>,
    queued: Instant,
}

/// A request in flight.
struct Run {
    task: Task,
    state: SamplingState,
    admitted: Instant,
    /// Why its last step failed when it was retried alone (it is then answered with this).
    failed: Option<String>,
}

/// Why a job was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full.
    Busy,
    /// The workers are gone.
    Closed,
}

/// A handle to a submitted job.
pub struct Ticket {
    /// Resolves with the result.
    pub result: oneshot::Receiver<Result<JobOutput, String>>,
    /// Set it to abandon the job (checked between steps).
    pub cancelled: Arc<AtomicBool>,
}

/// The executor pool.
pub struct Pool {
    tx: SyncSender<Task>,
    metrics: Arc<Metrics>,
}

/// Encodes one image (values in [-1, 1], `[c, h, w]`) as PNG, exactly as
/// `trainer sample --num 1 --scale 1 --pad 0` writes it.
pub fn image_png(values: &[f32], [c, h, w]: [usize; 3]) -> Vec<u8> {
    png_bytes(&grid(values, [1, c, h, w], 1, 0, 1))
}

/// One executor: the model, its requests in flight and the queue it admits from.
struct Executor {
    model: UNet,
    config: ModelConfig,
    device: Device,
    max_batch: usize,
    metrics: Arc<Metrics>,
    active: Vec<Run>,
    /// Taken from the queue but not admitted yet: its rows did not fit.
    next: Option<(Task, SamplingState)>,
}

impl Executor {
    fn rows(&self) -> usize {
        self.active.iter().map(|r| r.state.rows()).sum()
    }

    /// Admits waiting requests while they fit; blocks for one when nothing is in flight.
    /// Returns false when the queue is closed and nothing is left to do.
    ///
    /// An idle executor holds the queue's lock while it waits for a request, so an executor
    /// with requests in flight only tries the lock: blocking on it would stall its requests
    /// until the next request arrived.
    fn admit(&mut self, rx: &Mutex<Receiver<Task>>) -> bool {
        loop {
            // A request taken earlier that waited for room keeps its sampling state.
            let (task, state) = match self.next.take() {
                Some((task, state)) => (task, Some(state)),
                None => {
                    let task = if self.active.is_empty() {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        match rx.recv() {
                            Ok(t) => t,
                            Err(_) => return false, // the pool is gone
                        }
                    } else {
                        let rx = match rx.try_lock() {
                            Ok(rx) => rx,
                            Err(TryLockError::Poisoned(e)) => e.into_inner(),
                            Err(TryLockError::WouldBlock) => return true,
                        };
                        match rx.try_recv() {
                            Ok(t) => t,
                            Err(_) => return true,
                        }
                    };
                    (task, None)
                }
            };
            // A task counts as queued until it is admitted (or dropped); one that waited, in
            // the queue or for room, may have been abandoned meanwhile.
            let dequeue = || self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if task.cancelled.load(Ordering::Relaxed) {
                dequeue();
                continue;
            }
            let state = match state.map_or_else(|| self.start_guarded(&task.job), Ok) {
                Ok(state) => state,
                Err(e) => {
                    dequeue();
                    let _ = task.reply.send(Err(e));
                    continue;
                }
            };
            if !self.active.is_empty() && self.rows() + state.rows() > self.max_batch {
                self.next = Some((task, state));
                return true;
            }
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .observe_queue_wait(task.queued.elapsed().as_secs_f64());
            self.metrics.in_progress.fetch_add(1, Ordering::Relaxed);
            self.active.push(Run {
                task,
                state,
                admitted: Instant::now(),
                failed: None,
            });
        }
    }

    /// [`Self::start`], a panic in it (a bug) answered as an error for this request alone.
    fn start_guarded(&self, job: &Job) -> Result<SamplingState, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start(job)))
            .unwrap_or_else(|_| Err(INTERNAL_ERROR.into()))
    }

    fn start(&self, job: &Job) -> Result<SamplingState, String> {
        #[cfg(test)]
        if job.seed == tests::PANIC_IN_START {
            panic!("a bug in start (test)");
        }
        let request = SampleRequest {
            image_shape: self.config.unet.image_shape(),
            class_labels: vec![job.class_label; job.num_images],
            guidance_scale: job.guidance_scale,
            seed: job.seed,
        };
        SamplingState::new(self.config.unet.num_classes, &request, &self.device)
            .map_err(|e| e.to_string())
    }

    /// After a panic outside the guarded calls (a bug): answers every request in flight, and
    /// the one waiting for room, with an error, so that the executor goes on serving instead of
    /// dying with them (its thread gone, later requests would wait for the time limit).
    fn recover(&mut self) {
        self.finish(|_| true, |_| Err(INTERNAL_ERROR.into()));
        if let Some((task, _)) = self.next.take() {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let _ = task.reply.send(Err(INTERNAL_ERROR.into()));
        }
    }

    /// Removes the runs `done` picks, answering each with `answer`.
    fn finish(
        &mut self,
        done: impl Fn(&Run) -> bool,
        answer: impl Fn(&Run) -> Result<JobOutput, String>,
    ) {
        let mut i = 0;
        while i < self.active.len() {
            if done(&self.active[i]) {
                let run = self.active.swap_remove(i);
                self.metrics.in_progress.fetch_sub(1, Ordering::Relaxed);
                let answer = answer(&run);
                let _ = run.task.reply.send(answer);
            } else {
                i += 1;
            }
        }
    }

    /// One step of every request in flight, in one model call. When that call fails (an error
    /// or a panic) with several requests in it, each is stepped again alone from its state
    /// before the call, so that only a request that fails by itself is answered with the error:
    /// the model's forward is batch-invariant, so the others' pixels do not change.
    fn step(&mut self) {
        self.finish(
            |r| r.task.cancelled.load(Ordering::Relaxed),
            |_| Err("cancelled".into()),
        );
        if self.active.is_empty() {
            return;
        }
        let rows = self.rows();
        let started = Instant::now();
        // Cheap: a state's tensor is shared, not copied. The retries start from these, so a
        // request whose own step failed half-way (its noise drawn, its sample not yet
        // updated) and succeeds alone continues from a whole state. (One whose step finished
        // before another's failed would be equally right continuing from where it is.)
        let before: Vec<SamplingState> = if self.active.len() > 1 {
            self.active.iter().map(|r| r.state.clone()).collect()
        } else {
            Vec::new()
        };
        if let Err(message) = step_guarded(&self.model, &mut self.active) {
            if before.is_empty() {
                self.finish(|_| true, |_| Err(message.clone()));
                return;
            }
            #[cfg(test)]
            tests::RETRIES.fetch_add(1, Ordering::Relaxed);
            for (run, state) in self.active.iter_mut().zip(before) {
                run.state = state;
                run.failed = step_guarded(&self.model, std::slice::from_mut(run)).err();
            }
            self.finish(
                |r| r.failed.is_some(),
                |r| Err(r.failed.clone().unwrap_or_default()),
            );
        }
        self.metrics
            .observe_iteration(rows, started.elapsed().as_secs_f64());
        let shape = self.config.unet.image_shape();
        let metrics = self.metrics.clone();
        self.finish(
            |r| r.state.steps_done() == r.task.job.scheduler.timesteps().len(),
            |r| {
                #[cfg(test)]
                if r.task.job.seed == tests::PANIC_IN_FINISH {
                    panic!("a bug in finish (test)");
                }
                let values = to_host(r.state.sample().clone());
                let per: usize = shape.iter().product();
                let pngs: Vec<Vec<u8>> = values
                    .chunks_exact(per)
                    .map(|img| image_png(img, shape))
                    .collect();
                metrics.observe_images(pngs.len());
                Ok(JobOutput {
                    pngs,
                    elapsed_ms: r.admitted.elapsed().as_secs_f64() * 1e3,
                })
            },
        );
    }
}

/// One step of every run in `runs` in one model call ([`step_together`]), a panic in it (a
/// bug) answered as [`INTERNAL_ERROR`].
fn step_guarded(model: &UNet, runs: &mut [Run]) -> Result<(), String> {
    let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        if let Some(i) = runs
            .iter()
            .position(|r| r.task.job.seed == tests::PANIC_IN_STEP)
        {
            // As a bug in that request's own scheduler step would: the runs before it in the
            // call have advanced already.
            let mut before: Vec<(&mut SamplingState, &AnyScheduler)> = runs[..i]
                .iter_mut()
                .map(|r| (&mut r.state, &r.task.job.scheduler))
                .collect();
            let _ = step_together(model, &mut before);
            panic!("a bug in the model call (test)");
        }
        let mut batch: Vec<(&mut SamplingState, &AnyScheduler)> = runs
            .iter_mut()
            .map(|r| (&mut r.state, &r.task.job.scheduler))
            .collect();
        step_together(model, &mut batch).map(|_| ())
    }));
    match stepped {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(INTERNAL_ERROR.into()),
    }
}

impl Pool {
    /// Starts `workers` batch executors on `device`, each with its own model from `weights` and
    /// at most `max_batch` rows per model call, behind a queue of `queue` waiting jobs.
    pub fn start(
        config: ModelConfig,
        weights: Arc<Vec<u8>>,
        workers: usize,
        queue: usize,
        max_batch: usize,
        metrics: Arc<Metrics>,
        device: Device,
    ) -> Result<Self, diffusion::Error> {
        // Fail early on bad weights, before any thread starts.
        load_model_from_bytes(&config, weights.to_vec(), "weights", &device)?;
        let (tx, rx) = sync_channel::<Task>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (rx, config, weights) = (rx.clone(), config.clone(), weights.clone());
            let (metrics, device) = (metrics.clone(), device.clone());
            std::thread::Builder::new()
                .name(format!("sampler-{i}"))
                .spawn(move || {
                    let model =
                        load_model_from_bytes(&config, weights.to_vec(), "weights", &device)
                            .expect("weights were checked before the pool started");
                    let mut executor = Executor {
                        model,
                        config,
                        device,
                        max_batch: max_batch.max(1),
                        metrics,
                        active: Vec::new(),
                        next: None,
                    };
                    loop {
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            executor.admit(&rx) && {
                                executor.step();
                                true
                            }
                        }));
                        match served {
                            Ok(true) => {}
                            Ok(false) => break, // the pool is gone
                            Err(_) => executor.recover(),
                        }
                    }
                })
                .expect("spawning a worker thread");
        }
        Ok(Self { tx, metrics })
    }

    /// Queues a job, or refuses at once if the queue is full.
    pub fn submit(&self, job: Job) -> Result<Ticket, SubmitError> {
        let (reply, result) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let task = Task {
            job,
            cancelled: cancelled.clone(),
            reply,
            queued: Instant::now(),
        };
        match self.tx.try_send(task) {
            Ok(()) => Ok(Ticket { result, cancelled }),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Busy,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use diffusion::sampler::{SamplerKind, SamplerSettings};
    use diffusion::weights::save_model;
    use diffusion::UNetConfig;

    /// Seeds that make `start` or the answer of a finished request panic, as a bug would.
    pub(crate) const PANIC_IN_START: u64 = 0xdead_0001;
    pub(crate) const PANIC_IN_FINISH: u64 = 0xdead_0002;
    /// A seed that makes every model call it takes part in panic, after the requests before
    /// it in the call have advanced.
    pub(crate) const PANIC_IN_STEP: u64 = 0xdead_0003;
    /// Failed batched calls retried one request at a time.
    pub(crate) static RETRIES: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    fn pool() -> (Pool, ModelConfig) {
        let unet = UNetConfig::new(1, 8, 32, vec![1, 2], vec![])
            .with_num_res_blocks(1)
            .with_num_classes(Some(3));
        let config = ModelConfig::new(unet);
        let model = config
            .unet
            .init(&Device::flex())
            .unwrap()
            .randomize(1, 0.05);
        // One file per pool: the tests run in parallel.
        static POOLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("server-worker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "tiny-{}.safetensors",
            POOLS.fetch_add(1, Ordering::Relaxed)
        ));
        save_model(&model, &config, &path, false).unwrap();
        let weights = Arc::new(std::fs::read(&path).unwrap());
        let metrics = Arc::new(Metrics::default());
        let pool = Pool::start(config.clone(), weights, 1, 8, 16, metrics, Device::flex());
        (pool.unwrap(), config)
    }

    fn job(config: &ModelConfig, seed: u64) -> Job {
        let settings = SamplerSettings {
            sampler: SamplerKind::Ddim,
            num_inference_steps: 3,
            eta: 0.0,
            use_karras_sigmas: false,
        };
        Job {
            class_label: Some(1),
            guidance_scale: 2.0,
            scheduler: config.scheduler(&settings).unwrap(),
            seed,
            num_images: 1,
        }
    }

    fn answer(pool: &Pool, job: Job) -> Result<JobOutput, String> {
        let ticket = pool.submit(job).expect("queued");
        ticket
            .result
            .blocking_recv()
            .unwrap_or_else(|_| Err("the executor dropped the request".into()))
    }

    #[test]
    fn a_panicking_request_gets_an_error_and_the_executor_serves_on() {
        let (pool, config) = pool();
        // In `start` (guarded per request): that request alone fails, one beside it finishes.
        let healthy = pool.submit(job(&config, 7)).expect("queued");
        let failed = answer(&pool, job(&config, PANIC_IN_START));
        assert_eq!(failed.unwrap_err(), INTERNAL_ERROR);
        let healthy = healthy.result.blocking_recv().expect("answered");
        assert_eq!(healthy.expect("the request beside it").pngs.len(), 1);
        // Anywhere else (here while a finished request is encoded): the requests in flight
        // fail, and the one executor goes on serving (without the recovery its thread would be
        // gone and the next request never served).
        let failed = answer(&pool, job(&config, PANIC_IN_FINISH));
        assert!(failed.is_err());
        let after = answer(&pool, job(&config, 8));
        assert_eq!(after.expect("served after the panic").pngs.len(), 1);
        assert_eq!(pool.metrics.queue_depth.load(Ordering::Relaxed), 0);
        assert_eq!(pool.metrics.in_progress.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failing_model_call_fails_only_the_request_that_fails_alone() {
        let (pool, config) = pool();
        let long = |seed| {
            let mut j = job(&config, seed);
            j.scheduler = config
                .scheduler(&SamplerSettings {
                    sampler: SamplerKind::Ddpm,
                    num_inference_steps: 40,
                    eta: 0.0,
                    use_karras_sigmas: false,
                })
                .unwrap();
            j
        };
        // Queued together, so they share model calls until the healthy one finishes; it comes
        // first in the call, so it has advanced when the other one fails.
        let retries = RETRIES.load(Ordering::Relaxed);
        let healthy = pool.submit(long(7)).expect("queued");
        let poisoned = answer(&pool, long(PANIC_IN_STEP));
        assert_eq!(poisoned.unwrap_err(), INTERNAL_ERROR);
        assert!(
            RETRIES.load(Ordering::Relaxed) > retries,
            "they never shared a call"
        );
        let healthy = healthy.result.blocking_recv().expect("answered");
        let healthy = healthy.expect("the request beside the failing one finishes");
        // With the same pixels as when it runs alone.
        let alone = answer(&pool, long(7)).expect("served alone");
        assert_eq!(healthy.pngs, alone.pngs);
        assert_eq!(pool.metrics.queue_depth.load(Ordering::Relaxed), 0);
        assert_eq!(pool.metrics.in_progress.load(Ordering::Relaxed), 0);
    }
}
