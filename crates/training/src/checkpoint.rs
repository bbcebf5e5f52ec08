//! Checkpoints: everything needed to continue a run exactly.
//!
//! A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding the trained model
//! (`model.bpk`), its EMA (`ema.bpk`), the AdamW state (`optim.bpk`) — Burn's burnpack format,
//! which keeps the parameter ids the optimiser state is keyed by — and `state.json` (the step,
//! counters and the full training config; batches and noise are functions of the seed and the
//! step, so that is the data-loader position and RNG state). The directory is written under a
//! temporary name and renamed into place, so a crash never leaves a half-written checkpoint;
//! only the newest `keep` are kept.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use diffusion::UNet;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// The small, JSON part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimisation steps completed (the next step to run).
    pub step: u64,
    /// Steps skipped because the loss or gradients were not finite.
    pub skipped_total: u64,
    /// Consecutive non-finite steps at the time of the checkpoint.
    pub consecutive_nonfinite: u32,
    /// EMA updates applied so far.
    pub ema_updates: u64,
    /// Wall-clock training time so far, seconds.
    pub elapsed_s: f64,
    /// The run's configuration.
    pub config: TrainConfig,
}

const STATE: &str = "state.json";
const MODEL: &str = "model.bpk";
const EMA: &str = "ema.bpk";
const OPTIM: &str = "optim.bpk";

/// `run_dir/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The checkpoints of a run, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(checkpoints_dir(run_dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Resolves `--resume PATH`: a checkpoint directory, or a run directory (its newest
/// checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE).is_file() {
        return Ok(path.to_path_buf());
    }
    list_checkpoints(path).pop().ok_or_else(|| TrainError::Checkpoint {
        path: path.display().to_string(),
        reason: "no checkpoint here (expected a step-N directory or a run directory holding checkpoints/)".into(),
    })
}

fn record_bytes<M: Module>(m: &M, what: &str) -> Result<Vec<u8>> {
    let bytes = m
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| TrainError::Invalid(format!("serialising {what}: {e}")))?;
    Ok(bytes.to_vec())
}

/// A burnpack record with its tensors in name order. `ModuleOptimizer::to_record` (burn-optim
/// 0.22.1) lists the AdamW state in a `HashMap`'s order, which changes from run to run, and the
/// data section follows that list: rewritten in order, the same state always gives the same
/// bytes. The reader lists tensors by name; metadata and scalars are sorted maps already.
fn sorted_record(bytes: Bytes) -> Result<Vec<u8>> {
    let err = |e: burn_pack::Error| TrainError::Invalid(format!("serialising the optimiser: {e}"));
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(err)?;
    let metadata = reader.metadata().clone();
    let scalars = reader.scalars().clone();
    let mut writer = burn_pack::Writer::new(reader.into_tensors().map_err(err)?);
    for (k, v) in &metadata {
        writer = writer.with_metadata(k, v);
    }
    for (k, v) in scalars {
        writer = writer.with_scalar(&k, v);
    }
    Ok(writer.into_bytes().map_err(err)?.to_vec())
}

/// One file of a checkpoint, written (and flushed) through the one atomic writer; the
/// checkpoint as a whole becomes visible when its directory is renamed into place.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    Ok(artifacts::write_atomic(&dir.join(name), bytes)?)
}

/// Writes a checkpoint for `state.step` and prunes all but the newest `keep`.
pub fn save(
    run_dir: &Path,
    state: &CheckpointState,
    model: &UNet,
    ema: &UNet,
    optim: &ModuleOptimizer,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let result: Result<PathBuf> = (|| {
        write(&tmp, MODEL, &record_bytes(model, "the model")?)?;
        write(&tmp, EMA, &record_bytes(ema, "the EMA model")?)?;
        let optim_bytes = optim
            .into_bytes()
            .map_err(|e| TrainError::Invalid(format!("serialising the optimiser: {e}")))
            .and_then(sorted_record)?;
        write(&tmp, OPTIM, &optim_bytes)?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        write(&tmp, STATE, json.as_bytes())?;
        let dest = root.join(&name);
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
        Ok(dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let dest = result?;
    let all = list_checkpoints(run_dir);
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(dest)
}

fn fail(dir: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: dir.display().to_string(),
        reason: reason.into(),
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    std::fs::read(dir.join(name)).map_err(|e| fail(dir, format!("{name}: {e}")))
}

fn first_line(s: String) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Reads the JSON state of a checkpoint.
pub fn load_state(dir: &Path) -> Result<CheckpointState> {
    let text = read(dir, STATE)?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| fail(dir, format!("{STATE}: {e}")))?;
    state.config.model.unet.validate()?;
    Ok(state)
}

/// Loads a module's burnpack record into `module` (keeping the saved parameter ids).
fn load_module(dir: &Path, name: &str, module: UNet) -> Result<UNet> {
    let bytes = read(dir, name)?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| fail(dir, format!("{name}: {}", first_line(e.to_string()))))?;
    module
        .try_load_record(record)
        .map_err(|e| fail(dir, format!("{name}: {}", first_line(e.to_string()))))
}

/// Loads a checkpoint: the state, the model on `train_device` (autodiff), the EMA model on
/// `eval_device`, and the optimiser.
pub fn load(
    dir: &Path,
    train_device: &Device,
    eval_device: &Device,
) -> Result<(CheckpointState, UNet, UNet, ModuleOptimizer)> {
    let state = load_state(dir)?;
    let unet = &state.config.model.unet;
    let model = load_module(dir, MODEL, unet.init(train_device)?)?;
    let ema = load_module(dir, EMA, unet.init(eval_device)?)?;
    // Burn loads the optimiser state onto its default device.
    crate::device::make_default(eval_device);
    let optim_bytes = read(dir, OPTIM)?;
    let optim = state
        .config
        .optimizer()
        .from_bytes(Bytes::from_bytes_vec(optim_bytes))
        .map_err(|e| fail(dir, format!("{OPTIM}: {}", first_line(e.to_string()))))?;
    Ok((state, model, ema, optim))
}
