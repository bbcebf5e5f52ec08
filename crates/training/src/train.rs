//! The training loop.
//!
//! Each step: take the batch of this step (deterministic, prepared on a background thread),
//! draw per-sample timesteps t ~ U{0..T−1}, noise ε ~ N(0, I) and label dropout from a host
//! RNG seeded by `(seed, step)`, form x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, predict, take the MSE to ε
//! (or v), back-propagate, clip the global gradient norm, step AdamW at the scheduled learning
//! rate, update the EMA. Dropout masks come from the backend RNG, re-seeded from
//! `(seed, step)` every step. So a run is a pure function of its config, and resuming from a
//! checkpoint at step k reproduces the uninterrupted run's losses exactly (on the CPU). Burn's
//! CPU RNG is process-global: run one training per process for this to hold.
//!
//! A step whose loss or gradient norm is not finite is skipped (no update, counted); after
//! `max_nonfinite` in a row training stops with an error, and no non-finite weights are ever
//! written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use artifacts::write_atomic;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use datasets::loader::mix_seed;
use datasets::{BatchLoader, Dataset, LoaderConfig};
use diffusion::sampler::SamplerSettings;
use diffusion::weights::save_model;
use diffusion::{mse_loss, q_sample, ModelConfig, NoiseRng, UNet};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointState};
use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::generate::{class_rows, generate};
use crate::grad::clip_global_norm;
use crate::lr::LrSchedule;
use crate::plot::{line_plot, Series};
use artifacts::{grid, save_png};

/// Every setting of a training run (saved in `config.json` and in each checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The dataset, as given on the command line (for the record).
    pub dataset: String,
    /// Image size of `folder:` datasets.
    #[serde(default)]
    pub image_size: usize,
    /// Channels of `folder:` datasets.
    #[serde(default)]
    pub channels: usize,
    /// Only the first N training images were used.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The model (U-Net, schedule, prediction type).
    pub model: ModelConfig,
    /// Optimisation steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε.
    pub adam_eps: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Probability of replacing a label by the null class (classifier-free guidance training).
    pub label_dropout: f64,
    /// EMA decay.
    pub ema_decay: f64,
    /// EMA warmup (1 + n) / (10 + n).
    pub ema_warmup: bool,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Random horizontal flips.
    pub horizontal_flip: bool,
    /// Stop after this many consecutive non-finite steps.
    pub max_nonfinite: u32,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Sample grid every N steps (0: only at the end).
    pub sample_every: u64,
    /// DDIM steps of the sample grids.
    pub sample_steps: usize,
    /// Guidance scale of the sample grids.
    pub sample_guidance: f64,
    /// Columns of the sample grids (one row per class).
    pub grid_cols: usize,
    /// Seed of the sample grids (the same every time, so grids compare over training).
    pub sample_seed: u64,
    /// Append a metrics line every N steps.
    pub log_every: u64,
}

impl TrainConfig {
    /// Defaults for `model`: AdamW 2e-4 (β 0.9/0.999, ε 1e-8, wd 0), 500 warmup steps,
    /// clip 1.0, label dropout 0.1, EMA 0.999 with warmup.
    pub fn new(dataset: &str, model: ModelConfig, steps: u64, batch_size: usize) -> Self {
        Self {
            dataset: dataset.to_string(),
            image_size: 0,
            channels: 0,
            limit: None,
            model,
            steps,
            batch_size,
            lr: 2e-4,
            min_lr: 0.0,
            warmup_steps: 500.min(steps / 10),
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            label_dropout: 0.1,
            ema_decay: 0.999,
            ema_warmup: true,
            seed: 0,
            horizontal_flip: false,
            max_nonfinite: 20,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            sample_every: 1000,
            sample_steps: 50,
            sample_guidance: 3.0,
            grid_cols: 8,
            sample_seed: 0,
            log_every: 10,
        }
    }

