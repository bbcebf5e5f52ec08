//! Sampling off the async runtime: batch executors that batch the requests in flight step by
//! step, fed by [`crate::admission`].
//!
//! Each executor thread builds its own copy of the model from the weight bytes and keeps a set
//! of requests in flight. Every iteration it takes the waiting requests that fit (in arrival
//! order), drops the abandoned ones (time limit, client gone), and runs one model call for the
//! requests in flight ([`diffusion::sampler::step_in_parts`]): requests at different steps, with
//! different samplers, step counts, classes and guidance scales share it, and each applies its
//! own scheduler step with its own noise stream. Each puts its share of rows in the call (its
//! rows, at most `max_request_rows` while others need room; the rest of the batch goes to the
//! requests with more rows in arrival order), so a call never has more than `max_batch` rows
//! and a many-image request takes a step over several calls while small ones step every call.
//! The model's forward is batch-invariant, so a request's pixels are the same as alone.
//!
//! A panic (a bug) fails only the request it struck where that is known (starting a request; a
//! model call that fails is retried one request at a time from the states before it, so only a
//! request that fails alone is answered with the error) and otherwise the requests in flight;
//! the executor itself always goes on serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use artifacts::{grid, png_bytes};
use burn::tensor::{Device, Tensor};
use diffusion::sampler::{
    rows_left, step_in_parts, to_host, AnyScheduler, Denoiser, PartialStep, SamplingState, Share,
};
use diffusion::weights::load_model_from_bytes;
use diffusion::{ModelConfig, Scheduler, UNet};
use tokio::sync::oneshot;

use crate::admission::{calls_left, Admission, Limits, Load, Refusal, Task};
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

/// A request in flight.
struct Run {
    task: Task,
    state: SamplingState,
    /// Its step when the last call predicted only some of its rows.
    partial: Option<PartialStep>,
    admitted: Instant,
    /// Why its last step failed when it was retried alone (it is then answered with this).
    failed: Option<String>,
}

impl Run {
    fn steps(&self) -> usize {
        self.task.job.scheduler.timesteps().len()
    }

    /// Row-predictions left: its current step's rows not yet predicted and every later step's.
    fn work_left(&self) -> f64 {
        let steps_left = self.steps() - self.state.steps_done();
        match &self.partial {
            Some(p) => (p.rows_left() + self.task.rows * (steps_left - 1)) as f64,
            None => (self.task.rows * steps_left) as f64,
        }
    }

    fn done(&self) -> bool {
        rows_left(&self.state, &self.task.job.scheduler, &self.partial) == 0
    }
}

/// A handle to an admitted job.
pub struct Ticket {
    /// Resolves with the result.
    pub result: oneshot::Receiver<Result<JobOutput, String>>,
    /// Abandons the job when dropped before the result is read (checked between steps, or
    /// out of the queue at once).
    pub abandon_on_drop: AbandonOnDrop,
}

/// Abandons its job when dropped: a handler dropped before its answer means the client went
/// away (or the time limit passed), so the job's rows leave the queue now or its batch at the
/// next step. After the answer it does nothing.
pub struct AbandonOnDrop {
    admission: Arc<Admission>,
    id: u64,
    cancelled: Arc<AtomicBool>,
    answered: bool,
}

impl AbandonOnDrop {
    /// The job was answered: dropping does nothing.
    pub fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.answered {
            self.admission.abandon(self.id, &self.cancelled);
        }
    }
}

/// The executor pool.
pub struct Pool {
    admission: Arc<Admission>,
    num_classes: Option<usize>,
    image_shape: [usize; 3],
}

/// Encodes one image (values in [-1, 1], `[c, h, w]`) as PNG, exactly as
/// `trainer sample --num 1 --scale 1 --pad 0` writes it.
pub fn image_png(values: &[f32], [c, h, w]: [usize; 3]) -> Vec<u8> {
    png_bytes(&grid(values, [1, c, h, w], 1, 0, 1))
}

