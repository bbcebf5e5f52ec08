//! `trainer train`: a new run from flags, or `--resume` of a checkpoint.

use std::path::PathBuf;
use std::sync::Arc;

use crate::flag_rules;
use crate::flags::{dataset_shape, load_dataset, ScheduleFlags};
use crate::progress::TrainBar;
use crate::signals::StopSignal;
use anyhow::{bail, Result};
use clap::{ArgMatches, Args};
use diffusion::{ModelConfig, Precision, PredictionType, TimeMode, UNetConfig};
use training::train::{train_on, TrainConfig};

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Dataset: `mnist10k` (bundled), `fashion-mnist[:DIR]`, `cifar10:DIR` (binary batches) or
    /// `folder:DIR` (one sub-folder per class).
    #[arg(long, default_value = "mnist10k")]
    dataset: String,
    /// Image size for `folder:` datasets (resize + centre crop) [default: the images' smallest
    /// side, at most 64, rounded down to what the U-Net's levels divide].
    #[arg(long)]
    image_size: Option<usize>,
    /// Channels for `folder:` datasets: 1 (grey) or 3 (RGB) [default: 1 when every image is
    /// grey, else 3].
    #[arg(long)]
    channels: Option<usize>,
    /// Use only the first N training images (quick experiments, fixtures).
    #[arg(long)]
    limit: Option<usize>,
    /// Output run directory [default: runs/mnist; with --resume, the checkpoint's run].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue exactly from a checkpoint (a `checkpoints/step-N` directory, or a run
    /// directory for its newest); the checkpoint's settings are used, only --steps may grow.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start from these weights (`NAME.safetensors` with `NAME.json`; ours, or a model from
    /// `trainer import-diffusers`) instead of a random initialisation: fine-tuning. The model
    /// and its noise schedule come from `NAME.json`; the optimiser starts fresh and the EMA
    /// from the weights.
    #[arg(long, conflicts_with = "resume")]
    init_weights: Option<PathBuf>,
    /// Device: `cpu` (Burn flex), `wgpu`, or `cuda[:N]` (needs the matching cargo feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Data-parallel training, one rank per device: `cuda:0,cuda:1,…`, `all` (every CUDA
    /// device), or `cpu,cpu` (the same code path on the CPU with a host-memory reducer). Each
    /// rank takes its shard of every global batch (--batch-size stays the global batch, and
    /// must split evenly); gradients are averaged (Burn's collective, NCCL, on CUDA) before the
    /// clip and AdamW step. Rank 0 logs, samples and checkpoints.
    #[arg(long, conflicts_with = "device")]
    devices: Option<String>,
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
    /// Sampling steps for the sample grids (the default sampler, DDPM).
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
    /// Steps queued on the device per read-back of their losses (the non-finite check runs
    /// on each, with a roll-back when one fails): speed only, never results. [default: 1 on
    /// the CPU, where waiting costs nothing; 16 on a GPU]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    sync_every: Option<u64>,
    /// Compute dtype of the forward and backward passes: `f32`, or `bf16` (mixed precision:
    /// parameters, gradients, AdamW state and EMA stay f32; for GPUs, whose tensor cores run
    /// bf16 — on the CPU it is correct but slower). A resumed run keeps its checkpoint's.
    #[arg(long)]
    precision: Option<String>,
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
    /// Override the attention resolutions, e.g. `7` or `16,8` [default: the preset's levels at
    /// this image size: `mnist` its lowest (7 at 28, 16 at 64), `cifar10_ddpm` half the size].
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
    /// What the image size must divide by: the preset's downsampling factor, or that of the
    /// `--channel-mults` given.
    fn size_multiple(&self) -> Result<usize> {
        let mut u = UNetConfig::preset(&self.preset)?;
        if let Some(m) = &self.channel_mults {
            u.channel_mults = m.clone();
        }
        Ok(u.downsampling_factor())
    }

    fn build(&self, dataset: &datasets::Dataset, notes: &mut Vec<String>) -> Result<ModelConfig> {
        let preset = UNetConfig::preset(&self.preset)?;
        let mut u = preset.clone();
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
        match &self.attention_resolutions {
            Some(v) => u.attention_resolutions = v.clone(),
            None => {
                // The preset's attention levels at this image size and level count.
                u = u.with_attention_levels(&preset.attention_levels());
                if u.attention_resolutions != preset.attention_resolutions {
                    notes.push(format!(
                        "attention at {} (the {} preset's levels at {h}×{h})",
                        u.attention_resolutions
                            .iter()
                            .map(|r| format!("{r}×{r}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        self.preset
                    ));
                }
            }
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
            class_names: (!self.unconditional).then(|| dataset.class_names.clone()),
            clip_sample: None,
            clip_sample_range: None,
        };
        cfg.unet.validate()?;
        cfg.schedule.build()?;
        Ok(cfg)
    }
}

/// The model config of `--init-weights W` (`W.json`), with `--dropout` applied: the only
/// model flag that does not change the weights' shapes or meaning (`flag_rules::train` refuses
/// the others).
fn init_model(weights: &std::path::Path, args: &ModelArgs) -> Result<ModelConfig> {
    if !weights.is_file() {
        bail!("--init-weights {}: no such file", weights.display());
    }
    let mut config = ModelConfig::load(&diffusion::weights::config_path(weights))?;
    if let Some(d) = args.dropout {
        config.unet.dropout = d;
    }
    Ok(config)
}

pub(crate) fn cmd_train(a: TrainArgs, m: &ArgMatches) -> Result<()> {
    let mut notes = flag_rules::train(m)?;
    let devices = match &a.devices {
        Some(list) => training::device::parse_devices(list)?,
        None => vec![training::device::parse_device(&a.device)?],
    };
    let on_cpu = devices[0] == burn::tensor::Device::flex();
    let precision: Option<Precision> = a.precision.as_deref().map(str::parse).transpose()?;
    let mut out = a.out.clone();
    let (config, dataset) = match &a.resume {
        Some(dir) => {
            let dir = training::checkpoint::resolve(dir)?;
            // RUN/checkpoints/step-N: continue in RUN unless told otherwise.
            if out.is_none() {
                out = dir.parent().and_then(|p| p.parent()).map(PathBuf::from);
            }
            let state = training::checkpoint::load_state(&dir)?;
            let mut cfg = state.config;
            if let Some(s) = a.steps {
                if s < state.step {
                    bail!("--steps {s} is below the checkpoint's step {}", state.step);
                }
                cfg.steps = s;
            }
            if let Some(p) = precision.filter(|&p| p != cfg.precision) {
                bail!(
                    "--precision {p}: the checkpoint was trained in {} and a resumed run keeps it",
                    cfg.precision
                );
            }
            // The checkpoint's data, exactly (not this invocation's flags).
            let ds = load_dataset(&cfg.dataset, cfg.image_size, cfg.channels, cfg.limit)?;
            (cfg, ds)
        }
        None => {
            let init = match &a.init_weights {
                Some(w) => Some(init_model(w, &a.model)?),
                None => None,
            };
            // Fine-tuning loads the data at the model's size and channels.
            let (size, chans) = match &init {
                Some(c) => (
                    a.image_size.or(Some(c.unet.resolution)),
                    a.channels.or(Some(c.unet.in_channels)),
                ),
                None => (a.image_size, a.channels),
            };
            let (image_size, channels) = dataset_shape(
                &a.dataset,
                size,
                chans,
                a.model.size_multiple()?,
                &mut notes,
            )?;
            let ds = load_dataset(&a.dataset, image_size, channels, a.limit)?;
            let model = match &init {
                Some(model) => model.clone(),
                None => a.model.build(&ds, &mut notes)?,
            };
            let steps = a.steps.unwrap_or(4000);
            let mut c = TrainConfig::new(&a.dataset, model, steps, a.batch_size);
            (c.image_size, c.channels, c.limit) = (image_size, channels, a.limit);
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
            c.precision = precision.unwrap_or_default();
            c.init_weights = a.init_weights.as_ref().map(|p| p.display().to_string());
            (c, ds)
        }
    };
    let mut config = config;
    config.sync_every = a.sync_every.unwrap_or(if on_cpu { 1 } else { 16 });
    config.validate(&dataset)?;
    if config.precision == Precision::Bf16 && on_cpu {
        eprintln!(
            "note: bf16 on the CPU is correct but slower than f32 (Burn's flex has no bf16 \
             arithmetic and widens every op); it is meant for GPUs"
        );
    }
    flag_rules::print_notes(&notes);
    let out = out.unwrap_or_else(|| PathBuf::from("runs/mnist"));
    let mut observer = TrainBar::new(config.steps, StopSignal::install()?);
    let summary = train_on(
        &config,
        Arc::new(dataset),
        &out,
        a.resume.as_deref(),
        &devices,
        a.devices.is_some(),
        &mut observer,
    )?;
    observer.finish();
    eprintln!(
        "done: {} steps in {:.0} s ({} skipped); EMA weights: {}",
        summary.steps,
        summary.elapsed_s,
        summary.skipped_total,
        summary.weights.display()
    );
    Ok(())
}