    /// A fresh AdamW optimiser with these settings.
    pub fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.adam_eps)
            .with_weight_decay(self.weight_decay)
            .init()
    }

    /// The learning-rate schedule.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            base_lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
        }
    }

    /// The EMA settings.
    pub fn ema(&self) -> Ema {
        Ema {
            decay: self.ema_decay,
            warmup: self.ema_warmup,
        }
    }

    /// Checks the settings against each other and against `dataset`.
    pub fn validate(&self, dataset: &Dataset) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        let u = &self.model.unet;
        u.validate()?;
        self.model.schedule.build()?;
        if [u.in_channels, u.resolution, u.resolution] != dataset.image_shape() {
            return bad(format!(
                "the model expects {}×{}×{} images but {} has {:?}",
                u.in_channels,
                u.resolution,
                u.resolution,
                dataset.name,
                dataset.image_shape()
            ));
        }
        if let Some(n) = u.num_classes {
            if n < dataset.num_classes() {
                return bad(format!(
                    "the model has {n} classes but {} has {}",
                    dataset.name,
                    dataset.num_classes()
                ));
            }
        }
        if self.steps == 0 || self.batch_size == 0 {
            return bad("steps and batch size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 ≤ min_lr ≤ lr, lr > 0 (lr = {}, min_lr = {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(format!(
                "label dropout {} must lie in [0, 1)",
                self.label_dropout
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("EMA decay {} must lie in [0, 1)", self.ema_decay));
        }
        if !(self.grad_clip >= 0.0) {
            return bad(format!("grad clip {} must be ≥ 0", self.grad_clip));
        }
        if self.max_nonfinite == 0 {
            return bad("max_nonfinite must be at least 1".into());
        }
        SamplerSettings {
            num_inference_steps: self.sample_steps,
            ..Default::default()
        }
        .scheduler(&self.model.schedule.build()?, self.model.prediction_type)?;
        Ok(())
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Zero-based step index.
    pub step: u64,
    /// Loss (NaN/inf when the step was skipped for it).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the step was skipped as non-finite.
    pub skipped: bool,
    /// Images per second over this step (data wait included).
    pub img_per_s: f64,
}

/// Receives progress while training (the CLI draws a progress bar from it).
pub trait TrainObserver {
    /// After every step.
    fn on_step(&mut self, _metrics: &StepMetrics) {}
    /// For occasional messages (checkpoint written, grid written, ...).
    fn on_message(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed.
    pub steps: u64,
    /// Loss of every step run in this invocation (in order, skipped steps included).
    pub losses: Vec<f64>,
    /// Steps skipped as non-finite (whole run).
    pub skipped_total: u64,
    /// Training time (whole run), seconds.
    pub elapsed_s: f64,
    /// The exported EMA weights.
    pub weights: PathBuf,
}

/// Where a run writes: `config.json`, `metrics.jsonl`, `loss.png`, `samples/`,
/// `checkpoints/`, and at the end `ema.safetensors` + `ema.json`.
pub fn exported_weights(run_dir: &Path) -> PathBuf {
    run_dir.join("ema.safetensors")
}

/// The host-side randomness of one step.
struct StepNoise {
    timesteps: Vec<usize>,
    noise: Vec<f32>,
    labels: Vec<usize>,
}

const STREAM_STEP: u64 = 3;
const STREAM_DROPOUT: u64 = 4;

fn step_noise(config: &TrainConfig, step: u64, labels: &[usize], numel: usize) -> StepNoise {
    let mut rng = NoiseRng::new(mix_seed(config.seed, STREAM_STEP, step));
    let t_max = config.model.schedule.num_train_timesteps as u64;
    let timesteps = labels.iter().map(|_| rng.below(t_max) as usize).collect();
    let noise = rng.normal_vec(numel);
    let null = config.model.unet.num_classes.unwrap_or(0);
    let labels = labels
        .iter()
        .map(|&l| {
            if rng.uniform() < config.label_dropout {
                null
            } else {
                l
            }
        })
        .collect();
    StepNoise {
        timesteps,
        noise,
        labels,
    }
}

/// Whether every float parameter is finite.
pub fn all_finite<M: Module>(model: &M) -> bool {
    struct Check(bool);
    impl ModuleVisitor for Check {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if self.0 {
                let s = p.val().inner().abs().sum().into_scalar::<f64>();
                self.0 = s.is_finite();
            }
        }
    }
    let mut c = Check(true);
    model.visit(&mut c);
    c.0
}

