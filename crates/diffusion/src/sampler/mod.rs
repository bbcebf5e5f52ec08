//! Reverse-process samplers: a [`Scheduler`] trait (DDPM, DDIM and DPM-Solver++ implement it),
//! the timestep spacings of diffusers, and one sampling loop for every model and scheduler.
//!
//! All schedule arithmetic is done on the host in `f64`; the device only sees `f32` scalars,
//! so the same seed gives the same image on every backend.

mod any;
mod batched;
mod class_choice;
mod ddim;
mod ddpm;
mod dpm_solver;
mod edit;
mod karras;
mod repaint;
mod sampling;
mod sdedit;

pub use any::{AnyScheduler, SamplerKind, SamplerSettings};
pub use batched::{rows_left, step_in_parts, step_together, PartialStep, Share};
pub use class_choice::{class_rows, ClassChoice, GridLabels, MAX_GRID_COLS};
pub use ddim::{DdimScheduler, DdimSchedulerConfig};
pub use ddpm::{DdpmScheduler, DdpmSchedulerConfig, VarianceType};
pub use dpm_solver::{
    dpm_solver_timesteps, DpmSolverAlgorithm, DpmSolverMultistep, DpmSolverMultistepConfig,
    FinalSigmasType, SolverType, StepCoefficients,
};
pub use edit::{plan_edit, Edit, EditFields, EditOptions, MAX_JUMP_N_SAMPLE};
pub use karras::{karras_sigmas, sigma_to_t};
pub use repaint::{keep_from_mask, repaint_timesteps, RePaintScheduler, RePaintSchedulerConfig};
pub use sampling::{
    to_host, Denoiser, ModelQuery, SampleRequest, Sampling, SamplingState, StepOutput,
};
pub use sdedit::sdedit_start_index;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How inference timesteps are picked from `0..num_train_timesteps` (diffusers'
/// `timestep_spacing`; see Lin et al. 2024, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `round(linspace(0, T − 1, n))`, reversed: always visits t = T − 1 and t = 0.
    Linspace,
    /// `arange(0, n) · (T / n)` (integer ratio), reversed, plus `steps_offset`: the DDIM paper's
    /// choice; with T = 1000, n = 5 and offset 1 it gives 801, 601, 401, 201, 1.
    #[default]
    Leading,
    /// `round(arange(T, 0, −T/n)) − 1`: always starts at t = T − 1.
    Trailing,
}

impl TimestepSpacing {
    /// The name in configs and messages (diffusers' `timestep_spacing`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Linspace => "linspace",
            Self::Leading => "leading",
            Self::Trailing => "trailing",
        }
    }

    /// Parses `linspace`, `leading` or `trailing`.
    pub fn from_name(name: &str) -> Result<Self> {
        [Self::Linspace, Self::Leading, Self::Trailing]
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                Error::Sampler(format!(
                    "unknown timestep_spacing `{name}` (expected linspace, leading or trailing)"
                ))
            })
    }
}

