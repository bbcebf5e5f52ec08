//! `trainer sample`: a trained model into a PNG grid, raw `.npy` and a trajectory.

use std::path::PathBuf;

use crate::flag_rules;
use crate::flags::SamplerFlags;
use anyhow::{anyhow, bail, Result};
use artifacts::{grid, save_npy, save_png};
use clap::{ArgMatches, Args};
use diffusion::sampler::{ClassChoice, GridLabels};
use diffusion::weights::load_model;
use training::generate::{generate_from, generate_trajectory, Start};

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Weights file (`NAME.safetensors`, with `NAME.json` beside it).
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// Class to sample (0-based, or its name when the model names its classes), or `none` for
    /// unconditional; `all` gives one row per class.
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
    /// Start from this x_T instead of the seed's noise: a `.npy` of f32 (or f64) values,
    /// shape [N, C, H, W] in the model's channels and size, N = the images asked for (to
    /// compare with a diffusers run from the same latents).
    #[arg(long, conflicts_with = "init_image")]
    latents: Option<PathBuf>,
    /// SDEdit (variations, sketch to image): start from this image (PNG; grey or RGB as the
    /// model takes, at the model's size unless `--resize`) noised to the step `--strength`
    /// picks, instead of pure noise.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// With `--init-image`: how much of the schedule to run, in (0, 1] (diffusers' img2img
    /// `strength`): 1 starts from nearly pure noise, small values stay close to the image.
    #[arg(long, requires = "init_image", conflicts_with = "mask")]
    strength: Option<f64>,
    /// Inpainting (RePaint): regenerate where this mask (PNG, the model's size) is white and
    /// keep `--init-image` where it is black, as diffusers' inpainting masks. `--steps` and
    /// `--eta` set RePaint's steps and η; the jumps add model calls.
    #[arg(long, requires = "init_image")]
    mask: Option<PathBuf>,
    /// With `--mask`: steps jumped back up at each jump point (RePaint's j).
    #[arg(long, requires = "mask", default_value_t = 10)]
    jump_length: usize,
    /// With `--mask`: how often each jump point is resampled (RePaint's r; 1 = no jumps).
    #[arg(long, requires = "mask", default_value_t = 10)]
    jump_n_sample: usize,
    /// With `--init-image`: resize the image to the model's size instead of refusing another
    /// size.
    #[arg(long, requires = "init_image")]
    resize: bool,
    /// Device: `cpu`, `wgpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub(crate) fn cmd_sample(a: SampleArgs, m: &ArgMatches) -> Result<()> {
    let device = training::device::parse_device(&a.device)?;
    let (model, config) = load_model(&a.weights, &device)?;
    flag_rules::print_notes(&flag_rules::sample(m, config.unet.num_classes.is_none())?);
    let GridLabels { labels, cols } =
        ClassChoice::parse_named(&a.class, config.class_names.as_deref())
            .and_then(|c| c.grid(a.num, config.unet.num_classes))
            .map_err(|e| anyhow!("--class {} --num {}: {e}", a.class, a.num))?;
    let settings = a.sampler.settings(&config)?;
    let latents = match &a.latents {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let (values, shape) =
                artifacts::parse_npy(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let [c, h, w] = config.unet.image_shape();
            if shape.len() != 4 || shape[1..] != [c, h, w] {
                bail!(
                    "{}: latents of shape {shape:?}; this model needs [N, {c}, {h}, {w}]",
                    path.display()
                );
            }
            if shape[0] != labels.len() {
                bail!(
                    "{}: holds {} images, but --class {} --num {} asks for {}",
                    path.display(),
                    shape[0],
                    a.class,
                    a.num,
                    labels.len()
                );
            }
            if a.sampler.sampler == "ddim" && config.clip_range().is_some() {
                eprintln!(
                    "note: this DDIM clips x̂₀ and re-derives ε̂ from it (diffusers' \
                     use_clipped_model_output=True); DDIMPipeline passes False, so its images \
                     differ wherever x̂₀ is clipped"
                );
            }
            Some(Start::Latents(values))
        }
    };
    let latents = match &a.init_image {
        None => latents,
        Some(path) => {
            let [c, h, _] = config.unet.image_shape();
            let image =
                artifacts::load_image_values(path, c, h, a.resize).map_err(|e| anyhow!(e))?;
            match &a.mask {
                None => Some(Start::Image {
                    image,
                    strength: a.strength.unwrap_or(0.8),
                }),
                Some(mask) => {
                    let m = artifacts::load_image_values(mask, 1, h, a.resize)
                        .map_err(|e| anyhow!(e))?;
                    Some(Start::Inpaint {
                        image,
                        keep: diffusion::sampler::keep_from_mask(&m, c),
                        jump_length: a.jump_length,
                        jump_n_sample: a.jump_n_sample,
                    })
                }
            }
        }
    };
    let started = std::time::Instant::now();
    let (values, shape) = if let Some(traj) = &a.trajectory {
        let every = (a.sampler.steps / 10).max(1);
        let (values, frames, shape) = generate_trajectory(
            &model, &config, &settings, labels, a.guidance, a.seed, latents, every, &device,
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
        generate_from(
            &model,
            &config,
            &settings,
            labels,
            a.guidance,
            a.seed,
            latents,
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