/// Trains on `dataset`, writing into `run_dir`; continues from `resume` (a checkpoint
/// directory) if given, with the checkpoint's config. `device` is the plain device (e.g.
/// `Device::flex()`); training runs on its autodiff form.
pub fn train(
    config: &TrainConfig,
    dataset: Arc<Dataset>,
    run_dir: &Path,
    resume: Option<&Path>,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let train_device = device.clone().autodiff();
    let (config, mut state, mut model, mut ema, mut optim) = match resume {
        Some(dir) => {
            let dir = checkpoint::resolve(dir)?;
            let (mut state, model, ema, optim) = checkpoint::load(&dir, &train_device, device)?;
            // The checkpoint's settings, except that the run may be extended.
            if config.steps < state.step {
                return Err(TrainError::Invalid(format!(
                    "{} steps requested but the checkpoint is already at step {}",
                    config.steps, state.step
                )));
            }
            state.config.steps = config.steps;
            observer.on_message(&format!(
                "resumed from {} at step {}",
                dir.display(),
                state.step
            ));
            (state.config.clone(), state, model, ema, optim)
        }
        None => {
            // Seed parameter initialisation so that a run is reproducible.
            device.seed(mix_seed(config.seed, 0, 0));
            let model = config.model.unet.init(&train_device)?;
            let ema = model.valid();
            let state = CheckpointState {
                step: 0,
                skipped_total: 0,
                consecutive_nonfinite: 0,
                ema_updates: 0,
                elapsed_s: 0.0,
                config: config.clone(),
            };
            (config.clone(), state, model, ema, config.optimizer())
        }
    };
    config.validate(&dataset)?;
    observer.on_message(&format!(
        "training on {} ({} images, {:?}), {} parameters, {} steps × batch {}",
        dataset.name,
        dataset.len(),
        dataset.image_shape(),
        model.num_params(),
        config.steps,
        config.batch_size
    ));
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    write_atomic(
        &run_dir.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("serialises")
            .as_bytes(),
    )?;
    let schedule = config.model.schedule.build()?;
    let lr_schedule = config.lr_schedule();
    let ema_cfg = config.ema();
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut history = read_history(&metrics_path, state.step)?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;

    let mut loader = BatchLoader::new(
        dataset.clone(),
        LoaderConfig {
            batch_size: config.batch_size,
            seed: config.seed,
            horizontal_flip: config.horizontal_flip,
            prefetch: 4,
        },
        state.step,
    )?;
    let mut losses = Vec::new();
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    while state.step < config.steps {
        let step = state.step;
        let t0 = Instant::now();
        let batch = loader.next_batch();
        let numel = batch.images.len();
        let rnd = step_noise(&config, step, &batch.labels, numel);
        train_device.seed(mix_seed(config.seed, STREAM_DROPOUT, step));
        let x0 = Tensor::<4>::from_data(TensorData::new(batch.images, batch.shape), &train_device);
        let noise = Tensor::<4>::from_data(TensorData::new(rnd.noise, batch.shape), &train_device);
        let xt = q_sample(&schedule, x0.clone(), &rnd.timesteps, noise.clone());
        let t_f64: Vec<f64> = rnd.timesteps.iter().map(|&t| t as f64).collect();
        let labels = config.model.unet.num_classes.map(|_| rnd.labels.as_slice());
        let output = model.forward(xt, &t_f64, labels);
        let target = config
            .model
            .prediction_type
            .target(&schedule, x0, noise, &rnd.timesteps);
        let loss = mse_loss(output, target);
        let loss_value = loss.clone().into_scalar::<f64>();
        let lr = lr_schedule.lr(step);
        let mut grad_norm = f64::NAN;
        let mut skipped = !loss_value.is_finite();
        if !skipped {
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            grad_norm = clip_global_norm(&model, &mut grads, config.grad_clip);
            skipped = !grad_norm.is_finite();
            if !skipped {
                model = optim.step(lr, model, grads);
                ema = ema_cfg.update(ema, &model, state.ema_updates);
                state.ema_updates += 1;
            }
        }
        if skipped {
            state.skipped_total += 1;
            state.consecutive_nonfinite += 1;
        } else {
            state.consecutive_nonfinite = 0;
        }
        state.step += 1;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let metrics = StepMetrics {
            step,
            loss: loss_value,
            lr,
            grad_norm,
            skipped,
            img_per_s: config.batch_size as f64 / t0.elapsed().as_secs_f64(),
        };
        losses.push(loss_value);
        observer.on_step(&metrics);
        if step % config.log_every.max(1) == 0 || state.step == config.steps {
            let line = serde_json::to_string(&metrics).expect("serialises");
            writeln!(metrics_file, "{line}").map_err(|e| TrainError::io(&metrics_path, e))?;
            history.push((step, loss_value));
        }
        if state.consecutive_nonfinite >= config.max_nonfinite {
            return Err(TrainError::Diverged(format!(
                "stopped at step {step}: {} consecutive steps with a non-finite loss or gradient (lower --lr or check the data); the last checkpoint is intact",
                state.consecutive_nonfinite
            )));
        }
        let done = state.step == config.steps;
        if config.sample_every > 0 && state.step % config.sample_every == 0 || done {
            let path = run_dir
                .join("samples")
                .join(format!("step-{:08}.png", state.step));
            sample_grid(&config, &ema, device, &path)?;
            observer.on_message(&format!("sample grid → {}", path.display()));
        }
        if config.checkpoint_every > 0 && state.step % config.checkpoint_every == 0 || done {
            if !all_finite(&model) || !all_finite(&ema) {
                return Err(TrainError::Diverged(format!(
                    "step {}: the weights are no longer finite; not writing them (the last checkpoint is intact)",
                    state.step
                )));
            }
            let dir = checkpoint::save(
                run_dir,
                &state,
                &model,
                &ema,
                &optim,
                config.keep_checkpoints,
            )?;
            plot_loss(run_dir, &history)?;
            observer.on_message(&format!("checkpoint → {}", dir.display()));
        }
    }
    drop(loader);
    let weights = exported_weights(run_dir);
    if state.step == config.steps {
        save_model(&ema, &config.model, &weights, false)?;
        observer.on_message(&format!("EMA weights → {}", weights.display()));
    }
    Ok(TrainSummary {
        steps: state.step,
        losses,
        skipped_total: state.skipped_total,
        elapsed_s: state.elapsed_s,
        weights,
    })
}

