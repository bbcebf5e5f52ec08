//! The command line: the subcommands, and the flag groups and helpers several of them share.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use datasets::{DatasetSpec, Split};
use diffusion::sampler::{SamplerKind, SamplerSettings};
use diffusion::{BetaSchedule, NoiseScheduleConfig};

/// Train DDPMs on your images and sample them with DDPM/DDIM and classifier-free guidance.
///
/// Quick start (CPU, bundled MNIST-10k):
///   trainer train --steps 300 --out runs/quick
///   trainer sample --weights runs/quick/ema.safetensors --class 3 --guidance 3 --out three.png
#[derive(Parser)]
#[command(version, about, long_about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Train a model; writes checkpoints, sample grids, metrics and the EMA weights to --out.
    Train(crate::train_cmd::TrainArgs),
    /// Sample a trained model into a PNG grid (and optionally raw .npy / a trajectory).
    Sample(crate::sample_cmd::SampleArgs),
    /// Print or plot a noise schedule (β, ᾱ, SNR, …) to check that ᾱ_T is near zero.
    Schedule(crate::schedule_cmd::ScheduleArgs),
    /// Show the forward (noising) process on one dataset image.
    Forward(crate::forward_cmd::ForwardArgs),
    /// Export a checkpoint's EMA weights as safetensors + config JSON.
    Export(crate::export_cmd::ExportArgs),
    /// Serve the HTTP sampling API and the browser page.
    Serve(crate::serve_cmd::ServeArgs),
    /// Train the small evaluation classifier (class accuracy, classifier score, domain FID).
    TrainClassifier(crate::eval_cmd::TrainClassifierArgs),
    /// Sample n images and report Inception FID, domain FID, classifier accuracy and score
    /// against the real data (and the real-vs-real baseline).
    Eval(crate::eval_cmd::EvalArgs),
}

/// The noise schedule.
#[derive(Args)]
pub(crate) struct ScheduleFlags {
    /// Noise schedule: `linear`, `cosine` or `sigmoid`.
    #[arg(long, default_value = "linear")]
    pub(crate) schedule: String,
    /// Diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub(crate) timesteps: usize,
    /// Rescale the schedule to zero terminal SNR (use with --prediction-type v_prediction).
    #[arg(long)]
    pub(crate) zero_terminal_snr: bool,
}

impl ScheduleFlags {
    /// The validated config of schedule `name` with these T and rescaling settings.
    pub(crate) fn config(&self, name: &str) -> Result<NoiseScheduleConfig> {
        let mut cfg = NoiseScheduleConfig::new(BetaSchedule::from_name(name)?, self.timesteps);
        cfg.rescale_zero_terminal_snr = self.zero_terminal_snr;
        cfg.build()?;
        Ok(cfg)
    }
}

/// Sampler choice, shared by `sample` and `eval`.
#[derive(Args)]
pub(crate) struct SamplerFlags {
    /// Sampler: `ddim` or `ddpm`.
    #[arg(long, default_value = "ddim")]
    pub(crate) sampler: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// DDIM η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) eta: f64,
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

pub(crate) fn load_dataset(
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
