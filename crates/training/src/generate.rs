//! Sampling a model into host values: grids, class rows, trajectories.

use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::{to_host, AnyScheduler, Edit, SamplerSettings, StepOutput};
use diffusion::{ModelConfig, SampleRequest, Sampling, UNet};

use crate::error::Result;

/// The scheduler and request for sampling `config`'s model.
fn prepare(
    config: &ModelConfig,
    settings: &SamplerSettings,
    class_labels: Vec<Option<usize>>,
    guidance_scale: f64,
    seed: u64,
    start: Option<&Start>,
) -> Result<(AnyScheduler, SampleRequest)> {
    let scheduler = match start {
        // Inpainting takes RePaint's steps, with the settings' step count and η.
        Some(Start::Inpaint {
            jump_length,
            jump_n_sample,
            ..
        }) => config.repaint_scheduler(
            settings.num_inference_steps,
            settings.eta,
            *jump_length,
            *jump_n_sample,
        )?,
        _ => config.scheduler(settings)?,
    };
    let request = SampleRequest {
        image_shape: config.unet.image_shape(),
        class_labels,
        guidance_scale,
        seed,
    };
    Ok((scheduler, request))
}

/// Where a run starts other than from the seed's x_T.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Given x_T: `[n, c, h, w]` values, one image per request entry.
    Latents(Vec<f32>),
    /// SDEdit from one image (`[c, h, w]` values in [-1, 1], the same for every request
    /// entry) at `strength` ([`diffusion::sampler::sdedit_start_index`]).
    Image {
        /// The image.
        image: Vec<f32>,
        /// How much of the schedule to run, in (0, 1].
        strength: f64,
    },
    /// RePaint inpainting of one image (`[c, h, w]` values in [-1, 1]): kept where `keep`
    /// (`[c, h, w]`) is 1, regenerated where it is 0, for every request entry.
    Inpaint {
        /// The image.
        image: Vec<f32>,
        /// 1 where the image is kept.
        keep: Vec<f32>,
        /// RePaint's jump length.
        jump_length: usize,
        /// RePaint's resamplings per jump point.
        jump_n_sample: usize,
    },
}

/// The run of `request`, from `start` instead of the seed's x_T when given.
fn start<'a>(
    model: &'a UNet,
    scheduler: &'a AnyScheduler,
    request: &SampleRequest,
    start: Option<Start>,
    device: &Device,
) -> Result<Sampling<'a, UNet, AnyScheduler>> {
    let sampling = Sampling::new(model, scheduler, request, device)?;
    Ok(match start {
        None => sampling,
        Some(Start::Latents(values)) => {
            let [c, h, w] = request.image_shape;
            let n = request.class_labels.len();
            if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
                return Err(diffusion::Error::Sampler(format!(
                    "latents holds a non-finite value ({bad})"
                ))
                .into());
            }
            if values.len() != n * c * h * w {
                return Err(diffusion::Error::Sampler(format!(
                    "latents holds {} values; {n} images of {c}×{h}×{w} need {}",
                    values.len(),
                    n * c * h * w
                ))
                .into());
            }
            let data = TensorData::new(values, [n, c, h, w]);
            sampling.with_latents(Tensor::<4>::from_data(data, device))?
        }
        Some(Start::Image { image, strength }) => {
            sampling.with_edit(&Edit::Vary { image, strength })?
        }
        Some(Start::Inpaint { image, keep, .. }) => {
            sampling.with_edit(&Edit::Inpaint { image, keep })?
        }
    })
}

/// Samples one image per entry of `class_labels` (`None` = unconditional) and returns the
/// values (in [-1, 1]) with their shape `[n, c, h, w]`. `progress` sees every step.
pub fn generate(
    model: &UNet,
    config: &ModelConfig,
    settings: &SamplerSettings,
    class_labels: Vec<Option<usize>>,
    guidance_scale: f64,
    seed: u64,
    device: &Device,
    progress: impl FnMut(&StepOutput),
) -> Result<(Vec<f32>, [usize; 4])> {
    generate_from(
        model,
        config,
        settings,
        class_labels,
        guidance_scale,
        seed,
        None,
        device,
        progress,
    )
}

/// [`generate`] from `start` (given x_T, or SDEdit from an image) when `Some`.
#[allow(clippy::too_many_arguments)]
pub fn generate_from(
    model: &UNet,
    config: &ModelConfig,
    settings: &SamplerSettings,
    class_labels: Vec<Option<usize>>,
    guidance_scale: f64,
    seed: u64,
    latents: Option<Start>,
    device: &Device,
    progress: impl FnMut(&StepOutput),
) -> Result<(Vec<f32>, [usize; 4])> {
    let (scheduler, request) = prepare(
        config,
        settings,
        class_labels,
        guidance_scale,
        seed,
        latents.as_ref(),
    )?;
    let out = start(model, &scheduler, &request, latents, device)?.run(progress);
    let shape = out.dims();
    Ok((to_host(out), shape))
}

/// Samples like [`generate_from`] and also records x_t and x̂_0 after every `every`-th step
/// (and the last), for trajectory plots. Returns (final, frames of (x_t, x̂_0), shape).
#[allow(clippy::too_many_arguments)]
pub fn generate_trajectory(
    model: &UNet,
    config: &ModelConfig,
    settings: &SamplerSettings,
    class_labels: Vec<Option<usize>>,
    guidance_scale: f64,
    seed: u64,
    latents: Option<Start>,
    every: usize,
    device: &Device,
) -> Result<(Vec<f32>, Vec<(Vec<f32>, Vec<f32>)>, [usize; 4])> {
    let (scheduler, request) = prepare(
        config,
        settings,
        class_labels,
        guidance_scale,
        seed,
        latents.as_ref(),
    )?;
    let mut sampling = start(model, &scheduler, &request, latents, device)?;
    let mut frames = Vec::new();
    let every = every.max(1);
    while let Some(out) = sampling.step() {
        if (out.step_index + 1) % every == 0 || out.step_index + 1 == out.num_steps {
            frames.push((
                to_host(sampling.sample().clone()),
                to_host(out.pred_original_sample),
            ));
        }
    }
    let x = sampling.sample().clone();
    let shape = x.dims();
    Ok((to_host(x), frames, shape))
}

/// x_t of dataset image `index` at each of `timesteps` (one noise draw from `seed`, shared by
/// all t), as values in model space.
pub fn forward_strip(
    dataset: &datasets::Dataset,
    index: usize,
    schedule: &diffusion::NoiseSchedule,
    timesteps: &[usize],
    seed: u64,
) -> Vec<f32> {
    let x0 = dataset.image_f32(index);
    let eps = diffusion::NoiseRng::new(seed).normal_vec(x0.len());
    timesteps
        .iter()
        .flat_map(|&t| {
            let (a, b) = (
                schedule.sqrt_alphas_cumprod[t],
                schedule.sqrt_one_minus_alphas_cumprod[t],
            );
            x0.iter()
                .zip(&eps)
                .map(move |(&x, &e)| (a * x as f64 + b * e as f64) as f32)
        })
        .collect()
}