/// Samples the EMA model's class grid (one row per class, DDIM, fixed seed) into `path`.
pub fn sample_grid(config: &TrainConfig, ema: &UNet, device: &Device, path: &Path) -> Result<()> {
    let rows = match config.model.unet.num_classes {
        Some(n) => class_rows(n, config.grid_cols),
        None => vec![None; 4 * config.grid_cols],
    };
    let settings = SamplerSettings {
        num_inference_steps: config.sample_steps,
        ..Default::default()
    };
    let (values, shape) = generate(
        ema,
        &config.model,
        &settings,
        rows,
        config.sample_guidance,
        config.sample_seed,
        device,
        |_| {},
    )?;
    Ok(save_png(
        path,
        &grid(&values, shape, config.grid_cols, 2, 2),
    )?)
}

/// Loss history from `metrics.jsonl`, keeping only steps before `before` (a resumed run
/// rewrites the steps after its checkpoint); the file is truncated to match.
fn read_history(path: &Path, before: u64) -> Result<Vec<(u64, f64)>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut kept = String::new();
    let mut history = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(step), Some(loss)) = (v["step"].as_u64(), v["loss"].as_f64()) else {
            continue;
        };
        if step < before {
            history.push((step, loss));
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())?;
    Ok(history)
}

/// Draws `loss.png`: the logged losses and their running mean.
fn plot_loss(run_dir: &Path, history: &[(u64, f64)]) -> Result<()> {
    let finite: Vec<(f64, f64)> = history
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    if finite.len() < 2 {
        return Ok(());
    }
    let k = (finite.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..finite.len())
        .map(|i| {
            let lo = i.saturating_sub(k);
            let w = &finite[lo..=i];
            (
                finite[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    line_plot(
        &run_dir.join("loss.png"),
        "training loss",
        "step",
        "MSE loss",
        &[
            Series {
                name: "loss".into(),
                points: finite,
            },
            Series {
                name: format!("running mean ({k})"),
                points: smooth,
            },
        ],
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffusion::UNetConfig;

    #[test]
    fn label_dropout_rate_is_p() {
        let unet = UNetConfig::mnist();
        let mut c = TrainConfig::new("x", ModelConfig::new(unet), 1, 1);
        c.label_dropout = 0.1;
        let labels = vec![3usize; 1000];
        let mut dropped = 0;
        for step in 0..50 {
            let r = step_noise(&c, step, &labels, 1);
            dropped += r.labels.iter().filter(|&&l| l == 10).count();
            assert!(r.labels.iter().all(|&l| l == 3 || l == 10));
            assert!(r.timesteps.iter().all(|&t| t < 1000));
        }
        let rate = dropped as f64 / 50_000.0;
        // Binomial standard error at n = 50,000: 0.0013.
        assert!((rate - 0.1).abs() < 0.006, "dropout rate {rate}");
        // Timesteps cover the range uniformly: mean ≈ 499.5.
        let t: Vec<usize> = (0..20)
            .flat_map(|s| step_noise(&c, s, &labels, 1).timesteps)
            .collect();
        let mean = t.iter().sum::<usize>() as f64 / t.len() as f64;
        assert!((mean - 499.5).abs() < 10.0, "{mean}");
    }
}
