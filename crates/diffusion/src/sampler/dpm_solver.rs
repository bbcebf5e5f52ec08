//! DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models", arXiv:2211.01095), multistep, first or second order, in the
//! data-prediction form, as diffusers' `DPMSolverMultistepScheduler` computes it.
//!
//! With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), the half log-SNR λ_t = log(α_t / σ_t), a step from s to
//! t with h = λ_t − λ_s and the data prediction D_s = x̂_0(x_s, s):
//!
//! * first order (Eq. 8 with k = 1, the same map as DDIM η = 0):
//!   x_t = (σ_t / σ_s) x_s − α_t (e^{−h} − 1) D_s;
//! * second order, multistep (Algorithm 2), reusing the previous step's x̂_0 (at s₁ < s, with
//!   r = (λ_s − λ_{s₁}) / h and D₁ = (D_s − D_{s₁}) / r):
//!   `midpoint`: x_t = (σ_t / σ_s) x_s − α_t (e^{−h} − 1) (D_s + D₁ / 2);
//!   `heun`: x_t = (σ_t / σ_s) x_s − α_t (e^{−h} − 1) D_s + α_t ((e^{−h} − 1) / h + 1) D₁.
//!
//! The SDE variant (`sde-dpmsolver++`, Lu et al. §5 / Eq. 18) multiplies the x_s term by e^{−h},
//! replaces −(e^{−h} − 1) by (1 − e^{−2h}) and adds σ_t √(1 − e^{−2h}) z.
//!
//! Timesteps and the noise levels σ^VE = σ_t / α_t come from diffusers' `set_timesteps`
//! (its own `linspace` / `leading` / `trailing` rules, which differ from DDIM's, or Karras
//! noise levels), ending at σ = 0 (`final_sigmas_type = "zero"`), where the last step returns
//! x̂_0. Every coefficient is computed on the host in `f64` with `libm`, and each step is one
//! fused linear combination of x_t, x̂_0 and the previous x̂_0 on the device.

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::karras::{karras_sigmas, sigma_to_t};
use super::{
    check_step_count, check_within_schedule, Scheduler, SchedulerOutput, SchedulerState,
    TimestepSpacing,
};
use crate::error::{Error, Result};
use crate::objective::PredictionType;
use crate::schedule::NoiseSchedule;

/// Which DPM-Solver++ (diffusers' `algorithm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DpmSolverAlgorithm {
    /// The deterministic solver of the probability-flow ODE.
    #[default]
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    /// The stochastic solver of the reverse SDE: fresh noise at every step but the last.
    #[serde(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

/// How the second-order step combines the two data predictions (diffusers' `solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// D_s + D₁ / 2 (diffusers' default; the paper's Algorithm 2).
    #[default]
    Midpoint,
    /// The Heun-type weighting of D₁.
    Heun,
}

/// The noise level after the last step (diffusers' `final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// σ = 0: the last step lands on x̂_0 (always a first-order step).
    #[default]
    Zero,
    /// σ of training timestep 0.
    SigmaMin,
}

/// Settings of [`DpmSolverMultistep`], named and defaulted as in diffusers'
/// `DPMSolverMultistepScheduler` (the number of steps aside, which diffusers leaves to the
/// pipeline). Missing fields take these defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpmSolverMultistepConfig {
    /// Number of denoising steps (model calls).
    pub num_inference_steps: usize,
    /// 1 (the DDIM-equivalent first-order step) or 2 (multistep second order).
    pub solver_order: usize,
    /// ODE or SDE solver.
    pub algorithm_type: DpmSolverAlgorithm,
    /// How a second-order step weighs the difference of the two data predictions.
    pub solver_type: SolverType,
    /// Take first-order steps at the end when there are fewer than 15 steps (stabilises
    /// few-step sampling).
    pub lower_order_final: bool,
    /// Always take a first-order step last.
    pub euler_at_final: bool,
    /// Use Karras et al.'s noise levels (ρ = 7) between the schedule's σ_min and σ_max instead
    /// of the spacing's timesteps; timesteps are then the nearest training steps.
    pub use_karras_sigmas: bool,
    /// The noise level after the last step.
    pub final_sigmas_type: FinalSigmasType,
    /// How timesteps are spread (ignored with Karras noise levels).
    pub timestep_spacing: TimestepSpacing,
    /// Added to every `leading` timestep.
    pub steps_offset: usize,
    /// Dynamic thresholding of x̂_0 (Saharia et al. 2022, Imagen §2.3): per image,
    /// s = clamp(quantile(|x̂_0|, `dynamic_thresholding_ratio`), 1, `sample_max_value`) and
    /// x̂_0 ← clamp(x̂_0, −s, s) / s. With `sample_max_value` = 1 this is plain clipping to
    /// [−1, 1] (and needs no quantile, so it runs on every backend); above 1 the quantile is
    /// computed on the host (native backends only; see [`dynamic_threshold`]).
    pub thresholding: bool,
    /// The quantile of |x̂_0| that sets s.
    pub dynamic_thresholding_ratio: f64,
    /// The largest s.
    pub sample_max_value: f64,
}

