//! Choosing a sampler at run time (CLI flags, API JSON, the web page).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    DdimScheduler, DdimSchedulerConfig, DdpmScheduler, DdpmSchedulerConfig, Scheduler,
    SchedulerOutput,
};
use crate::error::{Error, Result};
use crate::objective::PredictionType;
use crate::schedule::NoiseSchedule;

/// Which sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// DDIM (deterministic at η = 0).
    #[default]
    Ddim,
    /// DDPM ancestral sampling with σ² = β̃.
    Ddpm,
}

impl SamplerKind {
    /// Parses `ddim` or `ddpm`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "ddim" => Ok(Self::Ddim),
            "ddpm" => Ok(Self::Ddpm),
            other => Err(Error::Sampler(format!(
                "unknown sampler `{other}` (expected ddim or ddpm)"
            ))),
        }
    }
}

/// The common sampler settings exposed to users; everything else takes diffusers' defaults
/// (`leading` spacing, x̂_0 clipped to [-1, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    /// DDIM or DDPM.
    pub sampler: SamplerKind,
    /// Denoising steps.
    pub num_inference_steps: usize,
    /// DDIM's η (ignored by DDPM).
    pub eta: f64,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            num_inference_steps: 50,
            eta: 0.0,
        }
    }
}

impl SamplerSettings {
    /// Builds the scheduler; bad steps or η are [`Error::Sampler`]s.
    pub fn scheduler(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
    ) -> Result<AnyScheduler> {
        Ok(match self.sampler {
            SamplerKind::Ddim => AnyScheduler::Ddim(
                DdimSchedulerConfig {
                    num_inference_steps: self.num_inference_steps,
                    eta: self.eta,
                    ..Default::default()
                }
                .init(schedule, prediction_type)?,
            ),
            SamplerKind::Ddpm => {
                // DDPM ignores η, but a nonsensical value is still the caller's mistake.
                super::check_eta(self.eta)?;
                AnyScheduler::Ddpm(
                    DdpmSchedulerConfig {
                        num_inference_steps: self.num_inference_steps,
                        ..Default::default()
                    }
                    .init(schedule, prediction_type)?,
                )
            }
        })
    }
}

/// A scheduler chosen at run time.
#[derive(Debug, Clone)]
pub enum AnyScheduler {
    /// DDIM.
    Ddim(DdimScheduler),
    /// DDPM.
    Ddpm(DdpmScheduler),
}

impl Scheduler for AnyScheduler {
    fn timesteps(&self) -> &[usize] {
        match self {
            Self::Ddim(s) => s.timesteps(),
            Self::Ddpm(s) => s.timesteps(),
        }
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        match self {
            Self::Ddim(s) => s.needs_noise(step_index),
            Self::Ddpm(s) => s.needs_noise(step_index),
        }
    }

    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> SchedulerOutput {
        match self {
            Self::Ddim(s) => s.step(model_output, step_index, sample, noise),
            Self::Ddpm(s) => s.step(model_output, step_index, sample, noise),
        }
    }
}
