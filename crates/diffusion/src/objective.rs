//! What the network predicts, the training loss, and conversions to x̂_0.
//!
//! With x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM Eq. 4):
//!
//! * ε-prediction (Ho et al. 2020, Eq. 14 "L_simple"): the network predicts ε, and
//!   x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t.
//! * v-prediction (Salimans & Ho 2022, §4): v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, so
//!   x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ and ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;

/// The quantity the model is trained to output (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε (the DDPM default).
    #[default]
    Epsilon,
    /// The velocity v = √ᾱ ε − √(1 − ᾱ) x_0.
    #[serde(rename = "v_prediction")]
    VPrediction,
}

impl PredictionType {
    /// Parses `epsilon` or `v_prediction` (also `v`).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "epsilon" | "eps" => Ok(Self::Epsilon),
            "v_prediction" | "v" => Ok(Self::VPrediction),
            other => Err(Error::Config(format!(
                "unknown prediction_type `{other}` (expected epsilon or v_prediction)"
            ))),
        }
    }

    /// The training target for clean data `x0` and noise `noise`, per sample at `timesteps`.
    ///
    /// # Shapes
    /// - `x0`, `noise`: `[batch, channels, height, width]`; `timesteps`: `batch` values.
    pub fn target(
        self,
        schedule: &NoiseSchedule,
        x0: Tensor<4>,
        noise: Tensor<4>,
        timesteps: &[usize],
    ) -> Tensor<4> {
        match self {
            Self::Epsilon => noise,
            Self::VPrediction => {
                let device = x0.device();
                let a = per_sample(&schedule.sqrt_alphas_cumprod, timesteps, &device);
                let b = per_sample(&schedule.sqrt_one_minus_alphas_cumprod, timesteps, &device);
                noise * a - x0 * b
            }
        }
    }

    /// Converts a model output at one timestep `t` (same for the whole batch) into
    /// `(x̂_0, ε̂)`, with `alpha_cumprod` = ᾱ_t computed on the host.
    pub fn to_x0_and_eps(
        self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        alpha_cumprod: f64,
    ) -> (Tensor<4>, Tensor<4>) {
        let (a, b) = (alpha_cumprod.sqrt(), (1.0 - alpha_cumprod).sqrt());
        let x0 = self.to_x0_with(model_output.clone(), sample.clone(), a, b);
        let eps = match self {
            Self::Epsilon => model_output,
            Self::VPrediction => sample.mul_scalar(b) + model_output.mul_scalar(a),
        };
        (x0, eps)
    }

    /// x̂_0 from a model output, given α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t) directly (solvers that
    /// work with noise levels between training timesteps have no ᾱ_t to look up):
    /// (x_t − σ_t ε̂) / α_t, or α_t x_t − σ_t v̂.
    pub fn to_x0_with(
        self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        alpha: f64,
        sigma: f64,
    ) -> Tensor<4> {
        match self {
            // x̂_0 = x_t/α − (σ/α) ε̂, the same as (x_t − σ ε̂)/α.
            Self::Epsilon => {
                sample.mul_scalar(1.0 / alpha) - model_output.mul_scalar(sigma / alpha)
            }
            Self::VPrediction => sample.mul_scalar(alpha) - model_output.mul_scalar(sigma),
        }
    }
}

/// Gathers `values[t]` for each sample and shapes it `[batch, 1, 1, 1]` for broadcasting.
/// The lookup happens on the host in `f64`; only the `f32` results are uploaded.
pub fn per_sample(values: &[f64], timesteps: &[usize], device: &burn::tensor::Device) -> Tensor<4> {
    let v: Vec<f32> = timesteps.iter().map(|&t| values[t] as f32).collect();
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([timesteps.len(), 1, 1, 1])
}

/// Closed-form forward process (DDPM Eq. 4): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, with one timestep
/// per sample.
///
/// # Shapes
/// - `x0`, `noise`: `[batch, channels, height, width]`; `timesteps`: `batch` values in `0..T`.
/// - output: like `x0`.
pub fn q_sample(
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    timesteps: &[usize],
    noise: Tensor<4>,
) -> Tensor<4> {
    let device = x0.device();
    assert_eq!(x0.dims()[0], timesteps.len(), "one timestep per sample");
    let a = per_sample(&schedule.sqrt_alphas_cumprod, timesteps, &device);
    let b = per_sample(&schedule.sqrt_one_minus_alphas_cumprod, timesteps, &device);
    x0 * a + noise * b
}

/// Mean-squared error between the model output and the target, averaged over every element
/// (diffusers' `F.mse_loss(pred, target)`).
pub fn mse_loss(model_output: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    (model_output - target).powi_scalar(2).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseRng, NormalTensor};
    use crate::schedule::NoiseScheduleConfig;
    use burn::tensor::Device;

    fn max_abs(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn q_sample_at_t_max_is_standard_normal_and_at_zero_is_x0() {
        let device = Device::flex();
        let s = NoiseScheduleConfig::default().build().unwrap();
        let mut rng = NoiseRng::new(11);
        // Data far from N(0, 1): every pixel 0.8.
        let x0 = Tensor::<4>::full([64, 1, 16, 16], 0.8, &device);
        let noise = rng.normal_tensor([64, 1, 16, 16], &device);
        let xt = q_sample(&s, x0.clone(), &[999; 64], noise.clone());
        let mean = xt.clone().mean().into_scalar::<f64>();
        let std = xt.var(0).mean().into_scalar::<f64>().sqrt();
        // √ᾱ_T · 0.8 = 0.005; 16k samples: standard error of the mean ≈ 0.008.
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((std - 1.0).abs() < 0.03, "std {std}");
        let x_small = q_sample(&s, x0.clone(), &[0; 64], noise);
        // √(1 − ᾱ_0) = 0.01: x_0 plus 1 % of the noise.
        assert!(max_abs(x_small, x0) < 0.06);
    }

    #[test]
    fn conversions_invert_the_forward_process() {
        let device = Device::flex();
        let s = NoiseScheduleConfig::default().build().unwrap();
        let mut rng = NoiseRng::new(3);
        let x0 = rng.normal_tensor([2, 1, 4, 4], &device).clamp(-1.0, 1.0);
        let eps = rng.normal_tensor([2, 1, 4, 4], &device);
        for t in [0usize, 250, 999] {
            let xt = q_sample(&s, x0.clone(), &[t, t], eps.clone());
            for pt in [PredictionType::Epsilon, PredictionType::VPrediction] {
                let out = pt.target(&s, x0.clone(), eps.clone(), &[t, t]);
                let (x0_hat, eps_hat) = pt.to_x0_and_eps(out, xt.clone(), s.alphas_cumprod[t]);
                // At t = 999, 1/√ᾱ ≈ 157 amplifies f32 rounding in ε-mode.
                let tol = if t == 999 && pt == PredictionType::Epsilon {
                    2e-3
                } else {
                    2e-5
                };
                assert!(max_abs(x0_hat, x0.clone()) < tol, "{pt:?} t={t}");
                assert!(max_abs(eps_hat, eps.clone()) < 2e-4, "{pt:?} t={t}");
            }
        }
    }

    #[test]
    fn mse_loss_value() {
        let device = Device::flex();
        let a = Tensor::<4>::full([1, 1, 2, 2], 1.0, &device);
        let b = Tensor::<4>::full([1, 1, 2, 2], 3.0, &device);
        assert_eq!(mse_loss(a, b).into_scalar::<f32>(), 4.0);
    }
}