/// The descending inference timesteps for `num_inference_steps` out of
/// `num_train_timesteps`, exactly as diffusers' `DDIMScheduler.set_timesteps` computes them
/// (NumPy rounds half to even; so does this).
pub fn inference_timesteps(
    num_train_timesteps: usize,
    num_inference_steps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    let (t_max, n) = (num_train_timesteps, num_inference_steps);
    check_step_count(t_max, n)?;
    let mut ts: Vec<usize> = match spacing {
        TimestepSpacing::Linspace => {
            let step = if n > 1 {
                (t_max - 1) as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (0..n)
                .map(|i| (i as f64 * step).round_ties_even() as usize)
                .rev()
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = t_max / n;
            (0..n).rev().map(|i| i * ratio + steps_offset).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_max as f64 / n as f64;
            (0..n)
                .map(|i| (t_max as f64 - i as f64 * ratio).round_ties_even() as usize - 1)
                .collect()
        }
    };
    check_within_schedule(&ts, t_max, steps_offset)?;
    ts.dedup();
    Ok(ts)
}

/// `num_inference_steps` must lie in 1..=T.
fn check_step_count(num_train_timesteps: usize, num_inference_steps: usize) -> Result<()> {
    let (t_max, n) = (num_train_timesteps, num_inference_steps);
    if n == 0 || n > t_max {
        return Err(Error::Sampler(format!(
            "num_inference_steps = {n} must lie in 1..={t_max} (num_train_timesteps)"
        )));
    }
    Ok(())
}

/// No timestep may reach T (a `leading` spacing's `steps_offset` can push one there).
fn check_within_schedule(timesteps: &[usize], t_max: usize, steps_offset: usize) -> Result<()> {
    match timesteps.iter().find(|&&t| t >= t_max) {
        Some(t) => Err(Error::Sampler(format!(
            "steps_offset = {steps_offset} pushes timestep {t} past num_train_timesteps = {t_max}"
        ))),
        None => Ok(()),
    }
}

/// η must be a number in [0, 1].
fn check_eta(eta: f64) -> Result<()> {
    if eta.is_finite() && (0.0..=1.0).contains(&eta) {
        Ok(())
    } else {
        Err(Error::Sampler(format!("eta = {eta} must lie in [0, 1]")))
    }
}

/// The x̂_0 clipping bound must be a positive number.
fn check_clip_range(range: f64) -> Result<()> {
    if range.is_finite() && range > 0.0 {
        Ok(())
    } else {
        Err(Error::Sampler(format!(
            "clip_sample_range = {range} must be positive"
        )))
    }
}

/// What one reverse step returns.
#[derive(Debug, Clone)]
pub struct SchedulerOutput {
    /// x_{t_prev}, the less noisy sample.
    pub prev_sample: Tensor<4>,
    /// x̂_0, the model's current estimate of the clean image (after clipping, if enabled).
    pub pred_original_sample: Tensor<4>,
}

/// What a sampling run carries from one step to the next for its scheduler: a multistep
/// solver's earlier data predictions x̂_0 (diffusers keeps these inside the scheduler as
/// `model_outputs`; keeping them here instead lets one scheduler serve any number of runs at
/// once, and a fresh run cannot inherit a finished run's history). Single-step samplers leave
/// it empty. Start every run with `SchedulerState::default()`.
#[derive(Debug, Clone, Default)]
pub struct SchedulerState {
    /// `(step_index, x̂_0)` of the last step taken.
    previous_x0: Option<(usize, Tensor<4>)>,
    /// An inpainting run's known image and where it is kept, for RePaint (the mask made
    /// boolean once, so each step selects instead of blending).
    inpainting: Option<(Tensor<4>, Tensor<4, burn::tensor::Bool>)>,
}

impl SchedulerState {
    /// This run inpaints: `known` (values in [-1, 1]) is kept where `keep` is 1 and
    /// regenerated where it is 0 ([`RePaintScheduler`]).
    pub fn with_inpainting(mut self, known: Tensor<4>, keep: Tensor<4>) -> Self {
        self.inpainting = Some((known, keep.greater_elem(0.5)));
        self
    }

    /// x̂_0 of step `step_index − 1`, if that is the step this run took last.
    fn x0_before(&self, step_index: usize) -> Option<&Tensor<4>> {
        match &self.previous_x0 {
            Some((i, x0)) if i + 1 == step_index => Some(x0),
            _ => None,
        }
    }

    /// Records x̂_0 of step `step_index`.
    fn record_x0(&mut self, step_index: usize, x0: Tensor<4>) {
        self.previous_x0 = Some((step_index, x0));
    }
}

/// A reverse-process sampler over a fixed list of timesteps.
pub trait Scheduler {
    /// The timesteps visited, in order (descending).
    fn timesteps(&self) -> &[usize];

    /// Whether step `step_index` adds fresh Gaussian noise (so the caller draws it).
    fn needs_noise(&self, step_index: usize) -> bool;

    /// How many standard-normal draws of the sample's shape step `step_index` takes, passed
    /// to [`Scheduler::step`] stacked along the batch dimension: one when it
    /// [`Scheduler::needs_noise`] (RePaint's steps also re-noise, one draw per β).
    fn noise_draws(&self, step_index: usize) -> usize {
        usize::from(self.needs_noise(step_index))
    }

    /// The forward process at step `step_index`: x_t = α · x_0 + σ · ε with (α, σ) =
    /// (√ᾱ_t, √(1 − ᾱ_t)) — diffusers' `add_noise` at that step (DPM-Solver++: its own noise
    /// level, which Karras sigmas put between integer timesteps). For starting a run from a
    /// noised image (SDEdit).
    fn noise_level(&self, step_index: usize) -> (f64, f64);

    /// One reverse step from `sample` = x_t at `timesteps()[step_index]`, given the (guided)
    /// model output and, when [`Scheduler::needs_noise`], standard-normal `noise`. `state` is
    /// this run's [`SchedulerState`]; steps must be taken in order, 0, 1, 2, ….
    ///
    /// # Shapes
    /// - `model_output`, `sample`, `noise`: `[batch, channels, height, width]`.
    fn step(
        &self,
        state: &mut SchedulerState,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> SchedulerOutput;
}

/// ᾱ of the timestep that follows `step_index` (the end of the chain gives
/// `final_alpha_cumprod`).
fn alpha_cumprod_prev(
    alphas_cumprod: &[f64],
    timesteps: &[usize],
    step_index: usize,
    final_alpha_cumprod: f64,
) -> f64 {
    timesteps
        .get(step_index + 1)
        .map_or(final_alpha_cumprod, |&t| alphas_cumprod[t])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_reference_timesteps() {
        // diffusers tests/schedulers/test_scheduler_ddim.py::test_steps_offset:
        // steps_offset=1, 5 steps of 1000 → [801, 601, 401, 201, 1].
        assert_eq!(
            inference_timesteps(1000, 5, TimestepSpacing::Leading, 1).unwrap(),
            vec![801, 601, 401, 201, 1]
        );
        assert_eq!(
            inference_timesteps(1000, 5, TimestepSpacing::Leading, 0).unwrap(),
            vec![800, 600, 400, 200, 0]
        );
        // numpy: np.round(np.arange(1000, 0, -200)) - 1 → [999, 799, 599, 399, 199]
        assert_eq!(
            inference_timesteps(1000, 5, TimestepSpacing::Trailing, 0).unwrap(),
            vec![999, 799, 599, 399, 199]
        );
        // numpy: np.linspace(0, 999, 5).round()[::-1] → [999, 749, 500, 250, 0]
        // (499.5 rounds half to even → 500, 249.75 → 250, 749.25 → 749).
        assert_eq!(
            inference_timesteps(1000, 5, TimestepSpacing::Linspace, 0).unwrap(),
            vec![999, 749, 500, 250, 0]
        );
        // 50 DDIM steps, the usual setting: 980, 960, …, 0.
        let ts = inference_timesteps(1000, 50, TimestepSpacing::Leading, 0).unwrap();
        assert_eq!(ts.len(), 50);
        assert_eq!((ts[0], ts[1], ts[49]), (980, 960, 0));
        // All T steps in every spacing are 999..=0.
        for sp in [
            TimestepSpacing::Leading,
            TimestepSpacing::Trailing,
            TimestepSpacing::Linspace,
        ] {
            let all = inference_timesteps(1000, 1000, sp, 0).unwrap();
            assert_eq!(all, (0..1000).rev().collect::<Vec<_>>(), "{sp:?}");
        }
    }

    #[test]
    fn bad_step_counts_are_errors() {
        assert!(inference_timesteps(1000, 0, TimestepSpacing::Leading, 0).is_err());
        assert!(inference_timesteps(1000, 1001, TimestepSpacing::Leading, 0).is_err());
        assert!(inference_timesteps(1000, 1000, TimestepSpacing::Leading, 1).is_err());
        assert!(TimestepSpacing::from_name("uniform").is_err());
    }
}
