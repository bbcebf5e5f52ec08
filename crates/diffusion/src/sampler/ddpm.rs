//! DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), over all T steps or a sub-sequence.
//!
//! For consecutive visited timesteps t → t' (t' = −1 after the last), with
//! α'_t = ᾱ_t / ᾱ_{t'} and β'_t = 1 − α'_t (equal to α_t, β_t when no step is skipped):
//!
//! x_{t'} = μ̃(x_t, x̂_0) + σ_t z, μ̃ = √ᾱ_{t'} β'_t / (1 − ᾱ_t) · x̂_0 + √α'_t (1 − ᾱ_{t'}) / (1 − ᾱ_t) · x_t
//!
//! (DDPM Eq. 7 written with x̂_0, as diffusers' `DDPMScheduler.step` does), and
//! σ_t² = β̃'_t = (1 − ᾱ_{t'}) / (1 − ᾱ_t) · β'_t (`fixed_small`) or β'_t (`fixed_large`).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    alpha_cumprod_prev, check_clip_range, inference_timesteps, Scheduler, SchedulerOutput,
    SchedulerState, TimestepSpacing,
};
use crate::error::Result;
use crate::objective::PredictionType;
use crate::schedule::NoiseSchedule;

/// The variance σ_t² of each ancestral step (DDPM §3.2: both give similar results).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ² = β̃_t, the posterior variance (the lower bound).
    #[default]
    FixedSmall,
    /// σ² = β_t (the upper bound).
    FixedLarge,
}

/// Settings of [`DdpmScheduler`], named as in diffusers' `DDPMScheduler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdpmSchedulerConfig {
    /// Number of denoising steps (T for the original ancestral sampler).
    pub num_inference_steps: usize,
    /// σ² = β̃ or β.
    pub variance_type: VarianceType,
    /// How the timesteps are spread when `num_inference_steps < T`.
    pub timestep_spacing: TimestepSpacing,
    /// Added to every `leading` timestep.
    pub steps_offset: usize,
    /// Clip x̂_0 to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// The clipping bound.
    pub clip_sample_range: f64,
}

impl Default for DdpmSchedulerConfig {
    fn default() -> Self {
        Self {
            num_inference_steps: 1000,
            variance_type: VarianceType::FixedSmall,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            clip_sample: true,
            clip_sample_range: 1.0,
        }
    }
}

impl DdpmSchedulerConfig {
    /// Builds the scheduler for `schedule` and a model trained with `prediction_type`.
    pub fn init(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
    ) -> Result<DdpmScheduler> {
        check_clip_range(self.clip_sample_range)?;
        let timesteps = inference_timesteps(
            schedule.num_train_timesteps(),
            self.num_inference_steps,
            self.timestep_spacing,
            self.steps_offset,
        )?;
        Ok(DdpmScheduler {
            config: self.clone(),
            prediction_type,
            alphas_cumprod: schedule.alphas_cumprod.clone(),
            timesteps,
        })
    }
}

/// The DDPM ancestral sampler.
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    config: DdpmSchedulerConfig,
    prediction_type: PredictionType,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<usize>,
}

/// Host-side coefficients of one ancestral step.
struct StepCoefficients {
    ab: f64,
    x0_coef: f64,
    xt_coef: f64,
    variance: f64,
}

impl DdpmScheduler {
    fn coefficients(&self, step_index: usize) -> StepCoefficients {
        let ab = self.alphas_cumprod[self.timesteps[step_index]];
        let ab_prev = alpha_cumprod_prev(&self.alphas_cumprod, &self.timesteps, step_index, 1.0);
        let alpha = ab / ab_prev;
        let beta = 1.0 - alpha;
        let variance = match self.config.variance_type {
            VarianceType::FixedSmall => (1.0 - ab_prev) / (1.0 - ab) * beta,
            // No noise after the last step, where β' = 1 − ᾱ_t would otherwise be used.
            VarianceType::FixedLarge if step_index + 1 == self.timesteps.len() => 0.0,
            VarianceType::FixedLarge => beta,
        };
        StepCoefficients {
            ab,
            x0_coef: ab_prev.sqrt() * beta / (1.0 - ab),
            xt_coef: alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab),
            variance,
        }
    }

    /// The settings.
    pub fn config(&self) -> &DdpmSchedulerConfig {
        &self.config
    }
}

impl Scheduler for DdpmScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        self.coefficients(step_index).variance > 0.0
    }

    fn noise_level(&self, step_index: usize) -> (f64, f64) {
        let ab = self.alphas_cumprod[self.timesteps[step_index]];
        (ab.sqrt(), (1.0 - ab).sqrt())
    }

    fn step(
        &self,
        _state: &mut SchedulerState,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> SchedulerOutput {
        let c = self.coefficients(step_index);
        let (mut x0, _) = self
            .prediction_type
            .to_x0_and_eps(model_output, sample.clone(), c.ab);
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r);
        }
        let mut prev = x0.clone().mul_scalar(c.x0_coef) + sample.mul_scalar(c.xt_coef);
        if c.variance > 0.0 {
            let z = noise.expect("DDPM needs noise: see Scheduler::needs_noise");
            prev = prev + z.mul_scalar(c.variance.sqrt());
        }
        SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        }
    }
}
