//! `trainer`: train class-conditional DDPMs and sample, inspect and export them.
//!
//! This binary only parses arguments and calls the `training`, `datasets` and `diffusion`
//! crates.

mod eval_cmd;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use datasets::{DatasetSpec, Split};
use diffusion::sampler::{SamplerKind, SamplerSettings};
use diffusion::weights::{load_model, save_model};
use diffusion::{
    BetaSchedule, ModelConfig, NoiseScheduleConfig, PredictionType, TimeMode, UNetConfig,
};
use indicatif::{ProgressBar, ProgressStyle};
use training::generate::{generate, generate_trajectory};
use training::images::{grid, save_npy, save_png};
use training::plot::{line_plot, Series};
use training::train::{train, StepMetrics, TrainConfig, TrainObserver};

/// Train DDPMs on your images and sample them with DDPM/DDIM and classifier-free guidance.
///
/// Quick start (CPU, bundled MNIST-10k):
///   trainer train --steps 300 --out runs/quick
///   trainer sample --weights runs/quick/ema.safetensors --class 3 --guidance 3 --out three.png
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; writes checkpoints, sample grids, metrics and the EMA weights to --out.
    Train(TrainArgs),
    /// Sample a trained model into a PNG grid (and optionally raw .npy / a trajectory).
    Sample(SampleArgs),
    /// Print or plot a noise schedule (β, ᾱ, SNR, …) to check that ᾱ_T is near zero.
    Schedule(ScheduleArgs),
    /// Show the forward (noising) process on one dataset image.
    Forward(ForwardArgs),
    /// Export a checkpoint's EMA weights as safetensors + config JSON.
    Export(ExportArgs),
    /// Serve the HTTP sampling API and the browser page.
    Serve(ServeArgs),
    /// Train the small evaluation classifier (class accuracy, classifier score, domain FID).
    TrainClassifier(eval_cmd::TrainClassifierArgs),
    /// Sample n images and report Inception FID, domain FID, classifier accuracy and score
    /// against the real data (and the real-vs-real baseline).
    Eval(eval_cmd::EvalArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Weights file (`NAME.safetensors`, with `NAME.json` beside it); also served at
    /// `/weights/`.
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Sampling worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Requests that may wait for a worker; beyond that the answer is 503 + Retry-After.
    #[arg(long, default_value_t = 4)]
    queue: usize,
    /// Per-request time limit in seconds (queueing + sampling); past it the answer is 504.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Directory served at `/` (with `index.html` and `pkg/`).
    #[arg(long, default_value = ".")]
    static_dir: PathBuf,
}

#[derive(Args)]
struct TrainArgs {
    /// Dataset: `mnist10k` (bundled), `fashion-mnist[:DIR]`, `cifar10:DIR` (binary batches) or
    /// `folder:DIR` (one sub-folder per class).
    #[arg(long, default_value = "mnist10k")]
    dataset: String,
    /// Image size for `folder:` datasets (resize + centre crop).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Channels for `folder:` datasets: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Use only the first N training images (quick experiments, fixtures).
    #[arg(long)]
    limit: Option<usize>,
    /// Output run directory.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Continue exactly from a checkpoint (a `checkpoints/step-N` directory, or a run
    /// directory for its newest); the checkpoint's settings are used, only --steps may grow.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Device: `cpu` (Burn flex), `wgpu`, or `cuda[:N]` (needs the matching cargo feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Optimisation steps [default: 4000].
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 0.0)]
    min_lr: f64,
    /// Linear warmup steps [default: min(500, steps / 10)].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Probability of training a sample with the null class (for classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    /// EMA decay (with warmup (1+n)/(10+n)).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Seed of initialisation, batches, noise and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random horizontal flips (not for digits).
    #[arg(long)]
    hflip: bool,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Keep the newest N checkpoints.
    #[arg(long, default_value_t = 3)]
    keep_checkpoints: usize,
    /// Write a sample grid from the EMA model every N steps (and at the end); 0 = end only.
    #[arg(long, default_value_t = 1000)]
    sample_every: u64,
    /// DDIM steps for the sample grids.
    #[arg(long, default_value_t = 50)]
    sample_steps: usize,
    /// Guidance scale for the sample grids.
    #[arg(long, default_value_t = 3.0)]
    sample_guidance: f64,
    /// Columns of the sample grids (one row per class).
    #[arg(long, default_value_t = 8)]
    grid_cols: usize,
    /// Stop after this many consecutive non-finite steps.
    #[arg(long, default_value_t = 20)]
    max_nonfinite: u32,
}