impl Default for DpmSolverMultistepConfig {
    fn default() -> Self {
        Self {
            num_inference_steps: 20,
            solver_order: 2,
            algorithm_type: DpmSolverAlgorithm::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            use_karras_sigmas: false,
            final_sigmas_type: FinalSigmasType::Zero,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
        }
    }
}

impl DpmSolverMultistepConfig {
    /// Builds the solver for `schedule` and a model trained with `prediction_type`.
    pub fn init(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
    ) -> Result<DpmSolverMultistep> {
        if !(1..=2).contains(&self.solver_order) {
            return Err(Error::Sampler(format!(
                "solver_order = {} is not supported (expected 1 or 2)",
                self.solver_order
            )));
        }
        let ratio = self.dynamic_thresholding_ratio;
        if !(ratio.is_finite() && ratio > 0.0 && ratio <= 1.0) {
            return Err(Error::Sampler(format!(
                "dynamic_thresholding_ratio = {ratio} must lie in (0, 1]"
            )));
        }
        let max = self.sample_max_value;
        if !(max.is_finite() && max > 0.0) {
            return Err(Error::Sampler(format!(
                "sample_max_value = {max} must be positive"
            )));
        }
        let (timesteps, mut sigmas) = self.timesteps_and_sigmas(schedule)?;
        sigmas.push(match self.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => schedule.sqrt_recipm1_alphas_cumprod[0],
        });
        Ok(DpmSolverMultistep {
            config: self.clone(),
            prediction_type,
            timesteps,
            sigmas,
        })
    }

    /// diffusers' `set_timesteps`: the timesteps, and the noise level σ^VE at each.
    fn timesteps_and_sigmas(&self, schedule: &NoiseSchedule) -> Result<(Vec<usize>, Vec<f64>)> {
        let t_max = schedule.num_train_timesteps();
        let n = self.num_inference_steps;
        // diffusers' `sigmas`, σ^VE = √((1 − ᾱ) / ᾱ).
        let train_sigmas = &schedule.sqrt_recipm1_alphas_cumprod;
        if self.use_karras_sigmas {
            check_step_count(t_max, n)?;
            let log_sigmas: Vec<f64> = train_sigmas.iter().map(|&s| libm::log(s)).collect();
            let sigmas = karras_sigmas(train_sigmas[0], train_sigmas[t_max - 1], n);
            let timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even() as usize)
                .collect();
            return Ok((timesteps, sigmas));
        }
        let timesteps = dpm_solver_timesteps(t_max, n, self.timestep_spacing, self.steps_offset)?;
        // Two equal timesteps would make a step of zero length (h = 0), which the
        // second-order update divides by.
        if let Some(w) = timesteps.windows(2).find(|w| w[0] <= w[1]) {
            return Err(Error::Sampler(format!(
                "num_inference_steps = {n} repeats timestep {} with {} spacing: use fewer steps",
                w[1],
                self.timestep_spacing.name()
            )));
        }
        let sigmas = timesteps.iter().map(|&t| train_sigmas[t]).collect();
        Ok((timesteps, sigmas))
    }
}

/// (α_t, σ_t) = (1 / √(σ² + 1), σ / √(σ² + 1)) for σ^VE = `sigma` (diffusers'
/// `_sigma_to_alpha_sigma_t`).
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log α − log σ (+∞ at σ = 0).
fn lambda(alpha: f64, sigma: f64) -> f64 {
    libm::log(alpha) - libm::log(sigma)
}

