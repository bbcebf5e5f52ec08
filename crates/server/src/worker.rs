//! Sampling off the async runtime: a fixed pool of worker threads behind a bounded queue.
//!
//! Each worker builds its own copy of the model from the weight bytes, takes jobs in order,
//! checks between denoising steps whether the request has been abandoned (time limit), and
//! answers through a oneshot channel. When the queue is full, [`Pool::submit`] refuses at once
//! so the handler can answer 503.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use artifacts::{grid, png_bytes};
use burn::tensor::Device;
use diffusion::sampler::to_host;
use diffusion::weights::load_model_from_bytes;
use diffusion::{ModelConfig, SampleRequest, Sampling};
use tokio::sync::oneshot;

use crate::api::Job;

/// What a worker returns: one PNG per image and the sampling time.
#[derive(Debug)]
pub struct JobOutput {
    /// PNG bytes, one per image.
    pub pngs: Vec<Vec<u8>>,
    /// Sampling time, milliseconds.
    pub elapsed_ms: f64,
}

struct Task {
    job: Job,
    cancelled: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<JobOutput, String>>,
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

/// The worker pool.
pub struct Pool {
    tx: SyncSender<Task>,
    queue_depth: Arc<AtomicUsize>,
}

/// Encodes one image (values in [-1, 1], `[c, h, w]`) as PNG, exactly as
/// `trainer sample --num 1 --scale 1 --pad 0` writes it.
pub fn image_png(values: &[f32], [c, h, w]: [usize; 3]) -> Vec<u8> {
    png_bytes(&grid(values, [1, c, h, w], 1, 0, 1))
}

fn run_job(
    model: &diffusion::UNet,
    config: &ModelConfig,
    device: &Device,
    task: &Task,
) -> Result<JobOutput, String> {
    let started = Instant::now();
    let job = &task.job;
    let shape = config.unet.image_shape();
    let request = SampleRequest {
        image_shape: shape,
        class_labels: vec![job.class_label; job.num_images],
        guidance_scale: job.guidance_scale,
        seed: job.seed,
    };
    let mut sampling =
        Sampling::new(model, &job.scheduler, &request, device).map_err(|e| e.to_string())?;
    while sampling.step().is_some() {
        if task.cancelled.load(Ordering::Relaxed) {
            return Err("cancelled".into());
        }
    }
    let values = to_host(sampling.sample().clone());
    let per: usize = shape.iter().product();
    let pngs = values
        .chunks_exact(per)
        .map(|img| image_png(img, shape))
        .collect();
    Ok(JobOutput {
        pngs,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

impl Pool {
    /// Starts `workers` threads, each with its own model from `weights`, behind a queue of
    /// `queue` waiting jobs.
    pub fn start(
        config: ModelConfig,
        weights: Arc<Vec<u8>>,
        workers: usize,
        queue: usize,
        queue_depth: Arc<AtomicUsize>,
        in_progress: Arc<AtomicUsize>,
    ) -> Result<Self, diffusion::Error> {
        // Fail early on bad weights, before any thread starts.
        load_model_from_bytes(&config, weights.to_vec(), "weights", &Device::flex())?;
        let (tx, rx) = sync_channel::<Task>(queue);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..workers.max(1) {
            let (rx, config, weights) = (rx.clone(), config.clone(), weights.clone());
            let (queue_depth, in_progress) = (queue_depth.clone(), in_progress.clone());
            std::thread::Builder::new()
                .name(format!("sampler-{i}"))
                .spawn(move || {
                    let device = Device::flex();
                    let model =
                        load_model_from_bytes(&config, weights.to_vec(), "weights", &device)
                            .expect("weights were checked before the pool started");
                    loop {
                        let task = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(t) => t,
                            Err(_) => return, // the pool is gone
                        };
                        queue_depth.fetch_sub(1, Ordering::Relaxed);
                        if task.cancelled.load(Ordering::Relaxed) {
                            continue;
                        }
                        in_progress.fetch_add(1, Ordering::Relaxed);
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_job(&model, &config, &device, &task)
                        }))
                        .unwrap_or_else(|_| Err("internal error while sampling".into()));
                        in_progress.fetch_sub(1, Ordering::Relaxed);
                        let _ = task.reply.send(result);
                    }
                })
                .expect("spawning a worker thread");
        }
        Ok(Self { tx, queue_depth })
    }

    /// Queues a job, or refuses at once if the queue is full.
    pub fn submit(&self, job: Job) -> Result<Ticket, SubmitError> {
        let (reply, result) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        let task = Task {
            job,
            cancelled: cancelled.clone(),
            reply,
        };
        match self.tx.try_send(task) {
            Ok(()) => Ok(Ticket { result, cancelled }),
            Err(e) => {
                self.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Busy,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }
}
