//! The settings of a training run ([`TrainConfig`]), saved in `config.json` and in every
//! checkpoint, with their defaults, validation against a dataset, and the optimiser, learning
//! rate schedule and EMA they describe.

use burn::optim::{AdamWConfig, ModuleOptimizer};
use datasets::Dataset;
use diffusion::sampler::SamplerSettings;
use diffusion::{ModelConfig, Precision};
use serde::{Deserialize, Serialize};

use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::lr::LrSchedule;

/// Every setting of a training run (saved in `config.json` and in each checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The dataset, as given on the command line (for the record).
    pub dataset: String,
    /// Image size of `folder:` datasets.
    #[serde(default)]
    pub image_size: usize,
    /// Channels of `folder:` datasets.
    #[serde(default)]
    pub channels: usize,
    /// Only the first N training images were used.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The model (U-Net, schedule, prediction type).
    pub model: ModelConfig,
    /// Optimisation steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε.
    pub adam_eps: f32,
    /// AdamW decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Probability of replacing a label by the null class (classifier-free guidance training).
    pub label_dropout: f64,
    /// EMA decay.
    pub ema_decay: f64,
    /// EMA warmup (1 + n) / (10 + n).
    pub ema_warmup: bool,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Random horizontal flips.
    pub horizontal_flip: bool,
    /// Stop after this many consecutive non-finite steps.
    pub max_nonfinite: u32,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Sample grid every N steps (0: only at the end).
    pub sample_every: u64,
    /// Steps of the sample grids (the default sampler, DDPM).
    pub sample_steps: usize,
    /// Guidance scale of the sample grids.
    pub sample_guidance: f64,
    /// Columns of the sample grids (one row per class).
    pub grid_cols: usize,
    /// Seed of the sample grids (the same every time, so grids compare over training).
    pub sample_seed: u64,
    /// Append a metrics line every N steps.
    pub log_every: u64,
    /// Steps queued on the device before the host reads their losses back (1: every step).
    /// Changes speed on a GPU, never results: a resumed run may use another value.
    #[serde(default = "one")]
    pub sync_every: u64,
    /// Data-parallel ranks the run trains on (`None`: one device). The record of how the
    /// steps were computed: a resume on another count is noted (float reassociation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel_ranks: Option<usize>,
    /// Weights the run started from instead of a random initialisation (`trainer train
    /// --init-weights`, e.g. an imported diffusers model), for the record: the checkpoints hold
    /// the weights, so a resumed run does not read the file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_weights: Option<String>,
    /// The dtype of the forward and backward passes; parameters, gradients, AdamW state and
    /// EMA stay f32 (`diffusion::precision`). Changes results: a resumed run keeps it.
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> u64 {
    1
}

impl TrainConfig {
    /// Defaults for `model`: AdamW 2e-4 (β 0.9/0.999, ε 1e-8, wd 0), 500 warmup steps,
    /// clip 1.0, label dropout 0.1, EMA 0.999 with warmup.
    pub fn new(dataset: &str, model: ModelConfig, steps: u64, batch_size: usize) -> Self {
        Self {
            dataset: dataset.to_string(),
            image_size: 0,
            channels: 0,
            limit: None,
            model,
            steps,
            batch_size,
            lr: 2e-4,
            min_lr: 0.0,
            warmup_steps: 500.min(steps / 10),
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            label_dropout: 0.1,
            ema_decay: 0.999,
            ema_warmup: true,
            seed: 0,
            horizontal_flip: false,
            max_nonfinite: 20,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            sample_every: 1000,
            sample_steps: 50,
            sample_guidance: 3.0,
            grid_cols: 8,
            sample_seed: 0,
            log_every: 10,
            sync_every: 1,
            data_parallel_ranks: None,
            init_weights: None,
            precision: Precision::F32,
        }
    }

    /// A fresh AdamW optimiser with these settings.
    pub fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(self.adam_eps)
            .with_weight_decay(self.weight_decay)
            .init()
    }

    /// The learning-rate schedule.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            base_lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
        }
    }

    /// The EMA settings.
    pub fn ema(&self) -> Ema {
        Ema {
            decay: self.ema_decay,
            warmup: self.ema_warmup,
        }
    }

    /// Checks the settings against each other and against `dataset`.
    pub fn validate(&self, dataset: &Dataset) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        let u = &self.model.unet;
        u.validate()?;
        self.model.schedule.build()?;
        if u.image_shape() != dataset.image_shape() {
            return bad(format!(
                "the model expects {}×{}×{} images but {} has {:?}",
                u.in_channels,
                u.resolution,
                u.resolution,
                dataset.name,
                dataset.image_shape()
            ));
        }
        if let Some(n) = u.num_classes {
            if n < dataset.num_classes() {
                return bad(format!(
                    "the model has {n} classes but {} has {}",
                    dataset.name,
                    dataset.num_classes()
                ));
            }
        }
        if self.steps == 0 || self.batch_size == 0 {
            return bad("steps and batch size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 ≤ min_lr ≤ lr, lr > 0 (lr = {}, min_lr = {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(format!(
                "label dropout {} must lie in [0, 1)",
                self.label_dropout
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("EMA decay {} must lie in [0, 1)", self.ema_decay));
        }
        if !(self.grad_clip >= 0.0) {
            return bad(format!("grad clip {} must be ≥ 0", self.grad_clip));
        }
        if self.sync_every == 0 {
            return bad("sync_every must be at least 1".into());
        }
        if self.max_nonfinite == 0 {
            return bad("max_nonfinite must be at least 1".into());
        }
        self.model.scheduler(&SamplerSettings {
            num_inference_steps: self.sample_steps,
            ..Default::default()
        })?;
        Ok(())
    }
}