/// The noise schedule.
#[derive(Args)]
struct ScheduleFlags {
    /// Noise schedule: `linear`, `cosine` or `sigmoid`.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    timesteps: usize,
    /// Rescale the schedule to zero terminal SNR (use with --prediction-type v_prediction).
    #[arg(long)]
    zero_terminal_snr: bool,
}

impl ScheduleFlags {
    /// The validated config of schedule `name` with these T and rescaling settings.
    fn config(&self, name: &str) -> Result<NoiseScheduleConfig> {
        let mut cfg = NoiseScheduleConfig::new(BetaSchedule::from_name(name)?, self.timesteps);
        cfg.rescale_zero_terminal_snr = self.zero_terminal_snr;
        cfg.build()?;
        Ok(cfg)
    }
}

/// Model settings; image size, channels and classes come from the dataset.
#[derive(Args)]
struct ModelArgs {
    /// Architecture preset: `mnist` (ch 32, mults 1-2-2, attention at 7) or `cifar10_ddpm`.
    #[arg(long, default_value = "mnist")]
    preset: String,
    /// Override the base channel count.
    #[arg(long)]
    base_channels: Option<usize>,
    /// Override the channel multipliers, e.g. `1,2,2`.
    #[arg(long, value_delimiter = ',')]
    channel_mults: Option<Vec<usize>>,
    /// Override ResBlocks per level.
    #[arg(long)]
    num_res_blocks: Option<usize>,
    /// Override the attention resolutions, e.g. `7` or `16,8`.
    #[arg(long, value_delimiter = ',')]
    attention_resolutions: Option<Vec<usize>>,
    /// Override the attention heads.
    #[arg(long)]
    num_heads: Option<usize>,
    /// Override dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Time injection: `film` or `add`.
    #[arg(long)]
    time_mode: Option<String>,
    /// Train an unconditional model (no class labels, no guidance).
    #[arg(long)]
    unconditional: bool,
    #[command(flatten)]
    schedule: ScheduleFlags,
    /// What the network predicts: `epsilon` or `v_prediction`.
    #[arg(long, default_value = "epsilon")]
    prediction_type: String,
}

impl ModelArgs {
    fn build(&self, dataset: &datasets::Dataset) -> Result<ModelConfig> {
        let mut u = UNetConfig::preset(&self.preset)?;
        let [c, h, w] = dataset.image_shape();
        if h != w {
            bail!(
                "{}: images are {h}×{w}; only square images are supported",
                dataset.name
            );
        }
        u.in_channels = c;
        u.resolution = h;
        u.num_classes = (!self.unconditional).then(|| dataset.num_classes());
        if let Some(v) = self.base_channels {
            u.base_channels = v;
        }
        if let Some(v) = &self.channel_mults {
            u.channel_mults = v.clone();
        }
        if let Some(v) = self.num_res_blocks {
            u.num_res_blocks = v;
        }
        if let Some(v) = &self.attention_resolutions {
            u.attention_resolutions = v.clone();
        }
        if let Some(v) = self.num_heads {
            u.num_heads = v;
        }
        if let Some(v) = self.dropout {
            u.dropout = v;
        }
        if let Some(m) = &self.time_mode {
            u.time_mode = match m.as_str() {
                "film" => TimeMode::Film,
                "add" => TimeMode::Add,
                other => bail!("unknown --time-mode `{other}` (expected film or add)"),
            };
        }
        let cfg = ModelConfig {
            unet: u,
            schedule: self.schedule.config(&self.schedule.schedule)?,
            prediction_type: PredictionType::from_name(&self.prediction_type)?,
        };
        cfg.unet.validate()?;
        cfg.schedule.build()?;
        Ok(cfg)
    }
}

/// Sampler choice, shared by `sample` and `eval`.
#[derive(Args)]
pub(crate) struct SamplerFlags {
    /// Sampler: `ddim` or `ddpm`.
    #[arg(long, default_value = "ddim")]
    sampler: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
}

impl SamplerFlags {
    /// The settings, checked against `config`'s schedule (bad steps or η are one-line errors).
    pub(crate) fn settings(&self, config: &diffusion::ModelConfig) -> Result<SamplerSettings> {
        let settings = SamplerSettings {
            sampler: SamplerKind::from_name(&self.sampler)?,
            num_inference_steps: self.steps,
            eta: self.eta,
        };
        settings.scheduler(&config.schedule.build()?, config.prediction_type)?;
        Ok(settings)
    }
}

