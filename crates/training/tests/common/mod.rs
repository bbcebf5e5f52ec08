//! What the training tests share: the 100-image fixture, a tiny config, run directories, and
//! the lock that runs them one at a time.
#![allow(dead_code)] // each test binary uses some

use std::path::PathBuf;
use std::sync::Arc;

use datasets::{Dataset, DatasetSpec, Split};
use diffusion::{ModelConfig, UNetConfig};
use training::train::TrainConfig;

/// Burn's CPU RNG (parameter init, dropout masks) is process-global, so two trainings in one
/// process at the same time would interleave its draws: run the tests one at a time.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn fixture() -> Arc<Dataset> {
    Arc::new(DatasetSpec::Mnist10k.load(Split::Train).unwrap().take(100))
}

pub fn tiny_config(steps: u64) -> TrainConfig {
    let unet = UNetConfig::new(1, 28, 32, vec![1, 2], vec![14])
        .with_num_res_blocks(1)
        .with_num_classes(Some(10))
        .with_dropout(0.1);
    let mut c = TrainConfig::new("mnist10k", ModelConfig::new(unet), steps, 8);
    c.lr = 1e-3;
    c.warmup_steps = 5;
    c.checkpoint_every = 6;
    c.keep_checkpoints = 10;
    c.sample_every = 0;
    c.sample_steps = 2;
    c.grid_cols = 1;
    c.log_every = 1;
    c.seed = 17;
    c
}

pub fn run_dir(name: &str) -> PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-test-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}
