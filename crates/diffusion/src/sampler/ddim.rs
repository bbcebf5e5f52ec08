//! DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").
//!
//! Eq. 12, with τ the sub-sequence of timesteps and t' the one after t:
//!
//! x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ + σ_t z,
//!
//! where σ_t = η √((1 − ᾱ_{t'}) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_{t'}) (Eq. 16). η = 0 is the
//! deterministic DDIM; η = 1 over all T steps is DDPM with σ² = β̃.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    alpha_cumprod_prev, check_clip_range, check_eta, inference_timesteps, Scheduler,
    SchedulerOutput, SchedulerState, TimestepSpacing,
};
use crate::error::Result;
use crate::objective::PredictionType;
use crate::schedule::NoiseSchedule;

/// Settings of [`DdimScheduler`], named as in diffusers' `DDIMScheduler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdimSchedulerConfig {
    /// Number of denoising steps.
    pub num_inference_steps: usize,
    /// Stochasticity η ∈ [0, 1]: 0 is deterministic DDIM, 1 has DDPM's posterior variance.
    pub eta: f64,
    /// How the timesteps are spread.
    pub timestep_spacing: TimestepSpacing,
    /// Added to every `leading` timestep (Stable Diffusion uses 1).
    pub steps_offset: usize,
    /// Clip x̂_0 to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// The clipping bound (1.0 for data in [-1, 1]).
    pub clip_sample_range: f64,
    /// Use ᾱ = 1 after the last step (diffusers' `set_alpha_to_one`); otherwise ᾱ_0.
    pub set_alpha_to_one: bool,
    /// Re-derive ε̂ from the clipped x̂_0 (diffusers' `use_clipped_model_output`, GLIDE).
    pub use_clipped_model_output: bool,
}

impl Default for DdimSchedulerConfig {
    fn default() -> Self {
        Self {
            num_inference_steps: 50,
            eta: 0.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            use_clipped_model_output: false,
        }
    }
}

impl DdimSchedulerConfig {
    /// Builds the scheduler for `schedule` and a model trained with `prediction_type`.
    pub fn init(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
    ) -> Result<DdimScheduler> {
        check_eta(self.eta)?;
        check_clip_range(self.clip_sample_range)?;
        let timesteps = inference_timesteps(
            schedule.num_train_timesteps(),
            self.num_inference_steps,
            self.timestep_spacing,
            self.steps_offset,
        )?;
        let final_alpha_cumprod = if self.set_alpha_to_one {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        Ok(DdimScheduler {
            config: self.clone(),
            prediction_type,
            alphas_cumprod: schedule.alphas_cumprod.clone(),
            final_alpha_cumprod,
            timesteps,
        })
    }
}

/// The DDIM sampler: deterministic at η = 0, any number of steps.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: DdimSchedulerConfig,
    prediction_type: PredictionType,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    timesteps: Vec<usize>,
}

impl DdimScheduler {
    /// Variance (1 − ᾱ_{t'}) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_{t'}) between step `step_index` and
    /// the next one (Eq. 16 without η²).
    pub fn variance(&self, step_index: usize) -> f64 {
        let ab = self.alphas_cumprod[self.timesteps[step_index]];
        let ab_prev = alpha_cumprod_prev(
            &self.alphas_cumprod,
            &self.timesteps,
            step_index,
            self.final_alpha_cumprod,
        );
        ddim_variance(ab, ab_prev)
    }

    /// The settings.
    pub fn config(&self) -> &DdimSchedulerConfig {
        &self.config
    }
}

/// (1 − ᾱ_prev) / (1 − ᾱ_t) · (1 − ᾱ_t / ᾱ_prev), diffusers' `DDIMScheduler._get_variance`.
pub fn ddim_variance(alpha_cumprod: f64, alpha_cumprod_prev: f64) -> f64 {
    (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod) * (1.0 - alpha_cumprod / alpha_cumprod_prev)
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        self.config.eta > 0.0 && self.variance(step_index) > 0.0
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
        let ab = self.alphas_cumprod[self.timesteps[step_index]];
        let ab_prev = alpha_cumprod_prev(
            &self.alphas_cumprod,
            &self.timesteps,
            step_index,
            self.final_alpha_cumprod,
        );
        let (mut x0, mut eps) =
            self.prediction_type
                .to_x0_and_eps(model_output, sample.clone(), ab);
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r);
            if self.config.use_clipped_model_output {
                // ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)
                eps =
                    (sample - x0.clone().mul_scalar(ab.sqrt())).mul_scalar(1.0 / (1.0 - ab).sqrt());
            }
        }
        // Eq. 16: σ_t² = η² · variance.
        let sigma = self.config.eta * ddim_variance(ab, ab_prev).sqrt();
        // Eq. 12: "direction pointing to x_t".
        let dir_coef = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
        let mut prev = x0.clone().mul_scalar(ab_prev.sqrt()) + eps.mul_scalar(dir_coef);
        if sigma > 0.0 {
            let z = noise.expect("DDIM with eta > 0 needs noise: see Scheduler::needs_noise");
            prev = prev + z.mul_scalar(sigma);
        }
        SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::NoiseScheduleConfig;

    #[test]
    fn diffusers_reference_variances() {
        // diffusers tests/schedulers/test_scheduler_ddim.py::test_variance (linear β
        // 1e-4..0.02, T = 1000): _get_variance(t, prev) for these pairs.
        let s = NoiseScheduleConfig::default().build().unwrap();
        let v = |t: usize, p: usize| ddim_variance(s.alphas_cumprod[t], s.alphas_cumprod[p]);
        assert!(v(0, 0).abs() < 1e-12);
        assert!((v(420, 400) - 0.14771).abs() < 1e-5, "{}", v(420, 400));
        assert!((v(980, 960) - 0.32460).abs() < 1e-5, "{}", v(980, 960));
        assert!((v(487, 486) - 0.00979).abs() < 1e-5, "{}", v(487, 486));
        assert!((v(999, 998) - 0.02).abs() < 1e-5, "{}", v(999, 998));
    }

    #[test]
    fn config_errors() {
        let s = NoiseScheduleConfig::default().build().unwrap();
        let bad_eta = DdimSchedulerConfig {
            eta: 1.5,
            ..Default::default()
        };
        assert!(bad_eta.init(&s, PredictionType::Epsilon).is_err());
        let nan_eta = DdimSchedulerConfig {
            eta: f64::NAN,
            ..Default::default()
        };
        assert!(nan_eta.init(&s, PredictionType::Epsilon).is_err());
        let zero = DdimSchedulerConfig {
            num_inference_steps: 0,
            ..Default::default()
        };
        assert!(zero.init(&s, PredictionType::Epsilon).is_err());
    }
}
