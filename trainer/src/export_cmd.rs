//! `trainer export`: a checkpoint's EMA weights as safetensors + config JSON.

use std::path::PathBuf;

use anyhow::{bail, Result};
use artifacts::ensure_parent;
use clap::Args;
use diffusion::weights::save_model;

#[derive(Args)]
pub(crate) struct ExportArgs {
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

pub(crate) fn cmd_export(a: ExportArgs) -> Result<()> {
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
    ensure_parent(&a.out)?;
    save_model(&ema, &state.config.model, &a.out, a.f16)?;
    eprintln!(
        "EMA weights of step {} → {} (+ {})",
        state.step,
        a.out.display(),
        diffusion::weights::config_path(&a.out).display()
    );
    Ok(())
}