#[derive(Args)]
struct SampleArgs {
    /// Weights file (`NAME.safetensors`, with `NAME.json` beside it).
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// Class to sample (0-based), or `none` for unconditional; `all` gives one row per class.
    #[arg(long, default_value = "all")]
    class: String,
    /// Classifier-free guidance scale w (ε = ε_u + w(ε_c − ε_u): 1 = conditional, 0 =
    /// unconditional).
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    #[command(flatten)]
    sampler: SamplerFlags,
    /// Seed of the noise (same seed ⇒ same image, on every backend and in the browser).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images (per class with `--class all`).
    #[arg(long, default_value_t = 8)]
    num: usize,
    /// Output PNG grid.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the raw samples (values in [-1, 1], shape [n, c, h, w]) as .npy.
    #[arg(long)]
    npy: Option<PathBuf>,
    /// Also write a trajectory PNG: x_t (top) and x̂_0 (bottom) of the first image over the steps.
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Pixel scale of the PNG.
    #[arg(long, default_value_t = 2)]
    scale: u32,
    /// Grey padding between grid cells, pixels (`--num 1 --scale 1 --pad 0` writes the bare
    /// image, byte-identical to the HTTP service's PNG).
    #[arg(long, default_value_t = 2)]
    pad: u32,
    /// Device: `cpu`, `wgpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct ScheduleArgs {
    #[command(flatten)]
    schedule: ScheduleFlags,
    /// Write the table as CSV (t, beta, alpha, alpha_cumprod, sqrt_alpha_cumprod,
    /// sqrt_one_minus_alpha_cumprod, snr).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Plot ᾱ_t of linear, cosine and sigmoid at this T (the chosen one first).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct ForwardArgs {
    /// Dataset (as for `train`).
    #[arg(long, default_value = "mnist10k")]
    dataset: String,
    /// Image index in the training split.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Timesteps to show, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,100,250,500,999")]
    t: Vec<usize>,
    #[command(flatten)]
    schedule: ScheduleFlags,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image size for `folder:` datasets.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Channels for `folder:` datasets.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Output PNG strip.
    #[arg(long, default_value = "forward.png")]
    out: PathBuf,
}

#[derive(Args)]
struct ExportArgs {
    /// Checkpoint directory (`checkpoints/step-N`) or run directory (newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output weights (`NAME.safetensors`; `NAME.json` is written beside it).
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as f16 (half the size, for the web).
    #[arg(long)]
    f16: bool,
}

/// Progress bar for training.
struct Bar {
    bar: ProgressBar,
    smoothed: Option<f64>,
    rate: Option<f64>,
}

