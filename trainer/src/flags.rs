//! Flag groups and helpers that several subcommands share.

use anyhow::Result;
use clap::Args;
use datasets::{DatasetSpec, Split};
use diffusion::sampler::{SamplerKind, SamplerSettings};
use diffusion::{BetaSchedule, NoiseScheduleConfig};

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
    /// Sampler: `ddpm` (ancestral: clean backgrounds), `ddim`, `dpmsolver++` (DPM-Solver++ 2M:
    /// 15 steps are about as good as 50 DDIM steps) or `sde-dpmsolver++` (stochastic; with
    /// --karras-sigmas, clean in 15 steps). The deterministic ones leave some samples on grey
    /// backgrounds (the starting noise's mean survives them).
    #[arg(long, default_value = "ddpm")]
    pub(crate) sampler: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub(crate) steps: usize,
    /// DDIM η (0 = deterministic; the other samplers ignore it).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) eta: f64,
    /// DPM-Solver++ only: Karras noise levels ("DPM++ 2M Karras") instead of linspace timesteps.
    #[arg(long)]
    pub(crate) karras_sigmas: bool,
}

impl SamplerFlags {
    /// The settings, checked against `config`'s schedule (bad steps or η are one-line errors).
    pub(crate) fn settings(&self, config: &diffusion::ModelConfig) -> Result<SamplerSettings> {
        let settings = SamplerSettings {
            sampler: SamplerKind::from_name(&self.sampler)?,
            num_inference_steps: self.steps,
            eta: self.eta,
            use_karras_sigmas: self.karras_sigmas,
        };
        config.scheduler(&settings)?;
        Ok(settings)
    }
}

/// The image size and channels to load `spec` at: a fixed-size dataset's own (the flags, if
/// given, were checked by `flag_rules::dataset_shape`); for an image folder the flags, or what
/// its images are (grey or RGB; their smallest side, at most 64, rounded down to `multiple`),
/// with a note saying what was chosen.
pub(crate) fn dataset_shape(
    spec: &str,
    image_size: Option<usize>,
    channels: Option<usize>,
    multiple: usize,
    notes: &mut Vec<String>,
) -> Result<(usize, usize)> {
    let parsed = DatasetSpec::parse(spec, 0, 0)?;
    if let Some([c, h, _]) = parsed.fixed_shape() {
        return Ok((h, c));
    }
    let DatasetSpec::Folder { dir, .. } = &parsed else {
        unreachable!("every other dataset has a fixed shape")
    };
    if let (Some(s), Some(c)) = (image_size, channels) {
        return Ok((s, c));
    }
    let probe = datasets::image_folder::probe(dir)?;
    let channels = channels.unwrap_or_else(|| {
        let c = probe.default_channels();
        notes.push(if c == 1 {
            "the folder's images are all grey: 1 channel (--channels 3 for RGB)".to_string()
        } else {
            "the folder's images are in colour: 3 channels (--channels 1 for grey)".to_string()
        });
        c
    });
    let image_size = image_size.unwrap_or_else(|| {
        let s = probe.default_image_size(multiple);
        let what = match probe.uniform {
            Some((w, h)) => format!("the images are {w}×{h}"),
            None => format!("the smallest image side is {}", probe.min_side),
        };
        notes.push(format!(
            "{what}: training at {s}×{s} (--image-size to change)"
        ));
        s
    });
    Ok((image_size, channels))
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
