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
//! written. Steps run in windows of `sync_every` (`crate::window`): the host reads the losses
//! back once per window, so a GPU is never idle waiting for it, with the same results.
//!
//! When the observer reports a stop request (the CLI's SIGTERM/SIGINT), the loop finishes the
//! window in flight, writes a checkpoint and returns [`TrainError::Stopped`].

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use artifacts::{grid, save_png, write_atomic};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use datasets::loader::{mix_seed, Batch};
use datasets::{BatchLoader, Dataset, LoaderConfig};
use diffusion::sampler::SamplerSettings;
use diffusion::weights::save_model;
use diffusion::UNet;

use crate::checkpoint::{self, CheckpointState};
use crate::error::{Result, TrainError};
use crate::generate::generate;
use crate::run_log::{plot_loss, read_history};
use crate::step::StepOutcome;
use crate::window::{run_window, Replica, StepContext, Trainee};
use diffusion::sampler::class_rows;

pub use crate::config::TrainConfig;
pub use crate::observer::{Quiet, StepMetrics, TrainObserver, TrainSummary};
pub use crate::run_log::exported_weights;

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
    train_on(
        config,
        dataset,
        run_dir,
        resume,
        std::slice::from_ref(device),
        false,
        observer,
    )
}

/// [`train`] on one device, or data-parallel (`data_parallel`, always with several devices;
/// `crate::parallel`): rank `r` runs on `devices[r]` with its shard of every global batch
/// (`config.batch_size` stays the global batch), the ranks' gradients averaged before the clip
/// and the AdamW step that every rank takes alike. Data parallel on one device runs the same
/// path with one rank (the reduction is the identity): a single-GPU check of the collective. Rank 0 alone logs, samples and writes checkpoints; its model, EMA and optimiser
/// are the checkpoint's, so a run resumes exactly with the same number of devices (and with a
/// different number, within float reassociation: a note says so).
pub fn train_on(
    config: &TrainConfig,
    dataset: Arc<Dataset>,
    run_dir: &Path,
    resume: Option<&Path>,
    devices: &[Device],
    data_parallel: bool,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let data_parallel = data_parallel || devices.len() > 1;
    let Some(device) = devices.first() else {
        return Err(TrainError::Invalid("no device to train on".into()));
    };
    let ranks = devices.len();
    let train_device = device.clone().autodiff();
    let (config, mut state, model, ema, optim) = match resume {
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
            state.config.sync_every = config.sync_every;
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
            let model = match &config.init_weights {
                // Fine-tuning: the given weights (the EMA starts from them too), a fresh
                // optimiser.
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| TrainError::Invalid(format!("--init-weights {path}: {e}")))?;
                    diffusion::weights::load_model_from_bytes(
                        &config.model,
                        bytes,
                        path,
                        &train_device,
                    )?
                }
                None => config.model.unet.init(&train_device)?,
            };
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
    let mut config = config;
    if let Some(before) = config.data_parallel_ranks.filter(|&n| n != ranks) {
        observer.on_message(&format!(
            "note: the run trained on {before} data-parallel devices and goes on with {ranks}: the shards differ, so the steps equal the uninterrupted run's within float reassociation, not bit for bit"
        ));
    } else if config.data_parallel_ranks.is_none() && ranks > 1 && state.step > 0 {
        observer.on_message(&format!(
            "note: the run trained on one device and goes on with {ranks}: the steps equal the uninterrupted run's within float reassociation, not bit for bit"
        ));
    }
    config.data_parallel_ranks = data_parallel.then_some(ranks);
    state.config.data_parallel_ranks = config.data_parallel_ranks;
    config.validate(&dataset)?;
    if ranks > 1 {
        if config.batch_size % ranks != 0 {
            return Err(TrainError::Invalid(format!(
                "--batch-size {} does not split evenly over {ranks} devices",
                config.batch_size
            )));
        }
    }
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
    let reducer = data_parallel.then(|| crate::parallel::reducer_for(devices));
    let ctx = StepContext {
        config: &config,
        schedule: &schedule,
        lr: &lr_schedule,
        ema: config.ema(),
        device: &train_device,
        reducer: reducer.as_deref(),
    };
    // Ranks 1, 2, …: rank 0's model and optimiser state on their own devices (an optimiser's
    // state moves to its parameters' device at its first step).
    let replicas = devices[1..]
        .iter()
        .map(|d| {
            let device = d.clone().autodiff();
            Replica {
                model: model.clone().fork(&device),
                optim: optim.clone(),
                device,
            }
        })
        .collect();
    let mut trainee = Trainee {
        model,
        ema,
        optim,
        ema_updates: state.ema_updates,
        replicas,
    };
    // Batches a window handed back (they followed a skipped step), to run before new ones.
    let mut replay: VecDeque<Batch> = VecDeque::new();
    let mut losses = Vec::new();
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    while state.step < config.steps {
        // A window of up to `sync_every` steps, ending at the next grid, checkpoint or the end.
        let len = config
            .sync_every
            .min(next_stop(&config, state.step) - state.step);
        let t0 = Instant::now();
        let mut batches: Vec<Batch> = (0..len)
            .map(|_| replay.pop_front().unwrap_or_else(|| loader.next_batch()))
            .collect();
        for (i, b) in batches.iter().enumerate() {
            debug_assert_eq!(b.step, state.step + i as u64, "batches come in step order");
        }
        let outcomes;
        (trainee, outcomes) = run_window(&ctx, trainee, &batches)?;
        for b in batches.drain(outcomes.len()..).rev() {
            replay.push_front(b);
        }
        let img_per_s = (config.batch_size * outcomes.len()) as f64 / t0.elapsed().as_secs_f64();
        for outcome in outcomes {
            let step = state.step;
            let StepOutcome {
                loss: loss_value,
                grad_norm,
                skipped,
            } = outcome;
            if skipped {
                state.skipped_total += 1;
                state.consecutive_nonfinite += 1;
            } else {
                state.consecutive_nonfinite = 0;
            }
            state.step += 1;
            let metrics = StepMetrics {
                step,
                loss: loss_value,
                lr: lr_schedule.lr(step),
                grad_norm,
                skipped,
                img_per_s,
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
        }
        state.ema_updates = trainee.ema_updates;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let done = state.step == config.steps;
        if config.sample_every > 0 && state.step % config.sample_every == 0 || done {
            let path = run_dir
                .join("samples")
                .join(format!("step-{:08}.png", state.step));
            sample_grid(&config, &trainee.ema, device, &path)?;
            observer.on_message(&format!("sample grid → {}", path.display()));
        }
        let due = config.checkpoint_every > 0 && state.step % config.checkpoint_every == 0;
        let saved = if due || done {
            let dir = save_checkpoint(run_dir, &state, &trainee, &config, &history)?;
            observer.on_message(&format!("checkpoint → {}", dir.display()));
            Some(dir)
        } else {
            None
        };
        // A stop signal: the window just run is complete, so save it (unless that just
        // happened) and stop; `--resume` continues exactly from here. At the last step the run
        // simply finishes.
        if let Some(reason) = (!done).then(|| observer.stop_requested()).flatten() {
            let dir = match saved {
                Some(dir) => dir,
                None => save_checkpoint(run_dir, &state, &trainee, &config, &history)?,
            };
            return Err(TrainError::Stopped {
                reason,
                step: state.step,
                checkpoint: dir.display().to_string(),
                run: run_dir.display().to_string(),
            });
        }
    }
    drop(loader);
    let weights = exported_weights(run_dir);
    if state.step == config.steps {
        save_model(&trainee.ema, &config.model, &weights, false)?;
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

/// Writes the checkpoint of `state` (refusing non-finite weights) and the loss plot.
fn save_checkpoint(
    run_dir: &Path,
    state: &CheckpointState,
    trainee: &Trainee,
    config: &TrainConfig,
    history: &[(u64, f64)],
) -> Result<std::path::PathBuf> {
    if !all_finite(&trainee.model) || !all_finite(&trainee.ema) {
        return Err(TrainError::Diverged(format!(
            "step {}: the weights are no longer finite; not writing them (the last checkpoint is intact)",
            state.step
        )));
    }
    let dir = checkpoint::save(
        run_dir,
        state,
        &trainee.model,
        &trainee.ema,
        &trainee.optim,
        config.keep_checkpoints,
    )?;
    plot_loss(run_dir, history)?;
    Ok(dir)
}

/// The first step count after `step` at which a sample grid or a checkpoint is due, or the end.
fn next_stop(config: &TrainConfig, step: u64) -> u64 {
    let next = |every: u64| {
        if every == 0 {
            u64::MAX
        } else {
            (step / every + 1) * every
        }
    };
    config
        .steps
        .min(next(config.sample_every))
        .min(next(config.checkpoint_every))
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