impl TrainObserver for Bar {
    fn on_step(&mut self, m: &StepMetrics) {
        if m.loss.is_finite() {
            self.smoothed = Some(self.smoothed.map_or(m.loss, |s| 0.98 * s + 0.02 * m.loss));
        }
        self.rate = Some(
            self.rate
                .map_or(m.img_per_s, |r| 0.9 * r + 0.1 * m.img_per_s),
        );
        self.bar.set_position(m.step + 1);
        if self.bar.is_hidden() && (m.step + 1) % 50 == 0 {
            // No terminal (a log file): a plain line now and then instead of the bar.
            eprintln!(
                "step {}/{}  loss {:.4}  lr {:.2e}  {:.1} img/s",
                m.step + 1,
                self.bar.length().unwrap_or(0),
                self.smoothed.unwrap_or(f64::NAN),
                m.lr,
                self.rate.unwrap_or(0.0)
            );
        }
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} img/s{}",
            self.smoothed.unwrap_or(f64::NAN),
            m.lr,
            self.rate.unwrap_or(0.0),
            if m.skipped {
                "  (skipped non-finite step)"
            } else {
                ""
            }
        ));
    }

    fn on_message(&mut self, message: &str) {
        self.bar.println(message);
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let device = training::device::parse_device(&a.device)?;
    let (config, dataset) = match &a.resume {
        Some(dir) => {
            let dir = training::checkpoint::resolve(dir)?;
            let state = training::checkpoint::load_state(&dir)?;
            let mut cfg = state.config;
            if let Some(s) = a.steps {
                if s < state.step {
                    bail!("--steps {s} is below the checkpoint's step {}", state.step);
                }
                cfg.steps = s;
            }
            // The checkpoint's data, exactly (not this invocation's flags).
            let ds = load_dataset(&cfg.dataset, cfg.image_size, cfg.channels, cfg.limit)?;
            (cfg, ds)
        }
        None => {
            let ds = load_dataset(&a.dataset, a.image_size, a.channels, a.limit)?;
            let model = a.model.build(&ds)?;
            let steps = a.steps.unwrap_or(4000);
            let mut c = TrainConfig::new(&a.dataset, model, steps, a.batch_size);
            (c.image_size, c.channels, c.limit) = (a.image_size, a.channels, a.limit);
            c.lr = a.lr;
            c.min_lr = a.min_lr;
            c.warmup_steps = a.warmup_steps.unwrap_or(500.min(steps / 10));
            c.weight_decay = a.weight_decay;
            c.grad_clip = a.grad_clip;
            c.label_dropout = a.label_dropout;
            c.ema_decay = a.ema_decay;
            c.seed = a.seed;
            c.horizontal_flip = a.hflip;
            c.checkpoint_every = a.checkpoint_every;
            c.keep_checkpoints = a.keep_checkpoints;
            c.sample_every = a.sample_every;
            c.sample_steps = a.sample_steps;
            c.sample_guidance = a.sample_guidance;
            c.grid_cols = a.grid_cols;
            c.max_nonfinite = a.max_nonfinite;
            (c, ds)
        }
    };
    config.validate(&dataset)?;
    let bar = ProgressBar::new(config.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let mut observer = Bar {
        bar,
        smoothed: None,
        rate: None,
    };
    let summary = train(
        &config,
        Arc::new(dataset),
        &a.out,
        a.resume.as_deref(),
        &device,
        &mut observer,
    )?;
    observer.bar.finish();
    eprintln!(
        "done: {} steps in {:.0} s ({} skipped); EMA weights: {}",
        summary.steps,
        summary.elapsed_s,
        summary.skipped_total,
        summary.weights.display()
    );
    Ok(())
}

fn load_dataset(
    spec: &str,
    image_size: usize,
    channels: usize,
    limit: Option<usize>,
) -> Result<datasets::Dataset> {
    let ds = DatasetSpec::parse(spec, image_size, channels)?.load(Split::Train)?;
    Ok(match limit {
        Some(n) => ds.take(n),
        None => ds,
    })
}

fn cmd_sample(a: SampleArgs) -> Result<()> {
    let device = training::device::parse_device(&a.device)?;
    let (model, config) = load_model(&a.weights, &device)?;
    let n_classes = config.unet.num_classes;
    if a.num == 0 {
        bail!("--num must be at least 1");
    }
    let (labels, cols) = match a.class.as_str() {
        "all" => match n_classes {
            Some(n) => (training::generate::class_rows(n, a.num), a.num),
            None => (vec![None; a.num], a.num.min(8)),
        },
        "none" => (vec![None; a.num], a.num.min(8)),
        k => {
            let k: usize = k.parse().with_context(|| {
                format!("--class must be a class index, `none` or `all`, not `{k}`")
            })?;
            match n_classes {
                Some(n) if k < n => (vec![Some(k); a.num], a.num.min(8)),
                Some(n) => bail!(
                    "--class {k} is out of range: the model has classes 0..={}",
                    n - 1
                ),
                None => bail!("--class {k}: the model is unconditional (use --class none)"),
            }
        }
    };
    let settings = a.sampler.settings(&config)?;
    let started = std::time::Instant::now();
    let (values, shape) = if let Some(traj) = &a.trajectory {
        let every = (a.sampler.steps / 10).max(1);
        let (values, frames, shape) = generate_trajectory(
            &model, &config, &settings, labels, a.guidance, a.seed, every, &device,
        )?;
        let [_, c, h, w] = shape;
        let per = c * h * w;
        let mut strip: Vec<f32> = frames
            .iter()
            .flat_map(|(x, _)| x[..per].iter().copied())
            .collect();
        strip.extend(frames.iter().flat_map(|(_, x0)| x0[..per].iter().copied()));
        save_png(
            traj,
            &grid(
                &strip,
                [2 * frames.len(), c, h, w],
                frames.len(),
                2,
                a.scale.max(1),
            ),
        )?;
        (values, shape)
    } else {
        generate(
            &model,
            &config,
            &settings,
            labels,
            a.guidance,
            a.seed,
            &device,
            |_| {},
        )?
    };
    save_png(&a.out, &grid(&values, shape, cols, a.pad, a.scale.max(1)))?;
    if let Some(npy) = &a.npy {
        save_npy(npy, &values, &shape)?;
    }
    eprintln!(
        "{} images in {:.2} s → {}",
        shape[0],
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

fn cmd_schedule(a: ScheduleArgs) -> Result<()> {
    let name = a.schedule.schedule.clone();
    let s = a.schedule.config(&name)?.build()?;
    let csv = training::plot::schedule_csv(&s);
    match &a.csv {
        Some(p) => {
            training::images::ensure_parent(p)?;
            diffusion::weights::write_atomic(p, csv.as_bytes())?;
        }
        None if a.plot.is_none() => print!("{csv}"),
        None => {}
    }
    if let Some(p) = &a.plot {
        let mut names = vec![name.clone()];
        names.extend(
            ["linear", "cosine", "sigmoid"]
                .iter()
                .filter(|n| **n != name)
                .map(|n| n.to_string()),
        );
        let mut series = Vec::new();
        for other in names {
            let sc = a.schedule.config(&other)?.build()?;
            let last = *sc.alphas_cumprod.last().expect("T ≥ 1");
            series.push(Series {
                name: format!("{other} (ᾱ_T = {last:.2e})"),
                points: sc
                    .alphas_cumprod
                    .iter()
                    .enumerate()
                    .map(|(t, &v)| (t as f64, v))
                    .collect(),
            });
        }
        line_plot(p, "ᾱ_t = ∏ (1 − β_s)", "t", "ᾱ_t", &series, false)?;
    }
    eprintln!(
        "{} schedule, T = {}: ᾱ_T = {:.3e}, SNR_T = {:.3e}",
        name,
        a.schedule.timesteps,
        s.alphas_cumprod.last().copied().unwrap_or(f64::NAN),
        s.snr.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn cmd_forward(a: ForwardArgs) -> Result<()> {
    let ds = DatasetSpec::parse(&a.dataset, a.image_size, a.channels)?.load(Split::Train)?;
    if a.index >= ds.len() {
        bail!(
            "--index {} is out of range: {} has {} images",
            a.index,
            ds.name,
            ds.len()
        );
    }
    let s = a.schedule.config(&a.schedule.schedule)?.build()?;
    if let Some(t) = a.t.iter().find(|&&t| t >= a.schedule.timesteps) {
        bail!("--t {t} is out of range 0..={}", a.schedule.timesteps - 1);
    }
    let strip = training::generate::forward_strip(&ds, a.index, &s, &a.t, a.seed);
    let [c, h, w] = ds.image_shape();
    save_png(&a.out, &grid(&strip, [a.t.len(), c, h, w], a.t.len(), 2, 4))?;
    eprintln!("x_t at t = {:?} → {}", a.t, a.out.display());
    Ok(())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let dir = training::checkpoint::resolve(&a.checkpoint)?;
    let device = burn::tensor::Device::flex();
    let (state, _, ema, _) = training::checkpoint::load(&dir, &device.clone().autodiff(), &device)?;
    if !training::train::all_finite(&ema) {
        bail!(
            "{}: the EMA weights are not finite; not exporting",
            dir.display()
        );
    }
    if a.out.extension().is_none_or(|e| e != "safetensors") {
        bail!("--out must end in .safetensors (the config goes to the same name with .json)");
    }
    training::images::ensure_parent(&a.out)?;
    save_model(&ema, &state.config.model, &a.out, a.f16)?;
    eprintln!(
        "EMA weights of step {} → {} (+ {})",
        state.step,
        a.out.display(),
        diffusion::weights::config_path(&a.out).display()
    );
    Ok(())
}

fn cmd_serve(a: ServeArgs) -> Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = server::ServeConfig {
        weights: a.weights,
        workers: a.workers,
        queue: a.queue,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        static_dir: a.static_dir,
    };
    let state = server::state(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.addr)
            .await
            .with_context(|| format!("cannot listen on {}", a.addr))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        server::serve(listener, state, server::shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

fn main() {
    training::allocator::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Sample(a) => cmd_sample(a),
        Command::Schedule(a) => cmd_schedule(a),
        Command::Forward(a) => cmd_forward(a),
        Command::Export(a) => cmd_export(a),
        Command::Serve(a) => cmd_serve(a),
        Command::TrainClassifier(a) => eval_cmd::cmd_train_classifier(a),
        Command::Eval(a) => eval_cmd::cmd_eval(a),
    };
    if let Err(e) = result {
        // One line: the outermost context and its causes (a cause already quoted by the
        // message before it is not repeated).
        let mut msg: Vec<String> = Vec::new();
        for cause in e.chain().map(|c| c.to_string()) {
            if !msg.last().is_some_and(|m| m.ends_with(&cause)) {
                msg.push(cause);
            }
        }
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}
