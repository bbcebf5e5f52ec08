//! `trainer export`: a checkpoint's EMA weights (or converted weights, e.g. f16) as
//! safetensors + config JSON, or as a diffusers pipeline folder; `trainer import-diffusers`:
//! the way back.

use std::path::PathBuf;

use anyhow::{bail, Result};
use artifacts::ensure_parent;
use clap::{Args, ValueEnum};
use diffusion::weights::{load_model, save_model};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Checkpoint directory (`checkpoints/step-N`) or run directory (newest checkpoint).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// Or exported weights to convert (`NAME.safetensors` with `NAME.json`), e.g. to f16.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Output: weights `NAME.safetensors` (`NAME.json` is written beside it), or with
    /// `--format diffusers` a pipeline folder.
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as f16 (half the size, for the web).
    #[arg(long)]
    f16: bool,
    /// `toolkit` (our safetensors + JSON) or `diffusers` (a `DDPMPipeline` folder:
    /// `model_index.json`, `unet/`, `scheduler/`).
    #[arg(long, value_enum, default_value = "toolkit")]
    format: Format,
}

/// What `trainer export` writes.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Our safetensors + config JSON.
    Toolkit,
    /// A diffusers pipeline folder.
    Diffusers,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// A diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`) or a bare
    /// `UNet2DModel` folder (`config.json`, `diffusion_pytorch_model.safetensors`).
    dir: PathBuf,
    /// Output weights (`NAME.safetensors`; `NAME.json` is written beside it).
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as f16.
    #[arg(long)]
    f16: bool,
}

/// `--out` must name a safetensors file (the config goes beside it).
fn check_weights_out(out: &std::path::Path) -> Result<()> {
    if out.extension().is_none_or(|e| e != "safetensors") {
        bail!("--out must end in .safetensors (the config goes to the same name with .json)");
    }
    Ok(())
}

pub(crate) fn cmd_import(a: ImportArgs) -> Result<()> {
    check_weights_out(&a.out)?;
    let device = burn::tensor::Device::flex();
    let started = std::time::Instant::now();
    let imported = diffusers_format::import(&a.dir, &device)?;
    ensure_parent(&a.out)?;
    save_model(&imported.model, &imported.config, &a.out, a.f16)?;
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    let u = &imported.config.unet;
    eprintln!(
        "{} ({:?} weights, {} parameters, {}×{}×{}, {}) → {} (+ {}) in {:.2} s",
        a.dir.display(),
        imported.stored,
        burn::module::Module::num_params(&imported.model),
        u.in_channels,
        u.resolution,
        u.resolution,
        match u.num_classes {
            Some(n) => format!("{n} classes"),
            None => "unconditional".into(),
        },
        a.out.display(),
        diffusion::weights::config_path(&a.out).display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn cmd_export(a: ExportArgs) -> Result<()> {
    if a.format == Format::Toolkit {
        check_weights_out(&a.out)?;
    } else if a
        .out
        .extension()
        .is_some_and(|e| e == "safetensors" || e == "json")
    {
        bail!("--format diffusers writes a folder: give --out a directory, not a file name");
    }
    let device = burn::tensor::Device::flex();
    let (model, config, source) = match (&a.checkpoint, &a.weights) {
        (Some(checkpoint), _) => {
            let dir = training::checkpoint::resolve(checkpoint)?;
            let (state, _, ema, _) =
                training::checkpoint::load(&dir, &device.clone().autodiff(), &device)?;
            if !training::train::all_finite(&ema) {
                bail!(
                    "{}: the EMA weights are not finite; not exporting",
                    dir.display()
                );
            }
            let source = format!("EMA weights of step {}", state.step);
            (ema, state.config.model, source)
        }
        (None, Some(weights)) => {
            if weights == &a.out {
                bail!("--out is the --weights file itself; write the conversion elsewhere");
            }
            let (model, config) = load_model(weights, &device)?;
            (model, config, format!("weights {}", weights.display()))
        }
        (None, None) => bail!("give --checkpoint or --weights"),
    };
    if a.format == Format::Diffusers {
        diffusers_format::export(&model, &config, &a.out, a.f16)?;
        eprintln!(
            "{source} → diffusers pipeline {} (DDPMPipeline.from_pretrained loads it)",
            a.out.display()
        );
        return Ok(());
    }
    ensure_parent(&a.out)?;
    save_model(&model, &config, &a.out, a.f16)?;
    eprintln!(
        "{source} → {} (+ {})",
        a.out.display(),
        diffusion::weights::config_path(&a.out).display()
    );
    Ok(())
}
