//! Choosing a sampler at run time (CLI flags, API JSON, the web page).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    DdimScheduler, DdimSchedulerConfig, DdpmScheduler, DdpmSchedulerConfig, DpmSolverAlgorithm,
    DpmSolverMultistep, DpmSolverMultistepConfig, Scheduler, SchedulerOutput, SchedulerState,
};
use crate::error::{Error, Result};
use crate::objective::PredictionType;
use crate::schedule::NoiseSchedule;

/// Which sampler. The default is DDPM: a stochastic sampler. The deterministic ones (DDIM at
/// η = 0, DPM-Solver++) carry the low-frequency part of the starting noise through to the
/// image, and an ε-prediction U-Net of this size does not cancel it: on the shipped MNIST
/// model, exactly the samples whose noise has the largest positive mean (+1.8σ to +2.8σ of
/// the mean's spread) end on grey, speckled backgrounds, whatever the training length, while
/// DDPM and SDE-DPM-Solver++ from the same noise give black ones (docs/samplers.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// DDIM (deterministic at η = 0).
    Ddim,
    /// DDPM ancestral sampling with σ² = β̃.
    #[default]
    Ddpm,
    /// DPM-Solver++ (2M): deterministic, second order, about as good in 15 steps as DDIM in 50.
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    /// SDE-DPM-Solver++ (2M): the stochastic variant (fresh noise every step).
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

impl SamplerKind {
    /// Every sampler, in the order the CLI and the API document them.
    pub const ALL: [Self; 4] = [
        Self::Ddim,
        Self::Ddpm,
        Self::DpmSolverPlusPlus,
        Self::SdeDpmSolverPlusPlus,
    ];

    /// The name used by the CLI, the API JSON and the web page.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Ddpm => "ddpm",
            Self::DpmSolverPlusPlus => "dpmsolver++",
            Self::SdeDpmSolverPlusPlus => "sde-dpmsolver++",
        }
    }

    /// Parses `ddim`, `ddpm`, `dpmsolver++` or `sde-dpmsolver++`.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::Sampler(format!(
                    "unknown sampler `{name}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// The common sampler settings exposed to users; everything else takes diffusers' defaults
/// (DDIM/DDPM: `leading` spacing, x̂_0 clipped to [-1, 1]; DPM-Solver++: second order,
/// `linspace` spacing, first-order final steps below 15 steps), except that DDIM re-derives ε̂
/// from the clipped x̂_0 (diffusers' `use_clipped_model_output=True`) and DPM-Solver++ clips
/// x̂_0 to [-1, 1] too (`thresholding` with `sample_max_value = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    /// DDIM, DDPM or DPM-Solver++.
    pub sampler: SamplerKind,
    /// Denoising steps.
    pub num_inference_steps: usize,
    /// DDIM's η (ignored by the others, which must still be given a valid one).
    pub eta: f64,
    /// DPM-Solver++ only: Karras et al.'s noise levels instead of `linspace` timesteps
    /// (diffusers' `use_karras_sigmas`; "DPM++ 2M Karras"). They end at the schedule's σ_min,
    /// so the last step starts from t ≈ 0 instead of t ≈ T/n.
    #[serde(default)]
    pub use_karras_sigmas: bool,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::default(),
            num_inference_steps: 50,
            eta: 0.0,
            use_karras_sigmas: false,
        }
    }
}

impl SamplerSettings {
    /// Builds the scheduler, x̂_0 clipped to [-1, 1]; bad steps or η are [`Error::Sampler`]s.
    pub fn scheduler(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
    ) -> Result<AnyScheduler> {
        self.scheduler_clipped(schedule, prediction_type, Some(1.0))
    }