/// How many rows each run puts in the next call: first every run its rows up to
/// `max_request_rows`, then what is left of `max_batch` to the runs with rows left, in
/// order. `left`: each run's rows left in its step.
fn call_shares(left: &[usize], max_batch: usize, max_request_rows: usize) -> Vec<usize> {
    let mut shares: Vec<usize> = left.iter().map(|&l| l.min(max_request_rows)).collect();
    let mut room = max_batch.saturating_sub(shares.iter().sum());
    for (s, &l) in shares.iter_mut().zip(left) {
        let more = (l - *s).min(room);
        *s += more;
        room -= more;
    }
    shares
}

/// One executor: the model and its requests in flight.
struct Executor {
    index: usize,
    model: UNet,
    config: ModelConfig,
    device: Device,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    active: Vec<Run>,
    /// Answers to send once admission knows the runs are gone.
    replies: Vec<(
        oneshot::Sender<Result<JobOutput, String>>,
        Result<JobOutput, String>,
    )>,
}

impl Executor {
    fn load(&self) -> Load {
        Load {
            runs: self.active.len(),
            rows: self.active.iter().map(|r| r.task.rows).sum(),
            share: self
                .active
                .iter()
                .map(|r| self.admission.share(r.task.rows))
                .sum(),
            work: self.active.iter().map(Run::work_left).sum(),
            deadlines: self
                .active
                .iter()
                .map(|r| {
                    let share = self.admission.share(r.task.rows);
                    (r.task.deadline, calls_left(r.work_left(), share))
                })
                .collect(),
        }
    }

    /// Starts the waiting requests that fit; blocks for one when nothing is in flight.
    /// Returns false when the pool is closed and nothing is left to do.
    fn admit(&mut self) -> bool {
        let Some(tasks) = self.admission.take(self.index, self.load()) else {
            return false;
        };
        for task in tasks {
            match self.start_guarded(&task.job) {
                Ok(state) => self.active.push(Run {
                    task,
                    state,
                    partial: None,
                    admitted: Instant::now(),
                    failed: None,
                }),
                Err(e) => {
                    self.replies.push((task.reply, Err(e)));
                }
            }
        }
        true
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
        let request = job.request(self.config.unet.image_shape());
        let state = SamplingState::new(self.config.unet.num_classes, &request, &self.device)
            .map_err(|e| e.to_string())?;
        match &job.edit {
            None => Ok(state),
            Some(edit) => state
                .with_edit(&job.scheduler, edit)
                .map_err(|e| e.to_string()),
        }
    }

    /// After a panic outside the guarded calls (a bug): answers every request in flight with
    /// an error, so that the executor goes on serving instead of dying with them (its thread
    /// gone, later requests would wait for the time limit).
    fn recover(&mut self) {
        self.finish(|_| true, |_| Err(INTERNAL_ERROR.into()));
        self.settle(None);
    }

    /// Reports this executor's load (and the call just made) to admission, then sends the
    /// answers of the runs that finished: a client that has its answer sees the service
    /// without its request.
    fn settle(&mut self, call: Option<(usize, f64)>) {
        self.admission.report(self.index, self.load(), call);
        for (reply, answer) in self.replies.drain(..) {
            let _ = reply.send(answer);
        }
    }

    /// Removes the runs `done` picks, answering each with `answer` (sent by [`Self::settle`]).
    fn finish(
        &mut self,
        done: impl Fn(&Run) -> bool,
        answer: impl Fn(&Run) -> Result<JobOutput, String>,
    ) -> usize {
        let (mut i, mut n) = (0, 0);
        while i < self.active.len() {
            if done(&self.active[i]) {
                // In arrival order: the shares of the next call go to the oldest first.
                let run = self.active.remove(i);
                let answer = answer(&run);
                self.replies.push((run.task.reply, answer));
                n += 1;
            } else {
                i += 1;
            }
        }
        n
    }