/// The descending timesteps of `DPMSolverMultistepScheduler.set_timesteps` (which, unlike
/// DDIM's, spreads `n + 1` points and drops the last for `linspace` and `leading`):
///
/// * `linspace`: `round(linspace(0, T − 1, n + 1))[::-1][:-1]`;
/// * `leading`: `(arange(0, n + 1) · (T // (n + 1)))[::-1][:-1] + steps_offset`;
/// * `trailing`: `round(arange(T, 0, −T / n)) − 1`.
pub fn dpm_solver_timesteps(
    num_train_timesteps: usize,
    num_inference_steps: usize,
    spacing: TimestepSpacing,
    steps_offset: usize,
) -> Result<Vec<usize>> {
    let (t_max, n) = (num_train_timesteps, num_inference_steps);
    check_step_count(t_max, n)?;
    let ts: Vec<usize> = match spacing {
        TimestepSpacing::Linspace => {
            let step = (t_max - 1) as f64 / n as f64;
            (1..=n)
                .rev()
                .map(|i| {
                    if i == n {
                        t_max - 1
                    } else {
                        (i as f64 * step).round_ties_even() as usize
                    }
                })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = t_max / (n + 1);
            if ratio == 0 {
                return Err(Error::Sampler(format!(
                    "num_inference_steps = {n} is too many for `leading` spacing (at most {})",
                    t_max - 1
                )));
            }
            (1..=n).rev().map(|i| i * ratio + steps_offset).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_max as f64 / n as f64;
            // numpy's arange(T, 0, −ratio) has ceil(T / ratio) elements, T − i · ratio.
            let len = (t_max as f64 / ratio).ceil() as usize;
            (0..len)
                .map(|i| (t_max as f64 - i as f64 * ratio).round_ties_even() as usize - 1)
                .collect()
        }
    };
    check_within_schedule(&ts, t_max, steps_offset)?;
    Ok(ts)
}

/// The DPM-Solver++ multistep sampler: second order from the second step on, keeping the
/// previous step's x̂_0 in the run's [`SchedulerState`].
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep {
    config: DpmSolverMultistepConfig,
    prediction_type: PredictionType,
    timesteps: Vec<usize>,
    /// σ^VE at each timestep, then the final one: `timesteps.len() + 1` values.
    sigmas: Vec<f64>,
}

/// x_{t} = `sample` · x_s + `x0` · D_s + `prev_x0` · D_{s₁} + `noise` · z for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// Weight of x_s.
    pub sample: f64,
    /// Weight of this step's x̂_0.
    pub x0: f64,
    /// Weight of the previous step's x̂_0 (0 for a first-order step).
    pub prev_x0: f64,
    /// Standard deviation of the fresh noise (0 for the ODE solver and at σ = 0).
    pub noise: f64,
}

impl DpmSolverMultistep {
    /// The settings.
    pub fn config(&self) -> &DpmSolverMultistepConfig {
        &self.config
    }

    /// The noise levels σ^VE: one per timestep, then the final one.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Whether step `step_index` is second order (given the previous step's x̂_0): diffusers
    /// takes a first-order step first, with `solver_order = 1`, and last when
    /// `euler_at_final`, `lower_order_final` with fewer than 15 steps, or a final σ of 0.
    pub fn is_second_order(&self, step_index: usize) -> bool {
        let n = self.timesteps.len();
        let lower_order_final = step_index == n - 1
            && (self.config.euler_at_final
                || (self.config.lower_order_final && n < 15)
                || self.config.final_sigmas_type == FinalSigmasType::Zero);
        self.config.solver_order == 2 && step_index > 0 && !lower_order_final
    }

