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
/// (`leading` spacing, x̂_0 clipped to [-1, 1]), except that DDIM re-derives ε̂ from the
/// clipped x̂_0 (diffusers' `use_clipped_model_output=True`).
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
                    // x̂_0 is clipped to [-1, 1]; re-deriving ε̂ from the clipped x̂_0 keeps
                    // Eq. 12's two terms consistent (x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂). Without it a
                    // guided ε̂ whose x̂_0 lies far outside the range pushes that excess into
                    // x_{t−1}: noisy backgrounds and broken strokes at w = 3, where DDPM's
                    // posterior mean (which has this consistency built in) is clean.
                    use_clipped_model_output: true,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::NoiseScheduleConfig;
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn ddim_rederives_epsilon_from_the_clipped_x0() {
        // A prediction whose x̂_0 lies outside [-1, 1]: the step must use x̂_0 clipped and the
        // ε̂ consistent with it, x_{t−1} = √ᾱ' x̂_0 + √(1−ᾱ') (x_t − √ᾱ x̂_0)/√(1−ᾱ).
        let device = Device::flex();
        let schedule = NoiseScheduleConfig::default().build().unwrap();
        let settings = SamplerSettings {
            num_inference_steps: 10,
            ..Default::default()
        };
        let s = settings
            .scheduler(&schedule, PredictionType::Epsilon)
            .unwrap();
        let (t, t_prev) = (s.timesteps()[3], s.timesteps()[4]);
        let (ab, abp) = (schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]);
        let x_t = [0.9f32, -0.2, 2.5, -3.0];
        let eps = [-1.5f32, 0.3, -0.4, 1.2];
        let tensor =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 1, 2, 2]), &device);
        let out = s.step(tensor(&eps), 3, tensor(&x_t), None);
        let got: Vec<f32> = out
            .prev_sample
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        for i in 0..4 {
            let (x, e) = (x_t[i] as f64, eps[i] as f64);
            let x0 = ((x - (1.0 - ab).sqrt() * e) / ab.sqrt()).clamp(-1.0, 1.0);
            let e2 = (x - ab.sqrt() * x0) / (1.0 - ab).sqrt();
            let want = abp.sqrt() * x0 + (1.0 - abp).sqrt() * e2;
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                got[i]
            );
        }
    }
}