    /// One model call for the requests in flight (each its share of rows). When the call
    /// fails (an error or a panic) with several requests in it, each is stepped again alone
    /// from its state before the call, so that only a request that fails by itself is answered
    /// with the error: the model's forward is batch-invariant, so the others' pixels do not
    /// change.
    fn step(&mut self) {
        let gone = self.finish(
            |r| r.task.cancelled.load(Ordering::Relaxed),
            |_| Err("cancelled".into()),
        );
        self.metrics.count_abandoned(gone);
        if self.active.is_empty() {
            self.settle(None);
            return;
        }
        let left: Vec<usize> = self
            .active
            .iter()
            .map(|r| rows_left(&r.state, &r.task.job.scheduler, &r.partial))
            .collect();
        let limits = self.admission.limits();
        let shares = call_shares(&left, limits.max_batch, limits.max_request_rows);
        let rows: usize = shares.iter().sum();
        let started = Instant::now();
        // Cheap: a state's tensors are shared, not copied. The retries start from these, so a
        // request whose own step failed half-way (its noise drawn, its sample not yet
        // updated) and succeeds alone continues from a whole state.
        let before: Vec<(SamplingState, Option<PartialStep>)> = if self.active.len() > 1 {
            self.active
                .iter()
                .map(|r| (r.state.clone(), r.partial.clone()))
                .collect()
        } else {
            Vec::new()
        };
        if let Err(message) = step_guarded(&self.model, &mut self.active, &shares) {
            if before.is_empty() {
                self.finish(|_| true, |_| Err(message.clone()));
                self.settle(None);
                return;
            }
            #[cfg(test)]
            tests::RETRIES.fetch_add(1, Ordering::Relaxed);
            for ((run, (state, partial)), &share) in self.active.iter_mut().zip(before).zip(&shares)
            {
                run.state = state;
                run.partial = partial;
                run.failed = step_guarded(&self.model, std::slice::from_mut(run), &[share]).err();
            }
            self.finish(
                |r| r.failed.is_some(),
                |r| Err(r.failed.clone().unwrap_or_default()),
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.observe_iteration(rows, seconds);
        let shape = self.config.unet.image_shape();
        let metrics = self.metrics.clone();
        self.finish(Run::done, |r| {
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
        });
        self.settle(Some((rows, seconds)));
    }
}

/// One model call for `runs`, each putting its `shares` of rows in it
/// ([`step_in_parts`]), a panic in it (a bug) answered as [`INTERNAL_ERROR`].
fn step_guarded(model: &UNet, runs: &mut [Run], shares: &[usize]) -> Result<(), String> {
    let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        let poisoned = runs
            .iter()
            .position(|r| r.task.job.seed == tests::PANIC_IN_STEP);
        let mut call: Vec<Share<'_, AnyScheduler>> = runs
            .iter_mut()
            .zip(shares)
            .map(|(r, &max_rows)| Share {
                state: &mut r.state,
                scheduler: &r.task.job.scheduler,
                partial: &mut r.partial,
                max_rows,
            })
            .collect();
        #[cfg(test)]
        if let Some(i) = poisoned {
            // As a bug in that request's own scheduler step would: the runs before it in the
            // call have advanced already.
            let _ = step_in_parts(model, &mut call[..i]);
            panic!("a bug in the model call (test)");
        }
        step_in_parts(model, &mut call).map(|_| ())
    }));
    match stepped {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(INTERNAL_ERROR.into()),
    }
}

/// Times the model's call at 1 row and at `max_batch` rows (after a warm-up call each): the
/// starting point of admission's call cost, before the executors have made calls of their own.
fn calibrate(
    model: &UNet,
    config: &ModelConfig,
    max_batch: usize,
    device: &Device,
) -> Vec<(usize, f64)> {
    let [c, h, w] = config.unet.image_shape();
    let mut points = Vec::new();
    for rows in [1, max_batch] {
        let call = || {
            let x = Tensor::<4>::zeros([rows, c, h, w], device);
            let labels = model.num_classes().map(|n| vec![n; rows]);
            let out = model.predict(x, &vec![500.0; rows], labels.as_deref());
            let _ = to_host(out.slice([0..1, 0..1, 0..1, 0..1]));
        };
        call();
        let t = Instant::now();
        call();
        points.push((rows, t.elapsed().as_secs_f64()));
        if max_batch == 1 {
            break;
        }
    }
    points
}

/// Why a job was not admitted.
#[derive(Debug, PartialEq)]
pub enum SubmitError {
    /// Refused by admission (busy, too large, shutting down).
    Refused(Refusal),
}