    /// The step's weights, computed on the host in `f64` (a second-order step needs a step
    /// before it, so at `step_index` 0 `second_order` is ignored).
    pub fn coefficients(&self, step_index: usize, second_order: bool) -> StepCoefficients {
        let second_order = second_order && step_index > 0;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step_index]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let sde = self.config.algorithm_type == DpmSolverAlgorithm::SdeDpmSolverPlusPlus;
        // The weight of D_s (ODE: −α_t (e^{−h} − 1); SDE: α_t (1 − e^{−2h})), the factor on
        // x_s, and the noise: e^{−h} − 1 as expm1 keeps small steps accurate; at σ_t = 0
        // (h = +∞) they give x_t = D_s.
        let (phi, sample, noise) = if sde {
            let one_minus = -libm::expm1(-2.0 * h);
            (
                alpha_t * one_minus,
                sigma_t / sigma_s0 * libm::exp(-h),
                sigma_t * one_minus.sqrt(),
            )
        } else {
            (-alpha_t * libm::expm1(-h), sigma_t / sigma_s0, 0.0)
        };
        if !second_order {
            return StepCoefficients {
                sample,
                x0: phi,
                prev_x0: 0.0,
                noise,
            };
        }
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[step_index - 1]);
        let h_0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
        let r0 = h_0 / h;
        // D₁ = (D_s − D_{s₁}) / r0 enters with weight `d1`.
        let d1 = match (self.config.solver_type, sde) {
            (SolverType::Midpoint, _) => 0.5 * phi,
            (SolverType::Heun, false) => alpha_t * (libm::expm1(-h) / h + 1.0),
            (SolverType::Heun, true) => alpha_t * (-libm::expm1(-2.0 * h) / (-2.0 * h) + 1.0),
        };
        StepCoefficients {
            sample,
            x0: phi + d1 / r0,
            prev_x0: -d1 / r0,
            noise,
        }
    }

    /// x̂_0 from the model output at step `step_index`, thresholded if enabled (diffusers'
    /// `convert_model_output` for `dpmsolver++`).
    fn data_prediction(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
    ) -> Tensor<4> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[step_index]);
        let x0 = self
            .prediction_type
            .to_x0_with(model_output, sample, alpha, sigma);
        if self.config.thresholding {
            dynamic_threshold(
                x0,
                self.config.dynamic_thresholding_ratio,
                self.config.sample_max_value,
            )
        } else {
            x0
        }
    }
}