    /// Builds the scheduler with x̂_0 clipped to `[-r, r]` for `clip = Some(r)`, or not
    /// clipped (a model whose data is not in [-1, 1], diffusers' `clip_sample = false`).
    pub fn scheduler_clipped(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
        clip: Option<f64>,
    ) -> Result<AnyScheduler> {
        // Only DDIM uses η, but a nonsensical value is still the caller's mistake.
        super::check_eta(self.eta)?;
        let no_karras = || {
            if self.use_karras_sigmas {
                Err(Error::Sampler(format!(
                    "use_karras_sigmas applies to dpmsolver++ and sde-dpmsolver++, not {}",
                    self.sampler.name()
                )))
            } else {
                Ok(())
            }
        };
        Ok(match self.sampler {
            SamplerKind::Ddim => {
                no_karras()?;
                AnyScheduler::Ddim(
                    DdimSchedulerConfig {
                        num_inference_steps: self.num_inference_steps,
                        eta: self.eta,
                        // x̂_0 is clipped to [-1, 1]; re-deriving ε̂ from the clipped x̂_0 keeps
                        // Eq. 12's two terms consistent (x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂). Without
                        // it a guided ε̂ whose x̂_0 lies far outside the range pushes that
                        // excess into x_{t−1}: noisy backgrounds and broken strokes at w = 3,
                        // where DDPM's posterior mean (consistent by construction) is clean.
                        use_clipped_model_output: true,
                        clip_sample: clip.is_some(),
                        clip_sample_range: clip.unwrap_or(1.0),
                        ..Default::default()
                    }
                    .init(schedule, prediction_type)?,
                )
            }
            SamplerKind::Ddpm => {
                no_karras()?;
                AnyScheduler::Ddpm(
                    DdpmSchedulerConfig {
                        num_inference_steps: self.num_inference_steps,
                        clip_sample: clip.is_some(),
                        clip_sample_range: clip.unwrap_or(1.0),
                        ..Default::default()
                    }
                    .init(schedule, prediction_type)?,
                )
            }
            kind @ (SamplerKind::DpmSolverPlusPlus | SamplerKind::SdeDpmSolverPlusPlus) => {
                AnyScheduler::DpmSolver(
                    DpmSolverMultistepConfig {
                        num_inference_steps: self.num_inference_steps,
                        algorithm_type: if kind == SamplerKind::DpmSolverPlusPlus {
                            DpmSolverAlgorithm::DpmSolverPlusPlus
                        } else {
                            DpmSolverAlgorithm::SdeDpmSolverPlusPlus
                        },
                        use_karras_sigmas: self.use_karras_sigmas,
                        // x̂_0 clipped to [-1, 1], as DDIM's: data-prediction steps are
                        // linear in x̂_0, so the clipped estimate stays consistent with x_t.
                        thresholding: clip.is_some(),
                        sample_max_value: clip.unwrap_or(1.0),
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
    /// DPM-Solver++ (either algorithm).
    DpmSolver(DpmSolverMultistep),
    /// RePaint inpainting (a run with [`super::SchedulerState::with_inpainting`]).
    RePaint(super::RePaintScheduler),
}

impl Scheduler for AnyScheduler {
    fn timesteps(&self) -> &[usize] {
        match self {
            Self::Ddim(s) => s.timesteps(),
            Self::Ddpm(s) => s.timesteps(),
            Self::DpmSolver(s) => s.timesteps(),
            Self::RePaint(s) => s.timesteps(),
        }
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        match self {
            Self::Ddim(s) => s.needs_noise(step_index),
            Self::Ddpm(s) => s.needs_noise(step_index),
            Self::DpmSolver(s) => s.needs_noise(step_index),
            Self::RePaint(s) => s.needs_noise(step_index),
        }
    }

    fn noise_draws(&self, step_index: usize) -> usize {
        match self {
            Self::RePaint(s) => s.noise_draws(step_index),
            other => usize::from(other.needs_noise(step_index)),
        }
    }

    fn noise_level(&self, step_index: usize) -> (f64, f64) {
        match self {
            Self::Ddim(s) => s.noise_level(step_index),
            Self::Ddpm(s) => s.noise_level(step_index),
            Self::DpmSolver(s) => s.noise_level(step_index),
            Self::RePaint(s) => s.noise_level(step_index),
        }
    }

    fn step(
        &self,
        state: &mut SchedulerState,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> SchedulerOutput {
        match self {
            Self::Ddim(s) => s.step(state, model_output, step_index, sample, noise),
            Self::Ddpm(s) => s.step(state, model_output, step_index, sample, noise),
            Self::DpmSolver(s) => s.step(state, model_output, step_index, sample, noise),
            Self::RePaint(s) => s.step(state, model_output, step_index, sample, noise),
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
            sampler: SamplerKind::Ddim,
            num_inference_steps: 10,
            ..Default::default()
        };
        let karras_ddim = SamplerSettings {
            use_karras_sigmas: true,
            ..settings
        };
        assert!(karras_ddim
            .scheduler(&schedule, PredictionType::Epsilon)
            .unwrap_err()
            .to_string()
            .contains("use_karras_sigmas applies to dpmsolver++"));
        let s = settings
            .scheduler(&schedule, PredictionType::Epsilon)
            .unwrap();
        let (t, t_prev) = (s.timesteps()[3], s.timesteps()[4]);
        let (ab, abp) = (schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]);
        let x_t = [0.9f32, -0.2, 2.5, -3.0];
        let eps = [-1.5f32, 0.3, -0.4, 1.2];
        let tensor =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 1, 2, 2]), &device);
        let out = s.step(
            &mut SchedulerState::default(),
            tensor(&eps),
            3,
            tensor(&x_t),
            None,
        );
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