impl Pool {
    /// Starts `limits.executors` batch executors on `device`, each with its own model from
    /// `weights`, admitting as [`crate::admission`] describes. Times the model's call first
    /// (a second or less).
    pub fn start(
        config: ModelConfig,
        weights: Arc<Vec<u8>>,
        limits: Limits,
        metrics: Arc<Metrics>,
        device: Device,
    ) -> Result<Self, diffusion::Error> {
        // Fail early on bad weights, before any thread starts.
        let model = load_model_from_bytes(&config, weights.to_vec(), "weights", &device)?;
        let calibration = calibrate(&model, &config, limits.max_batch.max(1), &device);
        drop(model);
        let admission = Arc::new(Admission::new(limits, &calibration, metrics.clone()));
        for index in 0..admission.limits().executors {
            let (config, weights) = (config.clone(), weights.clone());
            let (metrics, device, admission) = (metrics.clone(), device.clone(), admission.clone());
            std::thread::Builder::new()
                .name(format!("sampler-{index}"))
                .spawn(move || {
                    let model =
                        load_model_from_bytes(&config, weights.to_vec(), "weights", &device)
                            .expect("weights were checked before the pool started");
                    let mut executor = Executor {
                        index,
                        model,
                        config,
                        device,
                        admission,
                        metrics,
                        active: Vec::new(),
                        replies: Vec::new(),
                    };
                    loop {
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            executor.admit() && {
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
        Ok(Self {
            admission,
            num_classes: config.unet.num_classes,
            image_shape: config.unet.image_shape(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.admission.limits()
    }

    /// Admits a job, or refuses it at once ([`crate::admission`]).
    pub fn submit(&self, job: Job) -> Result<Ticket, SubmitError> {
        let rows = job.request(self.image_shape).rows(self.num_classes);
        let (reply, result) = oneshot::channel();
        let (id, cancelled) = self
            .admission
            .submit(job, rows, reply)
            .map_err(SubmitError::Refused)?;
        Ok(Ticket {
            result,
            abandon_on_drop: AbandonOnDrop {
                admission: self.admission.clone(),
                id,
                cancelled,
                answered: false,
            },
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.admission.close();
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

    fn pool() -> (Pool, ModelConfig, Arc<Metrics>) {
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
        let limits = Limits {
            executors: 1,
            max_batch: 16,
            max_request_rows: 8,
            max_rows: 1000,
            timeout: std::time::Duration::from_secs(1000),
        };
        let pool = Pool::start(
            config.clone(),
            weights,
            limits,
            metrics.clone(),
            Device::flex(),
        );
        (pool.unwrap(), config, metrics)
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
            edit: None,
        }
    }

    fn answer(pool: &Pool, job: Job) -> Result<JobOutput, String> {
        let ticket = pool.submit(job).expect("queued");
        ticket
            .result
            .blocking_recv()
            .unwrap_or_else(|_| Err("the executor dropped the request".into()))
    }

    /// Nothing waits or runs, by the gauges.
    fn idle(metrics: &Metrics) {
        let text = metrics.render();
        for gauge in [
            "sampler_queue_depth 0",
            "sampler_jobs_in_progress 0",
            "sampler_rows_in_flight 0",
            "sampler_rows_waiting 0",
        ] {
            assert!(text.contains(gauge), "{gauge} in\n{text}");
        }
    }

    #[test]
    fn call_shares_cap_each_run_and_give_the_rest_in_order() {
        // A 40-row run beside two small ones: 8 (the cap) + 2 + 3, then the 3 rows left of the
        // batch of 16 to the big run.
        assert_eq!(call_shares(&[40, 2, 3], 16, 8), [11, 2, 3]);
        // Alone, a big run fills the batch; two big runs take the cap each.
        assert_eq!(call_shares(&[40], 16, 8), [16]);
        assert_eq!(call_shares(&[40, 40], 16, 8), [8, 8]);
        // A run with only part of its step left takes just that.
        assert_eq!(call_shares(&[3, 40], 16, 8), [3, 13]);
        assert_eq!(call_shares(&[1, 0], 16, 8), [1, 0]);
    }

    #[test]
    fn a_panicking_request_gets_an_error_and_the_executor_serves_on() {
        let (pool, config, metrics) = pool();
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
        idle(&metrics);
    }

    #[test]
    fn a_failing_model_call_fails_only_the_request_that_fails_alone() {
        let (pool, config, metrics) = pool();
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
        idle(&metrics);
    }
}
