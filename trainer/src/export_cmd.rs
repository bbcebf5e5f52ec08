//! `trainer export`: a checkpoint's EMA weights (or converted weights, e.g. f16) as
//! safetensors + config JSON.

use std::path::PathBuf;

use anyhow::{bail, Result};
use artifacts::ensure_parent;
use clap::Args;
use diffusion::weights::{load_model, save_model};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Checkpoint directory (`checkpoints/step-N`) or run directory (newest checkpoint).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// Or exported weights to convert (`NAME.safetensors` with `NAME.json`), e.g. to f16.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Output weights (`NAME.safetensors`; `NAME.json` is written beside it).
    #[arg(long)]
    out: PathBuf,
    /// Store the weights as f16 (half the size, for the web).
    #[arg(long)]
    f16: bool,
}

pub(crate) fn cmd_export(a: ExportArgs) -> Result<()> {
    if a.out.extension().is_none_or(|e| e != "safetensors") {
        bail!("--out must end in .safetensors (the config goes to the same name with .json)");
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
    ensure_parent(&a.out)?;
    save_model(&model, &config, &a.out, a.f16)?;
    eprintln!(
        "{source} → {} (+ {})",
        a.out.display(),
        diffusion::weights::config_path(&a.out).display()
    );
    Ok(())
}