/// Imagen's dynamic thresholding, per image (diffusers' `_threshold_sample`): s is the
/// `ratio` quantile of |x̂_0| (linear interpolation, as `torch.quantile`), clamped to
/// [1, `max_value`]; x̂_0 ← clamp(x̂_0, −s, s) / s.
///
/// When `max_value` ≤ 1, s = `max_value` whatever the quantile (torch's clamp applies the
/// upper bound last), so no quantile is computed: plain clipping, on the device, on every
/// backend (the browser included). Otherwise the per-image quantiles are computed on the host
/// from x̂_0 read back synchronously, which native backends allow and the browser does not.
/// (Burn's device sort would do the same read on `wgpu` — its fallback — and would add
/// ~460 KB to the browser bundle for a path the browser cannot take.)
pub fn dynamic_threshold(x0: Tensor<4>, ratio: f64, max_value: f64) -> Tensor<4> {
    if max_value <= 1.0 {
        let m = max_value as f32;
        let clipped = x0.clamp(-m, m);
        // The product's setting (m = 1) runs every step: no division by one.
        return if m == 1.0 {
            clipped
        } else {
            clipped.div_scalar(m)
        };
    }
    let dims = x0.dims();
    let [b, n] = [dims[0], dims[1] * dims[2] * dims[3]];
    let device = x0.device();
    let flat: Tensor<2> = x0.reshape([b, n]);
    let abs: Vec<f32> = flat
        .clone()
        .abs()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data");
    let pos = ratio * (n - 1) as f64;
    let lo = (pos.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let frac = (pos - lo as f64) as f32;
    let s: Vec<f32> = abs
        .chunks_exact(n)
        .map(|row| {
            let mut row = row.to_vec();
            row.sort_unstable_by(f32::total_cmp);
            // torch.lerp: lo + frac · (hi − lo).
            let q = row[lo] + frac * (row[hi] - row[lo]);
            q.clamp(1.0, max_value as f32)
        })
        .collect();
    let s = Tensor::<2>::from_data(TensorData::new(s, [b, 1]), &device).expand([b, n]);
    let clamped = flat.max_pair(s.clone().neg()).min_pair(s.clone());
    (clamped / s).reshape(dims)
}

impl Scheduler for DpmSolverMultistep {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn noise_level(&self, step_index: usize) -> (f64, f64) {
        alpha_sigma(self.sigmas[step_index])
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        self.config.algorithm_type == DpmSolverAlgorithm::SdeDpmSolverPlusPlus
            && self.sigmas[step_index + 1] > 0.0
    }

    fn step(
        &self,
        state: &mut SchedulerState,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> SchedulerOutput {
        let x0 = self.data_prediction(model_output, step_index, sample.clone());
        // The previous x̂_0 exists only if this run took step `step_index − 1` last; a
        // second-order step needs it (the first step of a run is first order anyway).
        let previous = state
            .x0_before(step_index)
            .filter(|_| self.is_second_order(step_index))
            .cloned();
        let c = self.coefficients(step_index, previous.is_some());
        let mut prev = sample.mul_scalar(c.sample) + x0.clone().mul_scalar(c.x0);
        if let Some(m1) = previous {
            prev = prev + m1.mul_scalar(c.prev_x0);
        }
        if c.noise > 0.0 {
            let z = noise.expect("sde-dpmsolver++ needs noise: see Scheduler::needs_noise");
            prev = prev + z.mul_scalar(c.noise);
        }
        state.record_x0(step_index, x0.clone());
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
    fn diffusers_reference_timesteps() {
        // numpy: np.linspace(0, 999, 11).round()[::-1][:-1]
        assert_eq!(
            dpm_solver_timesteps(1000, 10, TimestepSpacing::Linspace, 0).unwrap(),
            vec![999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        );
        // (np.arange(0, 11) * (1000 // 11))[::-1][:-1] + 1
        assert_eq!(
            dpm_solver_timesteps(1000, 10, TimestepSpacing::Leading, 1).unwrap(),
            vec![901, 811, 721, 631, 541, 451, 361, 271, 181, 91]
        );
        // np.arange(1000, 0, -1000 / 3).round() - 1
        assert_eq!(
            dpm_solver_timesteps(1000, 3, TimestepSpacing::Trailing, 0).unwrap(),
            vec![999, 666, 332]
        );
        assert!(dpm_solver_timesteps(1000, 0, TimestepSpacing::Linspace, 0).is_err());
        assert!(dpm_solver_timesteps(1000, 1000, TimestepSpacing::Leading, 0).is_err());
    }

    #[test]
    fn config_errors_are_typed() {
        let s = NoiseScheduleConfig::default().build().unwrap();
        let eps = PredictionType::Epsilon;
        let bad = |c: DpmSolverMultistepConfig| c.init(&s, eps).unwrap_err().to_string();
        let order3 = DpmSolverMultistepConfig {
            solver_order: 3,
            ..Default::default()
        };
        assert!(bad(order3).contains("solver_order"));
        let ratio = DpmSolverMultistepConfig {
            dynamic_thresholding_ratio: 1.5,
            ..Default::default()
        };
        assert!(bad(ratio).contains("dynamic_thresholding_ratio"));
        // 1000 linspace steps would repeat timesteps (h = 0).
        let many = DpmSolverMultistepConfig {
            num_inference_steps: 1000,
            ..Default::default()
        };
        assert!(DpmSolverMultistepConfig {
            num_inference_steps: 999,
            ..Default::default()
        }
        .init(&s, eps)
        .is_ok());
        assert!(bad(many).contains("repeats timestep"));
    }

    #[test]
    fn first_order_step_is_ddim_and_the_last_step_lands_on_x0() {
        let s = NoiseScheduleConfig::default().build().unwrap();
        let dpm = DpmSolverMultistepConfig {
            num_inference_steps: 10,
            ..Default::default()
        }
        .init(&s, PredictionType::Epsilon)
        .unwrap();
        let (t, t_prev) = (dpm.timesteps()[3], dpm.timesteps()[4]);
        let (ab, abp) = (s.alphas_cumprod[t], s.alphas_cumprod[t_prev]);
        // DDIM η = 0 with x̂_0 given: x' = √ᾱ' x̂_0 + √(1 − ᾱ') (x − √ᾱ x̂_0) / √(1 − ᾱ).
        let c = dpm.coefficients(3, false);
        let xt = ((1.0 - abp) / (1.0 - ab)).sqrt();
        assert!((c.sample - xt).abs() < 1e-12, "{} vs {xt}", c.sample);
        let x0 = abp.sqrt() - xt * ab.sqrt();
        assert!((c.x0 - x0).abs() < 1e-12, "{} vs {x0}", c.x0);
        // The last step (σ = 0) returns x̂_0 and is first order.
        assert!(!dpm.is_second_order(9) && dpm.is_second_order(8) && !dpm.is_second_order(0));
        let last = dpm.coefficients(9, false);
        assert_eq!((last.sample, last.x0, last.noise), (0.0, 1.0, 0.0));
    }
}
